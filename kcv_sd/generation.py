"""`kcv_sd.generate()`: one call, with pipelines cached between calls."""

import functools

from kcv_sd import devices
from kcv_sd.arguments import check_integer
from kcv_sd.components import family_by_name
from kcv_sd.convert.lora_file import check_lora_file
from kcv_sd.lora import as_loras
from kcv_sd.graph_cache import chosen_folder
from kcv_sd.pipeline import Pipeline
from kcv_sd.precision import check_precision
from kcv_sd.prepare import check_call
from kcv_sd.upscale import DEFAULT_REFINE_STRENGTH, check_upscale, generate_upscaled, upscaled_size


def get_pipeline(model="sd15", weights="kerascv", precision=devices.AUTO, jit_compile=devices.AUTO,
                 compiled_loop=False, vae=None, graph_cache=devices.AUTO):
    """A shared `Pipeline` per configuration: models load and compile once.
    "auto" is resolved first (`kcv_sd.devices`; the graph cache's folder,
    or False), so it shares the pipeline of the values it stands for."""
    precision, jit_compile = devices.resolve(precision, jit_compile)
    folder = chosen_folder(graph_cache, devices.detected_defaults().device, jit_compile)
    configuration = (model, str(weights), precision, bool(jit_compile), bool(compiled_loop),
                     str(folder) if folder else False)
    return _cached_pipeline(*configuration) if vae is None else _cached_pipeline(*configuration, str(vae))


@functools.lru_cache(maxsize=2)
def _cached_pipeline(model, weights, precision, jit_compile, compiled_loop, graph_cache, vae=None):
    # Called with normalised positional arguments only, so equal
    # configurations always hit the same cache entry.
    return Pipeline(model=model, weights=weights, precision=precision, jit_compile=jit_compile,
                    compiled_loop=compiled_loop, vae=vae, graph_cache=graph_cache)


def check_generate(prompt, negative_prompt=None, *, model="sd15", precision=devices.AUTO, upscale=None,
                   refine_strength=DEFAULT_REFINE_STRENGTH, loras=None, **options):
    """Everything about a `generate()` call that can be checked without a
    model, checked: a bad argument fails here in milliseconds, before any
    model is built or loaded. Raises `kcv_sd.errors.InvalidArgumentError`."""
    family = family_by_name(model)
    for lora in as_loras(loras):
        check_lora_file(lora.path)
    if precision != devices.AUTO:
        check_precision(precision)
    options = {name: value for name, value in options.items() if name != "progress"}  # display only
    if upscale is not None:
        check_upscale(upscale, refine_strength)
        refine_steps = options.pop("refine_steps", None)
        if refine_steps is not None:
            check_integer("refine_steps", refine_steps, 1, 1000, "use an integer from 1 to 1000")
        if options.get("width") is not None and options.get("height") is not None:
            upscaled_size(options["width"], options["height"], upscale)
    check_call(family, prompt, negative_prompt, **options)


def generate(prompt, negative_prompt=None, *, model="sd15", weights="kerascv",
             precision=devices.AUTO, jit_compile=devices.AUTO, compiled_loop=False, upscale=None,
             refine_strength=DEFAULT_REFINE_STRENGTH, vae=None, loras=None, graph_cache=devices.AUTO, **options):
    """Generate images from text (and control images) with Stable Diffusion 1.x.

    `model`, `weights`, `precision`, `jit_compile`, `compiled_loop`, `vae` and `graph_cache` select a
    cached `Pipeline` (see its docstring; "auto" precision and jit_compile are
    this device's, `kcv_sd.devices`; `weights` may also be the Hub repo id
    of a diffusers SD1.x repo, "owner/name"); every other option (width, height,
    num_inference_steps, guidance_scale, seed, num_images_per_prompt,
    output_type, sampler, image, controlnet, ...) is an argument of
    `Pipeline.__call__`. `loras`: LoRA files fused into the weights, a list
    of files, "file:scale" strings or (file, scale) pairs (`Pipeline.set_loras`);
    the cached pipeline keeps exactly these, so a call without them runs
    without LoRAs. With `upscale` (a factor > 1), the image is generated
    at that size, enlarged and refined with img2img at `refine_strength`
    (`kcv_sd.upscale.generate_upscaled`, which also takes `refine_steps`).
    Returns a list of PIL images by default. Arguments are checked before
    any model is built (`check_generate`).
    """
    check_generate(prompt, negative_prompt, model=model, precision=precision, upscale=upscale,
                   refine_strength=refine_strength, loras=loras, **options)
    pipeline = get_pipeline(model, weights, precision, jit_compile, compiled_loop, vae, graph_cache)
    pipeline.set_loras(as_loras(loras))
    if upscale is not None:
        return generate_upscaled(pipeline, prompt, negative_prompt, upscale=upscale,
                                 refine_strength=refine_strength, **options)
    return pipeline(prompt, negative_prompt=negative_prompt, **options)
