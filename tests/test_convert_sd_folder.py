"""A diffusers SD1.x folder fills text encoder, UNet and VAE; wrong folders are named."""

import shutil

import numpy as np
import pytest
from references import (
    TINY_FAMILY_DIFFUSERS,
    state_dicts,
    tiny_family_references,
    write_diffusers_folder,
)

from kcv_sd import config as unet_configs
from kcv_sd.convert import CheckpointError, convert_diffusers_folder
from kcv_sd.errors import InvalidArgumentError, WeightsNotFoundError
from kcv_sd.text_encoder import TINY_TEXT, CLIPEmbedding, build_text_encoder
from kcv_sd.unet import UNet
from kcv_sd.vae import TINY_VAE, build_decoder, build_encoder

assert TINY_FAMILY_DIFFUSERS.context_dim == TINY_TEXT.embed_dim


@pytest.fixture(scope="module")
def references():
    return state_dicts(tiny_family_references())


@pytest.fixture(scope="module")
def folder(references, tmp_path_factory):
    return write_diffusers_folder(tmp_path_factory.mktemp("sd15"), references)


@pytest.fixture(scope="module")
def models():
    """One set of tiny models; every conversion onto them overwrites all weights."""
    return {"text_encoder": build_text_encoder(TINY_TEXT), "unet": UNet(TINY_FAMILY_DIFFUSERS, initializer="zeros"),
            "decoder": build_decoder(TINY_VAE), "encoder": build_encoder(TINY_VAE)}


def torch_conv(layer):
    return np.transpose(np.asarray(layer.conv2d.kernel), (3, 2, 0, 1))


def assert_filled(models, references):
    """One tensor per component, each from the file it belongs to."""
    (embedding,) = [layer.token_embedding.embeddings for layer in models["text_encoder"].layers
                    if isinstance(layer, CLIPEmbedding)]
    expected = {
        "text_model.embeddings.token_embedding.weight": np.asarray(embedding),
        "conv_out.weight": torch_conv(models["unet"].conv_out),
        "decoder.conv_out.weight": torch_conv(models["decoder"].layers[-1]),
        "quant_conv.weight": torch_conv(models["encoder"].layers[-2]),
    }
    for key, ours in expected.items():
        component = next(c for c, tensors in references.items() if key in tensors)
        np.testing.assert_array_equal(ours, references[component][key])


def test_folder_fills_every_model(folder, references, models):
    files = convert_diffusers_folder(folder, **models)
    assert files == {"text_encoder": folder / "text_encoder" / "model.safetensors",
                     "unet": folder / "unet" / "diffusion_pytorch_model.safetensors",
                     "vae": folder / "vae" / "diffusion_pytorch_model.safetensors"}
    assert_filled(models, references)


def test_fp16_variants_and_pickles_when_allowed(tmp_path, references, models):
    folder = write_diffusers_folder(tmp_path, references, {"text_encoder": "model.fp16.safetensors",
                                                 "unet": "diffusion_pytorch_model.bin"})
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.bin is a pickled.*allow_pickle=True"):
        convert_diffusers_folder(folder, **models)
    files = convert_diffusers_folder(folder, **models, allow_pickle=True)
    assert files["text_encoder"].name == "model.fp16.safetensors"
    half = {k: v.astype(np.float16).astype(np.float32) for k, v in references["text_encoder"].items()}
    assert_filled(models, {**references, "text_encoder": half})


def test_missing_component_names_the_file_and_the_layout(tmp_path, folder, models):
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"no vae weights: expected vae/diffusion_pytorch_model"
                                                   r".safetensors.*holds text_encoder/model.safetensors"):
        convert_diffusers_folder(tmp_path, **models)
    with pytest.raises(WeightsNotFoundError, match="is not a folder"):
        convert_diffusers_folder(tmp_path / "absent", **models)


def test_other_families_are_refused(tmp_path, references, models):
    sd2_text = {"text_model.embeddings.token_embedding.weight": np.zeros((8, 1024), np.float32)}
    sd2 = write_diffusers_folder(tmp_path / "sd2", {**references, "text_encoder": sd2_text})
    with pytest.raises(CheckpointError, match="1024-wide text encoder \\(SD2.x\\)"):
        convert_diffusers_folder(sd2, **models)

    sdxl = write_diffusers_folder(tmp_path / "sdxl", references)
    (sdxl / "text_encoder_2").mkdir()
    with pytest.raises(CheckpointError, match="SDXL pipeline.*text_encoder_2"):
        convert_diffusers_folder(sdxl, **models)


def test_a_unet_with_kerascv_numerics_is_refused(folder, models):
    kerascv_numerics = UNet(unet_configs.TINY, initializer="zeros")
    with pytest.raises(InvalidArgumentError, match="SD15_DIFFUSERS"):
        convert_diffusers_folder(folder, **{**models, "unet": kerascv_numerics})


def test_pipeline_runs_on_a_diffusers_folder(folder, references):
    """weights=<diffusers folder> converts every component, the VAE encoder on first use."""
    from kcv_sd.pipeline import Pipeline

    pipeline = Pipeline(model="tiny", precision="float32", weights=str(folder))
    assert pipeline.config == TINY_FAMILY_DIFFUSERS
    np.testing.assert_array_equal(
        np.asarray(pipeline.components.unet.conv_in.conv2d.kernel),
        np.transpose(references["unet"]["conv_in.weight"], (2, 3, 1, 0)))
    image = np.full((64, 64, 3), 128, np.uint8)
    out = pipeline("a", init_image=image, strength=0.5, num_inference_steps=2, seed=0, output_type="np")
    assert out.shape == (1, 64, 64, 3)
    encoder_in = pipeline.components.image_encoder.layers[0].conv2d.kernel
    np.testing.assert_array_equal(
        np.asarray(encoder_in), np.transpose(references["vae"]["encoder.conv_in.weight"], (2, 3, 1, 0)))
