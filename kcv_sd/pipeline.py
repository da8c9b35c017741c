"""Text-to-image, img2img and inpainting: prompt -> encodings -> denoising
steps -> decoder -> image, each stage a method of `Pipeline`.

The pipeline owns the compiled functions: the text encoder, the decoder,
and one denoising step (or loop of steps) per `kcv_sd.step.StepSpec`, each
a tf.function with a shape-polymorphic signature (XLA compiles each concrete
shape once when `jit_compile=True`). Classifier-free guidance runs the
conditional and unconditional halves in one UNet call.

img2img starts from the VAE-encoded init image noised to the first step it
runs; inpainting (with a standard 4-channel UNet) also re-imposes, after
every step, the init latents noised to the level reached wherever the mask
is black, and finally pastes the init image's pixels back there.
"""

import dataclasses
import functools
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from kcv_sd import devices
from kcv_sd.components import load_components
from kcv_sd.control import check_controlnets, plan_control
from kcv_sd.emphasis import emphasize
from kcv_sd.finite import check_finite
from kcv_sd.graph_cache import CachedGraph, chosen_folder
from kcv_sd.image_inputs import latent_repaint_mask, repaint_mask, resized_pixels
from kcv_sd.lora import (
    as_lora,
    check_weights_changeable,
    fused_loras,
    text_weights_version,
)
from kcv_sd.precision import check_precision
from kcv_sd.prepare import context_rows, prepare, steps_skipped
from kcv_sd.prompts import chunks
from kcv_sd.recent import RecentlyUsed
from kcv_sd.routing import ROUTES_BY_DEVICE, device_routes
from kcv_sd.samplers import SAMPLERS, resolve
from kcv_sd.samplers.base import add_noise
from kcv_sd.step import (
    LoopInputs,
    StepSpec,
    advance,
    loop_signature,
    noise_keys,
    noise_predictor,
    step_body,
    step_signature,
)
from kcv_sd.textual_inversion import add_embedding, embedding_layer
from kcv_sd.tiled_vae import decode_tiled, encode_tiled
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH, get_tokenizer
from kcv_sd.unet import timestep_embedding
from kcv_sd.vae import PIXELS_PER_LATENT

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


def epsilons(model):
    """The normalisation epsilons of `model`'s layers: constants of its graph that its configuration may not say
    (a diffusers VAE's 1e-6 in KerasCV's blocks)."""
    return sorted({float(layer.epsilon) for layer in model._flatten_layers() if hasattr(layer, "epsilon")})


def has_run(function):
    """Whether a compiled function (a `tf.function` or a `CachedGraph`) has been built by a first call."""
    if isinstance(function, CachedGraph):
        return function.source is not None
    return function.experimental_get_tracing_count() > 0


def to_uint8(decoded):
    """Decoder output in [-1, 1] to uint8 pixels, truncating as KerasCV does."""
    return np.clip((np.asarray(decoded) + 1) / 2 * 255, 0, 255).astype("uint8")


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


