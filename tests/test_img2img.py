"""img2img and inpainting against diffusers, the VAE encoder against
KerasCV's, and `strength` in the tiny pipeline.

Noise levels and truncated schedules are compared with diffusers'
schedulers. diffusers' img2img and inpainting pipelines (the latter's
4-channel-UNet branch, which blends latents) run on the same converted tiny
UNet with the init latents handed in directly (a 4-channel `image` skips
their VAE), so the final latents compare closely, as in
tests/test_controlnet_pipeline.py. Inpainting masks are aligned to 8x8
blocks, where diffusers' nearest-neighbour downsampling and our any-pixel
rule agree.
"""

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)
from helpers import (
    HEIGHT,
    WIDTH,
    assert_close,
    block_mask,
    compiled_run,
    eager_run,
    fake_unet,
)
from keras.src.legacy.saving import legacy_h5_format
from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
from PIL import Image
from references import (
    MORE_REFERENCE_SCHEDULERS,
    REFERENCE_SCHEDULERS,
    TINY_FAMILY_DIFFUSERS,
    converted_pipeline,
    diffusers_unet,
    nchw,
    nhwc,
    reference_scheduler,
    stand_in_vae,
)

from kcv_sd.components import FAMILIES, Components
from kcv_sd.image_inputs import latent_repaint_mask
from kcv_sd.pipeline import ImageStart, Pipeline, initial_latent, to_uint8
from kcv_sd.prepare import steps_skipped
from kcv_sd.samplers import SAMPLERS
from kcv_sd.samplers.base import add_noise
from kcv_sd.weights import KERASCV_FILES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers
SHAPE = (2, 8, 8, 4)
STRENGTHS = [0.3, 0.75, 1.0]


def diffusers_img2img_scheduler(name, num_steps, strength):
    """A reference scheduler set up as diffusers' img2img pipeline leaves it."""
    scheduler = reference_scheduler(name)
    scheduler.set_timesteps(num_steps)
    skip = steps_skipped(num_steps, strength)
    if hasattr(scheduler, "set_begin_index"):  # not PNDM's
        scheduler.set_begin_index(skip)
    return scheduler, scheduler.timesteps[skip:]


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("num_steps", [4, 25])
# PNDM's img2img runs on the steps kept, not on diffusers' cut list of calls (kcv_sd.samplers.pndm).
@pytest.mark.parametrize("name", [name for name in (*REFERENCE_SCHEDULERS, *MORE_REFERENCE_SCHEDULERS)
                                  if name != "pndm"])
def test_noise_levels_match_diffusers_add_noise(name, num_steps, strength):
    rng = np.random.default_rng(0)
    sample, noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
    schedule = SAMPLERS[name].schedule(num_steps, steps_skipped(num_steps, strength))
    scheduler, timesteps = diffusers_img2img_scheduler(name, num_steps, strength)
    np.testing.assert_array_equal(schedule.timesteps, timesteps.numpy().astype(np.float32))
    # The img2img start, as the pipeline asks for it (begin index set).
    expected = scheduler.add_noise(torch.from_numpy(sample), torch.from_numpy(noise), timesteps[:1])
    np.testing.assert_allclose(add_noise(sample, noise, schedule.noise_levels[0]), expected, rtol=2e-5, atol=2e-5)
    # Every level inpainting blends to, looked up by timestep.
    fresh = reference_scheduler(name)
    fresh.set_timesteps(num_steps)
    for level, t in zip(schedule.noise_levels, timesteps):
        expected = fresh.add_noise(torch.from_numpy(sample), torch.from_numpy(noise), t[None])
        np.testing.assert_allclose(add_noise(sample, noise, level), expected, rtol=2e-5, atol=2e-5)
    assert schedule.noise_levels[-1].tolist() == [1, 0]  # after the last step: clean


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("num_steps", [5, 20])
@pytest.mark.parametrize("name", ["dpmpp_2m", "euler"])
def test_truncated_schedule_steps_as_diffusers_img2img(name, num_steps, strength):
    """Same start, same stand-in model: the same trajectory. DPM-Solver's
    first step run is first order wherever the schedule is cut."""
    rng = np.random.default_rng(1)
    init, start_noise = rng.standard_normal((2, *SHAPE), dtype=np.float32)
    schedule = SAMPLERS[name].schedule(num_steps, steps_skipped(num_steps, strength))
    noise = rng.standard_normal((len(schedule), *SHAPE), dtype=np.float32)
    scheduler, timesteps = diffusers_img2img_scheduler(name, num_steps, strength)
    sample = scheduler.add_noise(torch.from_numpy(init), torch.from_numpy(start_noise), timesteps[:1])
    expected = []
    for i, t in enumerate(timesteps):
        eps = fake_unet(scheduler.scale_model_input(sample, t), torch.from_numpy(noise[i]))
        sample = scheduler.step(eps, t, sample).prev_sample
        expected.append(sample.numpy())

    start = add_noise(init, start_noise, schedule.noise_levels[0])
    unscaled = dataclasses.replace(schedule, init_noise_sigma=1.0)  # the start is already at its level
    ours = eager_run(SAMPLERS[name], unscaled, start, noise, np.asarray)
    assert_close(ours, np.stack(expected), rtol=2e-5)
    assert_close(compiled_run(SAMPLERS[name], unscaled, start, noise), ours, rtol=1e-6)


