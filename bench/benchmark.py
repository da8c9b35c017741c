"""One benchmark: the machine probe, every planned run in a fresh worker, kcv-sd and its peers interleaved, then (if
asked) the ablation; and the software and hardware they ran on, recorded without importing the frameworks."""

import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shutil
import time

from bench.ablation import run_ablation
from bench.interleaved import run_interleaved_pairs
from bench.launch import graph_folder, run_worker
from bench.records import build_record, cold_parts, field, skipped_record

SCHEMA_VERSION = 7  # 2: ControlNet axis, peak memory, ablation; 3: interleaved pairs; 4: other load, images' RSS;
# 5: fresh memory rate; 6: the graph cache's state, cold starts with it filled; 7: the control embedding's stage
PACKAGES = ("tensorflow", "keras", "keras-cv", "numpy", "torch", "diffusers", "transformers", "openvino")
# Quoted in the project issue from the KerasCV Stable Diffusion benchmark (GPU, pretrained weights), shown beside ours
# and labelled as such; never measured here.
PUBLISHED = {"source": "published (quoted in the project issue), not measured here",
             "workload": {"images": 3, "steps": 50, "width": 512, "height": 512},
             "rows": [{"gpu": "Tesla T4", "kerascv_warm_s": 28.97, "diffusers_warm_s": 41.33,
                       "kerascv_cold_s": 83.47, "diffusers_cold_s": 46.27},
                      {"gpu": "Tesla V100", "kerascv_warm_s": 12.45, "diffusers_warm_s": 12.72,
                       "kerascv_cold_s": 76.43, "diffusers_cold_s": 13.90}]}


def package_versions():
    versions = dict.fromkeys(PACKAGES)
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib():
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return None


def load_average():
    """The machine's load around the whole run (each row and pair records its own other load)."""
    with contextlib.suppress(OSError):
        return [round(value, 2) for value in os.getloadavg()]
    return None


def _cold_start_again(run, record, workload_spec, token_ids, log_path, echo, timeout_s):
    """A kcv-sd row's cold start in one more fresh process, now that its first process wrote its graphs to the graph
    cache: what every later process of that configuration on this machine sees. Its first-call overhead is over its
    own second image: against another process's images it moved by seconds between runs (docs/latency_levers.md,
    section 29)."""
    echo(f"[graph cache filled] {run.label}: fresh process to the first image, then one more")
    raw = run_worker({**run.spec(workload_spec, token_ids), "one_warm_image": True}, log_path,
                     lambda line: echo(f"    {line}"), timeout_s)
    if raw.get("status") != "ok":
        record["notes"].append(f"cold start with the graph cache filled failed: {raw.get('error')}")
        return None
    return {**cold_parts(raw, raw["warm_s"][0]), "other_load_cores": raw.get("other_load_cores"),
            "fresh_memory_gib_s": raw.get("fresh_memory_gib_s")}


def run_benchmark(workload, runs, log_path, echo, timeout_s, command, ablation_precision=None):
    """Every run, the interleaved pairs, then (given `ablation_precision`) the ablation table: the report."""
    started, load_at_start = time.time(), load_average()
    if load_at_start and load_at_start[0] > 0.5:
        echo(f"note: load average {load_at_start[0]} at start: other work on this machine skews the timings")
    workload_spec = dataclasses.asdict(workload)
    shutil.rmtree(graph_folder(log_path), ignore_errors=True)
    echo("[probe] devices, matmul rates, FLOP count (fresh process)")
    probe = run_worker({"job": "probe", "workload": workload_spec}, log_path, echo, timeout_s)
    if probe["status"] != "ok":
        echo(f"[probe] failed: {probe['error']}; continuing without matmul yardstick")
    flops, token_ids = probe.get("unet_step_flops"), probe.get("token_ids")

    records = []
    for index, run in enumerate(runs, 1):
        prefix = f"[{index}/{len(runs)}] {run.label}"
        if run.skip_reason:
            echo(f"{prefix}: skipped ({run.skip_reason})")
            records.append(skipped_record(run))
            continue
        echo(f"{prefix}: fresh process")
        raw = run_worker(run.spec(workload_spec, token_ids), log_path, lambda line: echo(f"    {line}"),
                         timeout_s)
        records.append(build_record(run, raw, workload, flops, probe))
    for run, record in zip(runs, records):
        state = field(record, "cold", "graph_cache")
        if state and not state.startswith("filled"):  # its process wrote graphs
            record["cold_filled"] = _cold_start_again(run, record, workload_spec, token_ids, log_path, echo,
                                                      timeout_s)

    interleaved = run_interleaved_pairs(runs, records, workload_spec, token_ids, log_path, echo, timeout_s)
    ablation = None
    if ablation_precision is not None:
        ablation = run_ablation(workload_spec, ablation_precision, log_path, echo, timeout_s)
    environment = {"python": platform.python_version(), "platform": platform.platform(), "cpu_model": cpu_model(),
                   "cpu_count": os.cpu_count(), "memory_gib": memory_gib(), "versions": package_versions(),
                   "weights": "random", "devices": probe.get("devices"),
                   "load_average_1_5_15_min": {"start": load_at_start, "end": load_average()}}
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "started_at": datetime.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "runner_pid": os.getpid(),
        "workload": {**workload_spec, "weights": "random"},
        "environment": environment,
        "machine": {"matmul": probe.get("matmul"), "probe_error": probe.get("error")},
        "unet_step_flops": flops,
        "results": records,
        "interleaved": interleaved,
        "ablation": ablation,
        "published": PUBLISHED,
    }
