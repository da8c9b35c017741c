"""lllyasviel's ControlNet format (cldm.py, `control_model.*`) -> diffusers key names.

The original names are renamed to diffusers' with one prefix table, then
`controlnet_diffusers` converts them: both formats share one audited port.
ControlNet 1.0 files also bundle the whole Stable Diffusion model they were
trained with; those parts are dropped, by the explicit lists below, and any
other key outside the ControlNet is an error.
"""

from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.ldm_layout import (
    EMA_PREFIX,
    SCHEDULE_BUFFERS,
    UNET_PREFIX,
    VAE_PREFIX,
)
from kcv_sd.convert.ldm_unet import encoder_prefixes
from kcv_sd.convert.renaming import PrefixTable

CONTROL_PREFIX = "control_model."

# What ControlNet 1.0 files bundle besides the ControlNet: the whole SD
# checkpoint (UNet, VAE, text encoder, EMA weights, schedule buffers).
BUNDLED_SD_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", EMA_PREFIX)


def original_to_diffusers_prefixes(config):
    """{original module prefix: diffusers module prefix} for a `ControlNetConfig`.

    The down path and middle block are the UNet's (`ldm_unet.encoder_prefixes`).
    """
    table = encoder_prefixes(config.unet)

    # input_hint_block is one nn.Sequential with a SiLU after every conv.
    num_blocks = 2 * (len(config.conditioning_channels) - 1)
    table["input_hint_block.0"] = "controlnet_cond_embedding.conv_in"
    for index in range(num_blocks):
        table[f"input_hint_block.{2 * (index + 1)}"] = f"controlnet_cond_embedding.blocks.{index}"
    table[f"input_hint_block.{2 * (num_blocks + 1)}"] = "controlnet_cond_embedding.conv_out"

    for index in range(config.unet.num_skip_connections):
        table[f"zero_convs.{index}.0"] = f"controlnet_down_blocks.{index}"
    table["middle_block_out.0"] = "controlnet_mid_block"
    return table


def control_model_tensors(state_dict, source):
    """The ControlNet's own tensors, prefix removed; bundled SD parts dropped."""
    if not any(key.startswith(CONTROL_PREFIX) for key in state_dict):
        return dict(state_dict)  # a bare ControlNet, saved without the prefix
    tensors, strangers = {}, []
    for key, value in state_dict.items():
        if key.startswith(CONTROL_PREFIX):
            tensors[key[len(CONTROL_PREFIX):]] = value
        elif not (key.startswith(BUNDLED_SD_PREFIXES) or key in SCHEDULE_BUFFERS):
            strangers.append(key)
    if strangers:
        raise CheckpointError(
            f"{source} has keys outside {CONTROL_PREFIX}* that are no part of a "
            f"bundled Stable Diffusion model: {', '.join(sorted(strangers)[:8])}."
        )
    return tensors


def rename_original_keys(tensors, config, source):
    """Rename original ControlNet keys (prefix removed) to diffusers' names."""
    return PrefixTable(original_to_diffusers_prefixes(config)).rename(tensors, source, "ControlNet")
