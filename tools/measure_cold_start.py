"""Cold start of `Pipeline(model="sd15", weights="random")`, phase by phase.

Each run is a fresh Python process (imports, model builds and traces are
all first-time work); variants alternate run by run so that machine load
hits them alike, and the report gives per-phase medians. A variant is a
source tree (the working tree, or a git revision extracted with
`git archive`) plus optional grappler options.

    python tools/measure_cold_start.py --runs 2 --against HEAD
    python tools/measure_cold_start.py --runs 2 --grappler '{"disable_meta_optimizer": true}'

Phases: `import` (import kcv_sd), `build_text`, `build_decoder`,
`build_unet` (layers and functional model), `fill_*` (the seeded random
fill), `pipeline_init`, `first_call` (128x128, 2 DDIM steps: traces the text
encoder, the step and the decoder, then runs them) and `warm_call` (the same
call again, median of 3); `trace_overhead` is first_call - warm_call.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALL = {"width": 128, "height": 128, "num_inference_steps": 2, "seed": 1, "output_type": "np"}


def worker(grappler):
    """One cold start in this process; prints its phase times as JSON."""
    start = time.perf_counter()
    import tensorflow as tf

    if grappler:
        tf.config.optimizer.set_experimental_options(grappler)
    import kcv_sd
    from kcv_sd import components

    times = {"import": time.perf_counter() - start}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = name(*args) if callable(name) else name
                times[key] = times.get(key, 0.0) + time.perf_counter() - began
        return wrapper

    parts = iter(("fill_text", "fill_unet", "fill_decoder"))
    components.build_text_encoder = timed("build_text", components.build_text_encoder)
    components.build_decoder = timed("build_decoder", components.build_decoder)
    components.UNet.model = timed("build_unet", components.UNet.model)
    components.fill_weights = timed(lambda *_: next(parts), components.fill_weights)
    began = time.perf_counter()
    loaded = components.load_components("sd15", "random")
    times["load_components"] = time.perf_counter() - began
    began = time.perf_counter()
    pipeline = kcv_sd.Pipeline(components=loaded)
    times["pipeline_init"] = time.perf_counter() - began
    for name in ("first_call", "warm_1", "warm_2", "warm_3"):
        began = time.perf_counter()
        pipeline("a cozy reading room", **CALL)
        times[name] = time.perf_counter() - began
    times["warm_call"] = statistics.median(times.pop(f"warm_{i}") for i in (1, 2, 3))
    times["trace_overhead"] = times["first_call"] - times["warm_call"]
    times["total_to_first_image"] = time.perf_counter() - start
    print("RESULT " + json.dumps(times))


def run_variant(source, grappler):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--grappler", json.dumps(grappler)]
    done = subprocess.run(command, cwd=source, env={**_env(), "PYTHONPATH": str(source)},
                          capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _env():
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def extract(revision, folder):
    """The packages as of `revision`, into `folder` (read-only git)."""
    archive = subprocess.run(["git", "archive", revision, "kcv_sd", "controlnet"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh processes per variant")
    parser.add_argument("--against", help="git revision to compare the working tree with")
    parser.add_argument("--grappler", default="", help="JSON grappler options for a second variant")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    grappler = json.loads(args.grappler) if args.grappler else {}
    if args.worker:
        return worker(grappler)

    with tempfile.TemporaryDirectory() as scratch:
        variants = {}
        if args.against:
            variants[args.against] = (extract(args.against, Path(scratch)), {})
        variants["working tree"] = (REPO, {})
        if grappler:
            variants[f"grappler {json.dumps(grappler)}"] = (REPO, grappler)
        results = {name: [] for name in variants}
        for run in range(args.runs):
            for name, (source, options) in variants.items():
                results[name].append(run_variant(source, options))
                print(f"run {run + 1} {name}: " + json.dumps({k: round(v, 2) for k, v in results[name][-1].items()}),
                      flush=True)
    phases = list(next(iter(results.values()))[0])
    names = list(results)
    print("\nmedians (s), " + " | ".join(names) + (" | ratio last/first" if len(names) > 1 else ""))
    for phase in phases:
        medians = [statistics.median(r[phase] for r in results[name]) for name in names]
        ratio = f"  {medians[-1] / medians[0]:.2f}" if len(names) > 1 and medians[0] > 0 else ""
        print(f"{phase:22s} " + "  ".join(f"{m:8.2f}" for m in medians) + ratio)


if __name__ == "__main__":
    main()
