"""Text-to-image on the tiny config: sizes, XLA, precision, seeds, batching, CFG."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import random_controlnet

import kcv_sd
from kcv_sd import pipeline as pipeline_module
from kcv_sd.components import load_components
from kcv_sd.pipeline import Pipeline
from kcv_sd.step import StepInputs, guide
from kcv_sd.samplers import KerasCVDDIM
from kcv_sd.unet import timestep_embedding

pytestmark = pytest.mark.slow  # its tests together trace for about four minutes: handed out first

FAST = dict(num_inference_steps=2, seed=7)


@pytest.mark.parametrize("width,height", [(320, 192), (448, 832)])
def test_sizes_not_multiple_of_128(tiny_pipeline, width, height):
    images = tiny_pipeline("a room", width=width, height=height, output_type="np", **FAST)
    assert images.shape == (1, height, width, 3)
    assert images.dtype == np.uint8


def test_pil_output(tiny_pipeline):
    images = tiny_pipeline("a room", width=128, height=64, **FAST)
    assert [im.size for im in images] == [(128, 64)]


def test_xla_on_and_off_agree(tiny_pipeline, tiny_xla_pipeline):
    args = dict(width=320, height=192, output_type="latent", **FAST)
    eager = tiny_pipeline("a street", **args)
    compiled = tiny_xla_pipeline("a street", **args)
    np.testing.assert_allclose(compiled, eager, atol=2e-3, rtol=2e-3)


def compiled_with_xla(fn):
    return fn.get_concrete_function().function_def.attr["_XlaMustCompile"].b


@pytest.mark.parametrize("jit", [False, True])
def test_xla_flag_really_switches_compilation(tiny_components, jit):
    pipeline = Pipeline(components=tiny_components, jit_compile=jit, xla_decoder=jit)
    for fn in (pipeline.step_function(pipeline.step_spec("ddim", True)), pipeline._decode, pipeline._encode):
        assert compiled_with_xla(fn) is jit


@pytest.mark.parametrize("jit, xla_decoder, expected", [
    (False, None, False), (True, None, True), (False, True, True), (True, False, False),
])
def test_decoder_follows_jit_compile_unless_told(tiny_components, jit, xla_decoder, expected):
    pipeline = Pipeline(components=tiny_components, jit_compile=jit, xla_decoder=xla_decoder)
    assert pipeline.xla_decoder is expected and compiled_with_xla(pipeline._decode) is expected
    assert compiled_with_xla(pipeline.step_function(pipeline.step_spec("ddim", True))) is jit


def test_xla_decoder_matches_the_plain_decoder(tiny_components):
    latent = tf.random.normal((1, 8, 16, 4), seed=1)
    plain = Pipeline(components=tiny_components, xla_decoder=False).decode(latent)
    compiled = Pipeline(components=tiny_components, xla_decoder=True).decode(latent)
    np.testing.assert_allclose(compiled, plain, atol=1e-5)


def test_step_traces_once_per_set_of_routes_for_all_steps_and_calls(tiny_components):
    """128x64 and 64x128 have the same routes (same positions per level), 192x64 others."""
    pipeline = Pipeline(components=tiny_components)
    sizes = [(128, 64), (192, 64), (64, 128), (128, 64)]
    for width, height in sizes:
        pipeline("a", width=width, height=height, num_inference_steps=3, output_type="latent")
    pipeline("b", width=128, height=64, num_inference_steps=2, output_type="latent")
    routes = {size: pipeline._route_key((1, size[1] // 8, size[0] // 8), (), 77) for size in sizes}
    assert routes[128, 64] == routes[64, 128] != routes[192, 64]
    for width, height in sizes:
        step = pipeline.step_function(pipeline.step_spec("ddim", True, size=(1, height // 8, width // 8)))
        assert step.experimental_get_tracing_count() == 1
    assert len(pipeline._compiled) == 2
    assert pipeline._decode.experimental_get_tracing_count() == 0


def test_compiled_functions_and_their_controlnets_are_not_kept_forever(tiny_components, monkeypatch):
    """Every new ControlNet gets its own compiled step; once that step falls
    out of the pipeline's cache, the pipeline no longer holds the ControlNet."""
    monkeypatch.setattr(pipeline_module, "COMPILED_FUNCTIONS_KEPT", 1)
    pipeline = Pipeline(components=tiny_components)
    image = np.zeros((64, 64, 3), np.uint8)
    first = random_controlnet(1)
    first_alive = weakref.ref(first)
    for controlnet in (first, random_controlnet(2)):
        pipeline("a", width=64, height=64, num_inference_steps=1, output_type="latent",
                 image=image, controlnet=controlnet)
    del first, controlnet
    gc.collect()
    assert len(pipeline._compiled) == 1
    assert first_alive() is None

