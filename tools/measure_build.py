"""Two construction levers in one process, variants alternating:

- the SD1.5 text encoder and decoder built with and without
  `kcv_sd.components.zero_initialized` (TensorFlow's random init skipped);
- the random fill's draw: float64 `uniform` cast to float32 (the old
  `randomize`), float32 `random` scaled in place (the current one), and
  float32 `standard_normal`, on 231 M weights of UNet-like shapes.

    python tools/measure_build.py --reps 3
"""

import argparse
import contextlib
import gc
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from kcv_sd.components import FAMILIES, zero_initialized
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.text_encoder import build_text_encoder
from kcv_sd.vae import build_decoder

SHAPES = [(3, 3, 320, 320)] * 20 + [(1280, 1280)] * 40 + [(3, 3, 1280, 1280)] * 10
LIMIT = np.float32(0.05)


def float64_cast(rng, shape):
    return rng.uniform(-LIMIT, LIMIT, shape).astype(np.float32)


def float32_scaled(rng, shape):
    value = rng.random(shape, dtype=np.float32)
    value *= 2 * LIMIT
    value -= LIMIT
    return value


def float32_normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def report(times):
    for name, values in times.items():
        print(f"{name:32s} median {statistics.median(values):6.2f} s  runs " + " ".join(f"{v:.2f}" for v in values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    family = FAMILIES["sd15"]
    builds = {"text encoder": lambda: build_text_encoder(family.text),
              "decoder": lambda: build_decoder(family.vae)}
    scopes = {"keras init": contextlib.nullcontext, "zero_initialized": zero_initialized}
    times = {}
    for _ in range(args.reps):
        for scope_name, scope in scopes.items():
            for build_name, build in builds.items():
                gc.collect()
                with dtype_policy_scope("float32"), scope():
                    began = time.perf_counter()
                    model = build()
                    times.setdefault(f"{build_name}, {scope_name}", []).append(time.perf_counter() - began)
                del model
    report(times)

    times = {}
    for rep in range(args.reps):
        for draw in (float64_cast, float32_scaled, float32_normal):
            rng = np.random.default_rng(rep)
            began = time.perf_counter()
            values = [draw(rng, shape) for shape in SHAPES]
            times.setdefault(f"fill: {draw.__name__}", []).append(time.perf_counter() - began)
            del values
    report(times)


if __name__ == "__main__":
    main()
