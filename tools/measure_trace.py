"""First-call (trace) and warm cost of the SD1.5 UNet under grappler settings.

Grappler options are global and read when a tf.function is first run, so
one process builds the UNet once (random weights) and, per repetition and
setting in turn, wraps it in a fresh tf.function: its first call traces,
optimises and runs the graph, later calls only run it. Reports medians per
setting and the ratio to TensorFlow's defaults.

    python tools/measure_trace.py --reps 3
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from kcv_sd.components import FAMILIES, randomize
from kcv_sd.unet import UNet, timestep_embedding

SETTINGS = {
    "defaults": {},
    "grappler off": {"disable_meta_optimizer": True},
    "no constant folding": {"constant_folding": False},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latent", type=int, default=16, help="latent side (16 = 128x128 pixels)")
    args = parser.parse_args()
    config = FAMILIES["sd15"].unet
    unet = UNet(config, initializer="zeros")
    model = unet.model()
    randomize(unet.kerascv_layer_order(), 1)
    rng = np.random.default_rng(0)
    inputs = {
        "latent": tf.constant(rng.standard_normal((2, args.latent, args.latent, 4)), tf.float32),
        "timestep_embedding": timestep_embedding(np.array([999.0, 999.0]), config.timestep_dim),
        "context": tf.constant(rng.standard_normal((2, 77, config.context_dim)), tf.float32),
    }
    defaults = tf.config.optimizer.get_experimental_options()
    first = {name: [] for name in SETTINGS}
    warm = {name: [] for name in SETTINGS}
    for _ in range(args.reps):
        for name, options in SETTINGS.items():
            tf.config.optimizer.set_experimental_options({**defaults, **options})
            step = tf.function(lambda x: model(x))
            began = time.perf_counter()
            step(inputs).numpy()
            first[name].append(time.perf_counter() - began)
            runs = []
            for _ in range(3):
                began = time.perf_counter()
                step(inputs).numpy()
                runs.append(time.perf_counter() - began)
            warm[name].append(statistics.median(runs))
            print(name, json.dumps({"first": round(first[name][-1], 2), "warm": round(warm[name][-1], 3)}),
                  flush=True)
    base_first, base_warm = statistics.median(first["defaults"]), statistics.median(warm["defaults"])
    print("\nmedians: setting, first call s (ratio), warm call s (ratio)")
    for name in SETTINGS:
        f, w = statistics.median(first[name]), statistics.median(warm[name])
        print(f"{name:20s} {f:7.2f} ({f / base_first:4.2f})  {w:7.3f} ({w / base_warm:4.2f})")


if __name__ == "__main__":
    main()
