"""UNet and ControlNet configurations: SD1.x (KerasCV's weights are SD v1.4) and tiny ones for fast tests.

The flags cover the numeric differences between weight families, so that a
diffusers-converted checkpoint can be reproduced exactly by the same code.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Shape and numerics of an SD1.x UNet.

    Attributes:
        block_channels: channels of each resolution level, top to bottom.
        attention_levels: which levels carry a spatial transformer.
        layers_per_block: residual blocks per level on the way down (one more
            on the way up, as in every SD1.x UNet).
        num_heads: attention heads; head size is channels // num_heads.
        context_dim: width of the text encoding the cross-attention reads.
        timestep_dim: width of the sinusoidal timestep embedding (an input).
        time_embed_dim: width of the projected timestep embedding.
        latent_channels: channels of the VAE latent.
        norm_groups: GroupNormalization groups everywhere.
        norm_epsilon: epsilon of the GroupNorms in residual blocks and the exit.
        transformer_norm_epsilon: epsilon of the GroupNorm that opens each
            spatial transformer (KerasCV 1e-5, diffusers/CompVis 1e-6).
        gelu_approximate: GEGLU gate with the tanh approximation (KerasCV) or
            the exact erf GELU (diffusers).
    """

    block_channels: tuple = (320, 640, 1280, 1280)
    attention_levels: tuple = (True, True, True, False)
    layers_per_block: int = 2
    num_heads: int = 8
    context_dim: int = 768
    timestep_dim: int = 320
    time_embed_dim: int = 1280
    latent_channels: int = 4
    norm_groups: int = 32
    norm_epsilon: float = 1e-5
    transformer_norm_epsilon: float = 1e-5
    gelu_approximate: bool = True

    def __post_init__(self):
        if len(self.block_channels) != len(self.attention_levels):
            raise ValueError("block_channels and attention_levels differ in length")
        for channels in self.block_channels:
            if channels % self.num_heads or channels % self.norm_groups:
                raise ValueError(
                    f"channels {channels} must divide by num_heads "
                    f"({self.num_heads}) and norm_groups ({self.norm_groups})"
                )

    @property
    def num_skip_connections(self):
        """Skip tensors the encoder hands to the decoder (12 for SD1.5)."""
        levels = len(self.block_channels)
        return 1 + levels * self.layers_per_block + (levels - 1)


# KerasCV's `DiffusionModel` (SD1.4/1.5 architecture, KerasCV numerics).
SD15 = UNetConfig()

# The same architecture with the numerics of diffusers / original checkpoints.
SD15_DIFFUSERS = dataclasses.replace(
    SD15, transformer_norm_epsilon=1e-6, gelu_approximate=False
)

# For tests and demos that exercise wiring: SD1.5's four levels with one
# residual block per level and attention on the top level only: tracing,
# most of what a test of the pipeline costs, is several times faster than
# with SD1.5's whole layout. Shaped so that diffusers can build the same
# UNet and ControlNet.
TINY = UNetConfig(
    block_channels=(8, 16, 16, 16),
    attention_levels=(True, False, False, False),
    layers_per_block=1,
    num_heads=2,
    context_dim=16,
    timestep_dim=8,
    time_embed_dim=32,  # 4 x 8, as diffusers' UNets and ControlNets have it
    norm_groups=4,
)


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    """Shape of an SD1.x ControlNet.

    Attributes:
        unet: the `UNetConfig` of the UNet whose encoder is copied.
        conditioning_channels: channels of the conditioning-embedding stages
            (diffusers' `conditioning_embedding_out_channels`). Four stages,
            so three stride-2 steps take the control image down the VAE's 8x.
        image_channels: channels of the control image (RGB).
    """

    unet: UNetConfig = SD15_DIFFUSERS
    conditioning_channels: tuple = (16, 32, 96, 256)
    image_channels: int = 3

    def __post_init__(self):
        if len(self.conditioning_channels) != 4:
            raise ValueError(
                "conditioning_channels needs 4 stages (3 stride-2 steps = the "
                f"VAE's 8x), got {self.conditioning_channels}"
            )


# lllyasviel's SD1.5 ControlNets (1.0 and 1.1), with diffusers numerics.
CONTROLNET_SD15 = ControlNetConfig()

# Steers `TINY`, for tests that exercise wiring.
CONTROLNET_TINY = ControlNetConfig(unet=TINY, conditioning_channels=(4, 8, 8, 16))
