"""UNet step FLOP/s against the machine's matmul, by latent size.

The FLOP-efficiency target of issue 6 is measured by `kcv-bench --quick` at
128x128 pixels (a 16x16 latent), where every matrix is small. This script
shows how the achieved fraction grows with the latent size: one process,
the SD1.5 UNet (random weights, float32, tf.function, no XLA) on the guided
batch of 2, each size warmed up and then timed `--reps` times (median),
beside the best of a 2048^2 float32 matmul measured in the same process.

    python tools/measure_unet_efficiency.py --sizes 16 32 64 --reps 3
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from bench.flops import unet_flops
from kcv_sd.components import FAMILIES, randomize
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.unet import UNet, timestep_embedding


def seconds(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sd15_unet(precision="float32"):
    """The SD1.5 UNet's functional model under `precision`, random weights."""
    config = FAMILIES["sd15"].unet
    with dtype_policy_scope(precision):
        unet = UNet(config, initializer="zeros")
        model = unet.model()
    randomize(unet.kerascv_layer_order(), 1)
    return config, model


def guided_inputs(config, side, rng):
    """The UNet's inputs for a guided step (batch 2) on a `side` x `side` latent."""
    return {"latent": tf.constant(rng.standard_normal((2, side, side, 4)), tf.float32),
            "timestep_embedding": timestep_embedding(np.array([999.0, 999.0]), config.timestep_dim),
            "context": tf.constant(rng.standard_normal((2, 77, config.context_dim)), tf.float32)}


def one_size_arguments(description, side, reps, more=()):
    """--precision, --side and --reps (and `more`: (flag, options) pairs) for the
    tools that study the SD1.5 UNet at one latent size; then that UNet and its
    guided inputs: (args, config, model, inputs)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--side", type=int, default=side, help="latent side")
    parser.add_argument("--reps", type=int, default=reps)
    for flag, options in more:
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    config, model = sd15_unet(args.precision)
    return args, config, model, guided_inputs(config, args.side, np.random.default_rng(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="latent sides")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    config, model = sd15_unet()
    forward = tf.function(lambda inputs: model(inputs))
    a = tf.random.normal((2048, 2048))
    matmul = 2 * 2048**3 / seconds(lambda: tf.matmul(a, a).numpy(), 5)
    print(f"float32 2048^2 matmul: {matmul / 1e9:.0f} GFLOP/s")
    print("| latent | pixels | UNet step s | GFLOP | GFLOP/s | % of matmul |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for side in args.sizes:
        inputs = guided_inputs(config, side, rng)
        step = seconds(lambda: forward(inputs).numpy(), args.reps)
        flops = unet_flops(config, side, side, batch=2, context_length=77)
        print(f"| {side}x{side} | {8 * side}x{8 * side} | {step:.2f} | {flops / 1e9:.0f} | "
              f"{flops / step / 1e9:.0f} | {100 * flops / step / matmul:.0f}% |")


if __name__ == "__main__":
    main()
