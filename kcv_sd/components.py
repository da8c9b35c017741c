"""The models of a pipeline, built for a model family and given weights.

Every model is built with zero weights and then filled, either from files or
from a seeded numpy generator ("random"), so no build pays for TensorFlow's
random initialisers and random weights are reproducible.
"""

import dataclasses
import functools
from pathlib import Path

import keras
import numpy as np

from kcv_sd import config as unet_configs
from kcv_sd.convert import (
    convert_diffusers_folder,
    convert_diffusers_vae,
    converted_cache,
    read_state_dict,
)
from kcv_sd.convert.sd_folder import component_file, vae_folder_file
from kcv_sd.convert.single_file import (
    fill_single_file,
    fill_vae,
    floating_dtype,
    read_single_file,
    read_single_file_vae,
)
from kcv_sd.convert.state_dict import PICKLE_SUFFIXES, check_readable
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.hub import diffusers_snapshot, is_repo_id
from kcv_sd.precision import dtype_policy_scope, text_and_vae_precision
from kcv_sd.text_encoder import SD15_TEXT, TINY_TEXT, build_text_encoder
from kcv_sd.unet import UNet
from kcv_sd.vae import SD15_VAE, TINY_VAE, build_decoder, build_encoder
from kcv_sd.weights import (
    check_legacy_h5,
    kerascv_file,
    load_legacy_h5,
    weighted_layers,
)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    unet: unet_configs.UNetConfig
    text: object
    vae: object
    kerascv_weights: bool  # whether KerasCV's published files fit
    controlnet: unet_configs.ControlNetConfig  # what ControlNet checkpoints for this UNet convert to
    # Parameter counts of the UNet and of one ControlNet (tests/test_weight_cache.py counts them), for the
    # memory that copies of their weights take before any is built (`kcv_sd.weight_cache`).
    unet_parameters: int
    controlnet_parameters: int


FAMILIES = {
    "sd15": ModelFamily(unet_configs.SD15, SD15_TEXT, SD15_VAE, kerascv_weights=True,
                        controlnet=unet_configs.CONTROLNET_SD15, unet_parameters=859_520_964,
                        controlnet_parameters=361_279_120),
    "tiny": ModelFamily(unet_configs.TINY, TINY_TEXT, TINY_VAE, kerascv_weights=False,
                        controlnet=unet_configs.CONTROLNET_TINY, unet_parameters=104_132,
                        controlnet_parameters=47_620),
}


SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
CACHED_MODELS = ("text_encoder", "unet", "decoder")

# "random" weights seed each model with the load seed plus its offset.
SEED_OFFSETS = {"text_encoder": 0, "unet": 1, "decoder": 2, "image_encoder": 3}


@dataclasses.dataclass
class Components:
    family: ModelFamily
    text_encoder: object
    unet: UNet
    decoder: object
    weights: str
    precision: str
    seed: int = 0
    _image_encoder: object = dataclasses.field(default=None, repr=False)
    # fill_image_encoder(encoder, decoder) fills the VAE encoder built on first
    # use, where the weights come from a single-file checkpoint.
    fill_image_encoder: object = dataclasses.field(default=None, repr=False)
    # The LoRAs fused into the UNet and text encoder (`kcv_sd.lora.FusedLoras`), made on first use.
    loras: object = dataclasses.field(default=None, repr=False)

    @property
    def image_encoder(self):
        """The VAE encoder, built and filled on first use: only img2img and
        inpainting need it, so text-to-image never pays for it."""
        if self._image_encoder is None:
            with dtype_policy_scope(text_and_vae_precision(self.precision)), zero_initialized():
                encoder = build_encoder(self.family.vae)
            if self.fill_image_encoder is not None:
                self.fill_image_encoder(encoder, self.decoder)
            elif is_diffusers_folder(self.weights):
                vae_file = component_file(Path(self.weights), "vae")
                convert_diffusers_vae(read_state_dict(vae_file), self.decoder, encoder, source=str(vae_file))
            else:
                path = None if self.weights == "random" else kerascv_file("image_encoder", self.weights)
                fill_weights(weighted_layers(encoder), path, self.seed + SEED_OFFSETS["image_encoder"])
            self._image_encoder = encoder
        return self._image_encoder


