"""`kcv_sd.generate()`: one call, with pipelines cached between calls."""

import functools

from kcv_sd.pipeline import Pipeline


@functools.lru_cache(maxsize=2)
def get_pipeline(model="sd15", weights="kerascv", precision="float32", jit_compile=False):
    """A shared `Pipeline` per configuration: models load and compile once."""
    return Pipeline(model=model, weights=weights, precision=precision, jit_compile=jit_compile)


def generate(prompt, negative_prompt=None, width=512, height=512, num_inference_steps=50,
             guidance_scale=7.5, seed=None, num_images_per_prompt=1, output_type="pil",
             model="sd15", weights="kerascv", precision="float32", jit_compile=False,
             progress=False):
    """Generate images from text with Stable Diffusion 1.5.

    Args:
        prompt: a string, or a list of strings (one batch entry each).
        negative_prompt: what to steer away from; one string or one per prompt.
        width, height: output size, multiples of 64 from 64 to 2048.
        num_inference_steps: DDIM steps (KerasCV's spacing).
        guidance_scale: classifier-free guidance; 1 disables the
            unconditional branch.
        seed: integer for reproducible noise (KerasCV's noise for the same
            seed); None draws fresh noise.
        num_images_per_prompt: images per prompt.
        output_type: "pil" (list of PIL images), "np" (uint8 array
            (N, H, W, 3)) or "latent" (final latents, float32).
        model, weights, precision, jit_compile: select the cached `Pipeline`.
        progress: show a progress bar over the denoising steps.
    """
    pipeline = get_pipeline(model, str(weights), precision, bool(jit_compile))
    return pipeline(prompt, negative_prompt=negative_prompt, width=width, height=height,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    seed=seed, num_images_per_prompt=num_images_per_prompt,
                    output_type=output_type, progress=progress)
