"""Any width and height that is a multiple of 8, as diffusers takes them.

Latents odd at some UNet level (72x104 pixels: a 9x13 latent; 640x480: 60x80,
whose third level is 15x20) take each upsampling to its skip connection's
size. The reference is diffusers' pipeline on the same tiny random model,
saved in diffusers' layout and loaded from that folder.
"""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import block_mask
from references import (
    REFERENCE_SCHEDULERS,
    nchw,
    nhwc,
    reference_scheduler,
    stand_in_vae,
    state_dicts,
    tiny_family_references,
    write_diffusers_folder,
)

from controlnet.sizing import fit_control_image, output_size
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_inputs import latent_repaint_mask
from kcv_sd.pipeline import Pipeline
from kcv_sd.sizes import SIZE_MULTIPLE, check_size
from kcv_sd.unet_blocks import Upsample
from kcv_sd.vae import PIXELS_PER_LATENT

STEPS, TOKENS = 4, 7
ODD_SIZES = [(72, 104), (480, 640)]  # (height, width)
ARGS = dict(num_inference_steps=2, seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(diffusers UNet, our pipeline loaded from the folder it was saved to).
    Layer routes chosen at run time: one trace per sampler for both sizes
    (static routes at these sizes: test_static_routes_xla_and_the_compiled_loop_agree)."""
    references = tiny_family_references(seed=11)
    folder = write_diffusers_folder(tmp_path_factory.mktemp("tiny"), state_dicts(references))
    return references["unet"], Pipeline(model="tiny", precision="float32", weights=str(folder), static_routes=False)


@pytest.mark.parametrize("height,width", ODD_SIZES)
@pytest.mark.parametrize("sampler", sorted(REFERENCE_SCHEDULERS))
def test_final_latents_match_diffusers(models, sampler, height, width):
    torch_unet, ours = models
    reference = StableDiffusionPipeline(vae=stand_in_vae(), text_encoder=None, tokenizer=None, unet=torch_unet,
                                        scheduler=reference_scheduler(sampler), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(height)
    cond, uncond = rng.standard_normal((2, 1, TOKENS, torch_unet.config.cross_attention_dim)).astype("float32")
    noise = rng.standard_normal((1, height // 8, width // 8, 4)).astype("float32")
    with torch.no_grad():
        expected = nhwc(reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            height=height, width=width, num_inference_steps=STEPS, guidance_scale=7.5,
            latents=nchw(noise), output_type="latent").images)
    latent = np.asarray(ours.denoise(noise, np.concatenate([uncond, cond]), STEPS, 7.5, True, sampler=sampler))
    assert latent.shape == expected.shape == (1, height // 8, width // 8, 4)
    np.testing.assert_allclose(latent, expected, rtol=1e-4, atol=1e-4)


def test_upsampling_crops_only_where_a_level_is_odd(tiny_components):
    upsamples = [layer for layer in tiny_components.unet.model()._flatten_layers() if isinstance(layer, Upsample)]
    assert sorted(layer.level for layer in upsamples) == [1, 2, 3]
    for side in (8, 64, 96, 256):  # multiples of 64 pixels: the path they always took
        assert {layer.route((1, side, side, 77)) for layer in upsamples} == {"doubled"}
    # 480x640: levels of 60x80, 30x40, 15x20, 8x10; the upsampling into 15x20 crops.
    assert {layer.level: layer.route((1, 60, 80, 77)) for layer in upsamples} == {
        1: "doubled", 2: "doubled", 3: "cropped"}


def test_static_routes_xla_and_the_compiled_loop_agree(tiny_components, tiny_pipeline, tiny_xla_pipeline):
    """At 72x104 (a 9x13 latent) every upsampling crops: 9 -> 5 -> 3 -> 2 and back.
    The compiled loop runs under XLA here (it failed there before: a step's
    timestep embedding was a slice of run-time size)."""
    height, width = ODD_SIZES[0]
    args = dict(width=width, height=height, output_type="latent", sampler="dpmpp_2m", **ARGS)
    expected = tiny_pipeline("a lighthouse", **args)  # layer routes chosen at run time
    assert expected.shape == (1, height // 8, width // 8, 4)
    scale = np.abs(expected).max()
    xla_loop = Pipeline(components=tiny_components, compiled_loop=True, jit_compile=True)  # the whole run in XLA
    for other in (Pipeline(components=tiny_components), xla_loop, tiny_xla_pipeline):
        np.testing.assert_allclose(other("a lighthouse", **args), expected, atol=1e-5 * scale, rtol=1e-4)


@pytest.fixture(scope="module")
def photo():
    """A 640x480 image, the size of most depth cameras' maps."""
    return (np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8")


def test_img2img_keeps_the_init_image_size(tiny_pipeline, photo):
    images = tiny_pipeline("a", init_image=photo, strength=0.5, output_type="np", **ARGS)
    assert images.shape == (1, 480, 640, 3)


def test_inpainting_keeps_what_the_mask_keeps(tiny_pipeline, photo):
    mask = block_mask(480, 640)
    images = tiny_pipeline("a", init_image=photo, mask_image=mask, output_type="np", **ARGS)
    assert images.shape == (1, 480, 640, 3)
    np.testing.assert_array_equal(images[0][~mask], photo[~mask])
    latents = tiny_pipeline("a", init_image=photo, mask_image=mask, strength=0.6, output_type="latent", **ARGS)
    kept = latent_repaint_mask(mask)[0, ..., 0] == 0
    np.testing.assert_array_equal(latents[0][kept], np.asarray(tiny_pipeline.encode_images(photo[None]))[0][kept])


def test_tiled_decode_at_640x480(tiny_pipeline):
    """Two 512-pixel tiles across, one down (see test_tiled_vae for how close tiles come)."""
    whole, tiled = (tiny_pipeline("a", width=640, height=480, tiled_decode=tiled, output_type="np", **ARGS)
                    for tiled in (False, True))
    assert tiled.shape == whole.shape == (1, 480, 640, 3)
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.8


def test_a_control_image_of_the_requested_size_is_used_as_it_is(photo):
    np.testing.assert_array_equal(fit_control_image(photo, "resize", 640, 480), photo)
    # `native` keeps its 4:3 to the nearest multiple of 8 within 512x512 pixels.
    assert output_size(photo.shape, "native") == (584, 440)


@pytest.mark.parametrize("value, message", [
    (100, "width=100 is not supported: sizes are ints, multiples of 8 from 64 to 2048; the nearest are 96 and 104."),
    (60, "width=60 is not supported: sizes are ints, multiples of 8 from 64 to 2048; use 64."),
    (2050, "width=2050 is not supported: sizes are ints, multiples of 8 from 64 to 2048; use 2048."),
    (640.0, "width=640.0 is not supported: sizes are ints, multiples of 8 from 64 to 2048."),
])
def test_other_sizes_get_one_line_naming_the_nearest(value, message):
    assert SIZE_MULTIPLE == PIXELS_PER_LATENT  # the rule is one latent pixel
    with pytest.raises(InvalidArgumentError) as error:
        check_size("width", value)
    assert str(error.value) == message
    for valid in (64, 72, 480, 2048):
        check_size("width", valid)
