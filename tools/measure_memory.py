"""Peak memory of SD1.5 + one ControlNet at 512x512, with and without oneDNN
weight caching: each configuration in a fresh process (the caching is
process-wide), random weights, 2 DDIM steps, guidance 7.5, two images.
Prints the resident memory after building and the peak (VmHWM) after each
image, with each image's seconds.

    python tools/measure_memory.py --precisions float32 bfloat16 --caching on off
"""

import argparse
import json
import os
import subprocess
import sys
import time


def status_gib(*keys):
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in keys:
                values[key] = int(value.split()[0]) / 2**20
    return [round(values[key], 2) for key in keys]


def child(precision, caching, size, controlnets):
    """One configuration, in this process: its figures as a JSON line."""
    from bench.configs import depth_ramp
    from kcv_sd.components import family_by_name
    from kcv_sd.weight_cache import choose_weight_cache

    choose_weight_cache(caching, family_by_name("sd15"), precision, controlnets)
    import kcv_sd
    from kcv_sd.study import resolve_controlnet

    pipeline = kcv_sd.Pipeline(model="sd15", weights="random", precision=precision, jit_compile=False)
    control = {}
    if controlnets:
        control = {"controlnet": resolve_controlnet(pipeline, "random"), "image": depth_ramp(size, size)}
    figures = {"built_rss_gib": status_gib("VmRSS")[0], "images": []}
    for seed in (1, 2):
        started = time.perf_counter()
        pipeline("a photograph of an astronaut riding a horse", seed=seed, width=size, height=size,
                 num_inference_steps=2, output_type="np", **control)
        figures["images"].append({"seconds": round(time.perf_counter() - started, 1),
                                  "peak_gib": status_gib("VmHWM")[0]})
    print(json.dumps(figures))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--caching", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--controlnets", type=int, default=1, choices=[0, 1])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.size, args.controlnets)
    print(f"SD1.5{' + ControlNet' * args.controlnets}, {args.size}x{args.size}, 2 steps, load {os.getloadavg()}")
    print("| precision | weight cache | RSS built GiB | peak after image 1 GiB | peak after image 2 GiB | "
          "image 1 s | image 2 s |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        for caching in args.caching:
            done = subprocess.run([sys.executable, __file__, "--child", precision, caching, "--size", str(args.size),
                                   "--controlnets", str(args.controlnets)], capture_output=True, text=True)
            if done.returncode:
                print(f"| {precision} | {caching} | failed: {done.stderr.strip().splitlines()[-1]} | | | | |")
                continue
            f = json.loads(done.stdout.strip().splitlines()[-1])
            first, second = f["images"]
            print(f"| {precision} | {caching} | {f['built_rss_gib']} | {first['peak_gib']} | {second['peak_gib']} | "
                  f"{first['seconds']} | {second['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
