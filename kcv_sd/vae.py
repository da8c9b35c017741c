"""The VAE decoder and encoder, KerasCV's layer sequences, for any image size.

KerasCV's `Decoder` bakes the image size into its input; this one takes
(None, None) so one decoder serves every size (multiples of 8). Layer order
matches KerasCV's, so `kcv_decoder.h5` and `vae_encoder.h5` load unchanged.
"""

import dataclasses

import keras

from kcv_sd.group_norm import GroupNorm
from kcv_sd.padded_conv import PaddedConv2D
from kcv_sd.vae_blocks import AttentionBlock, ResnetBlock

LATENT_SCALE = 0.18215
PIXELS_PER_LATENT = 8  # image pixels per latent pixel along each axis


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Channels of the decoder stages from the latent side (multiples of 32),
    and the GroupNorm epsilon: KerasCV's blocks use 1e-5, diffusers' and the
    original VAE 1e-6."""

    block_channels: tuple = (512, 512, 256, 128)
    latent_channels: int = 4
    norm_epsilon: float = 1e-5


SD15_VAE = VAEConfig()
SD15_VAE_DIFFUSERS = VAEConfig(norm_epsilon=1e-6)
TINY_VAE = VAEConfig(block_channels=(32, 32, 32, 32))


def build_decoder(config=SD15_VAE, name="decoder"):
    """Sequential model: latent (B, h, w, 4) -> image (B, 8h, 8w, 3) in [-1, 1]."""
    c0, c1, c2, c3 = config.block_channels
    eps = config.norm_epsilon
    layers = [
        keras.Input((None, None, config.latent_channels)),
        keras.layers.Rescaling(1.0 / LATENT_SCALE),
        PaddedConv2D(config.latent_channels, 1),
        PaddedConv2D(c0, 3, padding=1),
        ResnetBlock(c0, eps),
        AttentionBlock(c0, eps),
        ResnetBlock(c0, eps),
        ResnetBlock(c0, eps),
        ResnetBlock(c0, eps),
        ResnetBlock(c0, eps),
    ]
    previous = c0
    for channels in (c1, c2, c3):
        layers += [
            keras.layers.UpSampling2D(2),
            PaddedConv2D(previous, 3, padding=1),
            ResnetBlock(channels, eps),
            ResnetBlock(channels, eps),
            ResnetBlock(channels, eps),
        ]
        previous = channels
    layers += [
        GroupNorm(epsilon=eps),
        keras.layers.Activation("swish"),
        PaddedConv2D(3, 3, padding=1),
    ]
    return keras.Sequential(layers, name=name)


def build_encoder(config=SD15_VAE, name="image_encoder"):
    """Sequential model: image (B, H, W, 3) in [-1, 1] -> scaled latent mean (B, H/8, W/8, 4)."""
    c0, c1, c2, c3 = config.block_channels
    latent = config.latent_channels
    eps = config.norm_epsilon
    down = ((0, 1), (0, 1))
    return keras.Sequential(
        [
            keras.Input((None, None, 3)),
            PaddedConv2D(c3, 3, padding=1),
            ResnetBlock(c3, eps),
            ResnetBlock(c3, eps),
            PaddedConv2D(c3, 3, padding=down, strides=2),
            ResnetBlock(c2, eps),
            ResnetBlock(c2, eps),
            PaddedConv2D(c2, 3, padding=down, strides=2),
            ResnetBlock(c1, eps),
            ResnetBlock(c1, eps),
            PaddedConv2D(c1, 3, padding=down, strides=2),
            ResnetBlock(c0, eps),
            ResnetBlock(c0, eps),
            ResnetBlock(c0, eps),
            AttentionBlock(c0, eps),
            ResnetBlock(c0, eps),
            GroupNorm(epsilon=eps),
            keras.layers.Activation("swish"),
            PaddedConv2D(2 * latent, 3, padding=1),
            PaddedConv2D(2 * latent, 1),
            keras.layers.Lambda(lambda x: x[..., :latent] * LATENT_SCALE),
        ],
        name=name,
    )

