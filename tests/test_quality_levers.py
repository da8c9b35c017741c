"""The opt-in levers that trade a little quality for time, against their
authors' code on diffusers' pipeline: DeepCache (`DeepCache.DeepCacheSDHelper`)
and token merging (`tomesd.apply_patch`). The same tiny random model (saved in diffusers' layout
and loaded from that folder), the same noise, final latents compared."""

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
from kcv_sd.token_merging import bipartite_matching

DeepCache = pytest.importorskip("DeepCache")
tomesd = pytest.importorskip("tomesd")
tomesd_merge = pytest.importorskip("tomesd.merge")

HEIGHT, WIDTH, STEPS, TOKENS, INTERVAL = 64, 96, 7, 7, 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    references = tiny_family_references(seed=5)
    folder = write_diffusers_folder(tmp_path_factory.mktemp("tiny"), state_dicts(references))
    return references["unet"], Pipeline(model="tiny", precision="float32", weights=str(folder))


def reference_run(torch_unet, run_id=0):
    """(diffusers' final latents for `run(pipeline, **call)`, our inputs):
    DPM++ 2M, guidance 7.5, random text encodings and noise."""
    reference = StableDiffusionPipeline(vae=stand_in_vae(), text_encoder=None, tokenizer=None, unet=torch_unet,
                                        scheduler=reference_scheduler("dpmpp_2m"), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(run_id)
    cond, uncond = rng.standard_normal((2, 1, TOKENS, torch_unet.config.cross_attention_dim)).astype("float32")
    noise = rng.standard_normal((1, HEIGHT // 8, WIDTH // 8, 4)).astype("float32")

    def run():
        with torch.no_grad():
            return nhwc(reference(
                prompt_embeds=torch.from_numpy(cond), negative_prompt_embeds=torch.from_numpy(uncond),
                height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=7.5,
                latents=nchw(noise), output_type="latent").images)

    return reference, run, noise, np.concatenate([uncond, cond])


def test_final_latents_match_deepcache(models):
    torch_unet, ours = models
    reference, run, noise, context = reference_run(torch_unet)
    helper = DeepCache.DeepCacheSDHelper(pipe=reference)
    helper.set_params(cache_interval=INTERVAL, cache_branch_id=0)
    helper.enable()
    try:
        expected = run()
    finally:
        helper.disable()
    cached = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m", deep_cache=INTERVAL))
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-4)
    full = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m"))
    assert np.abs(full - cached).max() > 100 * 1e-4  # the cache changed the result: the test can fail


@pytest.mark.parametrize("height,width,ratio", [(8, 8, 0.5), (7, 9, 0.3), (12, 16, 0.75)])
def test_token_matching_is_tomesds(height, width, ratio):
    """Our merge and unmerge against tomesd's `bipartite_soft_matching_random2d`
    with its top-left destinations (no_rand), odd grids included."""
    x = np.random.default_rng(height).standard_normal((2, height * width, 6)).astype("float32")
    merge, unmerge = tomesd_merge.bipartite_soft_matching_random2d(
        torch.from_numpy(x), width, height, 2, 2, int(height * width * ratio), no_rand=True)
    expected = merge(torch.from_numpy(x)).numpy()
    ours_merge, ours_unmerge = bipartite_matching(x, height, width, ratio)
    merged = np.asarray(ours_merge(x))
    assert merged.shape == expected.shape
    # Each token's merged value, back in its place (the merged sequence's
    # order is free: attention does not see it), and a function of it.
    for function in (lambda t: t, lambda t: t * 2 + 1):
        np.testing.assert_allclose(np.asarray(ours_unmerge(function(merged))),
                                   unmerge(function(torch.from_numpy(expected))).numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(ours_unmerge(merged)), x)  # tokens were merged


def test_final_latents_match_tomesd(models):
    torch_unet, ours = models
    reference, run, noise, context = reference_run(torch_unet, run_id=1)
    tomesd.apply_patch(reference, ratio=0.5, use_rand=False)  # tomesd's defaults, top-left destinations
    try:
        expected = run()
    finally:
        tomesd.remove_patch(reference)
    merged = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m", token_merging=0.5))
    np.testing.assert_allclose(merged, expected, rtol=1e-4, atol=1e-4)
    plain = np.asarray(ours.denoise(noise, context, STEPS, 7.5, True, sampler="dpmpp_2m"))
    assert np.abs(plain - merged).max() > 100 * 1e-4  # merging changed the result: the test can fail


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
    ({"token_merging": 1.0}, "token_merging=1.0"),
    ({"token_merging": float("nan")}, "token_merging=nan"),
])
def test_bad_uses_are_one_line(tiny_pipeline, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        tiny_pipeline("a", width=WIDTH, height=HEIGHT, num_inference_steps=2, **options)
