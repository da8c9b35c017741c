"""ControlNet checkpoints of either format -> a Keras `ControlNet`."""

from kcv_sd.config import CONTROLNET_SD15
from kcv_sd.convert.checks import check_text_width, describe, reject_sdxl
from kcv_sd.convert.controlnet_diffusers import convert_diffusers_controlnet
from kcv_sd.convert.controlnet_original import (
    control_model_tensors,
    rename_original_keys,
)
from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.state_dict import read_state_dict

DIFFUSERS_PREFIXES = ("controlnet_cond_embedding.", "controlnet_down_blocks.")
ORIGINAL_PREFIXES = ("control_model.", "input_hint_block.", "zero_convs.")


def controlnet_format(state_dict, source):
    """The naming a ControlNet state dict uses, "diffusers" or "original".

    Refuses SDXL ControlNets and checkpoints that are no ControlNet at all.
    """
    reject_sdxl(state_dict, source)
    if any(key.startswith(DIFFUSERS_PREFIXES) for key in state_dict):
        return "diffusers"
    if any(key.startswith(ORIGINAL_PREFIXES) for key in state_dict):
        return "original"
    raise CheckpointError(
        f"{source} is not a ControlNet: it has no controlnet_cond_embedding.* "
        f"(diffusers) or control_model.* (original) keys; {describe(state_dict)}."
    )


def convert_controlnet(state_dict, config=CONTROLNET_SD15, source="the state dict"):
    """A `ControlNet` from a diffusers or original (lllyasviel) state dict.

    Args:
        state_dict: {key: numpy array} in PyTorch layouts.
        config: the `ControlNetConfig` the checkpoint was trained with.
        source: what the tensors came from, for error messages.
    Raises:
        CheckpointError: wrong model, unsupported family, or any key or
            shape that does not match the configuration.
    """
    if controlnet_format(state_dict, source) == "original":
        state_dict = rename_original_keys(control_model_tensors(state_dict, source),
                                          config, source)
    check_text_width(state_dict, config.unet.context_dim, source)
    return convert_diffusers_controlnet(state_dict, config, source)


def convert_controlnet_file(path, config=CONTROLNET_SD15, allow_pickle=False):
    """`convert_controlnet` on a file: .safetensors, or .pth/.ckpt with allow_pickle."""
    return convert_controlnet(read_state_dict(path, allow_pickle), config, source=str(path))
