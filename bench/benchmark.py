"""One benchmark: the machine probe, then every planned run, each in a fresh process."""

import dataclasses
import datetime
import os
import time

from bench import environment
from bench.published import published_table
from bench.records import build_record, skipped_record
from bench.subprocess_run import run_worker

MATMUL_SIZE = 2048
SCHEMA_VERSION = 2  # 2: ControlNet axis, peak memory, ablation


def run_ablation(workload_spec, precision, log_path, echo, timeout_s):
    """The lever-by-lever table (`bench.ablation_worker`), in its own fresh process."""
    echo(f"[ablation] kcv-sd {precision}, one lever at a time (fresh process)")
    started = time.time()
    result = run_worker("bench.ablation_worker", {"workload": workload_spec, "precision": precision},
                        log_path, lambda line: echo(f"    {line}"), timeout_s)
    return {"precision": precision, **result, "duration_s": time.time() - started}


def run_benchmark(workload, runs, log_path, echo, timeout_s, command, ablation_precision=None):
    """Every run, then (given `ablation_precision`) the ablation table."""
    started = time.time()
    load_at_start = environment.load_average()
    if load_at_start and load_at_start[0] > 0.5:
        echo(f"note: load average {load_at_start[0]} at start: other work on this machine skews the timings")
    workload_spec = dataclasses.asdict(workload)
    echo(f"[probe] devices, {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul, FLOP count (fresh process)")
    probe = run_worker("bench.probe_worker", {**workload_spec, "matmul_size": MATMUL_SIZE},
                       log_path, echo, timeout_s)
    if probe["status"] != "ok":
        echo(f"[probe] failed: {probe['error']}; continuing without matmul yardstick")
    flops = probe.get("unet_step_flops")

    records = []
    for index, run in enumerate(runs, 1):
        prefix = f"[{index}/{len(runs)}] {run.label}"
        if run.skip_reason:
            echo(f"{prefix}: skipped ({run.skip_reason})")
            records.append(skipped_record(run))
            continue
        load = environment.load_average()
        echo(f"{prefix}: fresh process (load average {load[0] if load else '?'})")
        spec = {"system": run.system,
                "config": {"xla": run.xla, "precision": run.precision, "controlnet": run.controlnet},
                "workload": workload_spec, "token_ids": probe.get("token_ids")}
        raw = run_worker("bench.cold_worker", spec, log_path, lambda line: echo(f"    {line}"), timeout_s)
        record = build_record(run, raw, workload, flops, probe)
        record["load_average_at_start"] = load
        records.append(record)

    ablation = None
    if ablation_precision is not None:
        ablation = run_ablation(workload_spec, ablation_precision, log_path, echo, timeout_s)

    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "started_at": datetime.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "runner_pid": os.getpid(),
        "workload": {**workload_spec, "weights": "random"},
        "environment": {**environment.describe(), "devices": probe.get("devices"),
                        "load_average_1_5_15_min": {"start": load_at_start, "end": environment.load_average()}},
        "machine": {"matmul": probe.get("matmul"), "probe_error": probe.get("error")},
        "unet_step_flops": flops,
        "results": records,
        "ablation": ablation,
        "published": published_table(),
    }
