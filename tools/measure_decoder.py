"""The SD1.5 VAE decoder's wall time: Keras' GroupNormalization vs `GroupNorm`, float32 vs 16 bits.

First one GroupNorm layer alone on the decoder's largest maps, Keras' layer
against `kcv_sd.group_norm.GroupNorm` (same weights), with each one's largest
error against float64. Then the whole decoder (random weights) on a latent
of `--side` (16: a 128x128 image), in float32 with either normalization, and
with every layer in 16 bits (the "bfloat16" / "float16" pipeline precision).
Medians of `--reps` calls after a warm-up, each in its own `tf.function`.

    python tools/measure_decoder.py --side 16 --reps 5
"""

import argparse
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from kcv_sd.components import randomize, zero_initialized
from kcv_sd.group_norm import GroupNorm
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.vae import SD15_VAE, build_decoder
from kcv_sd.weights import weighted_layers
from measure_unet_efficiency import seconds  # tools/ is on the path when run as a script

NORM_SHAPES = [(1, 128, 128, 256), (1, 64, 64, 512), (1, 32, 32, 512), (2, 64, 64, 320)]


def float64_error(layer, x):
    x64 = x.astype(np.float64)
    grouped = x64.reshape(x.shape[0], -1, layer.groups, x.shape[-1] // layer.groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    exact = ((grouped - mean) / np.sqrt(grouped.var(axis=(1, 3), keepdims=True) + layer.epsilon))
    exact = exact.reshape(x.shape) * layer.gamma.numpy() + layer.beta.numpy()
    return float(np.abs(layer(x).numpy() - exact).max())


def measure_norms(reps):
    print("| map | Keras ms | GroupNorm ms | ratio | Keras error | GroupNorm error |\n|---|---|---|---|---|---|")
    for shape in NORM_SHAPES:
        x = np.random.default_rng(0).normal(2.0, 3.0, shape).astype("float32")
        row = []
        for kind in (keras.layers.GroupNormalization, GroupNorm):
            layer = kind(groups=32, epsilon=1e-5)
            layer.build(shape)
            layer.gamma.assign(np.random.default_rng(1).normal(size=shape[-1]).astype("float32"))
            call = tf.function(layer.__call__, autograph=False)
            row.append((seconds(lambda: call(x).numpy(), reps) * 1e3, float64_error(layer, x)))
        (keras_ms, keras_error), (ours_ms, ours_error) = row
        print(f"| {shape} | {keras_ms:.1f} | {ours_ms:.1f} | {ours_ms / keras_ms:.2f}x "
              f"| {keras_error:.1e} | {ours_error:.1e} |")


def decoder_seconds(policy, keras_norm, side, reps):
    with dtype_policy_scope(policy), zero_initialized():
        decoder = build_decoder(SD15_VAE)
    randomize(weighted_layers(decoder), 0)
    if keras_norm:
        for layer in decoder._flatten_layers():
            if type(layer) is GroupNorm:
                layer.__class__ = keras.layers.GroupNormalization
    latent = tf.random.normal((1, side, side, 4), seed=0)
    decode = tf.function(lambda x: tf.cast(decoder(x), tf.float32), autograph=False)
    return seconds(lambda: decode(latent).numpy(), reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16, help="latent side (image side / 8)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    measure_norms(args.reps)
    print(f"\n| decoder, {args.side * 8}x{args.side * 8} image | s |\n|---|---|")
    for label, policy, keras_norm in (("float32, Keras GroupNormalization", "float32", True),
                                      ("float32, GroupNorm", "float32", False),
                                      ("bfloat16, GroupNorm", "bfloat16", False),
                                      ("float16, GroupNorm", "float16", False)):
        print(f"| {label} | {decoder_seconds(policy, keras_norm, args.side, args.reps):.3f} |")


if __name__ == "__main__":
    main()
