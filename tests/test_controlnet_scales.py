"""Conditioning scale and guess mode scale residuals exactly as diffusers does."""

import itertools

import numpy as np
import pytest
from helpers import control_image, random_inputs
from references import TINY_CONTROLNETS, diffusers_controlnet, diffusers_residuals

from kcv_sd.control import control_scales, scale_residuals
from kcv_sd.unet import control_input_names


@pytest.fixture(scope="module")
def reference():
    config = TINY_CONTROLNETS["four-levels"]
    model = diffusers_controlnet(config, seed=2)
    inputs, timesteps = random_inputs(config.unet)
    image = control_image(2, 8, 8)

    def residuals(**kwargs):
        return diffusers_residuals(model, inputs, timesteps, image, **kwargs)

    return control_input_names(config.unet), residuals


@pytest.mark.parametrize("conditioning_scale", [1.0, 0.55])
@pytest.mark.parametrize("guess_mode", [False, True])
def test_scales_match_diffusers(reference, conditioning_scale, guess_mode):
    names, residuals = reference
    unscaled = dict(zip(names, residuals()))
    expected = residuals(conditioning_scale=conditioning_scale, guess_mode=guess_mode)
    scaled = scale_residuals(unscaled, names, conditioning_scale, guess_mode)
    assert list(scaled) == names
    for name, want in zip(names, expected):
        np.testing.assert_allclose(scaled[name], want, rtol=1e-6, atol=1e-7, err_msg=name)


def test_guess_mode_ramps_from_a_tenth_to_the_scale():
    scales = control_scales(13, conditioning_scale=0.8, guess_mode=True)
    assert len(scales) == 13
    assert scales[0] == pytest.approx(0.08) and scales[-1] == pytest.approx(0.8)
    assert all(a < b for a, b in itertools.pairwise(scales))
    assert control_scales(13, 0.8) == [0.8] * 13


def test_scaling_follows_names_not_dict_order():
    names = ["control_0", "control_1", "control_mid"]
    residuals = {name: np.ones(2, np.float32) for name in reversed(names)}
    scaled = scale_residuals(residuals, names, guess_mode=True)
    assert list(scaled) == names
    assert scaled["control_0"][0] == pytest.approx(0.1)
    assert scaled["control_mid"][0] == pytest.approx(1.0)
