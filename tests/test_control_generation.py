"""Generating with ControlNets on the tiny family: conditions, sizing, CLI, bad input."""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file
from references import diffusers_unet_kwargs, numpy_state_dict, randomize_

from controlnet.control_images import canny_edges, depth_to_control, load_depth, normals_from_depth
from kcv_sd import samples
from kcv_sd.cli import main
from kcv_sd.config import CONTROLNET_TINY
from kcv_sd.controlnet import ControlNet
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError
from kcv_sd.png import read_parameters

pytestmark = pytest.mark.slow  # its tests together trace for over a minute: handed out first

ARGS = dict(num_inference_steps=2, seed=3, output_type="latent")


@pytest.fixture(scope="module")
def tiny_controlnets(shared_controlnet):
    return [shared_controlnet(seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def wide_depth():
    return load_depth(samples.sample_depth_path("room_wide"))


def test_depth_normal_and_canny_together(tiny_pipeline, tiny_controlnets, wide_depth):
    images = [depth_to_control(wide_depth), normals_from_depth(wide_depth), canny_edges(wide_depth)]
    plain = tiny_pipeline("a room", width=256, height=128, **ARGS)
    combined = tiny_pipeline("a room", width=256, height=128, image=images,
                             controlnet=tiny_controlnets, controlnet_conditioning_scale=[1.0, 0.5, 0.5],
                             **ARGS)
    assert combined.shape == plain.shape and np.isfinite(combined).all()
    assert np.abs(combined - plain).max() > 1e-3


def test_native_sizing_takes_the_control_images_aspect(tiny_pipeline, tiny_controlnets, wide_depth):
    images = tiny_pipeline("a room", image=depth_to_control(wide_depth), controlnet=tiny_controlnets[0],
                           control_sizing="native", num_inference_steps=1, output_type="np")
    assert images.shape == (1, 328, 784, 3)  # 1216x512 at ~512x512 pixels, to multiples of 8
    with pytest.raises(InvalidArgumentError, match="native"):
        tiny_pipeline("a", width=512, image=depth_to_control(wide_depth),
                      controlnet=tiny_controlnets[0], control_sizing="native")


@pytest.mark.parametrize("mode", ["resize", "crop", "pad"])
def test_sizing_modes_give_the_requested_size(tiny_pipeline, tiny_controlnets, wide_depth, mode):
    images = tiny_pipeline("a", width=128, height=192, image=depth_to_control(wide_depth),
                           controlnet=tiny_controlnets[0], control_sizing=mode,
                           num_inference_steps=1, output_type="np")
    assert images.shape == (1, 192, 128, 3)


def test_controlnet_is_not_run_outside_its_window(tiny_pipeline, tiny_controlnets, wide_depth,
                                                  controlnet_step_calls):
    tiny_pipeline("a", width=128, height=64, image=depth_to_control(wide_depth),
                  controlnet=tiny_controlnets[0], control_guidance_start=0.5,
                  num_inference_steps=4, output_type="latent")
    assert controlnet_step_calls == [False, False, True, True]


def test_controlnet_checkpoint_file_and_cli(tmp_path, wide_depth, generate_on_tiny_pipeline):
    """A diffusers-format tiny ControlNet file drives the CLI end to end."""
    from diffusers import ControlNetModel

    unet_config = dataclasses.replace(CONTROLNET_TINY.unet, transformer_norm_epsilon=1e-6,
                                      gelu_approximate=False)
    torch_model = randomize_(ControlNetModel(**diffusers_unet_kwargs(unet_config),
                                             conditioning_embedding_out_channels=(4, 8, 8, 16)), 0)
    checkpoint = tmp_path / "tiny_controlnet.safetensors"
    save_file(numpy_state_dict(torch_model), str(checkpoint))
    control = tmp_path / "depth.png"
    from PIL import Image

    Image.fromarray(depth_to_control(wide_depth)).save(control)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, [
        "generate", "a room", "--model", "tiny", "--precision", "float32", "--weights", "random", "--steps", "2",
        "--no-progress", "--control", str(control), "--controlnet", str(checkpoint),
        "--control-sizing", "native", "--control-scale", "0.8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    params = read_parameters(out)
    assert (params["width"], params["height"]) == (784, 328)
    assert params["controlnets"] == [str(checkpoint)]
    assert params["controlnet_conditioning_scale"] == 0.8


def test_cli_control_count_mismatch_is_one_line(tmp_path, generate_on_tiny_pipeline):
    result = CliRunner().invoke(main, ["generate", "a", "--model", "tiny", "--precision", "float32", "--weights", "random",
                                       "--control", "a.png", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "1 --control images for 0 --controlnet" in result.output


@pytest.mark.parametrize("kwargs,match", [
    (dict(image=np.zeros((64, 64, 3), np.uint8)), "pass controlnet= too"),
    (dict(controlnet="CN"), "needs a control image"),
    (dict(controlnet=["CN", "CN"], image=[np.zeros((64, 64, 3), np.uint8)]), "1 control images for 2"),
    (dict(controlnet="CN", image=np.zeros((64, 64, 3), np.uint8), control_guidance_start=0.6,
          control_guidance_end=0.4), "need 0 <= start < end"),
    (dict(controlnet="CN", image=np.zeros((40, 400, 3), np.uint8)), "aspect"),
    (dict(controlnet="CN", image=np.zeros((64, 64, 3), np.uint8), control_sizing="zoom"), "zoom"),
    (dict(controlnet="CN", image=np.zeros((64, 64, 5), np.uint8)), "shape"),
])
def test_bad_control_input(tiny_pipeline, tiny_controlnets, kwargs, match):
    kwargs = {k: ([tiny_controlnets[0]] * len(v) if isinstance(v, list) else tiny_controlnets[0])
              if k == "controlnet" else v for k, v in kwargs.items()}
    with pytest.raises(InvalidArgumentError, match=match):
        tiny_pipeline("a", width=64, height=64, **kwargs)


def test_controlnet_for_another_unet_is_refused(tiny_pipeline):
    other_unet = dataclasses.replace(CONTROLNET_TINY.unet, block_channels=(8, 16, 16, 32))
    other = ControlNet(dataclasses.replace(CONTROLNET_TINY, unet=other_unet))
    with pytest.raises(InvalidArgumentError, match="another UNet"):
        tiny_pipeline("a", width=64, height=64, image=np.zeros((64, 64, 3), np.uint8), controlnet=other)


def test_unreadable_control_image(tiny_pipeline, tiny_controlnets, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidArgumentError, match="Cannot read the control image"):
        tiny_pipeline("a", width=64, height=64, image=str(broken), controlnet=tiny_controlnets[0])


def test_repo_id_offline_is_a_clear_error(tiny_pipeline, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFoundError, match="lllyasviel/sd-controlnet-depth.*connection"):
        tiny_pipeline("a", width=64, height=64, image=np.zeros((64, 64, 3), np.uint8),
                      controlnet="lllyasviel/sd-controlnet-depth")


def test_unknown_controlnet_source(tiny_pipeline):
    with pytest.raises(WeightsNotFoundError, match="neither a checkpoint file nor"):
        tiny_pipeline("a", width=64, height=64, image=np.zeros((64, 64, 3), np.uint8),
                      controlnet="no such file.safetensors")


def test_compiled_loop_with_controlnet_window_matches_steps(tiny_components, tiny_pipeline,
                                                            tiny_controlnets, wide_depth):
    from kcv_sd.pipeline import Pipeline

    looped = Pipeline(components=tiny_components, compiled_loop=True)
    args = dict(width=128, height=64, image=[depth_to_control(wide_depth)] * 2,
                controlnet=tiny_controlnets[:2], control_guidance_start=[0.0, 0.5],
                control_guidance_end=[0.5, 1.0], guess_mode=True, sampler="dpmpp_2m", **ARGS)
    expected = tiny_pipeline("a room", **args)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(looped("a room", **args), expected, atol=1e-5 * scale, rtol=1e-4)



def test_control_images_are_embedded_once_per_call(tiny_pipeline, tiny_controlnets, wide_depth, monkeypatch):
    """Every step reuses the ControlNet's embedding of its control image; a plan embedded beforehand
    (`Pipeline.embed_control`) gives the same latents as one that `denoise` embeds."""
    from kcv_sd.pipeline import Pipeline

    calls = []
    embed = Pipeline.embed_control
    monkeypatch.setattr(Pipeline, "embed_control", lambda self, plan: calls.append(plan) or embed(self, plan))
    image, controlnet = depth_to_control(wide_depth), tiny_controlnets[0]
    tiny_pipeline("a room", width=128, height=64, image=image, controlnet=controlnet, **ARGS)
    assert [plan.controlnets for plan in calls] == [[controlnet]]  # once, for both steps

    plan = tiny_pipeline.plan_control(controlnet, image, 2, 128, 64, batch=1)
    embedded = tiny_pipeline.embed_control(plan)
    assert [tuple(e.shape) for e in embedded.embeddings] == [(1, 8, 16, CONTROLNET_TINY.unet.block_channels[0])]
    context = tiny_pipeline.encode_prompts(["a room", ""])
    noise = np.random.default_rng(3).standard_normal((1, 8, 16, 4)).astype(np.float32)
    latents = [tiny_pipeline.denoise(noise, context, 2, 7.5, True, control=p) for p in (plan, embedded)]
    assert len(calls) == 3  # the call's, `embedded`'s, and `plan`'s inside `denoise`
    np.testing.assert_array_equal(np.asarray(latents[0]), np.asarray(latents[1]))
