"""The VAE's two blocks: a residual block and single-head spatial attention.

Each creates its sublayers in the order KerasCV's VAE blocks do, so
`layer.weights` lists variables in the order of `kcv_decoder.h5` and
`vae_encoder.h5` (`kcv_sd.weights` assigns by order), and computes what
KerasCV's block computes, op for op (`tests/test_vae.py` compares them).
Both build from shapes and state their output shape, so wiring the VAE
models runs no `call`. Norms are `GroupNorm`, with the VAE's epsilon.
"""

import keras
from keras import ops

from kcv_sd.group_norm import GroupNorm
from kcv_sd.padded_conv import PaddedConv2D


class ResnetBlock(keras.layers.Layer):
    """x + conv(swish(norm(conv(swish(norm(x)))))), with a 1x1 projection of
    x where the channel count changes (created at build, so it comes last in
    the weights, as in KerasCV's files)."""

    def __init__(self, output_dim, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.norm1 = GroupNorm(epsilon=epsilon)
        self.conv1 = PaddedConv2D(output_dim, 3, padding=1)
        self.norm2 = GroupNorm(epsilon=epsilon)
        self.conv2 = PaddedConv2D(output_dim, 3, padding=1)
        self.residual_projection = None

    def build(self, input_shape):
        inner = self.conv1.compute_output_shape(input_shape)
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        self.norm2.build(inner)
        self.conv2.build(inner)
        if input_shape[-1] != self.output_dim:
            self.residual_projection = PaddedConv2D(self.output_dim, 1)
            self.residual_projection.build(input_shape)

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)  # conv2 keeps it

    def call(self, inputs):
        x = self.conv1(keras.activations.swish(self.norm1(inputs)))
        x = self.conv2(keras.activations.swish(self.norm2(x)))
        skip = inputs if self.residual_projection is None else self.residual_projection(inputs)
        return x + skip


class AttentionBlock(keras.layers.Layer):
    """Every pixel attends to every pixel, one head as wide as the channels;
    the projections are 1x1 convolutions and the result is added to the input."""

    def __init__(self, output_dim, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.norm = GroupNorm(epsilon=epsilon)
        self.q = PaddedConv2D(output_dim, 1)
        self.k = PaddedConv2D(output_dim, 1)
        self.v = PaddedConv2D(output_dim, 1)
        self.proj_out = PaddedConv2D(output_dim, 1)

    def build(self, input_shape):
        self.norm.build(input_shape)
        for projection in (self.q, self.k, self.v, self.proj_out):
            projection.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        x = self.norm(inputs)
        q, k, v = self.q(x), self.k(x), self.v(x)
        shape = ops.shape(q)
        height, width, channels = shape[1], shape[2], shape[3]
        pixels = height * width

        def channels_first(t):  # (batch, channels, pixels)
            return ops.reshape(ops.transpose(t, (0, 3, 1, 2)), (-1, channels, pixels))

        scores = ops.reshape(q, (-1, pixels, channels)) @ channels_first(k)
        scores = scores / ops.sqrt(ops.cast(channels, self.compute_dtype))
        weights = keras.activations.softmax(scores)
        attended = channels_first(v) @ ops.transpose(weights, (0, 2, 1))
        attended = ops.reshape(ops.transpose(attended, (0, 2, 1)), (-1, height, width, channels))
        return self.proj_out(attended) + inputs