class Pipeline:
    """Text-to-image, img2img and inpainting; caches models and compiled functions.

    Args:
        model: "sd15" (KerasCV's SD1.x architecture) or "tiny" (for tests).
        weights: "kerascv" (KerasCV's SD v1.4 files), a folder with KerasCV's
            weight files, a diffusers SD1.x folder or its Hub repo id
            ("owner/name"), a single-file SD 1.x checkpoint (CompVis/LDM
            layout, `.safetensors`), or "random" (`load_components`).
        vae: for a single-file checkpoint, a VAE in place of its own
            (`load_components`).
        precision: "auto" (the default: this device's, `kcv_sd.devices`);
            "float32"; "mixed_float16" or "mixed_bfloat16" for the UNet
            alone; "float16" or "bfloat16" for every model, text encoder and
            VAE too (faster, images differ slightly; `kcv_sd.precision`).
            GroupNorm statistics, the UNet's softmax and the sampler stay
            float32.
        jit_compile: compile the denoising step and decoder with XLA;
            "auto" (the default): on a GPU or TPU, not on a CPU.
        device: "cpu", "gpu" or "tpu": whose defaults and kernel routes
            (`kcv_sd.routing.RoutePolicy`) apply; None: the device
            TensorFlow runs on.
        compiled_loop: run all denoising steps in one compiled function
            (a tf.while_loop) instead of one call per step from Python.
        components: already-built `Components` to share (then `model`,
            `weights` and `precision` are taken from them).
        xla_decoder: compile the VAE decoder with XLA; None (the default)
            follows `jit_compile`. On CPUs it has suited a float32 VAE and
            not a 16-bit one (docs/latency_levers.md, section 7); each new
            image size compiles again and keeps its executable.
        static_routes: trace the denoising step per image size class: the
            layers choose their kernels in Python from the size
            (`kcv_sd.routing`), so the graph holds no run-time choices and
            its first call is faster; a size whose choices differ traces
            again. False: one trace serves every size, choosing at run time
            (better when many sizes are generated in one process).
        graph_cache: keep the text encoder's, each denoising step's and the
            decoder's graphs, traced and optimised once, on disk, and run the
            saved graphs in this and later processes: no tracing and no
            Grappler at their first call (`kcv_sd.graph_cache`). "auto" (the
            default): on, under KERAS_HOME, unless the environment variable
            KCV_SD_GRAPH_CACHE is "off"; True, False, or a folder. CPUs
            without XLA only; elsewhere ignored.
    """

    def __init__(self, model="sd15", weights="kerascv", precision=devices.AUTO,
                 jit_compile=devices.AUTO, components=None, compiled_loop=False, static_routes=True,
                 xla_decoder=None, vae=None, device=None, graph_cache=devices.AUTO):
        defaults = devices.detected_defaults()
        if device is not None and device != defaults.device:  # forced: that device kind's recipe
            defaults = devices.choose_defaults(device)
        precision, jit_compile = devices.resolve(precision, jit_compile, defaults)
        precision = components.precision if components is not None else check_precision(precision)
        emulated = devices.emulated_16_bit(precision, defaults.device, devices.cpu_flags())
        if emulated:  # before the models are built: a user can stop here
            warnings.warn(devices.emulation_warning(precision, emulated), stacklevel=2)
        if components is None:
            components = load_components(model, weights, precision, vae=vae)
        self.components = components
        self.device = defaults.device
        self.route_policy = ROUTES_BY_DEVICE[self.device]
        self.jit_compile = bool(jit_compile)
        self.compiled_loop = bool(compiled_loop)
        self.static_routes = bool(static_routes)
        # The folder of the text encoder's, steps' and decoder's optimised graphs, or None.
        self.graph_cache = chosen_folder(graph_cache, self.device, self.jit_compile)
        self.tokenizer = get_tokenizer()
        self._encode = self._text_encoding()
        latent_spec = tf.TensorSpec((None, None, None, components.family.unet.latent_channels), tf.float32)
        self.xla_decoder = self.jit_compile if xla_decoder is None else bool(xla_decoder)
        decoder = components.decoder
        self._decode = self._compile(as_float32(decoder), [latent_spec], self.xla_decoder, lambda: (
            decoder.weights, ["decoder", components.precision, repr(components.family.vae), epsilons(decoder)]))
        self._encode_image = None  # compiled on first use, as the encoder loads
        self._empty_encoding = None
        self._compiled = RecentlyUsed(COMPILED_FUNCTIONS_KEPT)  # steps and loops, by spec
        self._routes = RecentlyUsed(COMPILED_FUNCTIONS_KEPT)

    @property
    def config(self):
        return self.components.family.unet

    def graph_sources(self):
        """Where the graphs of the functions compiled so far came from (`CachedGraph.source`): "cache", "traced"
        (and written) or "uncached", sorted; empty without the graph cache."""
        functions = [self._encode, self._decode, *self._compiled.values()]
        return sorted(f.source for f in functions if isinstance(f, CachedGraph) and f.source)

    def _compile(self, fn, signature, jit_compile=None, cached=None):
        """`fn` compiled over `signature`; with the graph cache on, and `cached` (a function giving the variables
        `fn` reads and a description of its graph, or None where it cannot be cached; asked only then), a
        `CachedGraph`, which XLA does not use."""
        # No autograph: the compiled code branches and loops only with explicit
        # tf.cond / tf.while_loop, and converting it slows every first trace
        # (docs/latency_levers.md, tools/measure_first_call.py).
        jit_compile = self.jit_compile if jit_compile is None else jit_compile
        found = cached() if cached is not None and self.graph_cache and not jit_compile else None
        if found is not None:
            return CachedGraph(fn, signature, *found, directory=self.graph_cache)
        return tf.function(fn, input_signature=signature, jit_compile=jit_compile, autograph=False)

    # --- prompt -> encodings ---

    def _text_encoding(self):
        """The compiled text encoder, from the graph cache where it is on, unless it has added token rows
        (textual inversion): they are a variable outside the model's weights, which the cache's key does not
        see."""
        encoder = self.components.text_encoder

        def cached():
            if embedding_layer(encoder).extra_rows is not None:
                return None
            return encoder.weights, ["text encoder", self.components.precision, repr(self.components.family.text),
                                     epsilons(encoder)]

        return self._compile(self._encode_tokens, [tf.TensorSpec((None, MAX_PROMPT_LENGTH), tf.int32)], cached=cached)

    def _encode_tokens(self, tokens):
        positions = tf.broadcast_to(tf.range(MAX_PROMPT_LENGTH, dtype=tf.int32), tf.shape(tokens))
        return tf.cast(self.components.text_encoder({"tokens": tokens, "positions": positions}), tf.float32)

    def encode_prompts(self, prompts):
        """Text encodings (N, 77 k, context_dim) of a list of prompts.

        A prompt is read with A1111's emphasis syntax and encoded in k chunks
        of 77 tokens (`kcv_sd.prompts`), weighted (`kcv_sd.emphasis`); every
        prompt is padded to the most chunks among them with the empty
        prompt's encoding, as A1111 (with its option "pad prompt/negative
        prompt") and compel do. Each distinct prompt is encoded once. The
        empty prompt, the unconditional half when there is no negative
        prompt, is a constant of the text encoder's weights: it is encoded
        once per pipeline."""
        def empty():
            version = text_weights_version(self.components)  # LoRAs change the encoding
            if self._empty_encoding is None or self._empty_encoding[0] != version:
                self._empty_encoding = (version, self._encode(tf.constant(self.tokenizer.pad_batch([""])))[0])
            return self._empty_encoding[1][None]

        encoded = {"": empty()} if "" in prompts else {}
        split = {text: chunks(text, self.tokenizer) for text in dict.fromkeys(prompts) if text}
        if split:
            rows = self._encode(tf.constant(np.concatenate([ids for ids, _ in split.values()])))
            sizes = [len(ids) for ids, _ in split.values()]
            for (text, (_, weights)), z in zip(split.items(), tf.split(rows, sizes)):
                encoded[text] = emphasize(z, weights) if (weights != 1).any() else z
        count = max(map(len, encoded.values()))

        def padded(z):
            if len(z) < count:
                z = tf.concat([z, tf.repeat(empty(), count - len(z), axis=0)], 0)
            return tf.reshape(z, (count * MAX_PROMPT_LENGTH, z.shape[-1]))

        return tf.stack([padded(encoded[p]) for p in prompts])

    def encode_context(self, call):
        """The UNet's text context for a `kcv_sd.prepare.Call`: one row per
        image, both guidance halves (unconditional first) when guided."""
        encodings = self.encode_prompts(call.texts)
        return tf.gather(encodings, context_rows(call.prompt_of_image(), len(call.texts), call.guided))

    # --- LoRAs ---

    @property
    def loras(self):
        """The `kcv_sd.lora.Lora`s (file, scale) fused into the weights now."""
        return fused_loras(self.components).active

    def set_loras(self, loras, allow_pickle=False):
        """Fuse exactly `loras` into the UNet and text encoder: a list of
        files, "file:scale" strings or (file, scale) pairs; [] removes all.
        Kohya/A1111 (LoRA and LoCon) and diffusers/PEFT files of SD1.x.
        The weights change in place (`kcv_sd.lora`): the models and compiled
        steps stay, and removing LoRAs gives back the exact weights. Shared
        `Components` share their LoRAs."""
        fused = fused_loras(self.components)
        if fused.differs(loras):
            check_weights_changeable(has_run(self._encode))
            fused.set(loras, allow_pickle)

    def load_lora(self, path, scale=1.0, allow_pickle=False):
        """Add one LoRA file at `scale` to those fused (replacing the same file's scale)."""
        lora = as_lora((path, scale))
        self.set_loras([*(old for old in self.loras if old.path != lora.path), lora], allow_pickle)

    def unload_loras(self):
        """Remove every LoRA: the weights are the loaded ones again, bit for bit."""
        self.set_loras(())

    def load_textual_inversion(self, path, token=None, allow_pickle=False):
        """Add a textual inversion embedding (A1111 `.pt`/`.safetensors` or
        diffusers' `learned_embeds.safetensors`) as `token` (default: the
        file's own name for it, else the file name's stem), usable in prompts
        and negative prompts; a multi-vector one reads as all its vectors
        (`kcv_sd.textual_inversion`). The rows go to the shared text
        encoder, the token to this pipeline's tokenizer; the text encoder is
        traced again after the first embedding only."""
        self.tokenizer, first = add_embedding(self.components.text_encoder, self.tokenizer, path, token, allow_pickle)
        if first or not getattr(self, "_encode_reads_embeddings", False):
            self._encode = self._text_encoding()
            self._encode_reads_embeddings = True

    # --- the VAE ---

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

    # --- the denoising step ---

    def _route_key(self, size, controlnets, context_length):
        """The routes the UNet's and ControlNets' layers take for latents of
        `size` (batch, height, width) and a text context of `context_length`
        tokens, at the batch and the guided batch; None for an unknown size
        (then the layers choose at run time)."""
        if size is None:
            return None
        batch, height, width = size

        def routes():  # held with the ControlNets, so that their ids stay theirs
            with device_routes(self.route_policy):
                return controlnets, tuple(model.routes(rows, height, width, context_length)
                                          for model in (self.components.unet, *controlnets)
                                          for rows in (batch, 2 * batch))

        return self._routes.get((size, context_length, tuple(id(c) for c in controlnets)), routes)[1]

    def _routed(self, spec):
        """`spec` with the routes of its models at its size."""
        return dataclasses.replace(spec, routes=self._route_key(spec.size, spec.controlnets, spec.context_length))

    def step_spec(self, sampler, guided, controlnets=(), guess_mode=False, cutoff=False, inpaint=False,
                  size=None, context_length=MAX_PROMPT_LENGTH, deep_cache=False, token_merging=0.0):
        """The `StepSpec` of a step or loop; given a latent `size` (batch,
        height, width), traced with static routes for it and a text context
        of `context_length` tokens (sizes and lengths whose routes agree
        share the compiled function); None serves every size and length."""
        return self._routed(StepSpec(sampler, guided, tuple(controlnets), guess_mode, cutoff, inpaint,
                                     deep_cache=deep_cache, token_merging=float(token_merging or 0.0), size=size,
                                     context_length=context_length))

    def step_function(self, spec):
        """The compiled single step of `spec` (no cutoff): `StepInputs` -> (latent, state)."""
        def build():
            predict = noise_predictor(spec, self.components.unet, self.route_policy)
            return self._compile(functools.partial(step_body, spec, predict), [step_signature(spec, self.config)],
                                 cached=lambda: (self._step_variables(spec), self._step_description(spec)))

        return self._compiled.get(("step", spec), build)

    def _step_variables(self, spec):
        """Every variable a step of `spec` reads, in the same order in every process."""
        return [*self.components.unet.model().weights, *(w for c in spec.controlnets for w in c.model().weights)]

    def _step_description(self, spec):
        """What shapes a step's graph, for `kcv_sd.graph_cache`: the spec's compared fields, with each ControlNet
        as its architecture, the precision and the device's routes."""
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.compare}
        fields["controlnets"] = [repr(c.config) for c in spec.controlnets]
        return ["step", fields, self.components.precision, repr(self.components.unet.config),
                epsilons(self.components.unet.model()), repr(self.route_policy)]

    def loop_function(self, spec):
        """All steps of a run of `spec` in one compiled function (a
        tf.while_loop, no host round trip per step): `LoopInputs` with
        tensor flags -> latent."""
        def build():
            def step_for(guided, controlled, shallow):
                variant = self._routed(spec.variant(guided, controlled, shallow))
                return functools.partial(step_body, variant, noise_predictor(variant, self.components.unet, self.route_policy))

            def loop(inputs):
                def body(i, latent, state):
                    return (i + 1, *advance(spec, step_for, inputs, i, latent, state))

                num_steps = tf.shape(inputs.coefficients)[0]
                _, latent, _ = tf.while_loop(lambda i, *_: i < num_steps, body, (0, inputs.latent, inputs.state))
                return latent

            return self._compile(loop, [loop_signature(spec, self.config)])

        return self._compiled.get(("loop", spec), build)

    # --- a call ---

    def __call__(self, prompt, negative_prompt=None, width=None, height=None,
                 num_inference_steps=50, guidance_scale=7.5, seed=None,
                 num_images_per_prompt=1, latents=None, output_type="pil", sampler="ddim",
                 image=None, controlnet=None, controlnet_conditioning_scale=1.0, guess_mode=False,
                 control_guidance_start=0.0, control_guidance_end=1.0, control_sizing="resize",
                 progress=False, init_image=None, strength=None, mask_image=None, tiled_decode=None,
                 cfg_cutoff_step_ratio=None, deep_cache=None, token_merging=None):
        """Generate images.

        Args:
            prompt: a string, or a list of strings (one batch entry each).
            negative_prompt: what to steer away from; one string or one per prompt.
            width, height: output size, multiples of 8 from 64 to 2048;
                512 when not given (with `control_sizing="native"`, taken
                from the control image instead; else with an `init_image`,
                its size rounded down to multiples of 8).
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
            sampler: a name from `kcv_sd.samplers.SAMPLERS` ("ddim" is
                KerasCV's DDIM) or AUTOMATIC1111's name for it ("Euler a",
                "DPM++ 2M Karras", ...: `kcv_sd.samplers.ALIASES`). The
                stochastic ones (euler_a, ddpm, lcm) draw each step's
                fresh noise from the initial noise, so a seed still
                gives the same images.
            image: control image (path, PIL image or array) or one per ControlNet.
            controlnet: a `controlnet.ControlNet`, a checkpoint file, a
                Hugging Face repo id, or a list of those (residuals summed).
            controlnet_conditioning_scale, guess_mode, control_guidance_start,
                control_guidance_end: as in diffusers' ControlNet pipeline;
                scale, start and end may be one value per ControlNet.
            control_sizing: how a control image meets the output size:
                "resize" (stretch, diffusers' default), "crop", "pad", or
                "native" (no crop: the output takes the control image's
                aspect ratio at about 512x512 pixels, multiples of 8).
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
            deep_cache: DeepCache (Ma et al. 2023, cache branch 0) every N
                steps: the full UNet runs at the first step of each N and
                keeps the features its last up block takes; the steps in
                between run the input convolution and that block alone on
                them (`kcv_sd.unet.UNet.shallow`). Much less work for a
                small change to the images; None (the default) runs the
                full UNet every step. Not with ControlNets or a guidance
                cutoff.
            token_merging: ToMe SD's ratio (0 to 1; 0.5 is tomesd's
                default): before the self-attention at the latent's
                resolution that share of the tokens is merged into similar
                ones, and the result copied back (`kcv_sd.token_merging`).
                Less attention work, a small change to the images; None
                (the default) merges nothing.
        """
        call = prepare(
            self.components, prompt, negative_prompt, width=width, height=height,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
            num_images_per_prompt=num_images_per_prompt, latents=latents, output_type=output_type,
            sampler=sampler, image=image, controlnet=controlnet,
            controlnet_conditioning_scale=controlnet_conditioning_scale, guess_mode=guess_mode,
            control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end,
            control_sizing=control_sizing, init_image=init_image, strength=strength,
            mask_image=mask_image, cfg_cutoff_step_ratio=cfg_cutoff_step_ratio, tiled_decode=tiled_decode,
            deep_cache=deep_cache, token_merging=token_merging)
        context = self.encode_context(call)
        start = pixel_mask = None
        if call.init is not None:
            init_pixels = resized_pixels(call.init, call.width, call.height)
            if call.mask is not None:
                pixel_mask = repaint_mask(call.mask, call.width, call.height)
            start = ImageStart(self.encode_images(init_pixels[None]), call.strength,
                               None if pixel_mask is None else tf.constant(latent_repaint_mask(pixel_mask)))
        control = None if call.plan is None else call.plan.for_batch(call.batch)
        latent = self.denoise(call.noise, context, call.num_inference_steps, call.guidance_scale, call.guided,
                              call.sampler, progress, control, start, call.guided_steps, call.deep_cache,
                              call.token_merging)
        self.check_finite(latent, "latents", call.plan)
        if output_type == "latent":
            return latent.numpy()
        decoded = self.decode(latent, tiled_decode)
        self.check_finite(decoded, "pixels", call.plan)
        pixels = to_uint8(decoded)
        if pixel_mask is not None:
            pixels = np.where(pixel_mask[..., None], pixels, init_pixels)
        if output_type == "np":
            return pixels
        return [Image.fromarray(image) for image in pixels]

    def check_finite(self, values, stage, plan=None):
        """Raise `kcv_sd.errors.NonFiniteError` naming the likely cause if the
        `stage` ("latents" or "pixels") holds NaN or inf (`kcv_sd.finite`)."""
        c = self.components
        models = [("text encoder", c.text_encoder, c.weights), ("UNet", c.unet, c.weights)]
        if plan is not None:
            models += [("ControlNet", net, source) for net, source in zip(plan.controlnets, plan.sources)]
        if c._image_encoder is not None:  # built: img2img or inpainting ran
            models.append(("VAE encoder", c.image_encoder, c.weights))
        if stage == "pixels":
            models.append(("VAE decoder", c.decoder, c.weights))
        check_finite(values, stage, models, c.precision)

    def plan_control(self, controlnet, image, num_steps, width, height, batch, conditioning_scale=1.0,
                     guess_mode=False, start=0.0, end=1.0, sizing="resize"):
        """The `ControlPlan` that `denoise(control=...)` takes over `num_steps`
        steps, its control images repeated over the `batch` of latents;
        arguments as in `__call__`."""
        plan = plan_control(controlnet, image, num_steps, width, height, conditioning_scale, guess_mode,
                            start, end, sizing).loaded(self.components.family.controlnet, self.components.precision)
        check_controlnets(plan.controlnets, self.config)
        return plan.for_batch(batch)

    def embed_control(self, plan):
        """`plan` (a `ControlPlan` whose images are repeated over the batch) with each ControlNet's embedding of
        its images: they depend on the images alone, so a run computes them once and every step reuses them."""
        return dataclasses.replace(plan, embeddings=tuple(
            self._embedding_function(controlnet)(tf.convert_to_tensor(images, tf.float32))
            for controlnet, images in zip(plan.controlnets, plan.images)))

    def _embedding_function(self, controlnet):
        """The compiled `controlnet.embedding_model()`; its layers choose their routes at run time (one graph for
        every size)."""
        def build():
            model = controlnet.embedding_model()

            def embed(images):
                with device_routes(self.route_policy):
                    return model(images)

            return self._compile(embed, [tf.TensorSpec((None, None, None, 3), tf.float32)], cached=lambda: (
                model.weights, ["control embedding", self.components.precision, repr(controlnet.config),
                                epsilons(model), repr(self.route_policy)]))

        return self._compiled.get(("control embedding", controlnet), build)

    def denoise(self, noise, context, num_steps, guidance_scale, guided, sampler="ddim",
                progress=False, control=None, start=None, guided_steps=None, deep_cache=None,
                token_merging=None):
        """Run `sampler` over `num_steps` steps from unit `noise`, or from
        `noise` and an img2img or inpainting `start` (an `ImageStart`).

        `control` is a `kcv_sd.control.ControlPlan` over the steps that run
        (with a `start`, the last int(num_steps * strength)), its images
        repeated over the batch and embedded once (here, unless
        `embed_control` did it); at steps where none of its ControlNets is
        inside its guidance window the plain step runs. With `guided`, only
        the first `guided_steps` of the steps that run use guidance (None:
        all); later ones run the conditional half of `context` alone. With
        `compiled_loop` the steps run inside one compiled function and
        `progress` is not shown. With `deep_cache` N (DeepCache), the full
        UNet runs every N-th step from the first and its shallow pass in
        between (`kcv_sd.unet.UNet.shallow`). With `token_merging` r, the
        first level's self-attention runs on tokens merged by ratio r
        (`kcv_sd.token_merging`).
        """
        sampler = resolve(sampler)
        schedule = SAMPLERS[sampler].schedule(num_steps, 0 if start is None else
                                              steps_skipped(num_steps, start.strength))
        noise = tf.convert_to_tensor(noise, tf.float32)
        latent = initial_latent(noise, schedule, start)
        count = len(schedule)
        if not count:
            return latent
        guided_at = np.arange(count) < (count if guided_steps is None else guided_steps)
        cutoff = guided and not guided_at.all()
        inpaint = start is not None and start.mask is not None
        # Unknown when traced inside another function (kcv_sd.distribute).
        context = tf.convert_to_tensor(context, tf.float32)
        known = self.static_routes and noise.shape[:3].is_fully_defined() and context.shape[1] is not None
        spec = self.step_spec(sampler, guided, () if control is None else control.controlnets,
                              control is not None and control.guess_mode, cutoff, inpaint,
                              tuple(noise.shape[:3]) if known else None, context.shape[1], bool(deep_cache),
                              token_merging)
        state = SAMPLERS[sampler].initial_state(latent)
        if deep_cache:  # the features the first (full) step keeps; zeros until then
            shape = tf.concat([tf.shape(latent)[:1] * (2 if guided else 1), tf.shape(latent)[1:3],
                               [self.components.unet.feature_channels]], 0)
            state = (*state, tf.zeros(shape))
        num_residuals = self.config.num_skip_connections + 1
        if control is not None and control.embeddings is None:
            control = self.embed_control(control)
        inputs = LoopInputs(
            latent, state,
            timestep_embedding(schedule.timesteps, self.config.timestep_dim), context,
            tf.constant(guidance_scale, tf.float32), tf.constant(schedule.coefficients),
            control_embeddings=() if control is None else control.embeddings,
            control_scales=() if control is None else np.stack(
                [control.step_scales(i, num_residuals) for i in range(count)]),
            control_keep=() if control is None else control.keep.any(axis=1),
            conditional_context=context[tf.shape(latent)[0]:] if cutoff else (),
            guided_at=guided_at if cutoff else (),
            blend=(start.latent, noise, start.mask) if inpaint else (),
            noise_levels=tf.constant(schedule.noise_levels) if inpaint else (),
            noise_keys=noise_keys(noise) if SAMPLERS[sampler].stochastic else (),
            shallow_at=np.arange(count) % deep_cache != 0 if deep_cache else ())

        if self.compiled_loop:
            flags = {name: tf.constant(getattr(inputs, name))
                     for name in ("control_scales", "control_keep", "guided_at", "shallow_at")
                     if len(getattr(inputs, name))}
            return self.loop_function(spec)(inputs._replace(**flags))

        variant = functools.cache(lambda *flags: self._routed(spec.variant(*flags)))

        def step_for(guided_now, controlled, shallow):
            return self.step_function(variant(guided_now, controlled, shallow))

        steps = range(count)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="denoising", unit="step")
        state = inputs.state
        for i in steps:
            latent, state = advance(spec, step_for, inputs, i, latent, state)
        return latent