def is_diffusers_folder(weights):
    """A diffusers pipeline folder (unet/, vae/, text_encoder/) rather than KerasCV files."""
    return weights not in ("kerascv", "random") and (Path(weights) / "unet").is_dir()


def is_single_file(weights):
    """A single-file checkpoint (CompVis/LDM layout) by its file name."""
    return Path(str(weights)).suffix in SINGLE_FILE_SUFFIXES


def family_by_name(name):
    if name not in FAMILIES:
        raise InvalidArgumentError(f"Unknown model {name!r}. Use one of: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


# The names a Keras layer can be given for a random initializer.
_RANDOM_INITIALIZERS = (
    "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
    "Orthogonal", "OrthogonalInitializer", "RandomNormal", "RandomUniform", "TruncatedNormal",
    "VarianceScaling", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal",
    "lecun_uniform", "normal", "orthogonal", "random_normal", "random_uniform", "truncated_normal",
    "uniform", "variance_scaling",
)


def zero_initialized():
    """A scope in which Keras resolves every random initializer named by a
    layer (the text encoder's and VAE's Keras layers name "glorot_uniform"
    and "uniform") to zeros, through Keras' own custom-object scope (this thread
    only): the fill right after building overwrites the weights anyway, so
    drawing them would be wasted work."""
    return keras.saving.custom_object_scope({name: keras.initializers.Zeros for name in _RANDOM_INITIALIZERS})


def randomize(layers, seed):
    """Glorot-uniform kernels, unit scales, zero offsets, from one numpy seed.

    Drawn in float32, faster than float64 draws cast down."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        for variable in layer.weights:
            shape = tuple(variable.shape)
            if len(shape) >= 2:
                receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
                limit = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))
                value = rng.random(shape, dtype=np.float32)
                value *= 2 * limit
                value -= limit
            elif variable.path.endswith("gamma"):
                value = np.ones(shape, np.float32)
            else:
                value = np.zeros(shape, np.float32)
            variable.assign(value)


def fill_weights(layers, path, seed):
    """Load a KerasCV file onto `layers`, or random weights from `seed` when `path` is None."""
    if path is None:
        randomize(layers, seed)
    else:
        load_legacy_h5(layers, path)


def load_components(model="sd15", weights="kerascv", precision="float32", seed=0, vae=None,
                    ema=False, allow_pickle=False):
    """Build text encoder, UNet and decoder and fill their weights.

    The VAE encoder (`Components.image_encoder`) is built on first use.

    Args:
        model: a family name from `FAMILIES` ("sd15" or "tiny").
        weights: "kerascv" (KerasCV's files, downloaded once into the Keras
            cache), a folder holding those files, a diffusers SD1.5 folder
            (unet/, vae/, text_encoder/ with safetensors, e.g. runwayml's or
            a community fine-tune; converted with diffusers' numerics) or the
            Hub repo id of one ("owner/name", downloaded once into the Hub
            cache: `kcv_sd.hub.diffusers_snapshot`), a
            single-file SD 1.x checkpoint in the original CompVis/LDM layout
            (`model.safetensors`; `.ckpt`/`.pth` with allow_pickle; converted
            once, then loaded from a cache under the Keras home,
            `kcv_sd.convert.converted_cache`), or "random".
        precision: a name from `kcv_sd.precision.PRECISIONS`: the UNet's
            dtype policy, and the text encoder's and VAE's for "float16"
            and "bfloat16" (float32 otherwise; the VAE can overflow in float16).
        seed: numpy seed for "random" weights.
        vae: for a single-file checkpoint, a VAE used in place of its own
            (needed where it has none): an LDM VAE file such as
            vae-ft-mse-840000-ema-pruned.safetensors, a diffusers VAE file
            or folder, or another checkpoint.
        ema: for a single-file checkpoint holding EMA copies of the UNet's
            weights (`model_ema.*`), use those; by default the trained
            weights are used, as diffusers' `from_single_file` does.
        allow_pickle: read `.ckpt`/`.pth`/`.pt`/`.bin` checkpoints (with
            torch, weights_only=True).
    """
    family = family_by_name(model)
    if is_single_file(weights):
        return load_single_file(model, family, weights, precision, seed, vae, ema, allow_pickle)
    if vae is not None:
        raise InvalidArgumentError("vae= applies to single-file checkpoints (weights='....safetensors').")
    if is_repo_id(weights):  # a local path of the same name wins
        weights = diffusers_snapshot(weights)
    if is_diffusers_folder(weights):
        return _load_diffusers_folder(family, weights, precision, seed)
    files = {}
    if weights != "random":
        if not family.kerascv_weights:
            raise InvalidArgumentError(f"Model {model!r} has no published weights; use weights='random'.")
        if weights != "kerascv" and not Path(weights).is_dir():
            raise InvalidArgumentError(
                f"weights={weights!r} is neither 'kerascv', 'random' nor an existing folder."
            )
        # Resolve every file before building anything: a missing file fails fast.
        files = {name: kerascv_file(name, weights) for name in ("text_encoder", "unet", "decoder")}
        for path in files.values():  # a damaged file, too, fails before any model is built
            check_legacy_h5(path)

    text_encoder, unet, decoder = build_models(family, precision)
    parts = {
        "text_encoder": weighted_layers(text_encoder),
        "unet": unet.kerascv_layer_order(),
        "decoder": weighted_layers(decoder),
    }
    for name, layers in parts.items():
        fill_weights(layers, files.get(name), seed + SEED_OFFSETS[name])
    return Components(family, text_encoder, unet, decoder, weights, precision, seed)


def with_diffusers_numerics(family):
    """The family as diffusers and CompVis checkpoints need it: exact GELU and
    GroupNorm epsilon 1e-6 in the UNet's transformers and the VAE."""
    return dataclasses.replace(
        family,
        unet=dataclasses.replace(family.unet, transformer_norm_epsilon=1e-6, gelu_approximate=False),
        vae=dataclasses.replace(family.vae, norm_epsilon=1e-6),
    )


def build_models(family, precision):
    """Text encoder, decoder and UNet of a family, zero weights, variables created."""
    with dtype_policy_scope(text_and_vae_precision(precision)), zero_initialized():
        text_encoder = build_text_encoder(family.text)
        decoder = build_decoder(family.vae)
    with dtype_policy_scope(precision):
        unet = UNet(family.unet, initializer="zeros")
        unet.model()
    return text_encoder, unet, decoder


def load_single_file(model, family, path, precision, seed, vae=None, ema=False, allow_pickle=False):
    """Components from a single-file SD 1.x checkpoint, with diffusers' numerics:
    read and checked before any model is built, converted, and saved to the
    converted cache, from which later loads come."""
    family = with_diffusers_numerics(family)
    path = check_readable(path, allow_pickle)
    if vae is not None:
        vae = vae_folder_file(vae) if Path(vae).is_dir() else check_readable(vae, allow_pickle)
    folder = converted_cache.entry(path, vae, ema, model, precision)
    read = functools.partial(read_single_file, path, family.unet, family.text.embed_dim, vae, ema,
                             allow_pickle)
    cached = converted_cache.has_entry(folder, CACHED_MODELS)
    parts = None if cached else read()  # a file that does not fit fails before any build
    text_encoder, unet, decoder = build_models(family, precision)
    models = {"text_encoder": text_encoder, "unet": unet.model(), "decoder": decoder}
    if not (cached and converted_cache.load_cached(folder, models)):
        parts = parts or read()
        fill_single_file(parts, text_encoder, unet, decoder)
        dtype = floating_dtype(*parts.values())
        del parts
        converted_cache.save_cached(folder, models, dtype)

    def fill_image_encoder(encoder, decoder):
        if not converted_cache.load_cached(folder, {"image_encoder": encoder}):
            part = read_single_file_vae(path, vae, allow_pickle)
            fill_vae(part, decoder, encoder)
            converted_cache.save_cached(folder, {"image_encoder": encoder}, floating_dtype(part))

    return Components(family, text_encoder, unet, decoder, str(path), precision, seed,
                      fill_image_encoder=fill_image_encoder)


def _load_diffusers_folder(family, folder, precision, seed):
    """Components converted from a diffusers folder, with diffusers' numerics."""
    family = with_diffusers_numerics(family)
    text_encoder, unet, decoder = build_models(family, precision)
    convert_diffusers_folder(folder, text_encoder, unet, decoder)
    return Components(family, text_encoder, unet, decoder, str(folder), precision, seed)
