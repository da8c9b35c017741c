"""`kcv_sd.generate()`: one call, with pipelines cached between calls."""

import functools

from kcv_sd.pipeline import Pipeline


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
             precision="float32", jit_compile=False, compiled_loop=False, **options):
    """Generate images from text (and control images) with Stable Diffusion 1.5.

    `model`, `weights`, `precision`, `jit_compile` and `compiled_loop` select a cached
    `Pipeline` (see its docstring); every other option (width, height,
    num_inference_steps, guidance_scale, seed, num_images_per_prompt,
    output_type, sampler, image, controlnet, ...) is an argument of
    `Pipeline.__call__`. Returns a list of PIL images by default.
    """
    pipeline = get_pipeline(model, weights, precision, jit_compile, compiled_loop)
    return pipeline(prompt, negative_prompt=negative_prompt, **options)
