"""The VAE decoder and encoder, from KerasCV's blocks, for any image size.

KerasCV's `Decoder` bakes the image size into its input; this one takes
(None, None) so one decoder serves every size (multiples of 8). Layer order
matches KerasCV's, so `kcv_decoder.h5` and `vae_encoder.h5` load unchanged.
"""

import dataclasses

import keras
from keras_cv.src.models.stable_diffusion.attention_block import AttentionBlock
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock

from kcv_sd.group_norm import GroupNorm, use_group_norm

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
    layers = [
        keras.Input((None, None, config.latent_channels)),
        keras.layers.Rescaling(1.0 / LATENT_SCALE),
        PaddedConv2D(config.latent_channels, 1),
        PaddedConv2D(c0, 3, padding=1),
        ResnetBlock(c0),
        AttentionBlock(c0),
        ResnetBlock(c0),
        ResnetBlock(c0),
        ResnetBlock(c0),
        ResnetBlock(c0),
    ]
    previous = c0
    for channels in (c1, c2, c3):
        layers += [
            keras.layers.UpSampling2D(2),
            PaddedConv2D(previous, 3, padding=1),
            ResnetBlock(channels),
            ResnetBlock(channels),
            ResnetBlock(channels),
        ]
        previous = channels
    layers += [
        GroupNorm(epsilon=config.norm_epsilon),
        keras.layers.Activation("swish"),
        PaddedConv2D(3, 3, padding=1),
    ]
    return use_group_norm(keras.Sequential(layers, name=name), config.norm_epsilon)


def build_encoder(config=SD15_VAE, name="image_encoder"):
    """Sequential model: image (B, H, W, 3) in [-1, 1] -> scaled latent mean (B, H/8, W/8, 4)."""
    c0, c1, c2, c3 = config.block_channels
    latent = config.latent_channels
    down = ((0, 1), (0, 1))
    encoder = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            PaddedConv2D(c3, 3, padding=1),
            ResnetBlock(c3),
            ResnetBlock(c3),
            PaddedConv2D(c3, 3, padding=down, strides=2),
            ResnetBlock(c2),
            ResnetBlock(c2),
            PaddedConv2D(c2, 3, padding=down, strides=2),
            ResnetBlock(c1),
            ResnetBlock(c1),
            PaddedConv2D(c1, 3, padding=down, strides=2),
            ResnetBlock(c0),
            ResnetBlock(c0),
            ResnetBlock(c0),
            AttentionBlock(c0),
            ResnetBlock(c0),
            GroupNorm(epsilon=config.norm_epsilon),
            keras.layers.Activation("swish"),
            PaddedConv2D(2 * latent, 3, padding=1),
            PaddedConv2D(2 * latent, 1),
            keras.layers.Lambda(lambda x: x[..., :latent] * LATENT_SCALE),
        ],
        name=name,
    )
    return use_group_norm(encoder, config.norm_epsilon)

