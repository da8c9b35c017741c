"""One benchmark: the machine probe, then every planned run, each in a fresh
process, then kcv-sd and diffusers interleaved (`bench.interleaved`)."""

import dataclasses
import datetime
import os
import time

from bench import environment
from bench.interleaved import run_interleaved
from bench.published import published_table
from bench.records import build_record, skipped_record
from bench.subprocess_run import run_worker

MATMUL_SIZE = 2048
SCHEMA_VERSION = 3  # 2: ControlNet axis, peak memory, ablation; 3: interleaved pairs
# Peers that also run interleaved with kcv-sd: the one whose ratio to
# kcv-sd moved most between benchmarks here (`bench.interleaved`).
INTERLEAVED_PEERS = ("diffusers",)


def run_ablation(workload_spec, precision, log_path, echo, timeout_s):
    """The lever-by-lever table (`bench.ablation_worker`), in its own fresh process."""
    echo(f"[ablation] kcv-sd {precision}, one lever at a time (fresh process)")
    started = time.time()
    result = run_worker("bench.ablation_worker", {"workload": workload_spec, "precision": precision},
                        log_path, lambda line: echo(f"    {line}"), timeout_s)
    return {"precision": precision, **result, "duration_s": time.time() - started}


def interleaved_pairs(runs, records):
    """(kcv-sd run, peer run) per precision: kcv-sd's fastest plain row (warm
    median) beside each planned, unskipped peer in `INTERLEAVED_PEERS`."""
    pairs = []
    for peer in runs:
        if peer.system not in INTERLEAVED_PEERS or peer.skip_reason or peer.controlnet:
            continue
        ours = [(r["warm"]["median_s"], run) for run, r in zip(runs, records)
                if run.system == "kcv-sd" and run.precision == peer.precision and not run.controlnet
                and r["status"] == "ok" and r["warm"]]
        if ours:
            pairs.append((min(ours, key=lambda pair: pair[0])[1], peer))
    return pairs


def run_interleaved_pairs(runs, records, workload_spec, token_ids, log_path, echo, timeout_s):
    """Each pair of `interleaved_pairs`, twice `repeats` rounds (each system
    goes first in half of them)."""
    results = []
    for ours, peer in interleaved_pairs(runs, records):
        echo(f"[interleaved] {ours.label} and {peer.label}, each in a fresh process, images in turn")
        specs = [{"system": run.system, "config": {"xla": run.xla, "precision": run.precision, "controlnet": False},
                  "workload": workload_spec, "token_ids": token_ids} for run in (ours, peer)]
        started = time.time()
        result = run_interleaved(specs, 2 * workload_spec["repeats"], log_path, lambda line: echo(f"    {line}"),
                                 timeout_s)
        results.append({"precision": peer.precision, **result, "duration_s": time.time() - started})
    return results


def run_benchmark(workload, runs, log_path, echo, timeout_s, command, ablation_precision=None):
    """Every run, the interleaved pairs, then (given `ablation_precision`) the ablation table."""
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

    interleaved = run_interleaved_pairs(runs, records, workload_spec, probe.get("token_ids"), log_path, echo,
                                        timeout_s)
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
        "interleaved": interleaved,
        "ablation": ablation,
        "published": published_table(),
    }
