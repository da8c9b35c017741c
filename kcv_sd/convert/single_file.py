"""A CompVis/LDM Stable Diffusion 1.x checkpoint in one file -> our text encoder, UNet and VAE.

Community fine-tunes are mostly shared as one `.safetensors` file in the
original layout (`ldm_layout`). The file is read, checked
(`single_file_checks`), split into its parts and renamed to diffusers'
names (`ldm_unet`, `ldm_vae`; the text encoder is transformers' CLIP under
a prefix) before any model is built; the diffusers converters then fill the
models, audit every key and name a missing or mis-shaped one as the file does.

EMA: a file trained with EMA holds the trained UNet weights and their EMA
copies (`model_ema.*`). As diffusers' `from_single_file` does by default, the
trained weights are used unless `ema=True`; a file without EMA copies
(most, e.g. "emaonly" files, which hold the EMA weights as the UNet's) loads
its UNet weights either way.

VAE: the file's own (`first_stage_model.*`), or a separate one given as
`vae` (a file in LDM naming such as vae-ft-mse-840000-ema-pruned.safetensors,
a diffusers AutoencoderKL file or folder, or another whole checkpoint),
which a file without a VAE requires.
"""

import dataclasses
from pathlib import Path

from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.ldm_layout import (
    EMA_PREFIX,
    SCHEDULE_BUFFERS,
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from kcv_sd.convert.ldm_unet import ldm_unet_table
from kcv_sd.convert.ldm_vae import LDM_MARKER, TRAINING_ONLY_PREFIX, ldm_vae_table
from kcv_sd.convert.sd_folder import check_diffusers_numerics, vae_folder_file
from kcv_sd.convert.single_file_checks import check_sd1_checkpoint
from kcv_sd.convert.state_dict import read_state_dict
from kcv_sd.convert.text_encoder_diffusers import convert_clip_text_encoder
from kcv_sd.convert.unet_diffusers import fill_diffusers_unet
from kcv_sd.convert.vae_diffusers import convert_diffusers_vae

PARTS = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX}
# EMA bookkeeping of ldm's LitEma, no weights.
EMA_COUNTERS = ("decay", "num_updates")
# Where VAE keys can sit in a file: bundled (LDM, or diffusers' own single
# files) or at the top (a separate VAE file).
VAE_FILE_PREFIXES = (VAE_PREFIX, "vae.")
_SHOWN = 8


@dataclasses.dataclass
class Part:
    """One model's tensors under diffusers' names, and how to name them as the file does."""

    tensors: dict
    source: str
    file_key: object  # callable: diffusers key -> the file's key


def split_checkpoint(state_dict, source):
    """{part: tensors without the part's prefix} and the EMA tensors (prefix removed).

    Raises:
        CheckpointError: a key that belongs to no part of an SD 1.x checkpoint.
    """
    parts = {name: {} for name in PARTS}
    ema, strangers = {}, []
    for key, value in state_dict.items():
        name = next((name for name, prefix in PARTS.items() if key.startswith(prefix)), None)
        if name is not None:
            parts[name][key[len(PARTS[name]):]] = value
        elif key.startswith(EMA_PREFIX):
            ema[key[len(EMA_PREFIX):]] = value
        elif key not in SCHEDULE_BUFFERS:
            strangers.append(key)
    if strangers:
        raise CheckpointError(
            f"{source} has keys that are no part of an SD 1.x checkpoint: "
            f"{', '.join(sorted(strangers)[:_SHOWN])}.")
    return parts, ema


def ema_key(unet_key):
    """ldm's LitEma names a copy after its parameter's name without the dots."""
    return "diffusion_model" + unet_key.replace(".", "")


def choose_unet_weights(unet, ema_tensors, ema, source):
    """The UNet's trained weights, or with `ema` their EMA copies where the file has them."""
    if not ema or not set(ema_tensors) - set(EMA_COUNTERS):
        return unet
    missing = [EMA_PREFIX + ema_key(key) for key in unet if ema_key(key) not in ema_tensors]
    if missing:
        raise CheckpointError(
            f"{source} lacks the EMA copy of some UNet weights: missing keys: "
            f"{', '.join(sorted(missing)[:_SHOWN])}. Load it with ema=False.")
    return {key: ema_tensors[ema_key(key)] for key in unet}