@pytest.mark.parametrize("skip", [0, 1, 3])
@pytest.mark.parametrize("name", [name for name, sampler in SAMPLERS.items() if not sampler.stochastic])
def test_noise_levels_agree_with_the_step_math(name, skip):
    """Fed the true noise, each step lands exactly on the next noise level:
    levels and coefficient rows describe the same latents (DDIM included,
    which has no diffusers reference here). PNDM's last step lands on
    alpha_cumprod[0], not on the clean latents its last level says
    (inpainting blends those in after it, as diffusers)."""
    rng = np.random.default_rng(2)
    clean, noise = rng.standard_normal((2, *SHAPE))
    sampler = SAMPLERS[name]
    schedule = sampler.schedule(6, skip)
    sample = add_noise(clean, noise, schedule.noise_levels[0])
    state = sampler.initial_state(sample)
    levels = schedule.noise_levels[1:-1] if name == "pndm" else schedule.noise_levels[1:]
    for row, level in zip(schedule.coefficients, levels):
        sample, state = sampler.step(sample, noise, row, state)
        np.testing.assert_allclose(sample, add_noise(clean, noise, level), atol=2e-5)


def test_schedule_cut_at_the_end_runs_nothing():
    for sampler in SAMPLERS.values():
        schedule = sampler.schedule(4, 4)
        assert len(schedule) == 0 and schedule.noise_levels.tolist() == [[1, 0]]
        with pytest.raises(ValueError):
            sampler.schedule(4, 5)


def test_steps_skipped_follows_diffusers():
    assert [steps_skipped(10, s) for s in (0, 0.05, 0.3, 0.75, 0.99, 1)] == [10, 10, 7, 3, 1, 0]


def test_start_latents():
    """img2img starts at the first level's add_noise (no init_noise_sigma on
    top); full-strength inpainting starts from pure noise, as diffusers."""
    schedule = SAMPLERS["euler"].schedule(4)
    init, noise = np.full(SHAPE, 0.5, np.float32), np.ones(SHAPE, np.float32)
    img2img = initial_latent(noise, schedule, ImageStart(init, 1.0))
    np.testing.assert_allclose(img2img, 0.5 + schedule.noise_levels[0][1])
    inpaint = initial_latent(noise, schedule, ImageStart(init, 1.0, mask=np.ones((1, 8, 8, 1))))
    np.testing.assert_allclose(inpaint, schedule.init_noise_sigma)
    np.testing.assert_allclose(schedule.init_noise_sigma, schedule.noise_levels[0][1], rtol=1e-6)


def test_image_encoder_matches_kerascv(tmp_path):
    """Our encoder loads KerasCV's `vae_encoder.h5` and computes the same."""
    reference = ImageEncoder(download_weights=False)
    with h5py.File(tmp_path / KERASCV_FILES["image_encoder"].filename, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    components = Components(FAMILIES["sd15"], None, None, None, str(tmp_path), "float32")
    image = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    expected = np.asarray(reference(image))
    np.testing.assert_allclose(np.asarray(components.image_encoder(image)), expected,
                               atol=1e-5 * np.abs(expected).max())


def test_encoder_is_built_on_first_use_from_its_own_seed():
    def tiny(seed):
        return Components(FAMILIES["tiny"], None, None, None, "random", "float32", seed=seed)

    components = tiny(0)
    assert components._image_encoder is None
    first = components.image_encoder
    assert components.image_encoder is first
    kernels = [np.asarray(w) for w in first.weights if len(w.shape) > 1]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(
        kernels, [w for w in tiny(0).image_encoder.weights if len(w.shape) > 1]))
    assert not np.array_equal(kernels[0], np.asarray(tiny(1).image_encoder.weights[0]))


# diffusers' img2img pipeline on the same tiny UNet (images of helpers' HEIGHT x WIDTH).
TOKENS = 7


@pytest.fixture(scope="module")
def unet_pair():
    torch_unet = diffusers_unet(TINY_FAMILY_DIFFUSERS, seed=10)
    torch_unet.register_to_config(sample_size=HEIGHT // 8)  # diffusers' pipelines check it
    return converted_pipeline(torch_unet, TINY_FAMILY_DIFFUSERS), torch_unet


def reference_inputs(seed=0):
    """Prompt encodings, init latents and the noise diffusers draws from `seed`."""
    rng = np.random.default_rng(seed)
    cond, uncond = rng.standard_normal((2, 1, TOKENS, TINY_FAMILY_DIFFUSERS.context_dim)).astype("float32")
    init = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")
    noise = torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=torch.Generator().manual_seed(seed))
    return cond, uncond, init, nhwc(noise)


