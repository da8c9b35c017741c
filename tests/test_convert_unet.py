"""A diffusers UNet2DConditionModel, converted, predicts diffusers' noise, with and
without ControlNet residuals."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import control_image, random_inputs
from references import (
    TINY_CONTROLNETS,
    diffusers_controlnet,
    diffusers_residuals,
    diffusers_unet,
    nchw,
    nhwc,
    numpy_state_dict,
)

from kcv_sd.config import SD15_DIFFUSERS
from kcv_sd.convert import convert_diffusers_unet
from kcv_sd.unet import control_input_names

TOLERANCE = 1e-4


def diffusers_noise(unet, inputs, timesteps, residuals=None):
    control = {}
    if residuals is not None:
        control = {
            "down_block_additional_residuals": [nchw(r) for r in residuals[:-1]],
            "mid_block_additional_residual": nchw(residuals[-1]),
        }
    with torch.no_grad():
        noise = unet(nchw(inputs["latent"]), torch.from_numpy(timesteps),
                     encoder_hidden_states=torch.from_numpy(inputs["context"]), **control).sample
    return nhwc(noise)


# Latent sizes; 9x13, 60x80 (a 640x480 image) and 54x96 are odd at some
# level, where each upsampling lands on its skip connection's size.
@pytest.mark.parametrize("height,width", [(8, 16), (9, 13), (60, 80), (54, 96)])
@pytest.mark.parametrize("name", sorted(TINY_CONTROLNETS))
def test_tiny_unet_matches_diffusers_with_and_without_residuals(name, height, width):
    config = TINY_CONTROLNETS[name].unet
    reference = diffusers_unet(config, seed=7)
    unet = convert_diffusers_unet(numpy_state_dict(reference), config)
    inputs, timesteps = random_inputs(config, height=height, width=width)
    # Residuals as a ControlNet makes them, so they are of realistic size.
    controlnet = diffusers_controlnet(TINY_CONTROLNETS[name], seed=8)
    residuals = diffusers_residuals(controlnet, inputs, timesteps, control_image(2, height, width))

    plain = np.asarray(unet.model()(inputs))
    np.testing.assert_allclose(plain, diffusers_noise(reference, inputs, timesteps),
                               atol=TOLERANCE, rtol=0)

    control = dict(zip(control_input_names(config), residuals))
    controlled = np.asarray(unet.model(with_control=True)({**inputs, **control}))
    expected = diffusers_noise(reference, inputs, timesteps, residuals)
    np.testing.assert_allclose(controlled, expected, atol=TOLERANCE, rtol=0)
    assert np.abs(controlled - plain).max() > 100 * TOLERANCE  # the residuals mattered


@pytest.mark.full_size
def test_sd15_unet_maps_all_686_keys():
    """Key and shape coverage at full size; the tiny tests above prove the numbers."""
    with torch.device("meta"):  # names and shapes, no memory
        reference = UNet2DConditionModel(cross_attention_dim=768)
    state_dict = {key: np.zeros(tuple(value.shape), np.float16)
                  for key, value in reference.state_dict().items()}
    assert len(state_dict) == 686
    unet = convert_diffusers_unet(state_dict, SD15_DIFFUSERS)
    assert unet.model().count_params() == sum(v.size for v in state_dict.values())
