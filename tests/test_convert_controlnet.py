"""diffusers ControlNets with random weights, converted, give diffusers' residuals."""

import numpy as np
import pytest
from helpers import control_image, random_inputs
from references import (
    TINY_CONTROLNETS,
    diffusers_controlnet,
    diffusers_residuals,
    numpy_state_dict,
)

from kcv_sd.config import CONTROLNET_SD15
from kcv_sd.controlnet import ControlNet
from kcv_sd.convert import convert_controlnet

# Float32 round-off is ~1e-6 here; a wrong numerics flag (tanh GELU, GroupNorm
# epsilon 1e-5) shifts residuals by ~5e-5, so tiny configs are held to 1e-5.
TINY_TOLERANCE = 1e-5
SD15_TOLERANCE = 1e-4


def assert_residuals_match(controlnet, reference, config, height, width, seed=0,
                           tolerance=TINY_TOLERANCE):
    inputs, timesteps = random_inputs(config.unet, height=height, width=width, seed=seed)
    image = control_image(2, height, width, seed=seed + 1)
    expected = diffusers_residuals(reference, inputs, timesteps, image)
    ours = controlnet.model()({**inputs, "control_image": image})
    assert list(ours) == controlnet.output_names
    for name, want in zip(controlnet.output_names, expected):
        got = np.asarray(ours[name])
        assert got.shape == want.shape, name
        assert np.abs(want).max() > 0.1, f"{name} is too small to prove anything"
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", sorted(TINY_CONTROLNETS))
def test_tiny_controlnet_matches_diffusers(name):
    config = TINY_CONTROLNETS[name]
    reference = diffusers_controlnet(config, seed=3)
    controlnet = convert_controlnet(numpy_state_dict(reference), config)
    # Two sizes through one model: the spatial size is dynamic.
    assert_residuals_match(controlnet, reference, config, height=8, width=16)
    assert_residuals_match(controlnet, reference, config, height=16, width=8, seed=5)
    # Latents odd at some level: 9x13 (every level), 60x80 (a 640x480 image).
    for seed, (height, width) in enumerate([(9, 13), (60, 80)], start=6):
        assert_residuals_match(controlnet, reference, config, height=height, width=width, seed=seed)


@pytest.mark.full_size
def test_sd15_controlnet_matches_diffusers_on_all_340_keys():
    reference = diffusers_controlnet(CONTROLNET_SD15, seed=0)
    state_dict = numpy_state_dict(reference)
    assert len(state_dict) == 340
    controlnet = convert_controlnet(state_dict, CONTROLNET_SD15)
    del state_dict
    assert controlnet.model().count_params() == sum(p.numel() for p in reference.parameters())
    # 16x8 latent: the middle block still attends over two positions.
    assert_residuals_match(controlnet, reference, CONTROLNET_SD15, height=16, width=8,
                           tolerance=SD15_TOLERANCE)


# Keras' h5 writer calls np.array(variable, copy=False), which numpy 2 warns about.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_converted_weights_reload_from_a_keras_file(tmp_path):
    config = TINY_CONTROLNETS["two-levels"]
    reference = diffusers_controlnet(config, seed=4)
    converted = convert_controlnet(numpy_state_dict(reference), config)
    path = tmp_path / "controlnet.weights.h5"
    converted.model().save_weights(path)
    del reference, converted

    reloaded = ControlNet(config, initializer="zeros")
    reloaded.model().load_weights(path)
    reference = diffusers_controlnet(config, seed=4)
    assert_residuals_match(reloaded, reference, config, height=8, width=8)
