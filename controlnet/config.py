"""ControlNet configurations: the UNet encoder it copies, plus its hint encoder.

A ControlNet must share its `UNetConfig` with the UNet it steers: the
residuals it returns are added to that UNet's skip tensors, so channels,
levels and text width have to agree.
"""

import dataclasses

from kcv_sd import config as unet_configs


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

    unet: unet_configs.UNetConfig = unet_configs.SD15_DIFFUSERS
    conditioning_channels: tuple = (16, 32, 96, 256)
    image_channels: int = 3

    def __post_init__(self):
        if len(self.conditioning_channels) != 4:
            raise ValueError(
                "conditioning_channels needs 4 stages (3 stride-2 steps = the "
                f"VAE's 8x), got {self.conditioning_channels}"
            )


# lllyasviel's SD1.5 ControlNets (1.0 and 1.1), with diffusers numerics.
SD15 = ControlNetConfig()

# Steers `kcv_sd.config.TINY`, for tests that exercise wiring.
TINY = ControlNetConfig(unet=unet_configs.TINY, conditioning_channels=(4, 8, 8, 16))
