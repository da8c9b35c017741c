"""Dropping classifier-free guidance late in the schedule (`cfg_cutoff_step_ratio`).

The reference is diffusers' `StableDiffusionPipeline` with its
`SDCFGCutoffCallback`, given the same converted tiny UNet, text encodings
and noise, with the Euler sampler (which matches diffusers step for step).
"""

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from diffusers.callbacks import SDCFGCutoffCallback
from references import TINY_FAMILY_DIFFUSERS, converted_pipeline, diffusers_unet, nchw, nhwc, stand_in_vae

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.pipeline import Pipeline
from kcv_sd.prepare import guided_steps

pytestmark = pytest.mark.slow  # its tests together trace for over a minute: handed out first

UNET_CONFIG = TINY_FAMILY_DIFFUSERS
HEIGHT, WIDTH, STEPS, TOKENS = 64, 64, 5, 7
ARGS = dict(width=64, height=64, num_inference_steps=4, seed=6, output_type="latent")


def test_guided_steps_follow_diffusers_callback_index():
    # The callback switches guidance off after step int(steps * ratio).
    assert guided_steps(10, 0.4) == 5
    assert guided_steps(10, 0.0) == 1
    assert guided_steps(10, 1.0) == 10
    assert guided_steps(10, None) is None
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidArgumentError, match="cfg_cutoff_step_ratio"):
            guided_steps(10, bad)


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_final_latents_match_diffusers_cfg_cutoff_callback(ratio):
    torch_unet = diffusers_unet(UNET_CONFIG, seed=21)
    ours = converted_pipeline(torch_unet, UNET_CONFIG)
    vae = stand_in_vae()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    reference = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=torch_unet,
                                        scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(3)
    cond, uncond = rng.standard_normal((2, 1, TOKENS, UNET_CONFIG.context_dim)).astype("float32")
    noise = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")

    with torch.no_grad():
        expected = reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=7.5,
            latents=nchw(noise), output_type="latent",
            callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=ratio),
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        ).images
        fully_guided = reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=7.5,
            latents=nchw(noise), output_type="latent",
        ).images
    assert not np.allclose(nhwc(expected), nhwc(fully_guided), atol=1e-3)  # the cutoff changed something

    context = np.concatenate([uncond, cond])
    latent = ours.denoise(noise, context, STEPS, 7.5, True, sampler="euler",
                          guided_steps=guided_steps(STEPS, ratio))
    np.testing.assert_allclose(np.asarray(latent), nhwc(expected), rtol=1e-4, atol=1e-4)


def test_cutoff_runs_conditional_only_steps(tiny_pipeline, monkeypatch):
    guided_flags = []
    original = tiny_pipeline.step_function

    def recording(spec):
        guided_flags.append(spec.guided)
        return original(spec)

    monkeypatch.setattr(tiny_pipeline, "step_function", recording)
    cut = tiny_pipeline("a house", cfg_cutoff_step_ratio=0.25, **ARGS)
    assert guided_flags == [True, True, False, False]
    assert not np.allclose(cut, tiny_pipeline("a house", **ARGS))
    np.testing.assert_array_equal(tiny_pipeline("a house", cfg_cutoff_step_ratio=1.0, **ARGS),
                                  tiny_pipeline("a house", **ARGS))


def test_compiled_loop_with_cutoff_matches_step_by_step(tiny_components, tiny_pipeline, shared_controlnet):
    """Both of the loop's run-time choices at once: guidance (cut off after
    half the steps) and the ControlNet (its window ends at half)."""
    looped = Pipeline(components=tiny_components, compiled_loop=True)
    control = dict(controlnet=shared_controlnet(4),
                   image=np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8),
                   control_guidance_end=0.5)
    args = dict(cfg_cutoff_step_ratio=0.5, sampler="dpmpp_2m", **control, **ARGS)
    expected = tiny_pipeline("a house", **args)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(looped("a house", **args), expected, atol=1e-5 * scale, rtol=1e-4)
