"""lllyasviel's ControlNet format (cldm.py, `control_model.*`) -> diffusers key names.

The original names are renamed to diffusers' with one prefix table, then
`controlnet_diffusers` converts them: both formats share one audited port.
ControlNet 1.0 files also bundle the whole Stable Diffusion model they were
trained with; those parts are dropped, by the explicit lists below, and any
other key outside the ControlNet is an error.
"""

from kcv_sd.convert.errors import CheckpointError

CONTROL_PREFIX = "control_model."

# What ControlNet 1.0 files bundle besides the ControlNet: the SD UNet, VAE,
# text encoder (and EMA weights if trained with them) ...
BUNDLED_SD_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                       "model_ema.")
# ... and the noise-schedule buffers of ldm's DDPM.register_schedule.
BUNDLED_SD_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
})

# ldm's ResBlock sublayers -> diffusers' ResnetBlock2D ones.
RESBLOCK_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def original_to_diffusers_prefixes(config):
    """{original module prefix: diffusers module prefix} for a `ControlNetConfig`.

    Spatial transformers share their inner names in both formats, so they map
    as whole subtrees; residual blocks map sublayer by sublayer.
    """
    c = config.unet
    table = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
    }

    # input_hint_block is one nn.Sequential with a SiLU after every conv.
    num_blocks = 2 * (len(config.conditioning_channels) - 1)
    table["input_hint_block.0"] = "controlnet_cond_embedding.conv_in"
    for index in range(num_blocks):
        table[f"input_hint_block.{2 * (index + 1)}"] = f"controlnet_cond_embedding.blocks.{index}"
    table[f"input_hint_block.{2 * (num_blocks + 1)}"] = "controlnet_cond_embedding.conv_out"

    def resblock(original, diffusers):
        for old, new in RESBLOCK_NAMES.items():
            table[f"{original}.{old}"] = f"{diffusers}.{new}"

    # input_blocks counts every block of the down path in one sequence.
    block = 1
    for level in range(len(c.block_channels)):
        for index in range(c.layers_per_block):
            resblock(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{index}")
            if c.attention_levels[level]:
                table[f"input_blocks.{block}.1"] = f"down_blocks.{level}.attentions.{index}"
            block += 1
        if level < len(c.block_channels) - 1:
            table[f"input_blocks.{block}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            block += 1

    resblock("middle_block.0", "mid_block.resnets.0")
    table["middle_block.1"] = "mid_block.attentions.0"
    resblock("middle_block.2", "mid_block.resnets.1")

    for index in range(c.num_skip_connections):
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
        elif not (key.startswith(BUNDLED_SD_PREFIXES) or key in BUNDLED_SD_BUFFERS):
            strangers.append(key)
    if strangers:
        raise CheckpointError(
            f"{source} has keys outside {CONTROL_PREFIX}* that are no part of a "
            f"bundled Stable Diffusion model: {', '.join(sorted(strangers)[:8])}."
        )
    return tensors


def rename_original_keys(tensors, config, source):
    """Rename original ControlNet keys (prefix removed) to diffusers' names."""
    table = original_to_diffusers_prefixes(config)
    renamed, unknown = {}, []
    for key, value in tensors.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                renamed[table[prefix] + key[len(prefix):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source} has ControlNet keys the configuration has no layer for: "
            f"{', '.join(sorted(unknown)[:8])}."
        )
    return renamed