@pytest.mark.parametrize("guess_mode", [None, True])
def test_static_routes_give_the_run_time_routes_latents(tiny_components, tiny_pipeline, shared_controlnet,
                                                        guess_mode):
    """`tiny_pipeline` chooses routes at run time; None: no ControlNet. Guess
    mode routes the ControlNet for the conditional half alone; the plain
    ControlNet step's static routes run in the ControlNet parity tests."""
    static = Pipeline(components=tiny_components)
    args = dict(width=192, height=64, num_inference_steps=2, seed=3, output_type="latent")
    if guess_mode is not None:
        args.update(controlnet=shared_controlnet(4), guess_mode=guess_mode,
                    image=np.random.default_rng(0).integers(0, 255, (64, 192, 3), dtype=np.uint8))
    np.testing.assert_allclose(static("a cat", **args), tiny_pipeline("a cat", **args), rtol=1e-5, atol=1e-5)


def test_routed_step_graph_has_no_run_time_choices(tiny_components):
    pipeline = Pipeline(components=tiny_components)
    routed = pipeline.step_function(pipeline.step_spec("ddim", True, size=(1, 8, 16))).get_concrete_function().graph
    any_size = pipeline.step_function(pipeline.step_spec("ddim", True)).get_concrete_function().graph
    assert not [op for op in routed.get_operations() if op.type in ("If", "StatelessIf")]
    assert [op for op in any_size.get_operations() if op.type in ("If", "StatelessIf")]


def test_decoder_traces_once_across_sizes(tiny_components):
    pipeline = Pipeline(components=tiny_components)
    for width in (128, 192):
        pipeline("a", width=width, height=64, num_inference_steps=1, output_type="np")
    assert pipeline._decode.experimental_get_tracing_count() == 1


PRECISION_DTYPES = {  # precision: (UNet compute dtype, text encoder and VAE dtype)
    "float32": ("float32", "float32"),
    "mixed_float16": ("float16", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
    "float16": ("float16", "float16"),
    "bfloat16": ("bfloat16", "bfloat16"),
}


@pytest.mark.parametrize("precision", list(PRECISION_DTYPES))
def test_precision_policies_are_finite_and_scoped(precision):
    keras.config.set_dtype_policy("float32")
    pipeline = Pipeline(model="tiny", weights="random", precision=precision)
    assert keras.config.dtype_policy().name == "float32"
    latents = pipeline("a", width=128, height=64, output_type="latent", **FAST)
    assert latents.dtype == "float32" and np.isfinite(latents).all()
    unet_dtype, outer_dtype = PRECISION_DTYPES[precision]
    assert pipeline.components.unet.conv_in.compute_dtype == unet_dtype
    c = pipeline.components
    for model in (c.text_encoder, c.decoder, c.image_encoder):
        assert {layer.compute_dtype for layer in model._flatten_layers() if layer.weights} == {outer_dtype}
    assert pipeline.encode_prompts(["a"]).dtype == tf.float32
    assert pipeline.decode(tf.constant(latents)).dtype == tf.float32
    assert pipeline.encode_images(np.zeros((1, 64, 128, 3), "uint8")).dtype == tf.float32


def test_bfloat16_images_stay_close_to_float32(tiny_pipeline):
    """Every model in bfloat16 changes the pixels a little, not the image
    (on the tiny model, about as much as bfloat16 in the UNet alone)."""
    full = tiny_pipeline
    half = Pipeline(model="tiny", weights="random", precision="bfloat16")
    args = dict(width=64, height=64, num_inference_steps=2, seed=5, output_type="np")
    a, b = (pipeline("a cat", **args).astype(float) for pipeline in (full, half))
    assert a.std() > 50  # an image with contrast to lose
    assert np.abs(a - b).mean() < 8 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_caller_policy_survives_a_mixed_pipeline():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        Pipeline(model="tiny", weights="random", precision="mixed_float16")
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_pipeline):
    args = dict(width=128, height=64, num_inference_steps=2, output_type="np")
    a = tiny_pipeline("a cat", seed=3, **args)
    b = tiny_pipeline("a cat", seed=3, **args)
    c = tiny_pipeline("a cat", seed=4, **args)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_gives_kerascv_initial_noise(tiny_pipeline):
    """KerasCV draws keras.random.normal(shape, seed); 0 steps would be identity,
    so compare the noise the pipeline starts from via an explicit `latents`."""
    shape = (1, 8, 16, 4)
    noise = keras.random.normal(shape, seed=11)
    from_seed = tiny_pipeline("x", width=128, height=64, seed=11, num_inference_steps=1, output_type="latent")
    from_noise = tiny_pipeline("x", width=128, height=64, latents=noise, num_inference_steps=1, output_type="latent")
    np.testing.assert_array_equal(from_seed, from_noise)


def test_batch_of_prompts_and_images_per_prompt(tiny_pipeline):
    images = tiny_pipeline(["a", "b"], width=64, height=64, num_images_per_prompt=2,
                           output_type="np", **FAST)
    assert images.shape == (4, 64, 64, 3)
    assert not np.array_equal(images[0], images[1])  # different noise per image


