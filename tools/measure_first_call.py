"""Where the first call of the SD1.5 pipeline's compiled functions goes.

One process builds `Pipeline(model="sd15", weights="random")`'s components
once; per repetition each variant in turn (order reversed every other
repetition) gets a fresh `Pipeline(components=...)`, whose text encoder,
guided DDIM step and decoder are timed phase by phase:

- `trace`: `get_concrete_function()` (Python tracing: the function, and
  Keras calling every layer while the graph is built; autograph conversion
  when it is on).
- `first`: the first execution at 128x128 (graph instantiation: grappler,
  partitioning, kernel construction; plus oneDNN primitive creation for
  these shapes, plus one warm run's compute).
- `warm`: median of 3 later executions at 128x128.
- `new_shape` / `new_shape_warm` (step and decoder): the first and a warm
  execution at 64x64 with the already instantiated graph, so only the
  per-shape (oneDNN primitive) cost remains; `instantiate` estimates the
  graph-level one-off as (first - warm) - (new_shape - new_shape_warm).

With `--full`, each variant also gets a second fresh Pipeline for a whole
first call (128x128, 2 DDIM steps) and a warm one. Outputs of every variant
are compared bit for bit with the first variant's.

Variants: `autograph` (`tf.function` defaults, the pipeline before the
change) and `no_autograph` (`autograph=False`, what `Pipeline._compile` now
does).

    python tools/measure_first_call.py --reps 3
    python tools/measure_first_call.py --reps 2 --full
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from bench.measure import tf_sync, timed
from kcv_sd.components import load_components
from kcv_sd.pipeline import Pipeline
from kcv_sd.samplers import SAMPLERS
from kcv_sd.step import StepInputs
from kcv_sd.unet import timestep_embedding

CALL = {"prompt": "a photo", "width": 128, "height": 128, "num_inference_steps": 2, "seed": 1,
        "output_type": "np"}


def variant(autograph):
    class Variant(Pipeline):
        def _compile(self, fn, signature, jit_compile=None, cached=None):
            jit_compile = self.jit_compile if jit_compile is None else jit_compile
            return tf.function(fn, input_signature=signature, jit_compile=jit_compile, autograph=autograph)

    return Variant


VARIANTS = {"autograph": variant(True), "no_autograph": variant(False)}


def phases(fn, inputs, new_inputs=None):
    """Times and outputs of trace, first and warm runs of one tf.function."""
    times = {}
    _, times["trace"] = timed(fn.get_concrete_function)
    out, times["first"] = timed(fn, *inputs, sync=tf_sync)
    times["warm"] = statistics.median(timed(fn, *inputs, sync=tf_sync)[1] for _ in range(3))
    outputs = [out]
    if new_inputs is not None:
        new_out, times["new_shape"] = timed(fn, *new_inputs, sync=tf_sync)
        times["new_shape_warm"] = statistics.median(timed(fn, *new_inputs, sync=tf_sync)[1] for _ in range(2))
        times["instantiate"] = (times["first"] - times["warm"]) - (times["new_shape"] - times["new_shape_warm"])
        outputs.append(new_out)
    return times, outputs


def step_inputs(config, side, rng):
    sampler = SAMPLERS["ddim"]
    schedule = sampler.schedule(2)
    latent = tf.constant(rng.standard_normal((1, side, side, config.latent_channels)), tf.float32)
    return (StepInputs(latent, sampler.initial_state(latent),
                       timestep_embedding(schedule.timesteps[:1], config.timestep_dim),
                       tf.constant(rng.standard_normal((2, 77, config.context_dim)), tf.float32),
                       tf.constant(7.5, tf.float32), tf.constant(schedule.coefficients[0])),)


def measure(cls, components, full):
    rng = np.random.default_rng(0)
    pipe = cls(components=components)
    config = pipe.config
    tokens = tf.constant(pipe.tokenizer.pad_batch(["a photo", ""]))
    result, outputs = {}, {}
    result["encode"], outputs["encode"] = phases(pipe._encode, (tokens,))
    step = pipe.step_function(pipe.step_spec("ddim", True))
    result["step"], outputs["step"] = phases(step, step_inputs(config, 16, rng), step_inputs(config, 8, rng))
    latents = [tf.constant(rng.standard_normal((1, s, s, config.latent_channels)), tf.float32) for s in (16, 8)]
    result["decode"], outputs["decode"] = phases(pipe._decode, latents[:1], latents[1:])
    if full:
        pipe = cls(components=components)
        image, first = timed(pipe, **CALL)
        warm = statistics.median(timed(pipe, **CALL)[1] for _ in range(3))
        result["pipeline"] = {"first": first, "warm": warm, "overhead": first - warm}
        outputs["pipeline"] = image
    return result, outputs


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also time whole first and warm pipeline calls")
    args = parser.parse_args()
    began = time.perf_counter()
    components = load_components("sd15", "random")
    print(f"load_components {time.perf_counter() - began:.1f} s", flush=True)
    results = {name: [] for name in VARIANTS}
    reference = None
    for rep in range(args.reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            result, outputs = measure(VARIANTS[name], components, args.full)
            if reference is None:
                reference = outputs
            elif not same(reference, outputs):
                raise SystemExit(f"{name}: outputs differ from the first variant's")
            results[name].append(result)
            print(name, json.dumps({f: {k: round(v, 3) for k, v in p.items()} for f, p in result.items()}),
                  flush=True)
    print("\noutputs bit-identical across variants and repetitions")
    base = list(VARIANTS)[0]
    print(f"\nmedians over {args.reps} reps, seconds (ratio to {base})")
    for fn in results[base][0]:
        for phase in results[base][0][fn]:
            row = []
            for name in VARIANTS:
                value = statistics.median(r[fn][phase] for r in results[name])
                ref = statistics.median(r[fn][phase] for r in results[base])
                row.append(f"{name} {value:7.3f}" + (f" ({value / ref:4.2f})" if name != base and ref > 0 else ""))
            print(f"{fn:8s} {phase:15s} " + "   ".join(row))


if __name__ == "__main__":
    main()
