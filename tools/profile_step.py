"""Where the SD1.5 UNet forward's time goes, by op type.

Traces the UNet (random weights, the pipeline's routes, guided batch of 2)
at one latent size, runs it `--warmup` times, then profiles `--reps` calls
with `tf.profiler` and sums each op type's time over the executor's threads,
per call (the sum can exceed the wall time: two cores, concurrent ops).

    python tools/profile_step.py --precision bfloat16 --side 64 --by-place
"""

import os
import time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf

from bench.op_profile import profiled
from kcv_sd.routing import static_routes
from measure_unet_efficiency import one_size_arguments  # tools/ is on sys.path when run as a script


def main():
    args, _, model, inputs = one_size_arguments(__doc__.splitlines()[0], side=64, reps=2, more=(
        ("--warmup", {"type": int, "default": 2}), ("--top", {"type": int, "default": 25}),
        ("--by-place", {"action": "store_true", "help": "also rank (op type, layer path) pairs"})))
    with static_routes(2, args.side, args.side, 77):
        forward = tf.function(lambda x: model(x)).get_concrete_function(inputs)
    for _ in range(args.warmup):
        forward(inputs).numpy()
    with profiled() as profile:
        start = time.perf_counter()
        for _ in range(args.reps):
            forward(inputs).numpy()
        wall = (time.perf_counter() - start) / args.reps
    print(f"SD1.5 UNet {model.compute_dtype}, latent {args.side}x{args.side}, batch 2: "
          f"{wall:.3f} s wall per call (profiled)")
    tables = [("op type", profile["op_times"])]
    if args.by_place:
        tables.append(("op type | where (layer numbers dropped)", profile["by_place"]))
    for header, totals in tables:
        print(f"\n| {header} | s per call (summed over threads) |")
        print("|---|" + "---|" * header.count("|") + "---:|")
        for key, total in totals.most_common(args.top):
            print(f"| {' | '.join(key) if isinstance(key, tuple) else key} | {total / args.reps:.3f} |")
        print(f"| all ops{' |' * (header.count('|') + 1)} {sum(totals.values()) / args.reps:.3f} |")


if __name__ == "__main__":
    main()
