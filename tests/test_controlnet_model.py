"""The Keras ControlNet: any size, residuals named and shaped for the UNet's inputs."""

import numpy as np
import pytest
from helpers import control_image, random_inputs

from kcv_sd.config import CONTROLNET_TINY, ControlNetConfig
from kcv_sd.controlnet import ControlNet
from kcv_sd.components import randomize
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.routing import side_at
from kcv_sd.unet import UNet, control_input_names


@pytest.fixture(scope="module")
def tiny_controlnet():
    return ControlNet(CONTROLNET_TINY)


@pytest.fixture(scope="module")
def tiny_unet():
    unet = UNet(CONTROLNET_TINY.unet)
    unet.model(with_control=True)
    randomize(unet.kerascv_layer_order(), seed=0)
    return unet


def run(controlnet, height, width):
    inputs, _ = random_inputs(controlnet.config.unet, height=height, width=width)
    residuals = controlnet.model()({**inputs, "control_image": control_image(2, height, width)})
    return inputs, residuals


@pytest.mark.parametrize("height,width", [(16, 16), (16, 24), (9, 13)])
def test_residuals_fit_the_unet_control_inputs(tiny_controlnet, tiny_unet, height, width):
    _, residuals = run(tiny_controlnet, height, width)
    assert list(residuals) == control_input_names(CONTROLNET_TINY.unet)
    unet_inputs = tiny_unet.model(with_control=True).input
    for name, residual in residuals.items():
        assert residual.shape[-1] == unet_inputs[name].shape[-1], name
    assert residuals["control_0"].shape[1:3] == (height, width)
    bottom = len(CONTROLNET_TINY.unet.block_channels) - 1
    assert residuals["control_mid"].shape[1:3] == (side_at(height, bottom), side_at(width, bottom))


def test_untrained_controlnet_leaves_the_unet_alone(tiny_controlnet):
    _, residuals = run(tiny_controlnet, 8, 16)
    for name, residual in residuals.items():
        assert not np.any(np.asarray(residual)), f"{name}: zero convolutions start at zero"


def test_residuals_steer_the_unet(tiny_unet):
    controlnet = ControlNet(CONTROLNET_TINY)
    controlnet.model()
    randomize([controlnet.conditioning_embedding, *controlnet.zero_convs,
               controlnet.mid_zero_conv], seed=1)
    inputs, residuals = run(controlnet, 8, 16)
    plain = np.asarray(tiny_unet.model()(inputs))
    residuals = {name: np.asarray(r) for name, r in residuals.items()}
    steered = np.asarray(tiny_unet.model(with_control=True)({**inputs, **residuals}))
    assert np.abs(steered - plain).max() > 1e-3


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_embedding_then_step_model_is_the_whole_controlnet(precision):
    """The pipeline embeds the control image once per call and runs the step model every step: the two together
    give the whole model's residuals, bit for bit, in float32 and under a mixed policy."""
    with dtype_policy_scope(precision):
        controlnet = ControlNet(CONTROLNET_TINY)
    controlnet.model()
    randomize([controlnet.conditioning_embedding, *controlnet.zero_convs, controlnet.mid_zero_conv], seed=2)
    inputs, whole = run(controlnet, 8, 16)
    embedding = controlnet.embedding_model()(control_image(2, 8, 16))
    assert embedding.dtype == "float32" and tuple(embedding.shape) == (2, 8, 16, CONTROLNET_TINY.unet.block_channels[0])
    stepped = controlnet.step_model()({**inputs, "control_embedding": np.asarray(embedding)})
    # The whole model lists its layers in call order (timestep MLP, input conv, hint encoder, ...): the order
    # `randomize` draws a seed's weights in, the same as before the two models were split.
    assert controlnet.model().layers[3:6] == [controlnet.time_dense1, controlnet.conv_in,
                                              controlnet.conditioning_embedding]
    assert {id(w) for w in controlnet.step_model().weights} < {id(w) for w in controlnet.model().weights}
    for name in controlnet.output_names:
        assert np.any(np.asarray(whole[name])), name
        np.testing.assert_array_equal(np.asarray(stepped[name]), np.asarray(whole[name]), err_msg=name)


def test_mixed_precision_residuals_are_float16():
    with dtype_policy_scope("mixed_float16"):
        controlnet = ControlNet(CONTROLNET_TINY)
    _, residuals = run(controlnet, 16, 16)
    assert {np.asarray(r).dtype for r in residuals.values()} == {np.dtype("float16")}


def test_conditioning_needs_four_stages():
    with pytest.raises(ValueError, match="4 stages"):
        ControlNetConfig(conditioning_channels=(16, 32, 64))
