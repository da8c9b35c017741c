"""diffusers' SD1.x `UNet2DConditionModel` -> `kcv_sd.unet.UNet` (686 keys for SD1.5).

Use `kcv_sd.config.SD15_DIFFUSERS`: diffusers' GroupNorm epsilon and exact
GELU, without which converted weights give slightly different noise.
"""

from kcv_sd.config import SD15_DIFFUSERS
from kcv_sd.convert.checks import check_text_width, describe, reject_sdxl
from kcv_sd.convert.encoder_table import port_encoder
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.porter import WeightPorter
from kcv_sd.convert.ports import (
    port_conv,
    port_norm,
    port_resblock,
    port_spatial_transformer,
)
from kcv_sd.convert.state_dict import read_state_dict
from kcv_sd.unet import UNet


def port_unet(porter, unet):
    port_encoder(porter, unet)
    # Up levels run from the smallest resolution, as diffusers' up_blocks do.
    for level, (blocks, upsample) in enumerate(unet.up_levels):
        for index, (resblock, transformer) in enumerate(blocks):
            port_resblock(porter, resblock, f"up_blocks.{level}.resnets.{index}")
            if transformer is not None:
                port_spatial_transformer(porter, transformer, f"up_blocks.{level}.attentions.{index}")
        if upsample is not None:
            port_conv(porter, upsample.conv, f"up_blocks.{level}.upsamplers.0.conv")
    port_norm(porter, unet.norm_out, "conv_norm_out")
    port_conv(porter, unet.conv_out, "conv_out")


def fill_diffusers_unet(state_dict, unet, source="the state dict", file_key=None):
    """Assign a diffusers-format UNet state dict's weights to an existing `UNet`.

    For callers that build the UNet themselves (a pipeline choosing its
    dtype policy); `convert_diffusers_unet` builds one and calls this.
    `file_key` names a key as the file does, for messages (`WeightPorter`).

    Raises:
        CheckpointError: not a diffusers UNet, unsupported family, or any
            key or shape that does not match the UNet's configuration.
    """
    reject_sdxl(state_dict, source)
    if not any(key.startswith("up_blocks.") for key in state_dict):
        raise CheckpointError(
            f"{source} is not a diffusers UNet2DConditionModel; {describe(state_dict)}."
        )
    check_text_width(state_dict, unet.config.context_dim, source)
    model = unet.model()  # creates the variables
    porter = WeightPorter(state_dict, source, file_key)
    port_unet(porter, unet)
    porter.finish(model.weights)


def convert_diffusers_unet(state_dict, config=SD15_DIFFUSERS, source="the state dict"):
    """A `UNet` holding a diffusers-format UNet state dict's weights.

    Raises:
        CheckpointError: as `fill_diffusers_unet`.
    """
    unet = UNet(config, initializer="zeros")
    fill_diffusers_unet(state_dict, unet, source)
    return unet


def load_diffusers_unet(path, config=SD15_DIFFUSERS, allow_pickle=False):
    """`convert_diffusers_unet` on a file (diffusion_pytorch_model.safetensors)."""
    return convert_diffusers_unet(read_state_dict(path, allow_pickle), config, source=str(path))
