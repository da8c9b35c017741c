"""Large images by upscaling: generate at native size, enlarge, refine with img2img.

SD1.5 composes well near 512x512; asked for 2048x2048 directly it repeats
subjects and loses the layout. Generating at the native size fixes the
composition, a Lanczos enlargement keeps it, and a low-strength img2img
pass at the large size (the same prompt, seed and ControlNets) adds detail
the enlargement lacks. The VAE decodes and encodes such sizes in tiles
(`kcv_sd.tiled_vae`) on its own.
"""

import numpy as np
from PIL import Image

from kcv_sd.arguments import check_number
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.prepare import prompt_lists
from kcv_sd.sizes import MAX_SIZE, SIZE_MULTIPLE

DEFAULT_REFINE_STRENGTH = 0.3
# Options that shape the native pass only: the refine pass starts from its upscaled result.
NATIVE_PASS_ONLY = ("latents", "init_image", "strength", "mask_image")


def check_upscale(upscale, refine_strength):
    check_number("upscale", upscale, 1, above=True, fix="use a factor > 1 (2 doubles width and height)")
    check_number("refine_strength", refine_strength, 0, 1,
                 fix=f"use a number from 0 to 1 (low values such as {DEFAULT_REFINE_STRENGTH} "
                     "keep the native image's composition)")


def upscaled_size(width, height, upscale):
    """(width, height) times `upscale`, rounded to multiples of 8, at most `MAX_SIZE`."""
    size = [max(SIZE_MULTIPLE, round(side * upscale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in (width, height)]
    if max(size) > MAX_SIZE:
        raise InvalidArgumentError(
            f"upscale={upscale:g} takes {width}x{height} to {size[0]}x{size[1]}, beyond {MAX_SIZE} pixels "
            f"a side: use a factor of at most {MAX_SIZE / max(width, height):g} or a smaller width/height.")
    return size


def generate_upscaled(pipeline, prompt, negative_prompt=None, *, upscale=2,
                      refine_strength=DEFAULT_REFINE_STRENGTH, refine_steps=None,
                      image=None, controlnet=None, **options):
    """Generate at the requested (native) size, upscale, then refine with img2img.

    Args:
        pipeline: a `kcv_sd.Pipeline`.
        upscale: factor > 1 on width and height; the result is rounded to
            multiples of 8 and may not exceed 2048 pixels a side.
        refine_strength: img2img strength of the refine pass (it runs
            int(steps * refine_strength) steps).
        refine_steps: `num_inference_steps` of the refine pass; None: the
            native pass's.
        image, controlnet: ControlNet inputs for both passes; the refine pass
            fits the control image to the large size (a "native"
            `control_sizing` becomes "resize" there, the stretch it implies).
        options: `Pipeline.__call__` arguments for both passes, except
            `latents`, `init_image`, `strength` and `mask_image` (native pass
            only) and `output_type` (refine pass only).

    Each image of a batch is refined on its own (img2img takes one init
    image), with its prompt and the same seed. Returns what `output_type` says.
    """
    check_upscale(upscale, refine_strength)
    if options.get("width") is not None and options.get("height") is not None:
        upscaled_size(options["width"], options["height"], upscale)  # fail before the native pass
    output_type = options.pop("output_type", "pil")
    refine_options = {name: value for name, value in options.items() if name not in NATIVE_PASS_ONLY}
    per_prompt = refine_options.pop("num_images_per_prompt", 1)
    native = pipeline(prompt, negative_prompt, image=image, controlnet=controlnet, output_type="pil", **options)

    width, height = upscaled_size(native[0].width, native[0].height, upscale)
    refine_options.update(width=width, height=height, strength=refine_strength, output_type=output_type)
    if refine_steps is not None:
        refine_options["num_inference_steps"] = refine_steps
    if refine_options.get("control_sizing") == "native":
        refine_options["control_sizing"] = "resize"
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    refined = [
        pipeline(prompts[index // per_prompt], None if negative_prompt is None else negatives[index // per_prompt],
                 init_image=result.resize((width, height), Image.LANCZOS), image=image, controlnet=controlnet,
                 **refine_options)
        for index, result in enumerate(native)
    ]
    return [result for results in refined for result in results] if output_type == "pil" else np.concatenate(refined)
