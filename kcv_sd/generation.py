"""`kcv_sd.generate()`: one call, with pipelines cached between calls."""

import functools

from kcv_sd.pipeline import Pipeline
from kcv_sd.upscale import DEFAULT_REFINE_STRENGTH, generate_upscaled


def get_pipeline(model="sd15", weights="kerascv", precision="float32", jit_compile=False,
                 compiled_loop=False):
    """A shared `Pipeline` per configuration: models load and compile once."""
    return _cached_pipeline(model, str(weights), precision, bool(jit_compile), bool(compiled_loop))


@functools.lru_cache(maxsize=2)
def _cached_pipeline(model, weights, precision, jit_compile, compiled_loop):
    # Called with normalised positional arguments only, so equal
    # configurations always hit the same cache entry.
    return Pipeline(model=model, weights=weights, precision=precision, jit_compile=jit_compile,
                    compiled_loop=compiled_loop)


def generate(prompt, negative_prompt=None, *, model="sd15", weights="kerascv",
             precision="float32", jit_compile=False, compiled_loop=False, upscale=None,
             refine_strength=DEFAULT_REFINE_STRENGTH, **options):
    """Generate images from text (and control images) with Stable Diffusion 1.5.

    `model`, `weights`, `precision`, `jit_compile` and `compiled_loop` select a cached
    `Pipeline` (see its docstring); every other option (width, height,
    num_inference_steps, guidance_scale, seed, num_images_per_prompt,
    output_type, sampler, image, controlnet, ...) is an argument of
    `Pipeline.__call__`. With `upscale` (a factor > 1), the image is generated
    at that size, enlarged and refined with img2img at `refine_strength`
    (`kcv_sd.upscale.generate_upscaled`, which also takes `refine_steps`).
    Returns a list of PIL images by default.
    """
    pipeline = get_pipeline(model, weights, precision, jit_compile, compiled_loop)
    if upscale is not None:
        return generate_upscaled(pipeline, prompt, negative_prompt, upscale=upscale,
                                 refine_strength=refine_strength, **options)
    return pipeline(prompt, negative_prompt=negative_prompt, **options)
