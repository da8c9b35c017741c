"""One system in a fresh process, making warm images on request: half of an
interleaved pair (`bench.interleaved`).

Run as `python -m bench.served_worker SPEC_PATH` with the cold worker's spec
(`system`, `config`, `workload`, `token_ids`). It builds the system with the
cold worker's adapter, makes one warm-up image (seed 0: tracing and
compilation), and answers `READY`. Then every line on stdin is a seed: it
makes that image and answers with its seconds. End of input ends it. Answers
are stdout lines starting with `REPLY_PREFIX`; a failure is answered with
`ERROR <message>` before the worker exits.
"""

import importlib
import json
import sys
import traceback

from bench.cold_worker import ADAPTERS, timed

REPLY_PREFIX = "[bench-reply] "


def reply(text):
    print(REPLY_PREFIX + text, flush=True)


def serve(spec, requests):
    runner = importlib.import_module(ADAPTERS[spec["system"]]).Runner(spec)
    runner.generate(0)
    reply("READY")
    for line in requests:
        _, seconds = timed(runner.generate, int(line))
        reply(repr(seconds))


def main(spec_path):
    with open(spec_path) as source:
        spec = json.load(source)
    try:
        serve(spec, sys.stdin)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which records it
        traceback.print_exc()  # stderr: the benchmark's worker log
        reply(f"ERROR {type(error).__name__}: {error}".replace("\n", " "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
