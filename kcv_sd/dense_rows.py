"""A Keras Dense layer's product on tokens, as one MatMul on a matrix of rows.

Keras' Dense takes inputs of rank 3 through tensordot, about twenty graph ops
around the same MatMul, and graph ops are what tracing and Grappler spend a
first call on (docs/latency_levers.md, section 19). The UNet's attention and
feed-forward layers and the CLIP text encoder's layers use these instead,
with the same weights and the same results.
"""

import tensorflow as tf
from keras import ops


def product(dense, x):
    """`dense`'s product on the last axis of `x` (its bias apart), as a matrix of rows (tokens, units)."""
    return tf.matmul(tf.reshape(tf.cast(x, dense.compute_dtype), (-1, x.shape[-1])), dense.kernel)


def dense_tokens(dense, x):
    """`dense(x)` for tokens `x` (batch, length, features): Keras' ops, its bias added after the reshape back."""
    shape = (-1, x.shape[1], dense.units) if x.shape[1] is not None else (tf.shape(x)[0], -1, dense.units)
    y = tf.reshape(product(dense, x), shape)
    return tf.nn.bias_add(y, ops.cast(dense.bias, y.dtype)) if dense.use_bias else y
