"""Warm 512x512 image times of the opt-in levers (DeepCache, token merging)
against the plain pipeline, SD1.5's architecture with random weights, one
process, the variants taking turns image by image.

    python tools/measure_levers.py --precision bfloat16 --steps 6 --rounds 3
"""

import argparse
import os
import statistics
import time

import numpy as np

VARIANTS = {"plain": {}, "DeepCache, interval 3": {"deep_cache": 3}, "token merging 0.5": {"token_merging": 0.5}}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    import kcv_sd

    pipeline = kcv_sd.Pipeline(model="sd15", weights="random", precision=args.precision, jit_compile=False)
    call = dict(width=args.size, height=args.size, num_inference_steps=args.steps, seed=1, output_type="np")
    for options in VARIANTS.values():  # warm-up: traces
        pipeline("a photograph of an astronaut riding a horse", **call, **options)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, options in VARIANTS.items():
            started = time.perf_counter()
            pipeline("a photograph of an astronaut riding a horse", **call, **options)
            times[name].append(time.perf_counter() - started)
    plain = statistics.median(times["plain"])
    print(f"{args.size}x{args.size}, {args.steps} steps, {args.precision}, load {os.getloadavg()[0]:.2f}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:24s} median {median:6.2f} s  ({np.min(seconds):.2f}-{np.max(seconds):.2f})  "
              f"{median / plain:.2f}x plain")


if __name__ == "__main__":
    main()
