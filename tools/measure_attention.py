"""The UNet's `Attention` layer against two other formulations, on SD1.5 shapes.

Variants, all with the same weights and softmax in float32:
  current    `kcv_sd.unet_blocks.Attention`: heads split by transposes, K
             transposed explicitly, two batched matmuls.
  keras_dpa  `keras.ops.dot_product_attention` on (B, T, heads, D) tensors
             (TensorFlow backend: two einsums, no explicit transposes).
  matmul_tb  as current, but `tf.linalg.matmul(q, k, transpose_b=True)`
             instead of transposing K.

Every (shape, precision, compile mode) runs the variants alternately in one
process, `--reps` times, and reports each variant's median time and its
ratio to `current`, plus the largest absolute difference from `current`.

    python tools/measure_attention.py --reps 7
"""

import argparse
import itertools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from keras import ops

from kcv_sd.precision import dtype_policy_scope
from kcv_sd.unet_blocks import Attention

HEADS, CHANNELS, CONTEXT = 8, 320, (77, 768)


class KerasDotProductAttention(Attention):
    def call(self, inputs, context=None):
        context = inputs if context is None else context
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]

        def heads(x):
            return ops.reshape(x, (batch, -1, self.num_heads, self.head_size))

        attended = ops.dot_product_attention(
            heads(self.to_q(inputs)), heads(self.to_k(context)), heads(self.to_v(context)),
            scale=self.head_size ** -0.5)
        return self.out_proj(ops.reshape(attended, (batch, length, self.num_heads * self.head_size)))


class TransposeBAttention(Attention):
    def call(self, inputs, context=None):
        context = inputs if context is None else context
        q = self._split_heads(self.to_q(inputs))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        scores = tf.linalg.matmul(q, k, transpose_b=True) * (self.head_size ** -0.5)
        weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)
        attended = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
        batch, length = ops.shape(attended)[0], ops.shape(attended)[1]
        return self.out_proj(ops.reshape(attended, (batch, length, self.num_heads * self.head_size)))


VARIANTS = {"current": Attention, "keras_dpa": KerasDotProductAttention, "matmul_tb": TransposeBAttention}


def build(precision, cross, seed=0):
    """One layer per variant, sharing random weights."""
    rng = np.random.default_rng(seed)
    context_shape = (None, None, CONTEXT[1] if cross else CHANNELS)
    layers = {}
    with dtype_policy_scope(precision):
        for name, kind in VARIANTS.items():
            layer = kind(HEADS, CHANNELS // HEADS, "zeros")
            layer.build((None, None, CHANNELS), context_shape if cross else None)
            layers[name] = layer
    values = [rng.uniform(-0.1, 0.1, v.shape).astype("float32") for v in layers["current"].weights]
    for layer in layers.values():
        for variable, value in zip(layer.weights, values):
            variable.assign(value)
    return layers


def measure(length, cross, precision, jit, reps):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((2, length, CHANNELS)), tf.float32)
    context = tf.constant(rng.standard_normal((2,) + CONTEXT), tf.float32) if cross else None
    layers = build(precision, cross)
    functions = {name: tf.function(lambda x, c, layer=layer: tf.cast(layer(x, c), tf.float32),
                                   jit_compile=jit) for name, layer in layers.items()}
    outputs = {name: fn(x, context).numpy() for name, fn in functions.items()}  # traces
    times = {name: [] for name in functions}
    for _ in range(reps):
        for name, fn in functions.items():
            began = time.perf_counter()
            fn(x, context).numpy()
            times[name].append(time.perf_counter() - began)
    base = statistics.median(times["current"])
    label = f"T={length:5d} {'cross' if cross else 'self '} {precision:15s} {'xla  ' if jit else 'graph'}"
    cells = []
    for name in functions:
        median = statistics.median(times[name])
        diff = np.abs(outputs[name] - outputs["current"]).max()
        cells.append(f"{name} {median * 1e3:8.1f} ms x{median / base:4.2f} d={diff:.1e}")
    print(label + " | " + " | ".join(cells), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--lengths", default="256,1024,4096",
                        help="query lengths: 16x16, 32x32, 64x64 latents")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    args = parser.parse_args()
    lengths = [int(v) for v in args.lengths.split(",")]
    for precision, jit, length, cross in itertools.product(
            args.precisions.split(","), (False, True), lengths, (False, True)):
        measure(length, cross, precision, jit, args.reps)


if __name__ == "__main__":
    main()
