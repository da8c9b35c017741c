"""kcv-sd and a peer, each in its own fresh process, their warm images interleaved.

The fresh-process rows run minutes apart, and on a shared machine the load
drifts in between: diffusers' bfloat16 image moved 2x from one benchmark to
the next here. Here both systems are built in their own processes (as in
their rows: in one try with both frameworks in one process, kcv-sd's
bfloat16 image was 10% slower and diffusers' 9% faster), each warmed up
with one image, and then asked for images in turn, in rounds whose order
flips every round (AB, BA, AB, ...), so that drift in the machine's load
lands on both alike. Only one of them works at
a time; the other waits on its input.
"""

import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.cold_worker import PROGRESS_PREFIX
from bench.served_worker import REPLY_PREFIX
from bench.stats import summarize
from bench.subprocess_run import worker_environment


class WorkerFailed(Exception):
    pass


class ServedWorker:
    """A `bench.served_worker` process; other output goes to `log`."""

    def __init__(self, spec, spec_path, log, echo):
        self.name = spec["system"]
        self.log, self.echo = log, echo
        spec_path.write_text(json.dumps(spec))
        self.process = subprocess.Popen([sys.executable, "-m", "bench.served_worker", str(spec_path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                        env=worker_environment())

    def answer(self):
        for line in self.process.stdout:
            self.log.write(line)
            if line.startswith(PROGRESS_PREFIX):
                self.echo(f"{self.name}: {line[len(PROGRESS_PREFIX):].rstrip()}")
            if line.startswith(REPLY_PREFIX):
                text = line[len(REPLY_PREFIX):].strip()
                if text.startswith("ERROR "):
                    raise WorkerFailed(f"{self.name}: {text[len('ERROR '):]}")
                return text
        raise WorkerFailed(f"{self.name} worker exited with code {self.process.wait()} without answering")

    def image(self, seed):
        self.process.stdin.write(f"{seed}\n")
        self.process.stdin.flush()
        return float(self.answer())

    def stop(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def round_orders(rounds):
    """Which system goes first in each round: (0, 1), (1, 0), (0, 1), ..."""
    return [(0, 1) if r % 2 == 0 else (1, 0) for r in range(rounds)]


def summarize_pair(times):
    """Each system's warm summary, each round's ratio (first / second system)
    and the ratio of the medians."""
    return {"warm": [summarize(t) for t in times],
            "round_ratios": [a / b for a, b in zip(*times)],
            "ratio": statistics.median(times[0]) / statistics.median(times[1])}


def run_interleaved(specs, rounds, log_path, echo, timeout_s):
    """Two cold-worker specs, built in turn, then `rounds` flipped-order rounds
    (round r asks both for seed r + 1); a failure gives a failed result."""
    result = {"status": "failed", "systems": [{"system": s["system"], "config": s["config"]} for s in specs],
              "rounds": rounds}
    workers = []
    with tempfile.TemporaryDirectory() as scratch, open(log_path, "a") as log:
        log.write(f"\n===== bench.interleaved {json.dumps(result['systems'])} =====\n")
        log.flush()
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            for worker in workers:
                worker.process.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            for index, spec in enumerate(specs):  # one at a time, so neither build slows the other
                workers.append(ServedWorker(spec, Path(scratch) / f"spec{index}.json", log, echo))
                workers[-1].answer()
                echo(f"{spec['system']} built and warmed up")
            times = [[], []]
            for r, order in enumerate(round_orders(rounds)):
                for index in order:
                    times[index].append(workers[index].image(r + 1))
                echo(f"round {r + 1}/{rounds}: " + ", ".join(f"{t[-1]:.2f} s" for t in times))
            result.update(summarize_pair(times), status="ok")
        except WorkerFailed as error:
            result["error"] = f"timed out after {timeout_s} s" if timed_out.is_set() else str(error)
            echo(f"failed: {result['error']}")
        finally:
            timer.cancel()
            for worker in workers:
                worker.stop()
    return result
