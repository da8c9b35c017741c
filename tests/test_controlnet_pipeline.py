"""ControlNet in the pipeline, checked against diffusers' ControlNet pipeline.

Both pipelines get the same converted tiny UNet and ControlNets (all weights
random), the same text encodings, control images and initial noise, and the
Euler sampler (which matches diffusers step for step); the final latents are
compared. This pins conditioning scale, multi-ControlNet sums, guess mode and
the start/end window to diffusers' semantics.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetPipeline,
)
from PIL import Image
from references import (
    TINY_FAMILY_CONTROLNET,
    converted_pipeline,
    diffusers_controlnet,
    diffusers_unet,
    nchw,
    nhwc,
    numpy_state_dict,
    stand_in_vae,
)

from kcv_sd.control import guidance_keep, plan_control
from kcv_sd.convert import convert_controlnet

CONFIG = TINY_FAMILY_CONTROLNET
HEIGHT, WIDTH, STEPS, TOKENS = 64, 128, 4, 7


@pytest.fixture(scope="module")
def models():
    torch_unet = diffusers_unet(CONFIG.unet, seed=10)
    torch_controlnets = [diffusers_controlnet(CONFIG, seed=s) for s in (11, 12)]
    ours = converted_pipeline(torch_unet, CONFIG.unet)
    controlnets = [convert_controlnet(numpy_state_dict(m), CONFIG) for m in torch_controlnets]
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    vae = stand_in_vae()
    reference = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=torch_unet,
        controlnet=MultiControlNetModel(torch_controlnets), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return ours, controlnets, reference, torch_controlnets


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    cond = rng.standard_normal((1, TOKENS, CONFIG.unet.context_dim)).astype("float32")
    uncond = rng.standard_normal((1, TOKENS, CONFIG.unet.context_dim)).astype("float32")
    noise = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")
    images = [(rng.random((HEIGHT, WIDTH, 3)) * 255).astype("uint8") for _ in range(2)]
    return cond, uncond, noise, images


CASES = {
    "one controlnet": dict(count=1),
    "scaled": dict(count=1, controlnet_conditioning_scale=0.6),
    "two summed": dict(count=2, controlnet_conditioning_scale=[0.7, 1.3]),
    "guess mode": dict(count=1, guess_mode=True),
    "window": dict(count=2, control_guidance_start=[0.0, 0.5], control_guidance_end=[0.5, 1.0]),
    "late start": dict(count=1, control_guidance_start=0.5),
}


@pytest.mark.parametrize("case", CASES)
def test_final_latents_match_diffusers(models, case):
    ours, controlnets, reference, torch_controlnets = models
    options = dict(CASES[case])
    count = options.pop("count")
    cond, uncond, noise, images = inputs()
    scale = options.pop("controlnet_conditioning_scale", 1.0)
    start = options.pop("control_guidance_start", 0.0)
    end = options.pop("control_guidance_end", 1.0)
    guess_mode = options.pop("guess_mode", False)

    with torch.no_grad():
        reference.controlnet = MultiControlNetModel(torch_controlnets[:count])
        expected = reference(
            prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
            image=[Image.fromarray(im) for im in images[:count]],
            height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=7.5,
            latents=nchw(noise), output_type="latent",
            controlnet_conditioning_scale=scale if count > 1 else [scale],
            guess_mode=guess_mode,
            control_guidance_start=start, control_guidance_end=end,
        ).images

    plan = plan_control(controlnets[:count], images[:count], STEPS, WIDTH, HEIGHT, scale, guess_mode, start,
                        end).loaded(CONFIG, "float32")
    plan.images = [im[None] for im in plan.images]
    context = np.concatenate([uncond, cond])
    latent = ours.denoise(noise, context, STEPS, 7.5, True, sampler="euler", control=plan)
    np.testing.assert_allclose(np.asarray(latent), nhwc(expected), rtol=1e-4, atol=1e-4)


def test_guidance_window_follows_diffusers_rule():
    assert guidance_keep(4, 0.0, 1.0) == [True] * 4
    assert guidance_keep(4, 0.5, 1.0) == [False, False, True, True]
    assert guidance_keep(4, 0.0, 0.5) == [True, True, False, False]
    assert guidance_keep(10, 0.25, 0.75) == [False] * 3 + [True] * 4 + [False] * 3
