"""A diffusers Stable Diffusion 1.x folder (a Hub snapshot or `save_pretrained`) -> our models.

Reads the three weight files a pipeline needs, under diffusers' layout:

    unet/diffusion_pytorch_model.safetensors
    vae/diffusion_pytorch_model.safetensors
    text_encoder/model.safetensors

The fp16 variants (`*.fp16.safetensors`) are accepted where the full files
are absent, and pickled `.bin` files only with allow_pickle. Tokenizer,
scheduler and safety checker are not read: ours are fixed for SD1.x.
"""

from pathlib import Path

from kcv_sd.convert.errors import CheckpointError
from kcv_sd.convert.state_dict import read_state_dict
from kcv_sd.convert.text_encoder_diffusers import convert_clip_text_encoder
from kcv_sd.convert.unet_diffusers import fill_diffusers_unet
from kcv_sd.convert.vae_diffusers import convert_diffusers_vae
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError

# Subfolder and file stem of each component, in the order they are read:
# the text encoder first, as it is the smallest file that tells SD2.x apart.
COMPONENTS = {
    "text_encoder": "model",
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
}
# File names tried for a stem, in order of preference.
SUFFIXES = (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin")
LAYOUT = ", ".join(f"{name}/{stem}.safetensors" for name, stem in COMPONENTS.items())


def component_file(folder, name, subfolder=None):
    """The weights file of one component (in `folder/subfolder`, by default
    `folder/name`), or an error naming what is missing."""
    directory = folder / (subfolder or name)
    candidates = [directory / (COMPONENTS[name] + suffix) for suffix in SUFFIXES]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise WeightsNotFoundError(
            f"{folder} has no {name} weights: expected {candidates[0].relative_to(folder)} "
            f"(or its .fp16/.bin variant). A diffusers SD1.x folder holds {LAYOUT}."
        )
    return found


def vae_folder_file(folder):
    """The weights file of a diffusers VAE folder (`AutoencoderKL.save_pretrained`,
    e.g. stabilityai/sd-vae-ft-mse) or of a pipeline folder's vae/."""
    folder = Path(folder)
    if (folder / "vae").is_dir():
        return component_file(folder, "vae")
    return component_file(folder.parent, "vae", folder.name)


def check_diffusers_numerics(unet):
    """diffusers' weights reproduce diffusers' noise only with its numerics."""
    config = unet.config
    if config.transformer_norm_epsilon != 1e-6 or config.gelu_approximate:
        raise InvalidArgumentError(
            "The UNet was built with KerasCV numerics; diffusers weights need "
            "diffusers' (build it with kcv_sd.config.SD15_DIFFUSERS)."
        )


def convert_diffusers_folder(folder, text_encoder, unet, decoder, encoder=None,
                             allow_pickle=False):
    """Fill our text encoder, UNet and VAE decoder (and encoder) from a diffusers folder.

    Args:
        folder: the pipeline folder (holding unet/, vae/, text_encoder/).
        text_encoder: a model from `kcv_sd.text_encoder.build_text_encoder`.
        unet: a `kcv_sd.unet.UNet` built with `kcv_sd.config.SD15_DIFFUSERS`.
        decoder: a model from `kcv_sd.vae.build_decoder`.
        encoder: a model from `kcv_sd.vae.build_encoder`, or None.
        allow_pickle: read `.bin` files (with torch, weights_only=True).
    Returns:
        {component: path of the file read}.
    Raises:
        WeightsNotFoundError: the folder or one of its three files is missing.
        CheckpointError: an SD2.x/SDXL folder, or weights that do not fit.
        InvalidArgumentError: a UNet built without diffusers' numerics.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsNotFoundError(
            f"{folder} is not a folder; expected a diffusers SD1.x folder holding {LAYOUT}."
        )
    if (folder / "text_encoder_2").is_dir():
        raise CheckpointError(
            f"{folder} is an SDXL pipeline (it has text_encoder_2/): not supported, "
            "kcv-sd runs SD1.x models only."
        )
    check_diffusers_numerics(unet)
    # Every file is located before any is read: a missing one fails fast.
    files = {name: component_file(folder, name) for name in COMPONENTS}

    convert_clip_text_encoder(read_state_dict(files["text_encoder"], allow_pickle), text_encoder,
                              source=str(files["text_encoder"]))
    fill_diffusers_unet(read_state_dict(files["unet"], allow_pickle), unet, source=str(files["unet"]))
    convert_diffusers_vae(read_state_dict(files["vae"], allow_pickle), decoder, encoder,
                          source=str(files["vae"]))
    return files
