"""Converters from PyTorch checkpoints (diffusers and original formats) to our Keras models.

Every converter maps each source key to one Keras weight through explicit
tables and fails, naming the keys, unless both sides are fully covered.
"""

from kcv_sd.convert.controlnet_loader import convert_controlnet, convert_controlnet_file
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.sd_folder import convert_diffusers_folder
from kcv_sd.convert.single_file import fill_single_file, read_single_file
from kcv_sd.convert.state_dict import read_state_dict
from kcv_sd.convert.text_encoder_diffusers import convert_clip_text_encoder
from kcv_sd.convert.unet_diffusers import (
    convert_diffusers_unet,
    fill_diffusers_unet,
    load_diffusers_unet,
)
from kcv_sd.convert.vae_diffusers import convert_diffusers_vae

__all__ = [
    "CheckpointError",
    "convert_clip_text_encoder",
    "convert_controlnet",
    "convert_controlnet_file",
    "convert_diffusers_folder",
    "convert_diffusers_unet",
    "convert_diffusers_vae",
    "fill_diffusers_unet",
    "fill_single_file",
    "load_diffusers_unet",
    "read_single_file",
    "read_state_dict",
]
