"""The SD1.x UNet as Keras functional models of any spatial size.

`UNet` owns the layers; `UNet.model()` wires them into a functional model
with named inputs, optionally taking ControlNet residuals. Both wirings share
one set of weights, so a pipeline pays for the residual inputs only when a
ControlNet is in use.
"""

import math

import keras
from keras import ops

from kcv_sd.group_norm import GroupNorm
from kcv_sd.routing import routes
from kcv_sd.unet_blocks import ResBlock, RoutedConv2D, SpatialTransformer, Upsample


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding [cos, sin] of float timesteps, shape (len, dim).

    The same formula as KerasCV's `_get_timestep_embedding` and diffusers'
    `flip_sin_to_cos=True, freq_shift=0`.
    """
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.cast(ops.arange(0, half), "float32") / half)
    args = ops.cast(ops.reshape(timesteps, (-1, 1)), "float32") * freqs[None]
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)


def deep_cache_channels(config):
    """Channels of the features DeepCache keeps (`UNet.shallow`): the top
    level's, as its last up block follows another of that level."""
    return config.block_channels[0]


def control_input_names(config):
    """Names of the residual inputs: one per skip connection, then the middle."""
    skips = [f"control_{i}" for i in range(config.num_skip_connections)]
    return skips + ["control_mid"]


class UNetEncoder:
    """Timestep MLP, input conv, down path and middle block.

    The part a UNet and a ControlNet share block for block; both subclass
    it, so the two can never drift apart.
    """

    def __init__(self, config, initializer="glorot_uniform"):
        c = config
        init = initializer
        self.time_dense1 = keras.layers.Dense(c.time_embed_dim, kernel_initializer=init)
        self.time_dense2 = keras.layers.Dense(c.time_embed_dim, kernel_initializer=init)
        self.conv_in = RoutedConv2D(c.block_channels[0], 3, padding=1, kernel_initializer=init)

        # Per level, (resblock, transformer or None) pairs, then a stride-2
        # conv except on the last level.
        self.down_levels = []
        channels = c.block_channels[0]
        skip_channels = [channels]
        for level, out_channels in enumerate(c.block_channels):
            blocks = []
            for _ in range(c.layers_per_block):
                blocks.append((self._resblock(channels, out_channels, c, init, level),
                               self._transformer(out_channels, c, init, level)
                               if c.attention_levels[level] else None))
                channels = out_channels
                skip_channels.append(channels)
            downsample = None
            if level < len(c.block_channels) - 1:
                downsample = RoutedConv2D(channels, 3, strides=2, padding=1,
                                          kernel_initializer=init, level=level)
                skip_channels.append(channels)
            self.down_levels.append((blocks, downsample))
        self.skip_channels = tuple(skip_channels)
        bottom = len(c.block_channels) - 1
        self.mid_blocks = (self._resblock(channels, channels, c, init, bottom),
                           self._transformer(channels, c, init, bottom),
                           self._resblock(channels, channels, c, init, bottom))

    @staticmethod
    def _resblock(input_channels, output_channels, c, init, level):
        return ResBlock(input_channels, output_channels, c.norm_groups, c.norm_epsilon, init, level=level)

    @staticmethod
    def _transformer(channels, c, init, level):
        return SpatialTransformer(channels, c.num_heads, c.norm_groups,
                                  c.transformer_norm_epsilon, c.gelu_approximate, init, level=level)

    def routes(self, batch, height, width, context_length):
        """Each convolution's and attention layer's route for latents of
        (batch, height, width); see `kcv_sd.routing`."""
        return routes(self.model().layers, batch, height, width, context_length)

    def embed_time(self, t_embed):
        return self.time_dense2(ops.silu(self.time_dense1(t_embed)))

    def encode(self, x, emb, context):
        """Down path and middle block from the input features `x`.

        Returns the skip tensors and the middle block's output.
        """
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
        return skips, res2([transformer([res1([x, emb]), context]), emb])


