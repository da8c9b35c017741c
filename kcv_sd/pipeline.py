"""Text-to-image, img2img and inpainting: prompt encoding, the denoising loop,
and decoding, kept apart.

The pipeline owns compiled functions: one denoising step and one decoder
call per input shape (tf.function with a shape-polymorphic signature; XLA
compiles each concrete shape once when `jit_compile=True`). Classifier-free
guidance runs the conditional and unconditional halves in one UNet call.

img2img starts from the VAE-encoded init image noised to the first step it
runs; inpainting (with a standard 4-channel UNet) also re-imposes, after
every step, the init latents noised to the level reached wherever the mask
is black, and finally pastes the init image's pixels back there.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from kcv_sd.components import load_components
from kcv_sd.control import native_sizing, plan_control
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_inputs import (
    latent_repaint_mask,
    load_init_inputs,
    repaint_mask,
    resized_pixels,
)
from kcv_sd.precision import check_precision
from kcv_sd.recent import RecentlyUsed
from kcv_sd.schedulers import SAMPLERS
from kcv_sd.schedulers.base import add_noise
from kcv_sd.tiled_vae import decode_tiled, encode_tiled
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer
from kcv_sd.unet import control_input_names, timestep_embedding
from kcv_sd.routing import static_routes
from kcv_sd.vae import PIXELS_PER_LATENT

MIN_SIZE, MAX_SIZE = 64, 2048
OUTPUT_TYPES = ("pil", "np", "latent")
# Above this many pixels, `tiled_decode=None` decodes in tiles (and init images are encoded in tiles).
TILED_DECODE_ABOVE = 1024 * 1024
# Compiled steps and loops a pipeline keeps: a few configurations per call
# (guided or not, with or without ControlNets), times the sizes in use.
COMPILED_FUNCTIONS_KEPT = 16


def needs_tiles(height, width):
    """Whether an image of height x width pixels goes through the VAE in tiles by default."""
    return height * width > TILED_DECODE_ABOVE


def as_float32(model):
    """`model` with its output cast to float32 (the VAE runs in 16 bits under
    "float16" and "bfloat16" precision)."""
    return lambda inputs: tf.cast(model(inputs), tf.float32)


def check_size(name, value, multiple):
    if not isinstance(value, (int, np.integer)) or value % multiple or not MIN_SIZE <= value <= MAX_SIZE:
        raise InvalidArgumentError(
            f"{name}={value!r} is not supported: use a multiple of {multiple} "
            f"from {MIN_SIZE} to {MAX_SIZE}."
        )


def _prompt_list(prompt, what):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InvalidArgumentError(f"Empty {what}: give a non-empty text (use negative_prompt=None for none).")
    return prompts


def prompt_lists(prompt, negative_prompt):
    """(prompts, negatives), one negative per prompt, as `Pipeline` encodes them."""
    prompts = _prompt_list(prompt, "prompt")
    if negative_prompt is None:
        return prompts, [""] * len(prompts)
    negatives = _prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        return prompts, negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise InvalidArgumentError(
            f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one per prompt.")
    return prompts, negatives


def check_options(num_inference_steps, guidance_scale, num_images_per_prompt, sampler, output_type):
    """The scalar generation arguments, checked with messages that say the fix."""
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


def guide(noise_uncond, noise_cond, guidance_scale):
    """Classifier-free guidance, in KerasCV's arithmetic order."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def guided_steps(steps_run, cfg_cutoff_step_ratio):
    """How many of the steps that run keep guidance: diffusers'
    `SDCFGCutoffCallback` turns it off after step int(steps * ratio)."""
    if cfg_cutoff_step_ratio is None:
        return None
    if not 0 <= cfg_cutoff_step_ratio <= 1:
        raise InvalidArgumentError(
            f"cfg_cutoff_step_ratio={cfg_cutoff_step_ratio}: use a fraction from 0 to 1, or None to guide every step.")
    return min(steps_run, int(steps_run * cfg_cutoff_step_ratio) + 1)


def to_uint8(decoded):
    """Decoder output in [-1, 1] to uint8 pixels, truncating as KerasCV does."""
    return np.clip((np.asarray(decoded) + 1) / 2 * 255, 0, 255).astype("uint8")


def steps_skipped(num_steps, strength):
    """Leading steps img2img leaves out (diffusers' rule): it runs
    int(num_steps * strength) of them, the least noisy ones."""
    return num_steps - min(int(num_steps * strength), num_steps)


