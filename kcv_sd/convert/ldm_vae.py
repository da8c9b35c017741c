"""CompVis/LDM VAE names (`ldm.modules.diffusionmodules.model`) -> diffusers' `AutoencoderKL` names.

The same table reads a VAE bundled in a single-file checkpoint
(`first_stage_model.*`) and a separate VAE file such as
vae-ft-mse-840000-ema-pruned.safetensors (the same keys, no prefix).
LDM numbers the decoder's up levels from the full resolution and diffusers
from the latent's, so `decoder.up.{3 - i}` is `decoder.up_blocks.{i}`. The
mid-block attention's q/k/v/proj_out are 1x1 convolutions, as in our
KerasCV blocks.
"""

from kcv_sd.convert.renaming import PrefixTable
from kcv_sd.convert.vae_diffusers import DECODER_RESNETS, ENCODER_RESNETS, LEVELS

# An LDM VAE file's keys, bundled or not, start with one of these.
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Keys only LDM's naming has: where one is present, the file is LDM's.
LDM_MARKER = "decoder.mid.block_1.conv1.weight"
# Training-only modules of LDM's AutoencoderKL (discriminator, LPIPS), in some VAE files.
TRAINING_ONLY_PREFIX = "loss."

ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
                   "proj_out": "to_out.0"}


def add_resnet(table, original, diffusers):
    """A resnet block keeps its sublayers' names but for the 1x1 shortcut."""
    table[original] = diffusers
    table[f"{original}.nin_shortcut"] = f"{diffusers}.conv_shortcut"


def add_middle(table, part):
    add_resnet(table, f"{part}.mid.block_1", f"{part}.mid_block.resnets.0")
    for old, new in ATTENTION_NAMES.items():
        table[f"{part}.mid.attn_1.{old}"] = f"{part}.mid_block.attentions.0.{new}"
    add_resnet(table, f"{part}.mid.block_2", f"{part}.mid_block.resnets.1")


def vae_prefixes():
    """{original prefix: diffusers prefix} of SD1.x's VAE, encoder and decoder."""
    table = {name: name for name in ("quant_conv", "post_quant_conv")}
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            table[f"{part}.{name}"] = f"{part}.{name}"
        table[f"{part}.norm_out"] = f"{part}.conv_norm_out"
        add_middle(table, part)
    for level in range(LEVELS):
        for index in range(ENCODER_RESNETS):
            add_resnet(table, f"encoder.down.{level}.block.{index}",
                       f"encoder.down_blocks.{level}.resnets.{index}")
        if level < LEVELS - 1:
            table[f"encoder.down.{level}.downsample.conv"] = f"encoder.down_blocks.{level}.downsamplers.0.conv"
        original = LEVELS - 1 - level
        for index in range(DECODER_RESNETS):
            add_resnet(table, f"decoder.up.{original}.block.{index}",
                       f"decoder.up_blocks.{level}.resnets.{index}")
        if level < LEVELS - 1:
            table[f"decoder.up.{original}.upsample.conv"] = f"decoder.up_blocks.{level}.upsamplers.0.conv"
    return table


def ldm_vae_table(file_prefix=""):
    """The `PrefixTable` of an LDM VAE whose keys the file prefixes with `file_prefix`."""
    return PrefixTable(vae_prefixes(), file_prefix)
