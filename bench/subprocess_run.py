"""Start a bench worker in a fresh Python process and collect its JSON result.

Every worker is run as `python -m MODULE SPEC_PATH RESULT_PATH SPAWNED_AT`.
Its `[bench] ` lines are echoed as progress; everything else it prints
(framework logs, progress bars) goes to a log file beside the results, whose
tail is kept when a worker dies without writing a result.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.cold_worker import PROGRESS_PREFIX

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def worker_environment():
    """This checkout first on the path, so workers import the code being measured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_worker(module, spec, log_path, echo, timeout_s):
    """The worker's result dict; a crash, a timeout or no result gives a failed one."""
    with tempfile.TemporaryDirectory() as scratch:
        spec_path, result_path = Path(scratch) / "spec.json", Path(scratch) / "result.json"
        spec_path.write_text(json.dumps(spec))
        with open(log_path, "a") as log:
            log.write(f"\n===== {module} {json.dumps(spec.get('config'))} =====\n")
            log.flush()
            timed_out = threading.Event()
            spawned_at = time.time()
            process = subprocess.Popen(
                [sys.executable, "-m", module, str(spec_path), str(result_path), repr(spawned_at)],
                stdout=subprocess.PIPE, stderr=log, text=True, env=worker_environment(),
            )

            def kill():
                timed_out.set()
                process.kill()

            timer = threading.Timer(timeout_s, kill)
            timer.start()
            try:
                for line in process.stdout:
                    if line.startswith(PROGRESS_PREFIX):
                        echo(line[len(PROGRESS_PREFIX):].rstrip())
                    log.write(line)
                returncode = process.wait()
            finally:
                timer.cancel()
        if result_path.exists():
            return json.loads(result_path.read_text())
        reason = f"timed out after {timeout_s} s" if timed_out.is_set() else f"exited with code {returncode}"
        return {"status": "failed", "error": f"worker {reason} without a result", "traceback": _tail(log_path)}
