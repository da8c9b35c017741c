"""Checkpoints that do not fit are refused with the project's error, naming the problem."""

import dataclasses

import numpy as np
import pytest
from diffusers import ControlNetModel
from references import (
    TINY_CONTROLNETS,
    diffusers_controlnet,
    diffusers_unet,
    diffusers_unet_kwargs,
    numpy_state_dict,
    randomize_,
)

from kcv_sd.convert import CheckpointError, convert_controlnet, convert_diffusers_unet
from kcv_sd.errors import KcvSdError

CONFIG = TINY_CONTROLNETS["two-levels"]


@pytest.fixture(scope="module")
def controlnet_weights():
    return numpy_state_dict(diffusers_controlnet(CONFIG))


@pytest.fixture(scope="module")
def unet_weights():
    return numpy_state_dict(diffusers_unet(CONFIG.unet))


def refused(state_dict, match, convert=convert_controlnet, config=CONFIG):
    with pytest.raises(CheckpointError, match=match) as error:
        convert(state_dict, config)
    assert isinstance(error.value, KcvSdError)
    return str(error.value)


def test_a_unet_is_not_a_controlnet(unet_weights):
    refused(unet_weights, "not a ControlNet.*diffusers UNet")


def test_unrelated_tensors_are_not_a_controlnet():
    refused({"encoder.layer.0.weight": np.zeros(3, np.float32)},
            "not a ControlNet.*encoder.layer.0.weight")


def test_a_controlnet_is_not_a_unet(controlnet_weights):
    refused(controlnet_weights, "not a diffusers UNet.*a diffusers ControlNet",
            convert_diffusers_unet, CONFIG.unet)


def test_a_stable_diffusion_checkpoint_is_not_a_controlnet():
    original_sd = {"model.diffusion_model.out.0.weight": np.zeros(4, np.float32),
                   "first_stage_model.decoder.conv_out.weight": np.zeros(4, np.float32)}
    refused(original_sd, "not a ControlNet.*original-format \\(CompVis\\) Stable Diffusion")


def test_sdxl_controlnet_is_not_supported():
    kwargs = diffusers_unet_kwargs(CONFIG.unet)
    sdxl = ControlNetModel(
        **{**kwargs, "cross_attention_dim": 2048},
        conditioning_embedding_out_channels=CONFIG.conditioning_channels,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64,
    )
    state_dict = numpy_state_dict(randomize_(sdxl, seed=0))
    message = refused(state_dict, "SDXL")
    assert "not supported" in message


def test_original_format_sdxl_controlnet_is_not_supported(controlnet_weights):
    marker = {"control_model.label_emb.0.0.weight": np.zeros((4, 4), np.float32)}
    refused({**controlnet_weights, **marker}, "SDXL.*label_emb")


def test_sdxl_unet_is_not_supported(unet_weights):
    marker = {"add_embedding.linear_1.weight": np.zeros((4, 4), np.float32)}
    refused({**unet_weights, **marker}, "SDXL", convert_diffusers_unet, CONFIG.unet)


def test_sd2_text_width_is_not_supported():
    sd2_config = dataclasses.replace(CONFIG, unet=dataclasses.replace(CONFIG.unet, context_dim=1024))
    state_dict = numpy_state_dict(diffusers_controlnet(sd2_config))
    refused(state_dict, "1024-wide text encodings \\(SD2.x\\).*24-wide")


def test_missing_key_is_named(controlnet_weights):
    state_dict = dict(controlnet_weights)
    del state_dict["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"]
    refused(state_dict, "missing keys: down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight")


def test_extra_key_is_named(controlnet_weights):
    extra = {"down_blocks.0.resnets.0.extra.weight": np.zeros(4, np.float32)}
    refused({**controlnet_weights, **extra}, "unexpected keys: down_blocks.0.resnets.0.extra.weight")


def test_shape_mismatch_is_named(controlnet_weights):
    state_dict = dict(controlnet_weights)
    state_dict["controlnet_mid_block.weight"] = np.zeros((32, 32, 3, 3), np.float32)
    refused(state_dict, r"shape mismatches: controlnet_mid_block.weight \(32, 32, 3, 3\) "
                        r"\(needs \(1, 1, 32, 32\) in Keras layout\)")


def test_another_shape_of_model_reports_every_problem_at_once(controlnet_weights):
    wider = dataclasses.replace(CONFIG, conditioning_channels=(8, 8, 16, 64))
    message = refused(controlnet_weights, "shape mismatches", config=wider)
    assert "controlnet_cond_embedding.conv_out.weight" in message
    assert "controlnet_cond_embedding.blocks.5.weight" in message


def test_linear_projections_are_a_shape_mismatch_not_a_crash():
    kwargs = diffusers_unet_kwargs(CONFIG.unet)
    linear = ControlNetModel(**kwargs, use_linear_projection=True,
                             conditioning_embedding_out_channels=CONFIG.conditioning_channels)
    state_dict = numpy_state_dict(randomize_(linear, seed=0))
    refused(state_dict, r"down_blocks.1.attentions.0.proj_in.weight \(32, 32\)")