@dataclasses.dataclass
class ImageStart:
    """What img2img and inpainting start from instead of pure noise."""

    latent: tf.Tensor  # the init image's scaled VAE latent mean (1, h, w, C)
    strength: float
    mask: tf.Tensor = None  # inpainting: 1 where to repaint, (1, h, w, 1)


def initial_latent(noise, schedule, start=None):
    """The latents the first step gets: pure noise for text-to-image and
    full-strength inpainting (as diffusers), else the init latents noised to
    that step's level (no `init_noise_sigma` on top: the level includes it)."""
    if start is None or (start.mask is not None and start.strength == 1):
        return noise * schedule.init_noise_sigma if schedule.init_noise_sigma != 1 else noise
    return add_noise(start.latent, noise, schedule.noise_levels[0])


def keep_unmasked(latent, init_latent, noise, mask, level):
    """Inpainting after a step: outside the mask, the init latents noised to
    the level the step reached (diffusers' 4-channel-UNet inpainting)."""
    return mask * latent + (1 - mask) * add_noise(init_latent, noise, level)


def size_from_init_image(init, width, height, multiple):
    """(width, height): each given one, else the init image's rounded down to
    a multiple of `multiple` (diffusers rounds to 8; the UNet needs 64)."""
    fitted = [given if given is not None else side // multiple * multiple
              for given, side in ((width, init.width), (height, init.height))]
    if (width is None or height is None) and not all(MIN_SIZE <= side <= MAX_SIZE for side in fitted):
        raise InvalidArgumentError(
            f"The init image is {init.width}x{init.height} pixels: pass width= and height= "
            f"(multiples of {multiple} from {MIN_SIZE} to {MAX_SIZE}) to resize it."
        )
    return fitted


