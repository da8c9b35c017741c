"""The hint encoder: a control image (B, 8h, 8w, 3) becomes a latent-size feature map."""

import itertools

import keras
from keras import ops

from kcv_sd.unet_blocks import PaddedConv2D


class ConditioningEmbedding(keras.layers.Layer):
    """3x3 convolutions with SiLU, a stride-2 step between stages, zero exit conv.

    Per stage after the first: a same-width conv, then a stride-2 conv to the
    next width (diffusers' `ControlNetConditioningEmbedding`, lllyasviel's
    `input_hint_block`). The exit conv starts at zero so that an untrained
    ControlNet leaves the UNet's input untouched.
    """

    def __init__(self, stage_channels, output_channels, initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy

        def conv(filters, strides=1, kernel_initializer=initializer):
            return PaddedConv2D(filters, 3, padding=1, strides=strides,
                                kernel_initializer=kernel_initializer, dtype=policy)

        self.conv_in = conv(stage_channels[0])
        self.blocks = []
        for channels, next_channels in itertools.pairwise(stage_channels):
            self.blocks += [conv(channels), conv(next_channels, strides=2)]
        self.conv_out = conv(output_channels, kernel_initializer="zeros")

    def _convs(self):
        return [self.conv_in, *self.blocks, self.conv_out]

    def build(self, input_shape):
        shape = input_shape
        for layer in self._convs():
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self._convs():
            shape = layer.compute_output_shape(shape)
        return shape

    def call(self, inputs):
        x = inputs
        for layer in [self.conv_in, *self.blocks]:
            x = ops.silu(layer(x))
        return self.conv_out(x)
