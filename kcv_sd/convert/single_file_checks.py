"""Telling an SD 1.x single-file checkpoint from the files that look like one.

SDXL, SD 2.x, inpainting and other-width checkpoints share most of SD 1.x's
key names; each is refused with one line naming what the file is, before
any model is built. (v-prediction SD 1.x fine-tunes cannot be told from
their weights and are not detected.)
"""

from kcv_sd.convert.checks import SDXL_MARKERS, TEXT_WIDTH_FAMILIES, describe
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.ldm_layout import TEXT_PREFIX, UNET_PREFIX
from kcv_sd.convert.ldm_vae import LDM_MARKER
from kcv_sd.convert.text_encoder_diffusers import PREFIXES as CLIP_PREFIXES
from kcv_sd.convert.text_encoder_diffusers import TOKEN_EMBEDDING

SDXL_PREFIX = "conditioner.embedders."
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x's OpenCLIP ViT-H text encoder
INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
TOKEN_EMBEDDINGS = tuple(TEXT_PREFIX + prefix + TOKEN_EMBEDDING for prefix in CLIP_PREFIXES)
INPAINTING_CHANNELS = 9  # latent, mask, masked image's latent


def supported(unet_config, text_width):
    return (f"kcv-sd supports SD 1.x checkpoints ({unet_config.latent_channels}-channel, "
            f"{text_width}-wide)")


def refuse(source, what, unet_config, text_width):
    raise CheckpointError(f"{source} is {what}: not supported; {supported(unet_config, text_width)}.")


def family_of_width(width):
    """'an SD2.x checkpoint' for a text width of 1024, and so on."""
    family = TEXT_WIDTH_FAMILIES.get(width)
    return f"an {family} checkpoint" if family else "a checkpoint of an unknown family"


def check_sd1_checkpoint(state_dict, unet_config, text_width, source):
    """Raise `CheckpointError` unless `state_dict` is an SD 1.x single-file checkpoint
    of the given widths (the UNet's latent channels and context width, the text
    encoder's width)."""
    args = (unet_config, text_width)
    if any(key.startswith(SDXL_PREFIX) for key in state_dict) or any(
            key in state_dict for key in SDXL_MARKERS):
        refuse(source, f"an SDXL checkpoint (it has {SDXL_PREFIX}* keys)", *args)
    if any(key.startswith(OPENCLIP_PREFIX) for key in state_dict):
        refuse(source, f"an SD 2.x checkpoint (its text encoder is OpenCLIP, {OPENCLIP_PREFIX}*)",
               *args)
    if not any(key.startswith(UNET_PREFIX) for key in state_dict):
        if LDM_MARKER in state_dict or "decoder.up_blocks.0.resnets.0.conv1.weight" in state_dict:
            raise CheckpointError(
                f"{source} is a VAE, not a Stable Diffusion checkpoint: pass it as vae= "
                "(--vae) along with an SD 1.x checkpoint.")
        raise CheckpointError(
            f"{source} is not a single-file (CompVis/LDM) Stable Diffusion checkpoint: it has no "
            f"{UNET_PREFIX}* keys; {describe(state_dict)}.")
    if INPUT_CONV in state_dict:
        channels = state_dict[INPUT_CONV].shape[1]
        if channels == INPAINTING_CHANNELS:
            refuse(source, f"an inpainting checkpoint (its UNet takes {channels} input channels)",
                   *args)
        if channels != unet_config.latent_channels:
            refuse(source, f"a checkpoint whose UNet takes {channels} input channels", *args)
    cross_attention = next((key for key in state_dict
                            if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")), None)
    if cross_attention is not None:
        width = state_dict[cross_attention].shape[1]
        if width != unet_config.context_dim:
            refuse(source, f"{family_of_width(width)} (its UNet cross-attends to "
                           f"{width}-wide text encodings)", *args)
    token_embedding = next((key for key in TOKEN_EMBEDDINGS if key in state_dict), None)
    if token_embedding is not None:
        width = state_dict[token_embedding].shape[1]
        if width != text_width:
            refuse(source, f"{family_of_width(width)} (its text encoder is {width} wide)",
                   *args)
