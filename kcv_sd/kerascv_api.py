"""`keras_cv.models.StableDiffusion`'s API on kcv-sd's pipeline: KerasCV code
runs with one import changed (`from kcv_sd import StableDiffusion`).

`text_to_image`, `encode_text` and `generate_image` take KerasCV's
arguments with its defaults and return what KerasCV returns (uint8 numpy
(batch, H, W, 3)); the sampler is KerasCV's DDIM and the weights KerasCV's
files, so a seed gives KerasCV's noise (`tests/test_parity_kerascv.py`).
Sizes are rounded to multiples of 8, where KerasCV rounds to 128.
"""

import keras
import numpy as np
import tensorflow as tf

from kcv_sd.arguments import check_integer, check_number, check_seed, check_text
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.generation import get_pipeline
from kcv_sd.pipeline import to_uint8
from kcv_sd.samplers import SAMPLERS
from kcv_sd.sizes import SIZE_MULTIPLE, check_size
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH
from kcv_sd.vae import PIXELS_PER_LATENT


def _with_batch(values, batch_size, what, shape):
    """KerasCV's `_expand_tensor`: `values` squeezed, repeated over the batch
    when it has none, then checked to be (batch_size, *shape)."""
    given = np.shape(values)
    values = np.squeeze(np.asarray(values, np.float32))
    if values.ndim == len(shape):
        values = np.repeat(values[None], batch_size, axis=0)
    if values.shape != (batch_size, *shape):
        raise InvalidArgumentError(
            f"{what} has shape {given}: give {shape} or ({batch_size}, {', '.join(map(str, shape))}) "
            f"for batch_size={batch_size}.")
    if not np.isfinite(values).all():
        raise InvalidArgumentError(f"{what} holds NaN or inf.")
    return values


class StableDiffusion:
    """Drop-in for `keras_cv.models.StableDiffusion` (SD1.x), same arguments and results.

    Args:
        img_height, img_width: image size in pixels, rounded to the nearest
            multiple of 8 (KerasCV: 128), from 64 to 2048.
        jit_compile: compile the denoising step and decoder with XLA.
        model, weights, precision: kcv-sd's choices (`kcv_sd.Pipeline`);
            the defaults are KerasCV's architecture and its weights.
        pipeline: an existing `kcv_sd.Pipeline` to run on (then `model`,
            `weights`, `precision` and `jit_compile` are its own).
    """

    def __init__(self, img_height=512, img_width=512, jit_compile=True, *, model="sd15", weights="kerascv",
                 precision="float32", pipeline=None):
        self.img_height = _rounded(img_height, "img_height")
        self.img_width = _rounded(img_width, "img_width")
        if pipeline is None:  # shared with kcv_sd.generate() and other instances of these settings
            pipeline = get_pipeline(model, weights, precision, jit_compile)
        self.pipeline = pipeline
        self.jit_compile = pipeline.jit_compile

    # KerasCV's models, named as KerasCV names them: ours take the same
    # inputs and load KerasCV's weight files.
    @property
    def text_encoder(self):
        return self.pipeline.components.text_encoder

    @property
    def diffusion_model(self):
        return self.pipeline.components.unet.model()

    @property
    def decoder(self):
        return self.pipeline.components.decoder

    @property
    def image_encoder(self):
        return self.pipeline.components.image_encoder

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    def text_to_image(self, prompt, negative_prompt=None, batch_size=1, num_steps=50,
                      unconditional_guidance_scale=7.5, seed=None):
        """Images for `prompt`: uint8 numpy (batch_size, img_height, img_width, 3)."""
        return self.generate_image(self.encode_text(prompt), negative_prompt=negative_prompt,
                                   batch_size=batch_size, num_steps=num_steps,
                                   unconditional_guidance_scale=unconditional_guidance_scale, seed=seed)

    def encode_text(self, prompt):
        """The text encoding (1, 77, 768) of one prompt of at most 77 tokens,
        numpy float32. Read literally, as KerasCV reads it: no emphasis
        syntax, and a longer prompt is refused rather than chunked."""
        tokenizer = self.pipeline.tokenizer
        count = len(tokenizer.encode(check_text(prompt, "prompt")))
        if count > MAX_PROMPT_LENGTH:
            raise InvalidArgumentError(f"The prompt is {count} tokens long; encode_text takes at most "
                                       f"{MAX_PROMPT_LENGTH}, start and end tokens included. Shorten the prompt.")
        tokens = tokenizer.pad_batch([prompt])
        return self.pipeline._encode(tf.constant(tokens)).numpy()

    def generate_image(self, encoded_text, negative_prompt=None, batch_size=1, num_steps=50,
                       unconditional_guidance_scale=7.5, diffusion_noise=None, seed=None):
        """Images from a text encoding (77, 768) or one per image (batch_size, 77, 768),
        with KerasCV's DDIM from `seed`'s noise or from `diffusion_noise`
        ((img_height / 8, img_width / 8, 4), or one per image)."""
        if diffusion_noise is not None and seed is not None:
            raise InvalidArgumentError("`diffusion_noise` and `seed` should not both be passed to "
                                       "`generate_image`: `seed` only draws the noise when none is given.")
        check_integer("batch_size", batch_size, 1, 2**31 - 1, "use an integer >= 1")
        most = SAMPLERS["ddim"].num_train_timesteps
        check_integer("num_steps", num_steps, 1, most, f"use an integer from 1 to {most}")
        scale = check_number("unconditional_guidance_scale", unconditional_guidance_scale,
                             fix="use a finite number (7.5 is usual)")
        check_seed(seed)
        guided = scale != 1
        text_shape = (MAX_PROMPT_LENGTH, self.pipeline.config.context_dim)
        context = _with_batch(encoded_text, batch_size, "encoded_text", text_shape)
        if guided:  # the unconditional half first, as `Pipeline.denoise` takes it
            negative = self.encode_text("" if negative_prompt is None else negative_prompt)
            context = np.concatenate([np.repeat(negative, batch_size, axis=0), context])
        latent_shape = (self.img_height // PIXELS_PER_LATENT, self.img_width // PIXELS_PER_LATENT,
                        self.pipeline.config.latent_channels)
        if diffusion_noise is None:
            noise = keras.random.normal((batch_size, *latent_shape), seed=seed)
        else:
            noise = _with_batch(diffusion_noise, batch_size, "diffusion_noise", latent_shape)
        latent = self.pipeline.denoise(noise, context, num_steps, scale, guided, "ddim")
        self.pipeline.check_finite(latent, "latents")
        decoded = self.pipeline.decode(latent)
        self.pipeline.check_finite(decoded, "pixels")
        return to_uint8(decoded)


def _rounded(size, name):
    """`size` rounded to the nearest multiple of 8, as KerasCV rounds to 128."""
    check_number(name, size, fix="use a size in pixels")
    rounded = int(round(size / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    check_size(name, rounded)
    return rounded
