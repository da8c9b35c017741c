"""The ControlNet: a trainable copy of the UNet encoder that steers a frozen UNet.

`ControlNet` owns the layers; `ControlNet.model()` wires them into a
functional model whose outputs are named like the residual inputs of
`UNet.model(with_control=True)`, so one feeds the other by name. The control
image enters through `ConditioningEmbedding`, the hint encoder. Its output
depends on the control image alone, so a pipeline computes it once per call
(`embedding_model()`) and every step runs the rest (`step_model()`), where
diffusers runs the hint encoder again at every step, on both guidance halves.
"""

import itertools

import keras
from keras import ops

from kcv_sd.unet import UNetEncoder, control_input_names
from kcv_sd.unet_blocks import RoutedConv2D


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
            return RoutedConv2D(filters, 3, padding=1, strides=strides,
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


class ControlNet(UNetEncoder):
    """Layers of an SD1.x ControlNet built from a `ControlNetConfig`.

    The encoder is `kcv_sd.unet.UNetEncoder`, as in the UNet; each skip
    tensor and the middle output then pass a 1x1 "zero convolution" (zero at
    initialisation) to become a residual.

    Args:
        config: a `kcv_sd.config.ControlNetConfig`.
        initializer: kernel initializer of the encoder; "zeros" when weights
            will be loaded anyway. Zero convolutions always start at zero.
    """

    def __init__(self, config, initializer="glorot_uniform"):
        super().__init__(config.unet, initializer)
        self.config = config
        c = config.unet
        self.conditioning_embedding = ConditioningEmbedding(
            config.conditioning_channels, self.embedding_channels, initializer
        )
        self.zero_convs = [RoutedConv2D(ch, 1, kernel_initializer="zeros")
                           for ch in self.skip_channels]
        self.mid_zero_conv = RoutedConv2D(c.block_channels[-1], 1, kernel_initializer="zeros")
        self.output_names = control_input_names(c)
        self._models = {}

    def __call__(self, latent, t_embed, context, control_image=None, control_embedding=None):
        """Wires the layers on (symbolic) tensors, from the control image or,
        in its place, its embedding (`conditioning_embedding`'s output, any
        float dtype); returns residuals by name. The layers are called in
        one order either way, which orders `model().layers` (and so the
        draws of `kcv_sd.components.randomize`)."""
        emb = self.embed_time(t_embed)
        features = self.conv_in(latent)
        if control_embedding is None:
            x = features + self.conditioning_embedding(control_image)
        else:
            x = features + ops.cast(control_embedding, features.dtype)
        skips, x = self.encode(x, emb, context)
        residuals = [conv(skip) for conv, skip in zip(self.zero_convs, skips)]
        residuals.append(self.mid_zero_conv(x))
        return dict(zip(self.output_names, residuals))

    @property
    def embedding_channels(self):
        """Channels of the control image's embedding: the UNet's first level's."""
        return self.config.unet.block_channels[0]

    def _step_inputs(self):
        c = self.config.unet
        return {
            "latent": keras.Input((None, None, c.latent_channels), name="latent"),
            "timestep_embedding": keras.Input((c.timestep_dim,), name="timestep_embedding"),
            "context": keras.Input((None, c.context_dim), name="context"),
        }

    def _control_image(self):
        return keras.Input((None, None, self.config.image_channels), name="control_image")

    def model(self):
        """The whole ControlNet as a functional model with named inputs, built once.

        Inputs: `latent` (B, h, w, latent_channels), `timestep_embedding`
        (B, timestep_dim), `context` (B, T, context_dim), `control_image`
        (B, 8h, 8w, 3) in [0, 1]. Outputs: a dict of residuals keyed by
        `kcv_sd.unet.control_input_names`, unscaled (see `kcv_sd.control.control_scales`).
        Its weights are every weight of the ControlNet (what files hold).
        """
        if "whole" not in self._models:
            inputs = {**self._step_inputs(), "control_image": self._control_image()}
            outputs = self(inputs["latent"], inputs["timestep_embedding"], inputs["context"],
                           control_image=inputs["control_image"])
            self._models["whole"] = keras.Model(inputs, outputs, name="controlnet")
        return self._models["whole"]

    def embedding_model(self):
        """The hint encoder alone: `control_image` (B, 8h, 8w, 3) in [0, 1] ->
        its embedding, float32 (B, h, w, `embedding_channels`)."""
        if "embedding" not in self._models:
            image = self._control_image()
            embedding = ops.cast(self.conditioning_embedding(image), "float32")
            self._models["embedding"] = keras.Model(image, embedding, name="controlnet_embedding")
        return self._models["embedding"]

    def step_model(self):
        """What a denoising step runs: `model()`'s inputs and outputs, but for
        `control_embedding` (`embedding_model()`'s output) in place of the image."""
        if "step" not in self._models:
            inputs = {**self._step_inputs(), "control_embedding": keras.Input(
                (None, None, self.embedding_channels), name="control_embedding")}
            outputs = self(inputs["latent"], inputs["timestep_embedding"], inputs["context"],
                           control_embedding=inputs["control_embedding"])
            self._models["step"] = keras.Model(inputs, outputs, name="controlnet_step")
        return self._models["step"]