@pytest.mark.parametrize("sampler,strength", [("euler", 0.6), ("dpmpp_2m", 0.75), ("euler", 1.0)])
def test_img2img_final_latents_match_diffusers(unet_pair, sampler, strength):
    ours, torch_unet = unet_pair
    cond, uncond, init, noise = reference_inputs()
    reference = StableDiffusionImg2ImgPipeline(
        vae=None, text_encoder=None, tokenizer=None, unet=torch_unet,
        scheduler=reference_scheduler(sampler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    reference.vae_scale_factor = 8
    reference.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            image=nchw(init), strength=strength, num_inference_steps=5, guidance_scale=7.5,
            generator=torch.Generator().manual_seed(0), output_type="latent").images

    latent = ours.denoise(noise, np.concatenate([uncond, cond]), 5, 7.5, True, sampler=sampler,
                          start=ImageStart(init, strength))
    np.testing.assert_allclose(np.asarray(latent), nhwc(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,strength", [("euler", 1.0), ("euler", 0.7), ("dpmpp_2m", 0.7)])
def test_inpainting_final_latents_match_diffusers(unet_pair, sampler, strength):
    ours, torch_unet = unet_pair
    cond, uncond, init, noise = reference_inputs(seed=3)
    mask = block_mask()
    vae = stand_in_vae()
    reference = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=torch_unet, scheduler=reference_scheduler(sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    init_nchw = torch.from_numpy(np.ascontiguousarray(init.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        expected = reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            image=init_nchw, masked_image_latents=init_nchw, mask_image=Image.fromarray(mask),
            height=HEIGHT, width=WIDTH, strength=strength, num_inference_steps=5, guidance_scale=7.5,
            generator=torch.Generator().manual_seed(3), output_type="latent").images

    start = ImageStart(init, strength, mask=latent_repaint_mask(mask))
    latent = ours.denoise(noise, np.concatenate([uncond, cond]), 5, 7.5, True, sampler=sampler, start=start)
    np.testing.assert_allclose(np.asarray(latent), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


# The tiny pipeline end to end.
ARGS = dict(num_inference_steps=4, seed=5)


@pytest.fixture(scope="module")
def init_image():
    """A smooth colour field: something a VAE round trip keeps recognisable."""
    y, x = np.mgrid[0:64, 0:128] / 64.0
    return (np.stack([np.sin(x), np.cos(y), np.sin(x + y)], -1) * 100 + 120).astype("uint8")


def test_strength_zero_is_the_vae_round_trip(tiny_pipeline, init_image):
    encoded = tiny_pipeline.encode_images(init_image[None])
    latents = tiny_pipeline("a", init_image=init_image, strength=0, output_type="latent", **ARGS)
    np.testing.assert_array_equal(latents, encoded)
    pixels = tiny_pipeline("a", init_image=init_image, strength=0.1, output_type="np", **ARGS)  # 0 steps too
    np.testing.assert_array_equal(pixels, to_uint8(tiny_pipeline.decode(encoded)))


def test_lower_strength_stays_closer_to_the_init_image(tiny_pipeline, init_image):
    encoded = np.asarray(tiny_pipeline.encode_images(init_image[None]))

    def distance(strength):
        latents = tiny_pipeline(["a", "b"], init_image=init_image, strength=strength, num_images_per_prompt=2,
                                num_inference_steps=10, seed=1, output_type="latent")
        return np.abs(latents - encoded).mean()

    low, middle, high = distance(0.2), distance(0.5), distance(0.9)
    assert 0 < low < 0.8 * middle and middle < 0.8 * high


def test_size_defaults_to_the_init_image_rounded_down(tiny_pipeline):
    init = np.zeros((130, 200, 3), np.uint8)
    images = tiny_pipeline("a", init_image=init, num_inference_steps=2, output_type="np")
    assert images.shape == (1, 128, 200, 3) and np.isfinite(images).all()  # 130x200 to multiples of 8
    images = tiny_pipeline("a", init_image=init, width=64, num_inference_steps=2, output_type="pil")
    assert images[0].size == (64, 128)


def test_compiled_loop_img2img_matches_step_by_step(tiny_components, tiny_pipeline, init_image):
    looped = Pipeline(components=tiny_components, compiled_loop=True)
    args = dict(init_image=init_image, strength=0.5, output_type="latent", **ARGS)
    expected = tiny_pipeline("a cat", **args)
    np.testing.assert_allclose(looped("a cat", **args), expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)
