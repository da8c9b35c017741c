"""The ControlNet: a trainable copy of the UNet encoder that steers a frozen UNet.

`ControlNet` owns the layers; `ControlNet.model()` wires them into a
functional model whose outputs are named like the residual inputs of
`UNet.model(with_control=True)`, so one feeds the other by name.
"""

import keras
from keras import ops

from controlnet.conditioning import ConditioningEmbedding
from kcv_sd.unet import control_input_names
from kcv_sd.unet_blocks import PaddedConv2D, ResBlock, SpatialTransformer


class ControlNet:
    """Layers of an SD1.x ControlNet built from a `ControlNetConfig`.

    The encoder repeats `kcv_sd.unet.UNet`'s down path and middle block
    block for block; each skip tensor and the middle output then pass a
    1x1 "zero convolution" (zero at initialisation) to become a residual.

    Args:
        config: a `controlnet.config.ControlNetConfig`.
        initializer: kernel initializer of the encoder; "zeros" when weights
            will be loaded anyway. Zero convolutions always start at zero.
    """

    def __init__(self, config, initializer="glorot_uniform"):
        self.config = config
        c = config.unet
        init = initializer
        self.time_dense1 = keras.layers.Dense(c.time_embed_dim, kernel_initializer=init)
        self.time_dense2 = keras.layers.Dense(c.time_embed_dim, kernel_initializer=init)
        self.conv_in = PaddedConv2D(c.block_channels[0], 3, padding=1, kernel_initializer=init)
        self.conditioning_embedding = ConditioningEmbedding(
            config.conditioning_channels, c.block_channels[0], init
        )

        def res(cin, cout):
            return ResBlock(cin, cout, c.norm_groups, c.norm_epsilon, init)

        def attn(channels):
            return SpatialTransformer(channels, c.num_heads, c.norm_groups,
                                      c.transformer_norm_epsilon, c.gelu_approximate, init)

        self.down_levels = []
        channels = c.block_channels[0]
        skip_channels = [channels]
        for level, out_channels in enumerate(c.block_channels):
            blocks = []
            for _ in range(c.layers_per_block):
                blocks.append((res(channels, out_channels),
                               attn(out_channels) if c.attention_levels[level] else None))
                channels = out_channels
                skip_channels.append(channels)
            downsample = None
            if level < len(c.block_channels) - 1:
                downsample = PaddedConv2D(channels, 3, strides=2, padding=1,
                                          kernel_initializer=init)
                skip_channels.append(channels)
            self.down_levels.append((blocks, downsample))

        self.mid_blocks = (res(channels, channels), attn(channels), res(channels, channels))
        self.zero_convs = [PaddedConv2D(ch, 1, kernel_initializer="zeros")
                           for ch in skip_channels]
        self.mid_zero_conv = PaddedConv2D(channels, 1, kernel_initializer="zeros")
        self.output_names = control_input_names(c)
        self._model = None

    def __call__(self, latent, t_embed, context, control_image):
        """Wires the layers on (symbolic) tensors; returns residuals by name."""
        emb = self.time_dense2(ops.silu(self.time_dense1(t_embed)))
        x = self.conv_in(latent) + self.conditioning_embedding(control_image)
        skips = [x]
        for blocks, downsample in self.down_levels:
            for resblock, transformer in blocks:
                x = resblock([x, emb])
                if transformer is not None:
                    x = transformer([x, context])
                skips.append(x)
            if downsample is not None:
                x = downsample(x)
                skips.append(x)

        res1, transformer, res2 = self.mid_blocks
        x = res2([transformer([res1([x, emb]), context]), emb])

        residuals = [conv(skip) for conv, skip in zip(self.zero_convs, skips)]
        residuals.append(self.mid_zero_conv(x))
        return dict(zip(self.output_names, residuals))

    def model(self):
        """A functional model with named inputs, built once.

        Inputs: `latent` (B, h, w, latent_channels), `timestep_embedding`
        (B, timestep_dim), `context` (B, T, context_dim), `control_image`
        (B, 8h, 8w, 3) in [0, 1]. Outputs: a dict of residuals keyed by
        `kcv_sd.unet.control_input_names`, unscaled (see `controlnet.scales`).
        """
        if self._model is None:
            c = self.config.unet
            inputs = {
                "latent": keras.Input((None, None, c.latent_channels), name="latent"),
                "timestep_embedding": keras.Input((c.timestep_dim,), name="timestep_embedding"),
                "context": keras.Input((None, c.context_dim), name="context"),
                "control_image": keras.Input((None, None, self.config.image_channels),
                                             name="control_image"),
            }
            outputs = self(inputs["latent"], inputs["timestep_embedding"],
                           inputs["context"], inputs["control_image"])
            self._model = keras.Model(inputs, outputs, name="controlnet")
        return self._model
