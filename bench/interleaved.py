"""kcv-sd and a peer, each in its own fresh worker, taking turns image by image.

The fresh-process rows run minutes apart, and a shared machine's load drifts in between. So kcv-sd's fastest plain row
in each precision and the peer are built again, each in its own process, warmed up with one image, and asked for
images in rounds whose order flips every round (AB, BA, ...): drift lands on both alike.
"""

import statistics
import sys
import time

from bench.launch import Worker, WorkerFailed, cpu_snapshot, other_load
from bench.records import summarize

# diffusers: its ratio to kcv-sd moved most between benchmarks here; OpenVINO: issue 19's target is against it.
INTERLEAVED_PEERS = ("diffusers", "openvino")


def interleaved_pairs(runs, records):
    """(kcv-sd run, peer run) per precision: kcv-sd's fastest plain ok row (warm median) beside each planned,
    unskipped plain peer in `INTERLEAVED_PEERS`."""
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
    """Each of `interleaved_pairs`, in twice `repeats` rounds (each system goes first in half)."""
    results = []
    for ours, peer in interleaved_pairs(runs, records):
        echo(f"[interleaved] {ours.label} and {peer.label}, each in a fresh process, images in turn")
        specs = [run.spec(workload_spec, token_ids) for run in (ours, peer)]
        started = time.time()
        result = run_interleaved(specs, 2 * workload_spec["repeats"], log_path, lambda line: echo(f"    {line}"),
                                 timeout_s)
        results.append({"precision": peer.precision, **result, "duration_s": time.time() - started})
    return results


def round_orders(rounds):
    """Which system goes first in each round: (0, 1), (1, 0), (0, 1), ..."""
    return [(0, 1) if r % 2 == 0 else (1, 0) for r in range(rounds)]


def summarize_pair(times):
    """Each system's warm summary, each round's ratio (first / second system) and the ratio of the medians."""
    return {"warm": [summarize(t) for t in times], "round_ratios": [a / b for a, b in zip(*times)],
            "ratio": statistics.median(times[0]) / statistics.median(times[1])}


def run_interleaved(specs, rounds, log_path, echo, timeout_s):
    """Two system specs, built one after the other so that neither build slows the other, then `rounds`
    flipped-order rounds (round r asks both for seed r + 1); a failure gives a failed result. The other load
    covers the pair's whole life."""
    result = {"status": "failed", "systems": [{"system": s["system"], "config": s["config"]} for s in specs],
              "rounds": rounds}
    workers, start = [], cpu_snapshot()
    with open(log_path, "a") as log:
        try:
            for spec in specs:
                workers.append(Worker({**spec, "job": "served"}, log,
                                      lambda line, name=spec["system"]: echo(f"{name}: {line}"), timeout_s))
                workers[-1].ask()  # READY
                echo(f"{spec['system']} built and warmed up")
            times = [[], []]
            for r, order in enumerate(round_orders(rounds)):
                for index in order:
                    times[index].append(float(workers[index].ask(r + 1)))
                echo(f"round {r + 1}/{rounds}: " + ", ".join(f"{t[-1]:.2f} s" for t in times))
            result.update(summarize_pair(times), status="ok")
        except WorkerFailed as error:
            result["error"] = str(error)
            echo(f"failed: {result['error']}")
        finally:
            for worker in workers:
                worker.finish()
    return {**result, "other_load_cores": other_load(start)}


def job(spec, result):
    """The worker side: build, warm up with seed 0, answer READY, then answer each seed read from stdin with its
    image's seconds, until end of input."""
    from bench.measure import timed
    from bench.worker import open_system, reply

    runner = open_system(spec)
    runner.generate(0)
    reply("READY")
    for line in sys.stdin:
        reply(repr(timed(runner.generate, int(line))[1]))