class UNet(UNetEncoder):
    """Layers of an SD1.x UNet built from a `UNetConfig`.

    Args:
        config: a `kcv_sd.config.UNetConfig`.
        initializer: kernel initializer; "zeros" when weights will be loaded
            anyway, which skips the cost of random initialisation.
    """

    def __init__(self, config, initializer="glorot_uniform"):
        super().__init__(config, initializer)
        self.config = config
        c = config
        init = initializer
        channels = c.block_channels[-1]
        skip_channels = list(self.skip_channels)

        # Up path: layers_per_block + 1 resblocks per level, each eating a skip.
        self.up_levels = []
        for level in reversed(range(len(c.block_channels))):
            out_channels = c.block_channels[level]
            blocks = []
            for _ in range(c.layers_per_block + 1):
                cin = channels + skip_channels.pop()
                blocks.append((self._resblock(cin, out_channels, c, init, level),
                               self._transformer(out_channels, c, init, level)
                               if c.attention_levels[level] else None))
                channels = out_channels
            upsample = Upsample(channels, init, level=level) if level > 0 else None
            self.up_levels.append((blocks, upsample))

        self.norm_out = GroupNorm(groups=c.norm_groups, epsilon=c.norm_epsilon)
        # The 4-channel exit conv is cheap: keep it in float32 so the sampler
        # never sees float16 noise predictions.
        self.conv_out = RoutedConv2D(c.latent_channels, 3, padding=1,
                                     kernel_initializer=init, dtype="float32")
        self._models = {}

    def kerascv_layer_order(self):
        """Weighted layers in the order of KerasCV's `kcv_diffusion_model.h5`.

        Keras sorts a functional model's layers by graph depth, which puts
        the input convolution between the two timestep Dense layers.
        """
        ordered = [self.time_dense1, self.conv_in, self.time_dense2]
        for blocks, downsample in self.down_levels:
            ordered += [layer for pair in blocks for layer in pair if layer is not None]
            ordered += [downsample] if downsample is not None else []
        ordered += list(self.mid_blocks)
        for blocks, upsample in self.up_levels:
            ordered += [layer for pair in blocks for layer in pair if layer is not None]
            ordered += [upsample] if upsample is not None else []
        return ordered + [self.norm_out, self.conv_out]

    def __call__(self, latent, t_embed, context, control=None, with_features=False):
        """Wires the layers on (symbolic) tensors; `control` is a list of
        residuals. With `with_features`, returns (noise, the features the
        last up block takes with the first skip), the part DeepCache reuses
        (`shallow`)."""
        emb = self.embed_time(t_embed)
        skips, x = self.encode(self.conv_in(latent), emb, context)

        if control is not None:
            # ControlNet residuals touch only what crosses the skip
            # connections and the middle output, as in diffusers.
            skips = [skip + residual for skip, residual in zip(skips, control[:-1])]
            x = x + control[-1]

        last = self.up_levels[-1][0][-1]
        for blocks, upsample in self.up_levels:
            for pair in blocks:
                if pair is last:
                    features = x
                x = self._up_block(pair, x, skips.pop(), emb, context)
            if upsample is not None:
                x = upsample([x, skips[-1]])
        noise = self._out(x)
        return (noise, features) if with_features else noise

    def shallow(self, latent, t_embed, context, features):
        """DeepCache's cheap step (cache branch 0, Ma et al. 2023): the input
        convolution and the last up block alone, on `features` from the last
        full step (`__call__(..., with_features=True)`); everything deeper is
        taken as unchanged since then."""
        emb = self.embed_time(t_embed)
        x = self._up_block(self.up_levels[-1][0][-1], features, self.conv_in(latent), emb, context)
        return self._out(x)

    @staticmethod
    def _up_block(pair, x, skip, emb, context):
        resblock, transformer = pair
        x = resblock([ops.concatenate([x, skip], axis=-1), emb])
        return x if transformer is None else transformer([x, context])

    def _out(self, x):
        return self.conv_out(ops.silu(self.norm_out(x)))

    @property
    def feature_channels(self):
        return deep_cache_channels(self.config)

    def model(self, with_control=False, deep_cache=None):
        """A functional model with named inputs; cached per wiring.

        Inputs: `latent` (B, H, W, 4), `timestep_embedding` (B, timestep_dim),
        `context` (B, T, context_dim), and with `with_control` the residuals
        named by `control_input_names`. Output: predicted noise, float32.
        `deep_cache`="full" also outputs the features DeepCache keeps;
        "shallow" takes them as input `features` (see `shallow`).
        """
        key = (with_control, deep_cache)
        if key not in self._models:
            c = self.config
            inputs = {
                "latent": keras.Input((None, None, c.latent_channels), name="latent"),
                "timestep_embedding": keras.Input((c.timestep_dim,), name="timestep_embedding"),
                "context": keras.Input((None, c.context_dim), name="context"),
            }
            if deep_cache == "shallow":
                inputs["features"] = keras.Input((None, None, self.feature_channels), name="features")
                output = self.shallow(inputs["latent"], inputs["timestep_embedding"], inputs["context"],
                                      inputs["features"])
                self._models[key] = keras.Model(inputs, output, name="unet_shallow")
                return self._models[key]
            control = None
            if with_control:
                channels = self.skip_channels + (c.block_channels[-1],)
                for name, ch in zip(control_input_names(c), channels):
                    inputs[name] = keras.Input((None, None, ch), name=name)
                control = [inputs[name] for name in control_input_names(c)]
            output = self(inputs["latent"], inputs["timestep_embedding"], inputs["context"], control,
                          with_features=deep_cache == "full")
            name = "unet_controlled" if with_control else "unet"
            self._models[key] = keras.Model(inputs, output, name=name + ("_cached" if deep_cache else ""))
        return self._models[key]
