"""The one bench worker: a fresh Python process that runs one job and writes one record.

`python -m bench.worker SPEC_PATH RESULT_PATH SPAWNED_AT`, started by `bench.launch`; SPAWNED_AT is the parent's clock
just before the spawn, so interpreter start-up counts toward a cold start. `spec["job"]` is `cold` (below), `served`
(`bench.interleaved`), `ablation` or `probe`. Progress goes to stdout as `[bench] ` lines, a served session's answers
as `[bench-reply] ` lines, and the record, failed or not, to RESULT_PATH as JSON.
"""

import time

STARTED_AT = time.time()  # before any import this module makes

import importlib
import json
import os
import resource
import sys
import traceback

from bench.measure import timed, timed_into

PROGRESS, REPLY = "[bench] ", "[bench-reply] "
SYSTEMS = {"kcv-sd": "bench.system_kcv_sd", "kerascv": "bench.peer_kerascv", "diffusers": "bench.peer_diffusers",
           "openvino": "bench.peer_openvino"}
JOBS = {"served": "bench.interleaved", "ablation": "bench.ablation", "probe": "bench.probe"}  # each has `job`


def progress(message):
    print(PROGRESS + message, flush=True)


def reply(text):
    print(REPLY + text, flush=True)


def cold(spec, result):
    """One system: import, build, the first image (which ends the cold start), then warm images (with
    `one_warm_image`, one, which ends the job) and stage passes, phase by phase, so that a failure keeps what was
    measured. Peak memory is taken before the stage passes (what a user's images need; the passes compile functions
    a user never runs) and at the end either way."""
    result.update(pid=os.getpid(), spawned_at=spec["spawned_at"], started_at=STARTED_AT, notes=[], warm_s=[],
                  stages=[])
    repeats, runner = spec["workload"]["repeats"], None
    try:
        result["phase"] = "import"  # each adapter imports its frameworks at the top, so this times them
        adapter, result["import_s"] = timed(importlib.import_module, SYSTEMS[spec["system"]])
        progress(f"imported in {result['import_s']:.1f} s")
        result["phase"] = "build"
        runner, result["build_s"] = timed(adapter.Runner, spec)
        result.update(device=runner.device, notes=runner.notes)
        progress(f"built with random weights in {result['build_s']:.1f} s")
        result["phase"] = "first image"
        _, result["first_call_s"] = timed(runner.generate, 0)
        result["first_image_at"] = time.time()
        progress(f"first image in {result['first_call_s']:.1f} s "
                 f"(cold start {result['first_image_at'] - result['spawned_at']:.1f} s)")
        result["graph_sources"] = runner.graph_sources() if hasattr(runner, "graph_sources") else []
        result["phase"] = "warm runs"
        warm_runs = 1 if spec.get("one_warm_image") else repeats
        for i in range(warm_runs):
            timed_into(result["warm_s"], runner.generate, i + 1)
            progress(f"warm run {i + 1}/{warm_runs}: {result['warm_s'][-1]:.2f} s")
        result["peak_rss_images_bytes"] = peak_rss_bytes()
        if spec.get("one_warm_image"):
            result["phase"] = None
            return
        result["phase"] = "stage timing"
        for i in range(repeats):
            result["stages"].append(runner.stages(i + 1))
            progress(f"stage pass {i + 1}/{repeats} done")
        result["phase"] = None
    finally:
        result["peak_rss_bytes"] = peak_rss_bytes()
        if runner is not None:
            result["peak_device_bytes"] = runner.peak_device_bytes()


def peak_rss_bytes():
    """This process's peak resident memory so far: the kernel's high-water mark (VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def open_system(spec):
    """`spec["system"]`'s runner, built for `spec`."""
    return importlib.import_module(SYSTEMS[spec["system"]]).Runner(spec)


def main(spec_path, result_path, spawned_at):
    with open(spec_path) as source:
        spec = {**json.load(source), "spawned_at": spawned_at}
    result = {"status": "failed"}
    try:
        job = cold if spec["job"] == "cold" else importlib.import_module(JOBS[spec["job"]]).job
        job(spec, result)
        result["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - recorded, so the benchmark goes on with the next job
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=-8)
        traceback.print_exc()  # stderr: the benchmark's worker log
        progress(f"failed{' during ' + result['phase'] if result.get('phase') else ''}: {result['error']}")
    with open(result_path, "w") as out:
        json.dump(result, out)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
