"""DeepCache against its authors' package: `DeepCache.DeepCacheSDHelper` on
diffusers' pipeline and `deep_cache=` on ours, the same tiny random model
(saved in diffusers' layout and loaded from that folder), the same noise."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from references import (
    nchw,
    nhwc,
    reference_scheduler,
    stand_in_vae,
    state_dicts,
    tiny_family_references,
    write_diffusers_folder,
)

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.pipeline import Pipeline

DeepCache = pytest.importorskip("DeepCache")

HEIGHT, WIDTH, STEPS, TOKENS, INTERVAL = 64, 96, 7, 7, 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    references = tiny_family_references(seed=5)
    folder = write_diffusers_folder(tmp_path_factory.mktemp("tiny"), state_dicts(references))
    return references["unet"], Pipeline(model="tiny", precision="float32", weights=str(folder))


def test_final_latents_match_deepcache(models):
    torch_unet, ours = models
    reference = StableDiffusionPipeline(vae=stand_in_vae(), text_encoder=None, tokenizer=None, unet=torch_unet,
                                        scheduler=reference_scheduler("dpmpp_2m"), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    helper = DeepCache.DeepCacheSDHelper(pipe=reference)
    helper.set_params(cache_interval=INTERVAL, cache_branch_id=0)
    rng = np.random.default_rng(0)
    cond, uncond = rng.standard_normal((2, 1, TOKENS, torch_unet.config.cross_attention_dim)).astype("float32")
    noise = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")
    helper.enable()
    try:
        with torch.no_grad():
            expected = nhwc(reference(
                prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
                height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=7.5,
                latents=nchw(noise), output_type="latent").images)
    finally:
        helper.disable()
    context = np.concatenate([uncond, cond])
    cached = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m", deep_cache=INTERVAL))
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-4)
    full = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m"))
    assert np.abs(full - cached).max() > 100 * 1e-4  # the cache changed the result: the test can fail


def test_interval_one_is_the_full_unet(models):
    _, ours = models
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")
    context = rng.standard_normal((2, TOKENS, ours.config.context_dim)).astype("float32")
    full = np.asarray(ours.denoise(noise, context, 3, 7.5, True, sampler="dpmpp_2m"))
    np.testing.assert_array_equal(
        np.asarray(ours.denoise(noise, context, 3, 7.5, True, sampler="dpmpp_2m", deep_cache=1)), full)


@pytest.mark.parametrize("options,message", [
    ({"deep_cache": 0}, "deep_cache=0"),
    ({"deep_cache": 2.5}, "deep_cache=2.5"),
    ({"deep_cache": 3, "cfg_cutoff_step_ratio": 0.0}, "cfg_cutoff_step_ratio"),
    ({"deep_cache": 3, "controlnet": "owner/name", "image": np.zeros((64, 96, 3), np.uint8)}, "ControlNets"),
])
def test_bad_uses_are_one_line(tiny_pipeline, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        tiny_pipeline("a", width=WIDTH, height=HEIGHT, num_inference_steps=2, **options)