def test_prompts_are_encoded_once_each_and_the_empty_prompt_once_per_pipeline(tiny_components):
    pipeline = Pipeline(components=tiny_components)
    encode = pipeline._encode
    encoded_rows = []

    def counting(tokens):
        encoded_rows.append(int(tokens.shape[0]))
        return encode(tokens)

    pipeline._encode = counting
    prompts = ["a cat", "", "a dog", "a cat", ""]
    encodings = pipeline.encode_prompts(prompts).numpy()
    assert encoded_rows == [1, 2]  # the empty prompt, then "a cat" and "a dog"
    separately = encode(tf.constant(pipeline.tokenizer.pad_batch(prompts))).numpy()
    np.testing.assert_allclose(encodings, separately, atol=1e-6)
    pipeline.encode_prompts(["a bird", ""])
    assert encoded_rows == [1, 2, 1]


def test_batched_cfg_equals_two_separate_unet_calls(tiny_pipeline):
    """One 2B UNet call must equal KerasCV's two B calls combined."""
    cfg = tiny_pipeline.config
    rng = np.random.default_rng(0)
    latent = tf.constant(rng.standard_normal((2, 8, 8, 4)), tf.float32)
    cond, uncond = tf.split(tiny_pipeline.encode_prompts(["a", "b", "", ""]), 2)
    t_embed = timestep_embedding(np.array([500.0]), cfg.timestep_dim)
    coefficients = tf.constant([0.6, 0.8, 0.5, 0.866], tf.float32)
    stepped, _ = tiny_pipeline.step_function(tiny_pipeline.step_spec("ddim", True))(StepInputs(
        latent, (), t_embed, tf.concat([uncond, cond], 0), tf.constant(7.5), coefficients))

    unet = tiny_pipeline.components.unet.model()
    t_batch = tf.repeat(t_embed, 2, axis=0)
    noise_cond = unet({"latent": latent, "timestep_embedding": t_batch, "context": cond})
    noise_uncond = unet({"latent": latent, "timestep_embedding": t_batch, "context": uncond})
    expected, _ = KerasCVDDIM().step(latent, guide(noise_uncond, noise_cond, 7.5), coefficients)
    np.testing.assert_allclose(stepped, expected, atol=1e-5)


def test_negative_prompt_steers(tiny_pipeline):
    args = dict(width=64, height=64, output_type="latent", **FAST)
    plain = tiny_pipeline("a cat", **args)
    steered = tiny_pipeline("a cat", negative_prompt="blurry", **args)
    per_prompt = tiny_pipeline(["a cat", "a dog"], negative_prompt=["blurry", "dark"], **args)
    assert np.abs(plain - steered).max() > 1e-4
    np.testing.assert_allclose(per_prompt[:1], steered, atol=1e-3)  # batch-size rounding


def test_guidance_scale_one_skips_the_unconditional_branch(tiny_pipeline):
    args = dict(width=64, height=64, output_type="latent", **FAST)
    tiny_pipeline("a cat", guidance_scale=1.0, **args)
    assert tiny_pipeline.step_function(tiny_pipeline.step_spec("ddim", False)).experimental_get_tracing_count() == 1
    plain = tiny_pipeline("a cat", guidance_scale=1.0, **args)
    guided = tiny_pipeline("a cat", guidance_scale=1.0 + 1e-7, **args)
    np.testing.assert_allclose(plain, guided, atol=1e-4)


def test_generate_caches_its_pipeline():
    a = kcv_sd.generate("a", width=64, height=64, model="tiny", precision="float32", weights="random", output_type="np", **FAST)
    pipeline = kcv_sd.get_pipeline("tiny", "random", "float32", False)
    b = kcv_sd.generate("a", width=64, height=64, model="tiny", precision="float32", weights="random", output_type="np", **FAST)
    assert kcv_sd.get_pipeline("tiny", "random", "float32", False) is pipeline
    np.testing.assert_array_equal(a, b)


def test_random_weights_are_reproducible():
    first = load_components("tiny", "random", seed=5).unet.model().weights
    second = load_components("tiny", "random", seed=5).unet.model().weights
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# A prompt of two 77-token chunks, with weights (kcv_sd.prompts): a 154-token context.
TWO_CHUNKS = "a (cat:1.2) on a [mat], " + "a castle on a hill " * 16


# KerasCV's DDIM, PNDM (n + 1 UNet calls, four latents of state) and Euler
# ancestral (fresh noise each step, drawn alike in both loops); DPM-Solver's
# compiled loops run in test_cfg_cutoff and test_control_generation.
@pytest.mark.parametrize("sampler", ["ddim", "pndm", "euler_a"])
def test_compiled_loop_matches_step_by_step(tiny_components, tiny_pipeline, sampler):
    looped = Pipeline(components=tiny_components, compiled_loop=True)
    args = dict(width=128, height=64, num_inference_steps=3, seed=2, output_type="latent", sampler=sampler)
    expected = tiny_pipeline(TWO_CHUNKS, **args)
    np.testing.assert_array_equal(tiny_pipeline(TWO_CHUNKS, **args), expected)  # the same seed: the same latents
    # Same ops; graph-level rewrites inside the loop body change rounding only.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(looped(TWO_CHUNKS, **args), expected, atol=1e-5 * scale, rtol=1e-4)
    assert looped.loop_function(looped.step_spec(sampler, True, size=(1, 8, 16))).experimental_get_tracing_count() == 1
