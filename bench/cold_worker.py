"""One system, one configuration, in a fresh process: cold start, then warm runs.

Run as `python -m bench.cold_worker SPEC_PATH RESULT_PATH SPAWNED_AT`, where
SPAWNED_AT is the parent's `time.time()` just before it started this process,
so interpreter start-up counts toward the cold start. The first image is the
warm-up: it is reported as the cold start and left out of the warm runs.
Progress goes to stdout as `[bench] ...` lines; figures go to RESULT_PATH,
with the process's peak resident memory (and the runner's peak device
memory, on a GPU) taken at the end, whether or not the run succeeded.
"""

import time

STARTED_AT = time.time()  # before any import this module makes

import importlib
import json
import os
import resource
import sys
import traceback

PROGRESS_PREFIX = "[bench] "

ADAPTERS = {
    "kcv-sd": "bench.system_kcv_sd",
    "kerascv": "bench.peer_kerascv",
    "diffusers": "bench.peer_diffusers",
}


def progress(message):
    print(PROGRESS_PREFIX + message, flush=True)


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def measure(spec, result):
    """Fills `result` phase by phase, so a failure keeps what was measured."""
    repeats = spec["workload"]["repeats"]
    result["phase"] = "import"
    # Each adapter imports its frameworks at the top, so this times them.
    adapter, result["import_s"] = timed(importlib.import_module, ADAPTERS[spec["system"]])
    progress(f"imported in {result['import_s']:.1f} s")

    result["phase"] = "build"
    runner, result["build_s"] = timed(adapter.Runner, spec)
    result["device"] = runner.device
    result["notes"] += runner.notes
    progress(f"built with random weights in {result['build_s']:.1f} s")

    result["phase"] = "first image"
    _, result["first_call_s"] = timed(runner.generate, 0)
    result["first_image_at"] = time.time()
    progress(f"first image in {result['first_call_s']:.1f} s "
             f"(cold start {result['first_image_at'] - result['spawned_at']:.1f} s)")

    result["phase"] = "warm runs"
    for i in range(repeats):
        _, seconds = timed(runner.generate, i + 1)
        result["warm_s"].append(seconds)
        progress(f"warm run {i + 1}/{repeats}: {seconds:.2f} s")

    result["phase"] = "stage timing"
    for i in range(repeats):
        result["stages"].append(runner.stages(i + 1))
        progress(f"stage pass {i + 1}/{repeats} done")
    result["phase"] = None
    result["status"] = "ok"
    return runner


def record_memory(result, runner):
    # ru_maxrss is in KiB on Linux.
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if runner is not None:
        result["peak_device_bytes"] = runner.peak_device_bytes()


def main(spec_path, result_path, spawned_at):
    with open(spec_path) as source:
        spec = json.load(source)
    result = {"status": "failed", "pid": os.getpid(), "spawned_at": spawned_at,
              "started_at": STARTED_AT, "notes": [], "warm_s": [], "stages": []}
    runner = None
    try:
        runner = measure(spec, result)
    except Exception as error:  # noqa: BLE001 - recorded, so the run goes on with the next configuration
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=-8)
        progress(f"failed during {result['phase']}: {result['error']}")
    record_memory(result, runner)
    with open(result_path, "w") as out:
        json.dump(result, out)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
