"""kcv-sd with and without oneDNN weight caching, two processes taking turns.

The caching (`kcv_sd.weight_cache`) is process-wide, so the benchmark's
one-process ablation cannot switch it. Here, for each precision, two fresh
kcv-sd processes with a benchmark preset's workload (default the quick one: SD1.5,
random weights, 128x128, 2 steps; `--preset sd512` for 512x512), one with `weight_cache` on and one off, are built, warmed
up with one image, and then asked for images in turn, the order flipping
every round (`bench.interleaved`). Prints each side's median image seconds,
the ratio of medians (cached / uncached) and the range of round ratios.

    python tools/measure_weight_cache.py --precisions bfloat16 float32 --rounds 6
    python tools/measure_weight_cache.py --preset sd512 --rounds 4
"""

import argparse
import dataclasses
import tempfile
from pathlib import Path

from bench.configs import PRESETS
from bench.interleaved import run_interleaved
from bench.table import median_and_range, ratio_range
from kcv_sd.tokenizer import get_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), help="instead of the preset's")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per precision")
    args = parser.parse_args()
    workload = dataclasses.asdict(PRESETS[args.preset].workload)
    if args.size:
        workload.update(width=args.size[0], height=args.size[1])
    common = {"system": "kcv-sd", "workload": workload,
              "token_ids": get_tokenizer().pad_batch([workload["prompt"], ""]).tolist()}
    print("| precision | cached s (min-max) | uncached s (min-max) | cached / uncached | round ratios |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for precision in args.precisions:
            specs = [{**common, "config": {"xla": False, "precision": precision, "controlnet": False,
                                           "weight_cache": cached}} for cached in ("on", "off")]
            result = run_interleaved(specs, args.rounds, Path(scratch) / "log", lambda message: None,
                                     args.timeout)
            if result["status"] != "ok":
                print(f"| {precision} | failed: {result['error']} | | | |")
                continue
            cached, uncached = (median_and_range(warm) for warm in result["warm"])
            print(f"| {precision} | {cached} | {uncached} | {result['ratio']:.2f}x | "
                  f"{ratio_range(result['round_ratios'])} |", flush=True)


if __name__ == "__main__":
    main()
