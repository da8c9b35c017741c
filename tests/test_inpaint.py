"""Inpainting in the tiny pipeline (standard 4-channel UNet), ControlNet with
img2img and inpainting, and bad img2img / inpainting input.

The blended-latent loop itself is checked against diffusers in test_img2img.py.
"""

import numpy as np
import pytest
from helpers import HEIGHT, WIDTH, block_mask
from PIL import Image

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_inputs import latent_repaint_mask
from kcv_sd.pipeline import Pipeline

ARGS = dict(num_inference_steps=3, seed=4)


@pytest.fixture(scope="module")
def init_image():
    return (np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype("uint8")


@pytest.fixture(scope="module")
def tiny_controlnet(shared_controlnet):
    """One instance for all tests: compiled steps are cached per ControlNet."""
    return shared_controlnet(1)


def test_masked_out_pixels_are_the_inputs(tiny_pipeline, init_image):
    mask = block_mask()
    images = tiny_pipeline("a", init_image=Image.fromarray(init_image), mask_image=Image.fromarray(mask),
                           num_images_per_prompt=2, output_type="np", **ARGS)
    assert images.shape == (2, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(images[:, ~mask], np.broadcast_to(init_image[~mask], images[:, ~mask].shape))
    assert (images[:, mask] != init_image[mask]).mean() > 0.5


def test_kept_latents_end_as_the_init_latents(tiny_pipeline, init_image):
    mask = block_mask()
    latents = tiny_pipeline("a", init_image=init_image, mask_image=mask, strength=0.6, output_type="latent", **ARGS)
    encoded = np.asarray(tiny_pipeline.encode_images(init_image[None]))
    kept = latent_repaint_mask(mask)[0, ..., 0] == 0
    np.testing.assert_array_equal(latents[0][kept], encoded[0][kept])
    assert np.isfinite(latents).all() and np.abs(latents[0][~kept] - encoded[0][~kept]).max() > 1e-3


def test_black_mask_returns_the_input(tiny_pipeline, init_image):
    images = tiny_pipeline("a", init_image=init_image, mask_image=np.zeros((HEIGHT, WIDTH), np.uint8),
                           output_type="np", **ARGS)
    np.testing.assert_array_equal(images[0], init_image)


def test_mask_of_another_size_is_stretched(tiny_pipeline, init_image):
    """A half-size mask covers the same region once stretched to the output."""
    small = block_mask()[::2, ::2]
    images = tiny_pipeline("a", init_image=init_image, mask_image=small.astype(np.float32), output_type="np", **ARGS)
    kept = ~block_mask()
    np.testing.assert_array_equal(images[0][kept], init_image[kept])


def test_controlnet_runs_over_the_steps_img2img_keeps(tiny_pipeline, init_image, tiny_controlnet,
                                                      controlnet_step_calls):
    """As diffusers' ControlNet img2img: the guidance window spans the steps run."""
    images = tiny_pipeline("a", init_image=init_image, strength=0.5, image=init_image,
                           controlnet=tiny_controlnet, control_guidance_start=0.5,
                           num_inference_steps=8, output_type="np")
    assert controlnet_step_calls == [False, False, True, True]
    assert images.shape == (1, HEIGHT, WIDTH, 3)


def test_compiled_loop_inpainting_with_controlnet_matches_step_by_step(tiny_components, tiny_pipeline,
                                                                        init_image, tiny_controlnet):
    looped = Pipeline(components=tiny_components, compiled_loop=True)
    args = dict(init_image=init_image, mask_image=block_mask(), strength=0.8, image=init_image,
                controlnet=tiny_controlnet, control_guidance_end=0.5, output_type="latent", **ARGS)
    expected = tiny_pipeline("a cat", **args)
    np.testing.assert_allclose(looped("a cat", **args), expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(strength=1.5), "strength=1.5.*from 0"),
    (dict(strength=-0.1), "strength=-0.1"),
    (dict(strength="high"), "strength='high'"),
    (dict(init_image=None, strength=0.5), "need an init image"),
    (dict(init_image=None, mask_image=np.ones((64, 64), bool)), "need an init image"),
    (dict(init_image=np.zeros((40, 300, 3), np.uint8), width=None, height=None),
     "init image is 300x40 pixels.*width= and height="),
    (dict(init_image=np.zeros((64, 64, 5), np.uint8)), "init image has shape"),
    (dict(mask_image=np.zeros((64, 64, 2))), "mask image has shape"),
    (dict(tiled_decode="yes"), "tiled_decode='yes'"),
])
def test_bad_image_input(tiny_pipeline, kwargs, match):
    kwargs = {"init_image": np.zeros((64, 64, 3), np.uint8), "width": 64, "height": 64, **kwargs}
    with pytest.raises(InvalidArgumentError, match=match):
        tiny_pipeline("a", **kwargs)


@pytest.mark.parametrize("which", ["init_image", "mask_image"])
def test_unreadable_image_files(tiny_pipeline, tmp_path, which):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    kwargs = {"init_image": np.zeros((64, 64, 3), np.uint8), which: str(broken)}
    with pytest.raises(InvalidArgumentError, match=f"Cannot read the {which.replace('_', ' ')} .*broken.png"):
        tiny_pipeline("a", **kwargs)
    with pytest.raises(InvalidArgumentError, match="missing.png does not exist"):
        tiny_pipeline("a", **{**kwargs, which: str(tmp_path / "missing.png")})