class Pipeline:
    """Text-to-image, img2img and inpainting; caches models and compiled functions.

    Args:
        model: "sd15" (KerasCV's SD1.5 architecture) or "tiny" (for tests).
        weights: "kerascv", a folder with KerasCV's weight files, or "random".
        precision: "float32"; "mixed_float16" or "mixed_bfloat16" for the
            UNet alone; "float16" or "bfloat16" for every model, text
            encoder and VAE too (faster, images differ slightly;
            `kcv_sd.precision`). GroupNorm statistics, the UNet's softmax
            and the sampler stay float32.
        jit_compile: compile the denoising step and decoder with XLA.
        compiled_loop: run all denoising steps in one compiled function
            (a tf.while_loop) instead of one call per step from Python.
        components: already-built `Components` to share (then `model`,
            `weights` and `precision` are taken from them).
        xla_decoder: compile the VAE decoder with XLA; None (the default)
            follows `jit_compile`. True suits a float32 VAE (on a 2-core
            CPU XLA decoded float32 in 0.74x the time, but bfloat16 in
            2.5x; docs/latency_levers.md, section 7); each new image size
            compiles again and keeps its executable (~17 MB for the tiny
            model's decoder).
        static_routes: trace the denoising step per image size class: the
            UNet's layers choose matmul or convolution, and whole or chunked
            attention, in Python from the size, so the graph holds no
            run-time choices and its first call is ~15 s faster for SD1.5 on
            a 2-core CPU; a size whose choices differ (most new sizes) traces
            again. False: one trace serves every size, choosing at run time
            (better when many sizes are generated in one process).
    """

    def __init__(self, model="sd15", weights="kerascv", precision="float32",
                 jit_compile=False, components=None, compiled_loop=False, static_routes=True,
                 xla_decoder=None):
        if components is None:
            components = load_components(model, weights, check_precision(precision))
        self.components = components
        self.jit_compile = bool(jit_compile)
        self.compiled_loop = bool(compiled_loop)
        self.static_routes = bool(static_routes)
        self.tokenizer = get_tokenizer()
        self._encode = self._compile(self._encode_tokens, [tf.TensorSpec((None, MAX_PROMPT_LENGTH), tf.int32)])
        latent_spec = tf.TensorSpec((None, None, None, components.family.unet.latent_channels), tf.float32)
        self.xla_decoder = self.jit_compile if xla_decoder is None else bool(xla_decoder)
        self._decode = self._compile(as_float32(components.decoder), [latent_spec], self.xla_decoder)
        mask_spec = tf.TensorSpec((None, None, None, 1), tf.float32)
        self._keep_unmasked = self._compile(
            keep_unmasked, [latent_spec] * 3 + [mask_spec, tf.TensorSpec((2,), tf.float32)])
        self._encode_image = None  # compiled on first use, as the encoder loads
        self._empty_encoding = None
        self._steps = RecentlyUsed(COMPILED_FUNCTIONS_KEPT)
        self._routes = RecentlyUsed(COMPILED_FUNCTIONS_KEPT)

    @property
    def config(self):
        return self.components.family.unet

    def _compile(self, fn, signature, jit_compile=None):
        # No autograph: the compiled code branches and loops only with explicit
        # tf.cond / tf.while_loop, and converting it slows every first trace
        # (docs/latency_levers.md, tools/measure_first_call.py).
        jit_compile = self.jit_compile if jit_compile is None else jit_compile
        return tf.function(fn, input_signature=signature, jit_compile=jit_compile, autograph=False)

    def _encode_tokens(self, tokens):
        positions = tf.broadcast_to(tf.range(MAX_PROMPT_LENGTH, dtype=tf.int32), tf.shape(tokens))
        return tf.cast(self.components.text_encoder({"tokens": tokens, "positions": positions}), tf.float32)

    def encode_prompts(self, prompts):
        """Text encodings (N, 77, context_dim) of a list of prompts.

        Each distinct prompt is encoded once. The empty prompt, the
        unconditional half when there is no negative prompt, is a constant
        of the text encoder's weights: it is encoded once per pipeline."""
        if "" in prompts and self._empty_encoding is None:
            self._empty_encoding = self._encode(tf.constant(self.tokenizer.pad_batch([""])))[0]
        texts = [p for p in dict.fromkeys(prompts) if p]
        encoded = {"": self._empty_encoding}
        if texts:
            encoded.update(zip(texts, tf.unstack(self._encode(tf.constant(self.tokenizer.pad_batch(texts))))))
        return tf.stack([encoded[p] for p in prompts])

    def encode_images(self, pixels, tiled=None):
        """Scaled VAE latent means (N, H/8, W/8, C) of uint8 images (N, H, W, 3);
        `tiled` None tiles images above `TILED_DECODE_ABOVE` pixels, as `decode`."""
        if self._encode_image is None:
            self._encode_image = self._compile(as_float32(self.components.image_encoder),
                                               [tf.TensorSpec((None, None, None, 3), tf.float32)])
        scaled = tf.constant(pixels, tf.float32) / 127.5 - 1
        if tiled is None:
            tiled = needs_tiles(scaled.shape[1], scaled.shape[2])
        return tf.constant(encode_tiled(self._encode_image, scaled)) if tiled else self._encode_image(scaled)

    def decode(self, latent, tiled=None):
        """Decoder output in [-1, 1] (N, H, W, 3); `tiled` None tiles images
        above `TILED_DECODE_ABOVE` pixels."""
        if tiled is None:
            tiled = needs_tiles(latent.shape[1] * PIXELS_PER_LATENT, latent.shape[2] * PIXELS_PER_LATENT)
        return decode_tiled(self._decode, latent) if tiled else self._decode(latent)

    def _route_key(self, size, controlnets):
        """The routes the UNet's and ControlNets' layers take for latents of
        `size` (batch, height, width), at the batch and the guided batch; None
        for an unknown size (then the layers choose at run time)."""
        if size is None:
            return None
        batch, height, width = size

        def routes():  # held with the ControlNets, so that their ids stay theirs
            return controlnets, tuple(model.routes(rows, height, width, MAX_PROMPT_LENGTH)
                                      for model in (self.components.unet, *controlnets)
                                      for rows in (batch, 2 * batch))

        return self._routes.get((size, tuple(id(c) for c in controlnets)), routes)[1]

    def _step_function(self, guided, sampler, controlnets=(), guess_mode=False, size=None):
        """One step, uncompiled: ControlNets, UNet (both CFG halves batched),
        guidance, sampler update. Returns the function and its input signature."""
        scheduler = SAMPLERS[sampler]
        c = self.config
        predict = self._noise_predictor(guided, controlnets, guess_mode, size)

        def run(latent, state, t_embed, context, guidance_scale, coefficients, *control):
            noise = predict(scheduler.model_input(latent, coefficients), t_embed, context, *control)
            if guided:
                batch = tf.shape(latent)[0]
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
        if controlnets:
            signature += [
                tuple(tf.TensorSpec((None, None, None, 3), tf.float32) for _ in controlnets),
                tf.TensorSpec((len(controlnets), c.num_skip_connections + 1), tf.float32),
            ]
        return run, signature

    def denoise_step(self, guided, sampler="ddim", controlnets=(), guess_mode=False, size=None):
        """The compiled step, one per configuration and, given a latent `size`
        (batch, height, width), per set of layer routes (sizes whose routes
        agree share it); with `size` None one step serves every size.

        Signature: (latent, state, t_embed, context, guidance_scale,
        coefficients[, control_images, control_scales]) -> (latent, state);
        `state` is the sampler's tuple, `control_images` one (B, H, W, 3)
        tensor per ControlNet and `control_scales` (ControlNets, residuals).
        """
        key = ("step", guided, sampler, tuple(id(c) for c in controlnets), guess_mode,
               self._route_key(size, controlnets))
        return self._steps.get(key, lambda: self._compile(*self._step_function(
            guided, sampler, controlnets, guess_mode, size)))

    def denoise_loop(self, guided, sampler="ddim", controlnets=(), guess_mode=False, inpaint=False,
                     cutoff=False, size=None):
        """All steps in one compiled function (a tf.while_loop): no host round trip per step.

        Signature: (latent, state, t_embeds (steps, dim), context,
        guidance_scale, coefficients (steps, K)[, control_images,
        control_scales (steps, ControlNets, residuals), keep (steps,)][,
        (conditional_context, guided (steps,))][, (init_latent, noise, mask,
        noise_levels (steps + 1, 2))]) -> latent.
        Steps whose `keep` is False skip the ControlNets; with `cutoff`
        (guided only), steps whose `guided` is False run the conditional half
        alone; with `inpaint`, every step ends with `keep_unmasked`. `size`
        as for `denoise_step`.
        """
        key = ("loop", guided, sampler, tuple(id(c) for c in controlnets), guess_mode, inpaint, cutoff,
               self._route_key(size, controlnets))
        return self._steps.get(key, lambda: self._compile_loop(guided, sampler, controlnets, guess_mode,
                                                               inpaint, cutoff, size))

    def _compile_loop(self, guided, sampler, controlnets, guess_mode, inpaint, cutoff, size):
        """`denoise_loop`'s function, compiled."""
        halves = (True, False) if cutoff else (guided,)
        steps = {(g, False): self._step_function(g, sampler, size=size)[0] for g in halves}
        if controlnets:
            steps.update({(g, True): self._step_function(g, sampler, controlnets, guess_mode, size)[0]
                          for g in halves})
        signature = self._step_function(guided, sampler, controlnets, guess_mode)[1]
        signature[2] = tf.TensorSpec((None,) + tuple(signature[2].shape[1:]), tf.float32)
        signature[5] = tf.TensorSpec((None,) + tuple(signature[5].shape), tf.float32)
        if controlnets:
            signature[7] = tf.TensorSpec((None,) + tuple(signature[7].shape), tf.float32)
            signature.append(tf.TensorSpec((None,), tf.bool))
        if cutoff:
            signature.append((signature[3], tf.TensorSpec((None,), tf.bool)))
        if inpaint:
            signature.append(tuple(self._keep_unmasked.input_signature[1:4])
                             + (tf.TensorSpec((None, 2), tf.float32),))

        def loop(latent, state, t_embeds, context, guidance_scale, coefficients, *extra):
            def step(i, latent, state, guided_now, step_context):
                args = (latent, state, t_embeds[i : i + 1], step_context, guidance_scale, coefficients[i])
                if not controlnets:
                    return steps[guided_now, False](*args)
                images, scales, keep = extra[:3]
                return tf.cond(keep[i], lambda: steps[guided_now, True](*args, images, scales[i]),
                               lambda: steps[guided_now, False](*args))

            def body(i, latent, state):
                if cutoff:
                    conditional_context, guided_at = extra[3 if controlnets else 0]
                    latent, state = tf.cond(
                        guided_at[i], lambda: step(i, latent, state, True, context),
                        lambda: step(i, latent, state, False, conditional_context))
                else:
                    latent, state = step(i, latent, state, guided, context)
                if inpaint:
                    init_latent, noise, mask, levels = extra[-1]
                    latent = keep_unmasked(latent, init_latent, noise, mask, levels[i + 1])
                return i + 1, latent, state

            num_steps = tf.shape(coefficients)[0]
            _, latent, _ = tf.while_loop(lambda i, *_: i < num_steps, body, (0, latent, state))
            return latent

        return self._compile(loop, signature)

    def _noise_predictor(self, guided, controlnets, guess_mode, size=None):
        """UNet noise prediction for the (doubled, if guided) batch.

        With ControlNets, their scaled residuals are summed and fed to the
        UNet. In guess mode with guidance, ControlNets see only the
        conditional half and the unconditional half gets zero residuals.
        Given the latent `size` (batch, height, width), the models are traced
        with static routes.
        """
        unet = self.components.unet
        copies = 2 if guided else 1
        conditional_only = guess_mode and guided

        def routed(model, copies):
            """`model` (a functional model), traced with routes for `copies` x the batch."""
            if size is None:
                return model
            batch, height, width = size

            def call(inputs):
                with static_routes(copies * batch, height, width, MAX_PROMPT_LENGTH):
                    return model(inputs)

            return call

        def predict(latent, t_embed, context, control_images=(), control_scales=None):
            batch = tf.shape(latent)[0]
            doubled = tf.concat([latent] * copies, axis=0)
            t_doubled = tf.repeat(t_embed, copies * batch, axis=0)
            inputs = {"latent": doubled, "timestep_embedding": t_doubled, "context": context}
            if not controlnets:
                return tf.cast(routed(unet.model(), copies)(inputs), tf.float32)
            residuals = None
            for index, (controlnet, image) in enumerate(zip(controlnets, control_images)):
                if conditional_only:
                    control_inputs = {"latent": latent, "timestep_embedding": t_doubled[:batch],
                                      "context": context[batch:], "control_image": image}
                else:
                    control_inputs = {**inputs, "control_image": tf.concat([image] * copies, axis=0)}
                outputs = routed(controlnet.model(), 1 if conditional_only else copies)(control_inputs)
                scaled = [tf.cast(outputs[name], tf.float32) * control_scales[index, j]
                          for j, name in enumerate(controlnet.output_names)]
                if conditional_only:
                    scaled = [tf.concat([tf.zeros_like(r), r], axis=0) for r in scaled]
                residuals = scaled if residuals is None else [a + b for a, b in zip(residuals, scaled)]
            names = control_input_names(self.config)
            controlled = routed(unet.model(with_control=True), copies)
            return tf.cast(controlled({**inputs, **dict(zip(names, residuals))}), tf.float32)

        return predict

    def __call__(self, prompt, negative_prompt=None, width=None, height=None,
                 num_inference_steps=50, guidance_scale=7.5, seed=None,
                 num_images_per_prompt=1, latents=None, output_type="pil", sampler="ddim",
                 image=None, controlnet=None, controlnet_conditioning_scale=1.0, guess_mode=False,
                 control_guidance_start=0.0, control_guidance_end=1.0, control_sizing="resize",
                 progress=False, init_image=None, strength=None, mask_image=None, tiled_decode=None,
                 cfg_cutoff_step_ratio=None):
        """Generate images.

        Args:
            prompt: a string, or a list of strings (one batch entry each).
            negative_prompt: what to steer away from; one string or one per prompt.
            width, height: output size, multiples of 64 from 64 to 2048;
                512 when not given (with `control_sizing="native"`, taken
                from the control image instead; else with an `init_image`,
                its size rounded down to multiples of 64).
            num_inference_steps: sampler steps.
            guidance_scale: classifier-free guidance; 1 skips the
                unconditional branch.
            seed: integer for reproducible noise (KerasCV's noise for the
                same seed); None draws fresh noise.
            num_images_per_prompt: images per prompt.
            latents: initial unit noise (B, H/8, W/8, 4) instead of `seed`
                (with an `init_image`, the noise added to its latents).
            output_type: "pil" (list of PIL images), "np" (uint8
                (N, H, W, 3)) or "latent" (final latents, float32).
            sampler: a name from `kcv_sd.schedulers.SAMPLERS` ("ddim" is
                KerasCV's DDIM).
            image: control image (path, PIL image or array) or one per ControlNet.
            controlnet: a `controlnet.ControlNet`, a checkpoint file, a
                Hugging Face repo id, or a list of those (residuals summed).
            controlnet_conditioning_scale, guess_mode, control_guidance_start,
                control_guidance_end: as in diffusers' ControlNet pipeline;
                scale, start and end may be one value per ControlNet.
            control_sizing: how a control image meets the output size:
                "resize" (stretch, diffusers' default), "crop", "pad", or
                "native" (no crop: the output takes the control image's
                aspect ratio at about 512x512 pixels, multiples of 64).
            progress: show a progress bar over the denoising steps.
            init_image: img2img or inpainting start (path, PIL image or
                array; one for the whole batch), stretched to the output
                size and encoded with the VAE encoder (latent mean, no
                sampling, as KerasCV's encoder gives it).
            strength: how much of the init image to repaint, from 0 to 1, as
                in diffusers: the last int(num_inference_steps * strength)
                steps run, from the init latents noised to the first of
                them; 0 gives the init image's VAE round trip. Default 0.8,
                or 1.0 with a mask (where, as in diffusers, 1 starts from
                pure noise).
            mask_image: inpainting mask (path, PIL image or array),
                stretched to the output size like the init image: white
                (>= 0.5) is repainted, black kept. A latent pixel is
                repainted if any pixel of its 8x8 block is; after every
                step the kept latents are reset to the init latents at that
                noise level, and the output's black pixels are the (resized)
                init image's own.
            tiled_decode: decode the latents in overlapping 512-pixel tiles,
                bounding the decoder's memory (`kcv_sd.tiled_vae`); None
                tiles images above 1024x1024 pixels.
            cfg_cutoff_step_ratio: drop classifier-free guidance after this
                fraction of the steps that run, as diffusers'
                `SDCFGCutoffCallback`: steps up to index
                int(steps * ratio) are guided, later ones run the
                conditional prompt alone (half the UNet work each). It
                changes the images; None (the default) guides every step.
        """
        prompts, negatives = prompt_lists(prompt, negative_prompt)
        if controlnet is not None and control_sizing == "native":
            image, width, height = native_sizing(image, width, height)
        multiple = PIXELS_PER_LATENT * self.config.downsample_factor
        init, mask, strength = load_init_inputs(init_image, mask_image, strength)
        if init is not None:
            width, height = size_from_init_image(init, width, height, multiple)
        if tiled_decode not in (None, True, False):
            raise InvalidArgumentError(f"tiled_decode={tiled_decode!r}: use True, False or None (automatic).")
        width = 512 if width is None else width
        height = 512 if height is None else height
        check_size("width", width, multiple)
        check_size("height", height, multiple)
        check_options(num_inference_steps, guidance_scale, num_images_per_prompt, sampler, output_type)
        steps_run = num_inference_steps - steps_skipped(num_inference_steps, strength)
        guided_count = guided_steps(steps_run, cfg_cutoff_step_ratio)

        batch = len(prompts) * num_images_per_prompt
        shape = (batch, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT, self.config.latent_channels)
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

        plan = None
        if controlnet is not None:
            plan = self.plan_control(controlnet, image, steps_run, width, height, batch,
                                     controlnet_conditioning_scale, guess_mode, control_guidance_start,
                                     control_guidance_end, control_sizing)
        elif image is not None:
            raise InvalidArgumentError("image= is a control image: pass controlnet= too.")

        start = pixel_mask = None
        if init is not None:
            init_pixels = resized_pixels(init, width, height)
            if mask is not None:
                pixel_mask = repaint_mask(mask, width, height)
            start = ImageStart(self.encode_images(init_pixels[None]), strength,
                               None if mask is None else tf.constant(latent_repaint_mask(pixel_mask)))
        latent = self.denoise(latent, context, num_inference_steps, guidance_scale, guided,
                              sampler, progress, plan, start, guided_count)
        if output_type == "latent":
            return latent.numpy()
        pixels = to_uint8(self.decode(latent, tiled_decode))
        if pixel_mask is not None:
            pixels = np.where(pixel_mask[..., None], pixels, init_pixels)
        if output_type == "np":
            return pixels
        return [Image.fromarray(image) for image in pixels]

    def plan_control(self, controlnet, image, num_steps, width, height, batch, conditioning_scale=1.0,
                     guess_mode=False, start=0.0, end=1.0, sizing="resize"):
        """The `ControlPlan` that `denoise(control=...)` takes over `num_steps`
        steps, its control images repeated over the `batch` of latents;
        arguments as in `__call__`."""
        plan = plan_control(controlnet, image, num_steps, width, height,
                            self.components.family.controlnet_config(), self.components.precision,
                            conditioning_scale, guess_mode, start, end, sizing)
        self._check_controlnets(plan.controlnets)
        plan.images = [tf.repeat(tf.constant(im[None]), batch, axis=0) for im in plan.images]
        return plan

    def _check_controlnets(self, controlnets):
        for controlnet in controlnets:
            theirs, ours = controlnet.config.unet, self.config
            if (theirs.block_channels, theirs.context_dim, theirs.layers_per_block) != (
                    ours.block_channels, ours.context_dim, ours.layers_per_block):
                raise InvalidArgumentError(
                    "The ControlNet was made for another UNet (channels "
                    f"{theirs.block_channels}, text width {theirs.context_dim}) than this "
                    f"pipeline's ({ours.block_channels}, {ours.context_dim})."
                )

    def denoise(self, noise, context, num_steps, guidance_scale, guided, sampler="ddim",
                progress=False, control=None, start=None, guided_steps=None):
        """Run `sampler` over `num_steps` steps from unit `noise`, or from
        `noise` and an img2img or inpainting `start` (an `ImageStart`).

        `control` is a `kcv_sd.control.ControlPlan` over the steps that run
        (with a `start`, the last int(num_steps * strength)); at steps where
        none of its ControlNets is inside its guidance window the plain step
        runs. With `guided`, only the first `guided_steps` of the steps that
        run use guidance (None: all); later ones run the conditional half of
        `context` alone. With `compiled_loop` the steps run inside one
        compiled function and `progress` is not shown.
        """
        scheduler = SAMPLERS[sampler]
        skip = 0 if start is None else steps_skipped(num_steps, start.strength)
        schedule = scheduler.schedule(num_steps, skip)
        noise = tf.convert_to_tensor(noise, tf.float32)
        # Unknown when traced inside another function (kcv_sd.distribute).
        known = self.static_routes and noise.shape[:3].is_fully_defined()
        size = tuple(noise.shape[:3]) if known else None
        latent = initial_latent(noise, schedule, start)
        if not len(schedule):
            return latent
        scale = tf.constant(guidance_scale, tf.float32)
        state = scheduler.initial_state(latent)
        t_embeds = timestep_embedding(schedule.timesteps, self.config.timestep_dim)
        coefficients = tf.constant(schedule.coefficients)
        num_residuals = self.config.num_skip_connections + 1
        controlnets = tuple(control.controlnets) if control is not None else ()
        guess_mode = control is not None and control.guess_mode
        inpaint = start is not None and start.mask is not None
        blend_inputs = (start.latent, noise, start.mask) if inpaint else ()
        noise_levels = tf.constant(schedule.noise_levels)
        guided_at = np.arange(len(schedule)) < (len(schedule) if guided_steps is None else guided_steps)
        cutoff = guided and not guided_at.all()
        conditional_context = tf.convert_to_tensor(context)[latent.shape[0]:] if cutoff else None

        if self.compiled_loop:
            extra = ()
            if control is not None:
                scales = np.stack([control.step_scales(i, num_residuals) for i in range(len(schedule))])
                extra = (tuple(control.images), tf.constant(scales), tf.constant(control.keep.any(axis=1)))
            if cutoff:
                extra += ((conditional_context, tf.constant(guided_at)),)
            if inpaint:
                extra += ((*blend_inputs, noise_levels),)
            loop = self.denoise_loop(guided, sampler, controlnets, guess_mode, inpaint, cutoff, size)
            return loop(latent, state, t_embeds, context, scale, coefficients, *extra)

        steps = range(len(schedule))
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="denoising", unit="step")
        for i in steps:
            guided_now = bool(guided and guided_at[i])
            step_context = context if guided_now or not guided else conditional_context
            args = (latent, state, t_embeds[i : i + 1], step_context, scale, coefficients[i])
            if control is not None and control.keep[i].any():
                scales = tf.constant(control.step_scales(i, num_residuals))
                step = self.denoise_step(guided_now, sampler, controlnets, guess_mode, size)
                latent, state = step(*args, tuple(control.images), scales)
            else:
                latent, state = self.denoise_step(guided_now, sampler, size=size)(*args)
            if inpaint:
                latent = self._keep_unmasked(latent, *blend_inputs, noise_levels[i + 1])
        return latent
