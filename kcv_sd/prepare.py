"""A generation call, checked and resolved before any denoising: prompts,
sizes, noise, guidance ordering, step counts, control plan, init image.

`Pipeline` and `DistributedPipeline` both start from `prepare`, so a call
means the same on one device and on many. Everything but loading ControlNets
is `check_call`, which needs no model: `generate()` and the CLI run it
before building a pipeline, so bad input fails in milliseconds.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kcv_sd.arguments import check_integer, check_number, check_seed, check_text
from kcv_sd.control import check_controlnets, native_sizing, plan_control
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_inputs import load_init_inputs
from kcv_sd.prompts import check_prompts
from kcv_sd.samplers import SAMPLERS, resolve
from kcv_sd.sizes import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, check_size
from kcv_sd.vae import PIXELS_PER_LATENT

OUTPUT_TYPES = ("pil", "np", "latent")


def _prompt_list(prompt, what, allow_empty=False):
    prompts = [prompt] if isinstance(prompt, (str, bytes)) else prompt
    if not isinstance(prompts, (list, tuple)):
        raise InvalidArgumentError(f"The {what} is a {type(prompt).__name__}; give a str or a list of str.")
    prompts = [check_text(p, what) for p in prompts]
    if not prompts or (not allow_empty and any(not p.strip() for p in prompts)):
        raise InvalidArgumentError(f"Empty {what}: give a non-empty text.")
    return prompts


def prompt_lists(prompt, negative_prompt):
    """(prompts, negatives), one negative per prompt, as `Pipeline` encodes them.
    An empty negative prompt is no negative prompt, as in diffusers."""
    prompts = _prompt_list(prompt, "prompt")
    if negative_prompt is None:
        return prompts, [""] * len(prompts)
    negatives = _prompt_list(negative_prompt, "negative_prompt", allow_empty=True)
    if len(negatives) == 1:
        return prompts, negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise InvalidArgumentError(
            f"{len(negatives)} negative prompts for {len(prompts)} prompts: give one, or one per prompt.")
    return prompts, negatives


def check_options(num_inference_steps, guidance_scale, num_images_per_prompt, sampler, output_type):
    """The scalar generation arguments, checked with messages that say the
    fix; `sampler` is a canonical name (`kcv_sd.samplers.resolve`)."""
    most = SAMPLERS[sampler].num_train_timesteps
    check_integer("num_inference_steps", num_inference_steps, 1, most,
                  f"use an integer from 1 to {most}, the steps the model was trained with")
    check_number("guidance_scale", guidance_scale, 0, fix="use a finite number >= 0 (7.5 is usual)")
    check_integer("num_images_per_prompt", num_images_per_prompt, 1, 2**31 - 1, "use an integer >= 1")
    if output_type not in OUTPUT_TYPES:
        raise InvalidArgumentError(f"output_type={output_type!r}: use one of {', '.join(OUTPUT_TYPES)}.")


def check_deep_cache(deep_cache, controlnet, cutoff):
    """DeepCache's interval: None, or an integer from 1 (every step full) up.
    Its kept features hold the guided batch and no ControlNet residuals, so
    it runs without ControlNets and without a guidance cutoff."""
    if deep_cache is None:
        return
    check_integer("deep_cache", deep_cache, 1, 1000, "use an integer N >= 1 (the full UNet every N steps; 3 is usual)")
    if controlnet is not None:
        raise InvalidArgumentError("deep_cache does not run with ControlNets yet: leave one of them out.")
    if cutoff:
        raise InvalidArgumentError("deep_cache does not run with cfg_cutoff_step_ratio yet: leave one of them out.")


def guided_steps(steps_run, cfg_cutoff_step_ratio):
    """How many of the steps that run keep guidance: diffusers'
    `SDCFGCutoffCallback` turns it off after step int(steps * ratio)."""
    if cfg_cutoff_step_ratio is None:
        return None
    check_number("cfg_cutoff_step_ratio", cfg_cutoff_step_ratio, 0, 1,
                 "use a fraction from 0 to 1, or None to guide every step")
    return min(steps_run, int(steps_run * cfg_cutoff_step_ratio) + 1)


def steps_skipped(num_steps, strength):
    """Leading steps img2img leaves out (diffusers' rule): it runs
    int(num_steps * strength) of them, the least noisy ones."""
    return num_steps - min(int(num_steps * strength), num_steps)


def size_from_init_image(init, width, height):
    """(width, height): each given one, else the init image's rounded down to
    a multiple of 8, as diffusers does."""
    fitted = [given if given is not None else side // SIZE_MULTIPLE * SIZE_MULTIPLE
              for given, side in ((width, init.width), (height, init.height))]
    if (width is None or height is None) and not all(MIN_SIZE <= side <= MAX_SIZE for side in fitted):
        raise InvalidArgumentError(
            f"The init image is {init.width}x{init.height} pixels: pass width= and height= "
            f"(multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}) to resize it."
        )
    return fitted


def context_rows(prompt_of_image, num_texts, guided):
    """Rows of the encoded texts (prompts, then negatives when `guided`) that
    make the UNet's text context for images whose prompts are
    `prompt_of_image`: the unconditional half first, as the guided batch
    expects. Numpy or tensors."""
    if not guided:
        return prompt_of_image
    return tf.concat([prompt_of_image + num_texts // 2, prompt_of_image], axis=0)


@dataclasses.dataclass
class Call:
    """One generation call, checked and resolved."""

    prompts: list
    negatives: list
    width: int
    height: int
    num_images_per_prompt: int
    noise: tf.Tensor  # float32 (batch, height / 8, width / 8, latent channels)
    num_inference_steps: int
    guidance_scale: float
    sampler: str
    output_type: str
    guided_steps: int  # of the steps that run, how many keep guidance; None: all
    plan: object = None  # a `kcv_sd.control.ControlPlan`, control images (H, W, 3)
    init: object = None  # img2img / inpainting start, a PIL image
    mask: object = None  # inpainting mask, a PIL image
    strength: float = 1.0
    deep_cache: int = None  # DeepCache's interval; None: the full UNet every step
    token_merging: float = None  # ToMe SD's ratio; None: no merging

    @property
    def batch(self):
        return len(self.prompts) * self.num_images_per_prompt

    @property
    def guided(self):
        return self.guidance_scale != 1

    @property
    def texts(self):
        """What the text encoder encodes: the prompts, then the negatives when guided."""
        return self.prompts + self.negatives if self.guided else self.prompts

    def prompt_of_image(self):
        """The prompt index of each image of the batch, int32 (batch,)."""
        return np.arange(self.batch, dtype=np.int32) // self.num_images_per_prompt


def check_call(family, prompt, negative_prompt=None, width=None, height=None, num_inference_steps=50,
               guidance_scale=7.5, seed=None, num_images_per_prompt=1, latents=None, output_type="pil",
               sampler="ddim", image=None, controlnet=None, controlnet_conditioning_scale=1.0,
               guess_mode=False, control_guidance_start=0.0, control_guidance_end=1.0,
               control_sizing="resize", init_image=None, strength=None, mask_image=None,
               cfg_cutoff_step_ratio=None, tiled_decode=None, deep_cache=None, token_merging=None):
    """`Pipeline.__call__`'s arguments checked and resolved for a model
    `family` (`kcv_sd.components.ModelFamily`) into a `Call`, without any
    model: its control plan names ControlNets and does not load them."""
    config = family.unet
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    check_prompts(prompts + negatives)
    check_seed(seed)
    if tiled_decode not in (None, True, False):
        raise InvalidArgumentError(f"tiled_decode={tiled_decode!r}: use True, False or None (automatic).")
    if controlnet is not None and control_sizing == "native":
        image, width, height = native_sizing(image, width, height)
    init, mask, strength = load_init_inputs(init_image, mask_image, strength)
    if init is not None:
        width, height = size_from_init_image(init, width, height)
    width = DEFAULT_SIZE if width is None else width
    height = DEFAULT_SIZE if height is None else height
    check_size("width", width)
    check_size("height", height)
    sampler = resolve(sampler)
    check_options(num_inference_steps, guidance_scale, num_images_per_prompt, sampler, output_type)
    # PNDM's first step takes two UNet calls: the steps that run are its schedule's rows.
    steps_run = len(SAMPLERS[sampler].schedule(num_inference_steps, steps_skipped(num_inference_steps, strength)))
    guided_count = guided_steps(steps_run, cfg_cutoff_step_ratio)
    check_deep_cache(deep_cache, controlnet, guided_count is not None and guided_count < steps_run)
    if token_merging is not None:
        check_number("token_merging", token_merging, 0, 1, "use a ratio from 0, below 1 (0.5 is usual)", below=True)

    batch = len(prompts) * num_images_per_prompt
    shape = (batch, height // PIXELS_PER_LATENT, width // PIXELS_PER_LATENT, config.latent_channels)
    if latents is None:
        latents = keras.random.normal(shape, seed=seed)
    elif tuple(np.shape(latents)) != shape:
        raise InvalidArgumentError(f"latents have shape {np.shape(latents)}, expected {shape}.")
    elif not np.isfinite(latents).all():
        raise InvalidArgumentError("latents hold NaN or inf: pass finite noise, or seed= instead.")

    plan = None
    if controlnet is not None:
        plan = plan_control(controlnet, image, steps_run, width, height, controlnet_conditioning_scale,
                            guess_mode, control_guidance_start, control_guidance_end, control_sizing)
    elif image is not None:
        raise InvalidArgumentError("image= is a control image: pass controlnet= too.")
    return Call(prompts, negatives, width, height, num_images_per_prompt,
                tf.convert_to_tensor(latents, tf.float32), num_inference_steps, guidance_scale, sampler,
                output_type, guided_count, plan, init, mask, strength, deep_cache, token_merging)


def prepare(components, prompt, negative_prompt=None, control_scope=contextlib.nullcontext, **options):
    """`check_call` for a pipeline's `components`, with the plan's
    ControlNets loaded (files and repo ids inside `control_scope()`, a
    distribution strategy's scope) and checked against its UNet."""
    call = check_call(components.family, prompt, negative_prompt, **options)
    if call.plan is not None:
        with control_scope():  # ControlNets loaded here get their variables where the models' are
            call.plan = call.plan.loaded(components.family.controlnet, components.precision)
        check_controlnets(call.plan.controlnets, components.family.unet)
    return call