def vae_part(tensors, source):
    """A VAE's tensors, LDM- or diffusers-named, bundled or not, as a `Part`."""
    prefix = next((p for p in VAE_FILE_PREFIXES if any(k.startswith(p) for k in tensors)), "")
    tensors = {key[len(prefix):]: value for key, value in tensors.items()
               if key.startswith(prefix) and not key[len(prefix):].startswith(TRAINING_ONLY_PREFIX)}
    if LDM_MARKER in tensors or any(key.startswith(("decoder.up.", "encoder.down.")) for key in tensors):
        table = ldm_vae_table(prefix)
        return Part(table.rename(tensors, source, "VAE"), source, table.file_key)
    return Part(tensors, source, lambda key: prefix + key)


def read_vae(vae, allow_pickle=False):
    """A separate VAE (a file, a diffusers VAE folder or pipeline folder) as a `Part`."""
    path = Path(vae)
    if path.is_dir():
        path = vae_folder_file(path)
    return vae_part(read_state_dict(path, allow_pickle), str(path))


def read_single_file(path, unet_config, text_width, vae=None, ema=False, allow_pickle=False):
    """{"text_encoder", "unet", "vae": `Part`} of a single-file SD 1.x checkpoint.

    Args:
        path: the checkpoint (.safetensors; .ckpt/.pth/.pt/.bin with allow_pickle).
        unet_config, text_width: what the models are built as, to refuse
            other families before building them.
        vae: a separate VAE used in place of the file's (see the module doc).
        ema: use the UNet's EMA weights where the file has them.
    Raises:
        CheckpointError: another family (SDXL, SD 2.x, inpainting), a file
            without a text encoder, or without a VAE and no `vae`, or keys
            no part of SD 1.x.
    """
    source = str(path)
    state_dict = read_state_dict(path, allow_pickle)
    check_sd1_checkpoint(state_dict, unet_config, text_width, source)
    tensors, ema_tensors = split_checkpoint(state_dict, source)
    del state_dict
    if not tensors["text_encoder"]:
        raise CheckpointError(f"{source} has no text encoder ({TEXT_PREFIX}* keys): it is no "
                              "complete SD 1.x checkpoint.")
    if vae is not None:
        vae_weights = read_vae(vae, allow_pickle)
    elif tensors["vae"]:
        vae_weights = vae_part({VAE_PREFIX + k: v for k, v in tensors["vae"].items()}, source)
    else:
        raise CheckpointError(
            f"{source} has no VAE ({VAE_PREFIX}* keys): pass one with vae= (--vae), e.g. "
            "vae-ft-mse-840000-ema-pruned.safetensors.")
    table = ldm_unet_table(unet_config)
    unet = choose_unet_weights(tensors["unet"], ema_tensors, ema, source)
    return {
        "text_encoder": Part(tensors["text_encoder"], source, lambda key: TEXT_PREFIX + key),
        "unet": Part(table.rename(unet, source, "UNet"), source, table.file_key),
        "vae": vae_weights,
    }


def read_single_file_vae(path, vae=None, allow_pickle=False):
    """The VAE `read_single_file` uses, reading no other tensor (for the VAE
    encoder, built on first use)."""
    if vae is not None:
        return read_vae(vae, allow_pickle)
    return vae_part(read_state_dict(path, allow_pickle, prefixes=(VAE_PREFIX,)), str(path))


def floating_dtype(*parts):
    """The one floating-point dtype of the parts' tensors (float16 for a
    half-precision file), or None where they mix several."""
    dtypes = {value.dtype for part in parts for value in part.tensors.values()
              if value.dtype.kind == "f" or value.dtype.name == "bfloat16"}  # ml_dtypes' is kind "V"
    return dtypes.pop() if len(dtypes) == 1 else None


def fill_single_file(parts, text_encoder, unet, decoder, encoder=None):
    """Fill our models from `read_single_file`'s parts; each model is filled
    whole or not at all.

    Args:
        text_encoder: a model from `kcv_sd.text_encoder.build_text_encoder`.
        unet: a `kcv_sd.unet.UNet` built with diffusers' numerics
            (`kcv_sd.config.SD15_DIFFUSERS`).
        decoder, encoder: from `kcv_sd.vae.build_decoder` / `build_encoder`
            (encoder None: the decoder only).
    """
    check_diffusers_numerics(unet)
    convert_clip_text_encoder(**_arguments(parts["text_encoder"]), text_encoder=text_encoder)
    fill_diffusers_unet(**_arguments(parts["unet"]), unet=unet)
    fill_vae(parts["vae"], decoder, encoder)


def fill_vae(part, decoder, encoder=None):
    convert_diffusers_vae(**_arguments(part), decoder=decoder, encoder=encoder)


def _arguments(part):
    return {"state_dict": part.tensors, "source": part.source, "file_key": part.file_key}
