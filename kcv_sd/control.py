"""ControlNet in the pipeline: resolving models and images, per-step scales.

Semantics follow diffusers' `StableDiffusionControlNetPipeline`:
`controlnet_conditioning_scale`, `guess_mode` (log-spaced residual scales,
control on the conditional half of the CFG batch only),
`control_guidance_start` / `control_guidance_end`, and several ControlNets
whose residuals are summed. Outside its guidance window a ControlNet is not
run at all (diffusers runs it and multiplies by zero: the same numbers,
paid for).
"""

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from controlnet.control_images import MIN_SIDE, depth_to_control, load_depth
from controlnet.sizing import fit_control_image, output_size
from kcv_sd.arguments import check_number
from kcv_sd.cache import keras_home
from kcv_sd.controlnet import ControlNet
from kcv_sd.convert import convert_controlnet_file
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError
from kcv_sd.hub import hub_file, is_repo_id
from kcv_sd.image_files import is_high_depth, read_image
from kcv_sd.image_inputs import load_image
from kcv_sd.precision import dtype_policy_scope

_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
NO_CONTROL_IMAGE = "A ControlNet needs a control image: pass image=."


def as_list(value, count, what):
    """`value` repeated `count` times, or checked to have `count` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise InvalidArgumentError(f"{len(value)} values for {what}, but {count} ControlNets: give one each.")
        return list(value)
    return [value] * count


# Conditioning scale and guess mode are kept out of the model, so that one
# compiled ControlNet serves every scale.
def control_scales(num_residuals, conditioning_scale=1.0, guess_mode=False):
    """One multiplier per residual, skips first and the middle block last.

    Guess mode ramps from 0.1 at the first skip to 1 at the middle block
    (logarithmically, as diffusers' `ControlNetModel` does), so the coarse,
    semantic residuals dominate when the prompt is empty.
    """
    if guess_mode:
        ramp = np.logspace(-1, 0, num_residuals, dtype=np.float32)
        return [float(s) * conditioning_scale for s in ramp]
    return [float(conditioning_scale)] * num_residuals


def scale_residuals(residuals, names, conditioning_scale=1.0, guess_mode=False):
    """Residuals (a dict of tensors) times their scales.

    `names` gives the residual order, e.g. `ControlNet.output_names`: a
    dict's own order is not trusted to carry the skip order.
    """
    scales = control_scales(len(names), conditioning_scale, guess_mode)
    return {name: residuals[name] * scale for name, scale in zip(names, scales)}


def check_controlnet_source(source):
    """`source` names a ControlNet `load_controlnet` can try: a model, a
    checkpoint file or a repo id (checked without loading anything)."""
    if isinstance(source, ControlNet) or Path(str(source)).is_file() or is_repo_id(source):
        return source
    raise WeightsNotFoundError(
        f"ControlNet {source!r} is neither a checkpoint file nor a Hugging Face repo id "
        "(like lllyasviel/sd-controlnet-depth)."
    )


def load_controlnet(source, config, precision="float32"):
    """A `kcv_sd.controlnet.ControlNet` from a model, a checkpoint file or a repo id.

    Hugging Face repo ids need `huggingface_hub` and a connection the first
    time; the converted weights are cached under the Keras home, so later
    loads need neither the hub nor the conversion. A cache entry that cannot
    be read (a damaged disk, an older layout) is converted again.
    """
    check_controlnet_source(source)
    if isinstance(source, ControlNet):
        return source
    model = _load_controlnet(source, config, precision)
    model.source = str(source)  # named in messages about its weights
    return model


def _load_controlnet(source, config, precision):
    path = Path(str(source))
    if path.is_file():
        with dtype_policy_scope(precision):
            return convert_controlnet_file(path, config)
    cached = keras_home() / "kcv_sd" / "controlnets" / (str(source).replace("/", "--") + ".weights.h5")
    if cached.is_file():
        try:
            with dtype_policy_scope(precision):
                model = ControlNet(config, initializer="zeros")
                model.model().load_weights(cached)
            return model
        except Exception as error:  # noqa: BLE001 - any unreadable entry is a miss
            warnings.warn(f"The cached ControlNet {cached} cannot be read ({type(error).__name__}); "
                          "converting it again.", stacklevel=2)
    # Cached in float32 whatever the precision asked: mixed policies store
    # large weights in 16 bits (`kcv_sd.unet_blocks.weights_policy`).
    with dtype_policy_scope("float32"):
        path = hub_file(str(source), _DIFFUSERS_WEIGHTS, "a local .safetensors file")
        model = convert_controlnet_file(path, config)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.weights.h5")
    try:
        model.model().save_weights(partial)
        os.replace(partial, cached)  # readers see the whole file or none
    finally:
        partial.unlink(missing_ok=True)
    if precision == "float32":
        return model
    with dtype_policy_scope(precision):
        model = ControlNet(config, initializer="zeros")
        model.model().load_weights(cached)
    return model


def load_control_image(image):
    """A control image as uint8 (H, W, 3): a path, a PIL image or an array.

    16-bit and float single-channel images (and integer arrays wider than
    8 bits) are depth maps: they become `depth_to_control(load_depth(image))`,
    their full range stretched to 0..255 as `load_depth` reads them, never
    clipped. Images under 8x8 pixels are refused, as by `load_depth`.
    """
    image = read_image(image, "control image")
    if is_high_depth(image):
        array = depth_to_control(load_depth(image))
    else:
        array = np.asarray(load_image(image, "control image"))
    if min(array.shape[:2]) < MIN_SIDE:
        raise InvalidArgumentError(
            f"The control image is {array.shape[1]}x{array.shape[0]} pixels: "
            f"a control image needs at least {MIN_SIDE}x{MIN_SIDE}.")
    return array


def load_control_images(image):
    """`image` (one control image or a list) read into uint8 arrays, so that
    sizing and planning share one decode of each file."""
    if isinstance(image, (list, tuple)):
        return [load_control_image(one) for one in image]
    return load_control_image(image)


def prepare_control_image(image, width, height, mode="resize"):
    """Control image fitted to the output size, float32 (H, W, 3) in [0, 1]."""
    fitted = fit_control_image(load_control_image(image), mode, width, height)
    return np.asarray(fitted, np.float32) / 255.0


def native_sizing(image, width=None, height=None):
    """(images, width, height) for `control_sizing="native"`: the control
    images read once (planning reuses the arrays), and the output size the
    first one implies: its own aspect ratio, about 512x512 pixels' worth, in
    multiples of 8, with no crop."""
    if image is None:
        raise InvalidArgumentError(NO_CONTROL_IMAGE)
    images = load_control_images(image)
    first = images[0] if isinstance(images, list) else images
    return (images, *output_size(first.shape, "native", width, height))


def guidance_keep(num_steps, start, end):
    """Whether a ControlNet runs at each step: diffusers' `controlnet_keep` rule."""
    if not 0 <= start < end <= 1:
        raise InvalidArgumentError(
            f"control_guidance_start={start}, control_guidance_end={end}: need 0 <= start < end <= 1."
        )
    return [not (i / num_steps < start or (i + 1) / num_steps > end) for i in range(num_steps)]


@dataclasses.dataclass
class ControlPlan:
    """Everything the denoising loop needs to apply ControlNets."""

    controlnets: list  # ControlNets, or what names them (files, repo ids) until `loaded`
    images: list  # float32 (H, W, 3) each
    scales: list  # conditioning scale per ControlNet
    keep: np.ndarray  # bool (steps, controlnets)
    guess_mode: bool
    # Each ControlNet's embedding of its images, float32 (B, h, w, C0) (`kcv_sd.pipeline.Pipeline.embed_control`);
    # None: the denoising loop computes them.
    embeddings: tuple = None

    def loaded(self, config, precision):
        """This plan with its ControlNets loaded (`load_controlnet`)."""
        return dataclasses.replace(self, controlnets=[load_controlnet(c, config, precision)
                                                      for c in self.controlnets])

    @property
    def sources(self):
        """Where each ControlNet's weights came from, for messages."""
        return [getattr(c, "source", None) or str(c) for c in self.controlnets]

    def for_batch(self, batch):
        """This plan with each control image repeated over a batch of `batch` latents, (batch, H, W, 3)."""
        return dataclasses.replace(self, images=[tf.repeat(tf.convert_to_tensor(image)[None], batch, axis=0)
                                                 for image in self.images], embeddings=None)

    def step_scales(self, step, num_residuals):
        """Per-ControlNet, per-residual multipliers at `step`, float32 (n, residuals)."""
        return np.array(
            [control_scales(num_residuals, scale * keep, self.guess_mode)
             for scale, keep in zip(self.scales, self.keep[step])],
            np.float32,
        )


def plan_control(controlnet, image, num_steps, width, height, conditioning_scale=1.0, guess_mode=False,
                 start=0.0, end=1.0, sizing="resize"):
    """Resolve ControlNet arguments (single values or one per ControlNet)
    into a plan that names its ControlNets (`ControlPlan.loaded` loads them)."""
    controlnets = controlnet if isinstance(controlnet, (list, tuple)) else [controlnet]
    count = len(controlnets)
    if count == 0:
        raise InvalidArgumentError("controlnet is an empty list: pass at least one ControlNet.")
    if image is None:
        raise InvalidArgumentError(NO_CONTROL_IMAGE)
    images = image if isinstance(image, (list, tuple)) else [image]
    if len(images) != count:
        raise InvalidArgumentError(f"{len(images)} control images for {count} ControlNets: give one each.")
    starts, ends = as_list(start, count, "control_guidance_start"), as_list(end, count, "control_guidance_end")
    keep = np.array([guidance_keep(num_steps, s, e) for s, e in zip(starts, ends)], bool).T
    scales = [check_number("controlnet_conditioning_scale", s, fix="use a finite number (1.0 is usual)")
              for s in as_list(conditioning_scale, count, "controlnet_conditioning_scale")]
    return ControlPlan(
        controlnets=[check_controlnet_source(c) for c in controlnets],
        images=[prepare_control_image(i, width, height, sizing) for i in images],
        scales=scales,
        keep=keep,
        guess_mode=bool(guess_mode),
    )


def check_controlnets(controlnets, unet_config):
    """Each ControlNet was made for a UNet of `unet_config`'s architecture."""
    for controlnet in controlnets:
        theirs = controlnet.config.unet
        if (theirs.block_channels, theirs.context_dim, theirs.layers_per_block) != (
                unet_config.block_channels, unet_config.context_dim, unet_config.layers_per_block):
            raise InvalidArgumentError(
                "The ControlNet was made for another UNet (channels "
                f"{theirs.block_channels}, text width {theirs.context_dim}) than this "
                f"pipeline's ({unet_config.block_channels}, {unet_config.context_dim})."
            )
