"""One benchmark: the machine probe, then every planned run, each in a fresh
worker, then kcv-sd and diffusers interleaved, then (if asked) the ablation."""

import dataclasses
import datetime
import os
import time

from bench import environment
from bench.ablation import run_ablation
from bench.interleaved import run_interleaved_pairs
from bench.launch import run_worker
from bench.records import build_record, skipped_record

MATMUL_SIZE = 2048
SCHEMA_VERSION = 3  # 2: ControlNet axis, peak memory, ablation; 3: interleaved pairs
# Quoted in the project issue from the KerasCV Stable Diffusion benchmark (GPU,
# pretrained weights), shown beside ours and labelled as such; never measured here.
PUBLISHED = {"source": "published (quoted in the project issue), not measured here",
             "workload": {"images": 3, "steps": 50, "width": 512, "height": 512},
             "rows": [{"gpu": "Tesla T4", "kerascv_warm_s": 28.97, "diffusers_warm_s": 41.33,
                       "kerascv_cold_s": 83.47, "diffusers_cold_s": 46.27},
                      {"gpu": "Tesla V100", "kerascv_warm_s": 12.45, "diffusers_warm_s": 12.72,
                       "kerascv_cold_s": 76.43, "diffusers_cold_s": 13.90}]}


def run_benchmark(workload, runs, log_path, echo, timeout_s, command, ablation_precision=None):
    """Every run, the interleaved pairs, then (given `ablation_precision`) the ablation table: the report."""
    started = time.time()
    load_at_start = environment.load_average()
    if load_at_start and load_at_start[0] > 0.5:
        echo(f"note: load average {load_at_start[0]} at start: other work on this machine skews the timings")
    workload_spec = dataclasses.asdict(workload)
    echo(f"[probe] devices, {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul, FLOP count (fresh process)")
    probe = run_worker({"job": "probe", "workload": workload_spec, "matmul_size": MATMUL_SIZE}, log_path, echo,
                       timeout_s)
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
        load = environment.load_average()
        echo(f"{prefix}: fresh process (load average {load[0] if load else '?'})")
        raw = run_worker(run.spec("cold", workload_spec, token_ids), log_path, lambda line: echo(f"    {line}"),
                         timeout_s)
        records.append({**build_record(run, raw, workload, flops, probe), "load_average_at_start": load})

    interleaved = run_interleaved_pairs(runs, records, workload_spec, token_ids, log_path, echo, timeout_s)
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
        "published": PUBLISHED,
    }
