"""The SD1.5 UNet forward with and without section 16's two changes, in one process.

Variants, traced from the same model (random weights, guided batch of 2,
the pipeline's routes) and run alternately `--reps` times:
  before     GEGLU as one matmul, halves sliced from its output, GELU as
             separate ops; attention in chunks above 2**26 scores.
  chunks     attention in chunks above 2**24 scores (`CPU_ROUTES` now).
  now        and GEGLU's gate GELU fused into the gate's matmul
             (`kcv_sd.unet_blocks.GEGLU`).
Prints each variant's median and the largest difference from `before`.

    python tools/measure_fusion.py --precision bfloat16 --side 64 --reps 5
"""

import dataclasses
import os
import statistics
import time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from keras import ops

from kcv_sd import routing, unet_blocks
from measure_unet_efficiency import one_size_arguments  # tools/ is on sys.path when run as a script


def unfused_geglu(self, inputs):
    """GEGLU before section 16: one matmul, then the halves and a composite GELU."""
    x = self.dense(inputs)
    x, gate = x[..., : self.output_dim], x[..., self.output_dim:]
    if self.approximate:
        return x * 0.5 * gate * (1 + ops.tanh(gate * 0.7978845608 * (1 + 0.044715 * gate**2)))
    return x * ops.gelu(gate, approximate=False)


def main():
    args, _, model, inputs = one_size_arguments(__doc__.splitlines()[0], side=64, reps=5)
    fused_geglu = unet_blocks.GEGLU.call
    wide_chunks = dataclasses.replace(routing.CPU_ROUTES, max_scores_at_once=2**26)
    variants = {"before": (unfused_geglu, wide_chunks), "chunks": (unfused_geglu, routing.CPU_ROUTES),
                "now": (fused_geglu, routing.CPU_ROUTES)}
    forwards = {}
    try:
        for name, (call, policy) in variants.items():
            unet_blocks.GEGLU.call = call
            with routing.device_routes(policy), routing.static_routes(2, args.side, args.side, 77):
                forwards[name] = tf.function(lambda x: model(x)).get_concrete_function(inputs)
    finally:
        unet_blocks.GEGLU.call = fused_geglu
    outputs = {name: forward(inputs).numpy() for name, forward in forwards.items()}
    times = {name: [] for name in forwards}
    for _ in range(args.reps):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward(inputs).numpy()
            times[name].append(time.perf_counter() - start)
    before = statistics.median(times["before"])
    print(f"SD1.5 UNet {model.compute_dtype}, latent {args.side}x{args.side}, batch 2, "
          f"medians of {args.reps}:")
    print("| variant | s | vs before | max abs difference from before |")
    print("|---|---:|---:|---:|")
    for name in forwards:
        median = statistics.median(times[name])
        difference = np.abs(outputs[name] - outputs["before"]).max()
        print(f"| {name} | {median:.3f} | {median / before:.2f}x | {difference:.2g} |")


if __name__ == "__main__":
    main()
