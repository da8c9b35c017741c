"""Text-to-image: prompt encoding, the denoising loop, and decoding, kept apart.

The pipeline owns compiled functions: one denoising step and one decoder
call per input shape (tf.function with a shape-polymorphic signature; XLA
compiles each concrete shape once when `jit_compile=True`). Classifier-free
guidance runs the conditional and unconditional halves in one UNet call.
"""

import numpy as np
import tensorflow as tf
import keras
from PIL import Image

from kcv_sd.components import load_components
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.precision import check_precision
from kcv_sd.schedulers import SAMPLERS
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer
from kcv_sd.unet import timestep_embedding

MIN_SIZE, MAX_SIZE = 64, 2048
OUTPUT_TYPES = ("pil", "np", "latent")


def check_size(name, value, multiple):
    if not isinstance(value, (int, np.integer)) or value % multiple or not MIN_SIZE <= value <= MAX_SIZE:
        raise InvalidArgumentError(
            f"{name}={value!r} is not supported: use a multiple of {multiple} "
            f"from {MIN_SIZE} to {MAX_SIZE}."
        )


def _as_prompt_list(prompt, what):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InvalidArgumentError(
            f"Empty {what}: give a non-empty text (use negative_prompt=None for none)."
        )
    return prompts


def guide(noise_uncond, noise_cond, guidance_scale):
    """Classifier-free guidance, in KerasCV's arithmetic order."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def to_uint8(decoded):
    """Decoder output in [-1, 1] to uint8 pixels, truncating as KerasCV does."""
    return np.clip((np.asarray(decoded) + 1) / 2 * 255, 0, 255).astype("uint8")


class Pipeline:
    """A text-to-image pipeline that caches its models and compiled functions.

    Args:
        model: "sd15" (KerasCV's SD1.5 architecture) or "tiny" (for tests).
        weights: "kerascv", a folder with KerasCV's weight files, or "random".
        precision: "float32", "mixed_float16" or "mixed_bfloat16" for the
            UNet; GroupNorm statistics, softmax, the sampler and the VAE
            stay float32.
        jit_compile: compile the denoising step and decoder with XLA.
        components: already-built `Components` to share (then `model`,
            `weights` and `precision` are taken from them).
    """

    def __init__(self, model="sd15", weights="kerascv", precision="float32",
                 jit_compile=False, components=None):
        if components is None:
            components = load_components(model, weights, check_precision(precision))
        self.components = components
        self.jit_compile = bool(jit_compile)
        self.tokenizer = get_tokenizer()
        self._encode = self._compile(self._encode_tokens, [tf.TensorSpec((None, MAX_PROMPT_LENGTH), tf.int32)])
        latent_spec = tf.TensorSpec((None, None, None, components.family.unet.latent_channels), tf.float32)
        self._decode = self._compile(components.decoder, [latent_spec])
        self._steps = {}

    @property
    def config(self):
        return self.components.family.unet

    def _compile(self, fn, signature):
        return tf.function(fn, input_signature=signature, jit_compile=self.jit_compile)

    def _encode_tokens(self, tokens):
        positions = tf.broadcast_to(tf.range(MAX_PROMPT_LENGTH, dtype=tf.int32), tf.shape(tokens))
        return self.components.text_encoder({"tokens": tokens, "positions": positions})

    def encode_prompts(self, prompts):
        """Text encodings (N, 77, context_dim) of a list of prompts."""
        return self._encode(tf.constant(self.tokenizer.pad_batch(prompts)))

    def denoise_step(self, guided, sampler="ddim"):
        """The compiled step: UNet (both CFG halves batched), guidance, sampler update.

        Signature: (latent, state, t_embed, context, guidance_scale,
        coefficients) -> (latent, state), `state` being the sampler's tuple.
        """
        key = (guided, sampler)
        if key not in self._steps:
            scheduler = SAMPLERS[sampler]
            unet = self.components.unet.model()
            c = self.config

            def run(latent, state, t_embed, context, guidance_scale, coefficients):
                batch = tf.shape(latent)[0]
                copies = 2 if guided else 1
                model_latent = tf.concat([scheduler.model_input(latent, coefficients)] * copies, axis=0)
                t_batch = tf.repeat(t_embed, copies * batch, axis=0)
                noise = unet({"latent": model_latent, "timestep_embedding": t_batch, "context": context})
                noise = tf.cast(noise, tf.float32)
                if guided:
                    noise = guide(noise[:batch], noise[batch:], guidance_scale)
                return scheduler.step(latent, noise, coefficients, state)

            latent_spec = tf.TensorSpec((None, None, None, c.latent_channels), tf.float32)
            example_row = scheduler.schedule(2).coefficients[0]
            state_size = len(scheduler.initial_state(tf.zeros((1, 8, 8, c.latent_channels))))
            signature = [
                latent_spec,
                tuple([latent_spec] * state_size),
                tf.TensorSpec((1, c.timestep_dim), tf.float32),
                tf.TensorSpec((None, None, c.context_dim), tf.float32),
                tf.TensorSpec((), tf.float32),
                tf.TensorSpec(example_row.shape, tf.float32),
            ]
            self._steps[key] = self._compile(run, signature)
        return self._steps[key]

    def __call__(self, prompt, negative_prompt=None, width=512, height=512,
                 num_inference_steps=50, guidance_scale=7.5, seed=None,
                 num_images_per_prompt=1, latents=None, output_type="pil", sampler="ddim",
                 progress=False):
        """Generate images; see `kcv_sd.generate` for the arguments."""
        prompts = _as_prompt_list(prompt, "prompt")
        negatives = [""] * len(prompts)
        if negative_prompt is not None:
            negatives = _as_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives *= len(prompts)
            elif len(negatives) != len(prompts):
                raise InvalidArgumentError(
                    f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one per prompt."
                )
        multiple = 8 * self.config.downsample_factor
        check_size("width", width, multiple)
        check_size("height", height, multiple)
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise InvalidArgumentError(f"num_inference_steps={num_inference_steps!r}: use an integer >= 1.")
        if not guidance_scale >= 0:
            raise InvalidArgumentError(f"guidance_scale={guidance_scale!r}: use a number >= 0 (7.5 is usual).")
        if not isinstance(num_images_per_prompt, (int, np.integer)) or num_images_per_prompt < 1:
            raise InvalidArgumentError(f"num_images_per_prompt={num_images_per_prompt!r}: use an integer >= 1.")
        if sampler not in SAMPLERS:
            raise InvalidArgumentError(f"sampler={sampler!r}: use one of {', '.join(SAMPLERS)}.")
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type={output_type!r}: use one of {', '.join(OUTPUT_TYPES)}.")

        batch = len(prompts) * num_images_per_prompt
        shape = (batch, height // 8, width // 8, self.config.latent_channels)
        if latents is None:
            latents = keras.random.normal(shape, seed=seed)
        elif tuple(np.shape(latents)) != shape:
            raise InvalidArgumentError(f"latents have shape {np.shape(latents)}, expected {shape}.")
        latent = tf.convert_to_tensor(latents, tf.float32)

        guided = guidance_scale != 1
        encodings = self.encode_prompts(prompts + negatives if guided else prompts)
        encodings = tf.repeat(encodings, num_images_per_prompt, axis=0)
        if guided:  # conditional half first in the encodings, unconditional first in the batch
            context = tf.concat([encodings[batch:], encodings[:batch]], axis=0)
        else:
            context = encodings

        latent = self.denoise(latent, context, num_inference_steps, guidance_scale, guided,
                              sampler, progress)
        if output_type == "latent":
            return latent.numpy()
        pixels = to_uint8(self._decode(latent))
        if output_type == "np":
            return pixels
        return [Image.fromarray(image) for image in pixels]

    def denoise(self, noise, context, num_steps, guidance_scale, guided, sampler="ddim", progress=False):
        """Run `sampler` from unit `noise` over `num_steps` steps."""
        scheduler = SAMPLERS[sampler]
        schedule = scheduler.schedule(num_steps)
        step = self.denoise_step(guided, sampler)
        scale = tf.constant(guidance_scale, tf.float32)
        latent = noise * schedule.init_noise_sigma if schedule.init_noise_sigma != 1 else noise
        state = scheduler.initial_state(latent)
        steps = range(len(schedule))
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="denoising", unit="step")
        for i in steps:
            t_embed = timestep_embedding(schedule.timesteps[i : i + 1], self.config.timestep_dim)
            latent, state = step(latent, state, t_embed, context, scale, tf.constant(schedule.coefficients[i]))
        return latent
