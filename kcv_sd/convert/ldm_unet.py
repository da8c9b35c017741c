"""CompVis/LDM UNet names (`openaimodel.py`) -> diffusers' `UNet2DConditionModel` names.

The down path and middle block are shared with lllyasviel's ControlNets
(`controlnet_original`), so `encoder_prefixes` serves both; `unet_prefixes`
adds the up path and the exit. Spatial transformers share their inner names
in both formats and map as whole subtrees; residual blocks map sublayer by
sublayer.
"""

from kcv_sd.convert.ldm_layout import UNET_PREFIX
from kcv_sd.convert.renaming import PrefixTable

# ldm's ResBlock sublayers -> diffusers' ResnetBlock2D ones.
RESBLOCK_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def add_resblock(table, original, diffusers):
    for old, new in RESBLOCK_NAMES.items():
        table[f"{original}.{old}"] = f"{diffusers}.{new}"


def encoder_prefixes(config):
    """{original prefix: diffusers prefix} of the timestep MLP, input conv,
    down path and middle block of a `UNetConfig`."""
    table = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
    }
    # input_blocks counts every block of the down path in one sequence.
    block = 1
    for level, attention in enumerate(config.attention_levels):
        for index in range(config.layers_per_block):
            add_resblock(table, f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{index}")
            if attention:
                table[f"input_blocks.{block}.1"] = f"down_blocks.{level}.attentions.{index}"
            block += 1
        if level < len(config.block_channels) - 1:
            table[f"input_blocks.{block}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            block += 1

    add_resblock(table, "middle_block.0", "mid_block.resnets.0")
    table["middle_block.1"] = "mid_block.attentions.0"
    add_resblock(table, "middle_block.2", "mid_block.resnets.1")
    return table


def unet_prefixes(config):
    """{original prefix: diffusers prefix} of a whole UNet of a `UNetConfig`."""
    table = encoder_prefixes(config)
    # output_blocks count the up path in one sequence, from the smallest
    # resolution; a level's last block ends with its upsampler.
    levels = len(config.block_channels)
    block = 0
    for level, attention in enumerate(reversed(config.attention_levels)):
        for index in range(config.layers_per_block + 1):
            add_resblock(table, f"output_blocks.{block}.0", f"up_blocks.{level}.resnets.{index}")
            if attention:
                table[f"output_blocks.{block}.1"] = f"up_blocks.{level}.attentions.{index}"
            if index == config.layers_per_block and level < levels - 1:
                upsample = f"output_blocks.{block}.{2 if attention else 1}.conv"
                table[upsample] = f"up_blocks.{level}.upsamplers.0.conv"
            block += 1
    table["out.0"] = "conv_norm_out"
    table["out.2"] = "conv_out"
    return table


def ldm_unet_table(config):
    """The `PrefixTable` of a single-file checkpoint's UNet (`model.diffusion_model.*`)."""
    return PrefixTable(unet_prefixes(config), UNET_PREFIX)
