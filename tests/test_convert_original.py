"""lllyasviel's format (control_model.*) converts to the same weights as diffusers'.

Original names are written here from cldm.py's layout (a formula per
module, independent of the converter's table), and that naming is checked
against diffusers' own single-file converter.
"""

import re

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from references import (
    TINY_CONTROLNETS,
    diffusers_controlnet,
    numpy_state_dict,
)

from kcv_sd.config import CONTROLNET_SD15
from kcv_sd.convert import CheckpointError, convert_controlnet
from kcv_sd.convert.controlnet_original import rename_original_keys

RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
            "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def original_key(key, config):
    """cldm.py's name for a diffusers ControlNet key (without control_model.)."""
    per_level = config.unet.layers_per_block + 1  # blocks, then a downsample
    hint_convs_before_out = 2 * len(config.conditioning_channels) - 1  # each then a SiLU
    rules = [
        (r"time_embedding\.linear_1\.", lambda m: "time_embed.0."),
        (r"time_embedding\.linear_2\.", lambda m: "time_embed.2."),
        (r"conv_in\.", lambda m: "input_blocks.0.0."),
        (r"controlnet_cond_embedding\.conv_in\.", lambda m: "input_hint_block.0."),
        (r"controlnet_cond_embedding\.blocks\.(\d+)\.",
         lambda m: f"input_hint_block.{2 * int(m[1]) + 2}."),
        (r"controlnet_cond_embedding\.conv_out\.",
         lambda m: f"input_hint_block.{2 * hint_convs_before_out}."),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"input_blocks.{1 + int(m[1]) * per_level + int(m[2])}.0.{RESBLOCK[m[3]]}."),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.",
         lambda m: f"input_blocks.{1 + int(m[1]) * per_level + int(m[2])}.1."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
         lambda m: f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op."),
        (r"mid_block\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"middle_block.{2 * int(m[1])}.{RESBLOCK[m[2]]}."),
        (r"mid_block\.attentions\.0\.", lambda m: "middle_block.1."),
        (r"controlnet_down_blocks\.(\d+)\.", lambda m: f"zero_convs.{m[1]}.0."),
        (r"controlnet_mid_block\.", lambda m: "middle_block_out.0."),
    ]
    for pattern, name in rules:
        match = re.match(pattern, key)
        if match:
            return name(match) + key[match.end():]
    raise AssertionError(f"no original name for {key}")


def original_state_dict(diffusers_state_dict, config, prefix="control_model."):
    return {prefix + original_key(k, config): v for k, v in diffusers_state_dict.items()}


def keras_weights(controlnet):
    return [np.asarray(v) for v in controlnet.model().weights]


@pytest.fixture(scope="module", params=sorted(TINY_CONTROLNETS))
def case(request):
    config = TINY_CONTROLNETS[request.param]
    state_dict = numpy_state_dict(diffusers_controlnet(config, seed=11))
    return config, state_dict, keras_weights(convert_controlnet(state_dict, config))


def test_original_names_agree_with_diffusers_single_file_converter(case):
    config, state_dict, _ = case
    original = {k: torch.from_numpy(v) for k, v in original_state_dict(state_dict, config).items()}
    back = convert_controlnet_checkpoint(original, {"layers_per_block": config.unet.layers_per_block})
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key].numpy(), value, err_msg=key)


@pytest.mark.parametrize("prefix", ["control_model.", ""])
def test_original_format_gives_the_diffusers_format_weights(case, prefix):
    config, state_dict, expected = case
    converted = convert_controlnet(original_state_dict(state_dict, config, prefix), config)
    for got, want in zip(keras_weights(converted), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_controlnet_1_0_files_drop_the_bundled_stable_diffusion(case):
    config, state_dict, expected = case
    bundled = original_state_dict(state_dict, config)
    scalar = np.zeros((), np.float32)
    bundled.update({
        "model.diffusion_model.out.0.weight": scalar,
        "first_stage_model.decoder.conv_out.weight": scalar,
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": scalar,
        "betas": scalar,
        "alphas_cumprod": scalar,
    })
    converted = convert_controlnet(bundled, config)
    for got, want in zip(keras_weights(converted), expected, strict=True):
        np.testing.assert_array_equal(got, want)

    with pytest.raises(CheckpointError, match="lora_unet.weight"):
        convert_controlnet({**bundled, "lora_unet.weight": scalar}, config)


def test_unknown_original_key_is_named(case):
    config, state_dict, _ = case
    original = original_state_dict(state_dict, config)
    original["control_model.input_blocks.99.0.in_layers.0.weight"] = np.zeros(4, np.float32)
    with pytest.raises(CheckpointError, match=r"input_blocks\.99\.0\.in_layers\.0\.weight"):
        convert_controlnet(original, config)


def test_sd15_original_names_cover_all_340_diffusers_keys():
    with torch.device("meta"):
        reference = ControlNetModel(cross_attention_dim=768)
    keys = list(reference.state_dict())
    assert len(keys) == 340
    original = {original_key(k, CONTROLNET_SD15): k for k in keys}
    renamed = rename_original_keys(original, CONTROLNET_SD15, "sd15 names")
    assert renamed == {k: k for k in keys}
