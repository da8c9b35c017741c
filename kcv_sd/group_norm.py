"""Group normalization from per-channel moments: Keras' layer, faster and closer to float64.

Keras' `GroupNormalization` reduces a (batch, ..., groups, channels/group)
view over non-adjacent axes and takes the variance as E[x^2] - E[x]^2.
Here the centred moments of each channel (one reduction over the rows) are
combined per group by the law of total variance: fewer passes over the
largest maps, and an error against float64 at float32 rounding
(`tests/test_group_norm.py`; timings in docs/latency_levers.md, section 7).
Same weights and configuration as Keras' layer.
"""

import keras
import tensorflow as tf


class GroupNorm(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` for channels-last inputs, statistics in float32."""

    def build(self, input_shape):
        if self.axis not in (-1, len(input_shape) - 1):
            raise ValueError(f"GroupNorm normalises the last axis only, got axis={self.axis}.")
        super().build(input_shape)

    def call(self, inputs):
        channels = inputs.shape[-1]
        grouped = (self.groups, channels // self.groups)
        shape = tf.shape(inputs)
        rows = tf.reshape(tf.cast(inputs, tf.float32), (shape[0], -1, channels))
        channel_mean, channel_variance = tf.nn.moments(rows, axes=[1])
        channel_mean = tf.reshape(channel_mean, (-1, *grouped))
        mean = tf.reduce_mean(channel_mean, -1, keepdims=True)
        variance = tf.reduce_mean(tf.reshape(channel_variance, (-1, *grouped))
                                  + tf.math.squared_difference(channel_mean, mean), -1, keepdims=True)
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            scale *= tf.reshape(tf.cast(self.gamma, tf.float32), grouped)
        offset = -mean * scale
        if self.center:
            offset += tf.reshape(tf.cast(self.beta, tf.float32), grouped)
        normalized = rows * tf.reshape(scale, (-1, 1, channels)) + tf.reshape(offset, (-1, 1, channels))
        return tf.cast(tf.reshape(normalized, shape), self.compute_dtype)

