"""The parent side of the worker protocol (`bench.worker`): start a worker on a spec, echo its progress, answer its
session, read its record. All else a worker prints (framework logs, tracebacks) goes to the benchmark's log, whose
tail stands in for the record when a worker dies or times out without writing one. `other_load` tells what other
processes ran meanwhile."""

import contextlib
import json
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.worker import PROGRESS, REPLY

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
GRAPH_CACHE_VARIABLE = "KCV_SD_GRAPH_CACHE"  # kcv_sd.cache's, named here so that this process needs no Keras


class WorkerFailed(Exception):
    pass


def graph_folder(log_path):
    """kcv-sd's graph cache (`kcv_sd.graph_cache`) for every worker of one benchmark: beside the worker log, emptied
    when the benchmark starts, so that each configuration's first process finds no graphs of its own."""
    return Path(log_path).parent / "graphs"


class Worker:
    """One worker process on `spec`, appending to the open `log`, killed after `timeout_s`."""

    def __init__(self, spec, log, echo, timeout_s, module="bench.worker"):
        self.name, self.log, self.echo, self.timeout_s = spec.get("system", spec.get("job")), log, echo, timeout_s
        self.scratch = tempfile.TemporaryDirectory()
        spec_path, self.result_path = (Path(self.scratch.name) / name for name in ("spec.json", "result.json"))
        spec_path.write_text(json.dumps(spec))
        log.write(f"\n===== {module} {spec.get('job')} {self.name} {json.dumps(spec.get('config'))} =====\n")
        log.flush()
        # This checkout first on the path, so workers import the code being measured.
        path = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")]))
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ, "PYTHONPATH": path,
               GRAPH_CACHE_VARIABLE: str(graph_folder(log.name))}
        self.timed_out, self.record = False, None
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, str(spec_path), str(self.result_path), repr(time.time())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.timer = threading.Timer(timeout_s, self._kill)
        self.timer.start()

    def _kill(self):
        self.timed_out = True
        self.process.kill()

    def _next_reply(self):
        """The next answer's text (None at the end of output); progress is echoed, every line logged."""
        for line in self.process.stdout:
            self.log.write(line)
            if line.startswith(PROGRESS):
                self.echo(line[len(PROGRESS):].rstrip())
            elif line.startswith(REPLY):
                return line[len(REPLY):].strip()
        return None

    def ask(self, request=None):
        """Sends `request` (if any) as one line and returns the answer; WorkerFailed if the worker ends first."""
        if request is not None:
            with contextlib.suppress(BrokenPipeError):  # it has ended: its record says why
                self.process.stdin.write(f"{request}\n")
                self.process.stdin.flush()
        answer = self._next_reply()
        if answer is None:
            raise WorkerFailed(f"{self.name}: {self.finish()['error']}")
        return answer

    def finish(self):
        """Ends the worker's input, waits for it and returns its record (a failed one if none).
        Calling it again returns the same record."""
        if self.record is not None:
            return self.record
        try:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
            while self._next_reply() is not None:
                pass
            returncode = self.process.wait()
        finally:
            self.timer.cancel()
        if self.result_path.exists():
            self.record = json.loads(self.result_path.read_text())
        else:
            self.log.flush()
            reason = f"timed out after {self.timeout_s} s" if self.timed_out else f"exited with code {returncode}"
            tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-20:])
            self.record = {"status": "failed", "error": f"worker {reason} without a result", "traceback": tail}
        self.scratch.cleanup()
        return self.record


def cpu_snapshot():
    """(wall clock, the machine's busy CPU seconds, ours): busy from /proc/stat (None without it); ours is this
    process's CPU time and that of every descendant it (or they) reaped, workers' own children included."""
    usages = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    ours = sum(u.ru_utime + u.ru_stime for u in usages)
    try:
        with open("/proc/stat") as stat:  # "cpu user nice system idle iowait irq softirq steal ...", in clock ticks
            ticks = [int(n) for n in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return time.monotonic(), None, ours
    return time.monotonic(), (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), ours


def other_load(start):
    """Cores that other processes kept busy since `start` (a `cpu_snapshot`), on average: the machine's busy time less
    ours, per wall second; None without /proc/stat. A worker's time counts as ours once reaped: call it after."""
    now, busy, ours = cpu_snapshot()
    if busy is None or start[1] is None:
        return None
    return round(max(0.0, (busy - start[1] - (ours - start[2])) / (now - start[0])), 2)


def fresh_memory_rate(size=256 * 2**20):
    """GiB/s at which this machine hands out memory never touched before: one byte written per page of a new
    anonymous mapping. A cold start allocates gigabytes, and a virtual machine whose host backs its pages lazily can
    slow first touches alone, leaving warm work at its usual speed (docs/latency_levers.md, section 16)."""
    with mmap.mmap(-1, size) as pages:
        start = time.perf_counter()
        pages[::mmap.PAGESIZE] = b"\1" * (size // mmap.PAGESIZE)
        return round(size / 2**30 / (time.perf_counter() - start), 3)


def device_kind_in_a_child():
    """`kcv_sd.devices.device_kind()` ("cpu", "gpu" or "tpu") asked in a fresh process: the bench's own process
    stays without TensorFlow."""
    asked = subprocess.run([sys.executable, "-c", "from kcv_sd.devices import device_kind; print(device_kind())"],
                           capture_output=True, text=True, check=True)
    return asked.stdout.split()[-1]


def run_worker(spec, log_path, echo, timeout_s, module="bench.worker"):
    """One job, run to its end in a fresh worker: its record, with the other load while it ran and the slower of the
    `fresh_memory_rate`s just before and just after it (outside its timings; the rate can change within minutes)."""
    before = fresh_memory_rate()
    start = cpu_snapshot()
    with open(log_path, "a") as log:
        record = Worker(spec, log, echo, timeout_s, module).finish()
    return {**record, "other_load_cores": other_load(start), "fresh_memory_gib_s": min(before, fresh_memory_rate())}
