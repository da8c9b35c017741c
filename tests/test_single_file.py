"""A single-file (CompVis/LDM) SD 1.x checkpoint loads as diffusers' own converters read it.

The files are made here from the tiny family's random diffusers models, with
the original names written from ldm's layout (a formula per module,
independent of the converter's tables). diffusers' single-file converters
map those names back to the models' own keys, and the loaded models compute
what the diffusers and transformers models compute, in float32.
"""

import re

import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from helpers import random_inputs
from references import (
    TINY_A,
    TINY_FAMILY_DIFFUSERS,
    diffusers_unet,
    nchw,
    nhwc,
    numpy_state_dict,
    prompt_tokens,
    state_dicts,
    text_inputs,
    tiny_family_references,
    write_diffusers_folder,
)
from safetensors.numpy import load_file, save_file
from test_convert_original import RESBLOCK, original_key

from kcv_sd.components import load_components
from kcv_sd.config import ControlNetConfig
from kcv_sd.convert import CheckpointError, converted_cache
from kcv_sd.convert.ldm_unet import ldm_unet_table
from kcv_sd.convert.single_file import (
    fill_single_file,
    floating_dtype,
    read_single_file,
)
from kcv_sd.errors import KcvSdError
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder
from kcv_sd.unet import UNet
from kcv_sd.vae import LATENT_SCALE, TINY_VAE, build_decoder

RELATIVE_TOLERANCE = 1e-5  # of the reference's largest magnitude
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
LEVELS = 4


def ldm_unet_key(key, config):
    """openaimodel.py's name for a diffusers UNet key: the up path and exit
    here, the down path and middle as lllyasviel's ControlNets name them."""
    per_level = config.layers_per_block + 1
    up_attention = tuple(reversed(config.attention_levels))
    rules = [
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"output_blocks.{int(m[1]) * per_level + int(m[2])}.0.{RESBLOCK[m[3]]}."),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.",
         lambda m: f"output_blocks.{int(m[1]) * per_level + int(m[2])}.1."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
         lambda m: f"output_blocks.{(int(m[1]) + 1) * per_level - 1}."
                   f"{2 if up_attention[int(m[1])] else 1}.conv."),
        (r"conv_norm_out\.", lambda m: "out.0."),
        (r"conv_out\.", lambda m: "out.2."),
    ]
    for pattern, name in rules:
        match = re.match(pattern, key)
        if match:
            return name(match) + key[match.end():]
    return original_key(key, ControlNetConfig(unet=config))


def ldm_vae_key(key):
    """ldm's AutoencoderKL name for a diffusers VAE key."""
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda m: f"decoder.up.{LEVELS - 1 - int(m[1])}.block.{m[2]}."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
         lambda m: f"decoder.up.{LEVELS - 1 - int(m[1])}.upsample."),
        (r"(\w+)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"(\w+)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}."),
        (r"(\w+)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
    ]
    for pattern, name in rules:
        match = re.match(pattern, key)
        if match:
            key = name(match) + key[match.end():]
            break
    return key.replace("conv_shortcut", "nin_shortcut")


def ldm_vae(vae_state_dict, prefix=""):
    """The VAE as ldm saves it: the attention's projections are 1x1 convolutions."""
    return {prefix + ldm_vae_key(key): value[:, :, None, None] if ".attentions." in key and value.ndim == 2
            else value for key, value in vae_state_dict.items()}


def ldm_checkpoint(dicts, config, vae=True):
    """A single-file checkpoint's tensors, schedule buffers included."""
    tensors = {f"model.diffusion_model.{ldm_unet_key(k, config)}": v for k, v in dicts["unet"].items()}
    tensors.update({f"cond_stage_model.transformer.{k}": v for k, v in dicts["text_encoder"].items()})
    if vae:
        tensors.update(ldm_vae(dicts["vae"], "first_stage_model."))
    betas = np.linspace(0.00085, 0.012, 1000, dtype=np.float32)
    return {**tensors, "betas": betas, "alphas_cumprod": np.cumprod(1 - betas)}


def save(path, tensors, dtype=None):
    save_file({k: v.astype(dtype) if dtype and v.dtype == np.float32 else v for k, v in tensors.items()},
              path)
    return path


@pytest.fixture(scope="module")
def references():
    return tiny_family_references(seed=21)


@pytest.fixture(scope="module")
def dicts(references):
    return state_dicts(references)


@pytest.fixture(scope="module")
def checkpoint(dicts):
    return ldm_checkpoint(dicts, TINY_FAMILY_DIFFUSERS)


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single_file")
    return {"float32": save(folder / "model.safetensors", checkpoint),
            "float16": save(folder / "model-fp16.safetensors", checkpoint, np.float16)}


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("keras_home")
        patch.setenv("KERAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def models():
    """One set of tiny models; every fill overwrites all their weights."""
    return {"text_encoder": build_text_encoder(TINY_TEXT),
            "unet": UNet(TINY_FAMILY_DIFFUSERS, initializer="zeros"),
            "decoder": build_decoder(TINY_VAE)}


@pytest.fixture(scope="module")
def loaded(files, keras_home):
    return load_components("tiny", weights=files["float32"])


def as_torch(tensors):
    return {key: torch.from_numpy(value) for key, value in tensors.items()}


def assert_same_tensors(actual, expected):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(actual[key]), value, err_msg=key)


def assert_close(ours, reference):
    error = np.abs(np.asarray(ours) - reference).max()
    assert error <= RELATIVE_TOLERANCE * np.abs(reference).max(), error


def test_ldm_names_agree_with_diffusers_single_file_converters(checkpoint, dicts):
    """diffusers reads the file written here as the models' own state dicts."""
    ldm = as_torch(checkpoint)
    unet = convert_ldm_unet_checkpoint(ldm, {"layers_per_block": TINY_FAMILY_DIFFUSERS.layers_per_block})
    assert_same_tensors(unet, dicts["unet"])
    blocks = {"down_block_types": ("DownEncoderBlock2D",) * LEVELS,
              "up_block_types": ("UpDecoderBlock2D",) * LEVELS}
    assert_same_tensors(convert_ldm_vae_checkpoint(ldm, blocks), dicts["vae"])
    assert_same_tensors(convert_ldm_clip_checkpoint(ldm), dicts["text_encoder"])


def test_sd15_layout_upsamplers_after_attention():
    """SD1.5's layout (TINY_A) puts a level's upsampler after its attention
    (output_blocks.N.2.conv); the tiny family has none there."""
    state_dict = numpy_state_dict(diffusers_unet(TINY_A, seed=3))
    ldm = {ldm_unet_key(key, TINY_A): value for key, value in state_dict.items()}
    assert any(re.fullmatch(r"output_blocks\.\d+\.2\.conv\.weight", key) for key in ldm)
    back = convert_ldm_unet_checkpoint(as_torch({f"model.diffusion_model.{k}": v for k, v in ldm.items()}),
                                       {"layers_per_block": TINY_A.layers_per_block})
    assert_same_tensors(back, state_dict)
    assert_same_tensors(ldm_unet_table(TINY_A).rename(ldm, "x", "UNet"), state_dict)


def test_loaded_models_match_diffusers_and_transformers(loaded, references):
    inputs, timesteps = random_inputs(TINY_FAMILY_DIFFUSERS, height=8, width=16)
    with torch.no_grad():
        noise = references["unet"](nchw(inputs["latent"]), torch.from_numpy(timesteps),
                                   encoder_hidden_states=torch.from_numpy(inputs["context"])).sample
    assert_close(loaded.unet.model()(inputs), nhwc(noise))

    tokens = prompt_tokens([5, 30])
    with torch.no_grad():
        encoding = references["text_encoder"](torch.from_numpy(tokens.astype(np.int64))).last_hidden_state
    assert_close(loaded.text_encoder(text_inputs(tokens)), encoding.numpy())

    latent = np.random.default_rng(0).standard_normal((1, 4, 6, 4)).astype("float32")
    image = np.random.default_rng(1).uniform(-1, 1, (1, 32, 48, 3)).astype("float32")
    with torch.no_grad():
        decoded = references["vae"].decode(nchw(latent / LATENT_SCALE)).sample
        encoded = references["vae"].encode(nchw(image)).latent_dist.mean
    assert_close(loaded.decoder(latent), nhwc(decoded))
    assert_close(loaded.image_encoder(image), nhwc(encoded) * LATENT_SCALE)


def test_second_load_comes_from_the_cache(files, loaded, keras_home, monkeypatch):
    """Keyed by content (a copy under another name hits the same entry); a
    second load neither converts nor hashes the file again."""
    loaded.image_encoder  # noqa: B018 (converted and cached on first use)
    (entry,) = [path for path in (keras_home / "kcv_sd" / "checkpoints").iterdir() if path.is_dir()]
    renamed = files["float32"].with_name("renamed.safetensors")
    renamed.write_bytes(files["float32"].read_bytes())
    assert converted_cache.entry(renamed, None, False, "tiny", "float32") == entry

    def not_again(*args, **kwargs):
        raise AssertionError("read again")

    monkeypatch.setattr("kcv_sd.components.read_single_file", not_again)
    monkeypatch.setattr("kcv_sd.components.read_single_file_vae", not_again)
    monkeypatch.setattr("kcv_sd.convert.converted_cache.hashlib.file_digest", not_again)
    again = load_components("tiny", weights=files["float32"])
    for name in ("text_encoder", "decoder", "image_encoder"):
        for ours, cached in zip(getattr(loaded, name).weights, getattr(again, name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(cached), np.asarray(ours))
    for ours, cached in zip(loaded.unet.model().weights, again.unet.model().weights, strict=True):
        np.testing.assert_array_equal(np.asarray(cached), np.asarray(ours))


def conv_in(models):
    return np.transpose(np.asarray(models["unet"].conv_in.conv2d.kernel), (3, 2, 0, 1))


def fill(models, path, **options):
    parts = read_single_file(path, TINY_FAMILY_DIFFUSERS, TINY_TEXT.embed_dim, **options)
    fill_single_file(parts, **models)
    return parts


def test_float16_and_bfloat16_files(files, dicts, models, tmp_path, checkpoint):
    parts = fill(models, files["float16"])
    np.testing.assert_array_equal(conv_in(models), dicts["unet"]["conv_in.weight"].astype(np.float16))
    # The converted cache keeps a half-precision file's weights in half precision, losslessly.
    decoder = {"decoder": models["decoder"]}
    before = [np.asarray(v) for v in models["decoder"].weights]
    converted_cache.save_cached(tmp_path, decoder, floating_dtype(*parts.values()))
    assert {v.dtype for v in load_file(tmp_path / "decoder.safetensors").values()} == {np.dtype(np.float16)}
    assert converted_cache.load_cached(tmp_path, decoder)
    for variable, value in zip(models["decoder"].weights, before, strict=True):
        np.testing.assert_array_equal(np.asarray(variable), value)
    import ml_dtypes

    fill(models, save(tmp_path / "bf16.safetensors", checkpoint, ml_dtypes.bfloat16))
    np.testing.assert_array_equal(conv_in(models),
                                  dicts["unet"]["conv_in.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_ema_weights_only_when_asked(checkpoint, dicts, models, tmp_path):
    unet_keys = [key for key in checkpoint if key.startswith("model.diffusion_model.")]
    ema = {"model_ema." + key.removeprefix("model.").replace(".", ""): 2 * checkpoint[key] for key in unet_keys}
    path = save(tmp_path / "ema.safetensors", {**checkpoint, **ema, "model_ema.decay": np.float32([0.9999]),
                                               "model_ema.num_updates": np.int32([7])})
    fill(models, path)
    np.testing.assert_array_equal(conv_in(models), dicts["unet"]["conv_in.weight"])
    fill(models, path, ema=True)
    np.testing.assert_array_equal(conv_in(models), 2 * dicts["unet"]["conv_in.weight"])

    del ema["model_ema.diffusion_modelout2weight"]
    partial = save(tmp_path / "partial-ema.safetensors", {**checkpoint, **ema})
    with pytest.raises(CheckpointError, match=r"partial-ema.safetensors lacks the EMA copy.*"
                                              r"model_ema.diffusion_modelout2weight"):
        fill(models, partial, ema=True)


def test_separate_vae_file_or_folder(checkpoint, dicts, models, tmp_path):
    without_vae = save(tmp_path / "no-vae.safetensors",
                       {k: v for k, v in checkpoint.items() if not k.startswith("first_stage_model.")})
    with pytest.raises(CheckpointError, match=r"no-vae.safetensors has no VAE \(first_stage_model.\* keys\): "
                                              r"pass one with vae="):
        fill(models, without_vae)

    other = {key: value + 1 for key, value in dicts["vae"].items()}
    vae_file = save(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors", ldm_vae(other))
    vae_folder = write_diffusers_folder(tmp_path / "diffusers", {**dicts, "vae": other}) / "vae"
    for vae in (vae_file, vae_folder):
        fill(models, without_vae, vae=vae)
        decoder_out = np.transpose(np.asarray(models["decoder"].layers[-1].conv2d.kernel), (3, 2, 0, 1))
        np.testing.assert_array_equal(decoder_out, other["decoder.conv_out.weight"])


def test_pickles_only_when_allowed(checkpoint, dicts, models, tmp_path, keras_home):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": as_torch(checkpoint)}, path)
    with pytest.raises(CheckpointError, match="model.ckpt is a pickled PyTorch file.*allow_pickle=True"):
        load_components("tiny", weights=path)
    fill(models, path, allow_pickle=True)
    np.testing.assert_array_equal(conv_in(models), dicts["unet"]["conv_in.weight"])


def refused(path, tensors, match):
    """`load_components` refuses the file in one line naming it, building nothing."""
    save(path, tensors)
    with pytest.raises(KcvSdError) as error:
        load_components("tiny", weights=path)
    message = str(error.value)
    assert "\n" not in message and path.name in message, message
    assert re.search(match, message), message


SUPPORTED = r"kcv-sd supports SD 1.x checkpoints \(4-channel, 16-wide\)"


def test_other_families_are_named(checkpoint, tmp_path, keras_home):
    refused(tmp_path / "sdxl.safetensors",
            {**checkpoint, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": np.ones(2)},
            r"is an SDXL checkpoint.*" + SUPPORTED)
    open_clip = {"cond_stage_model.model.ln_final.weight": np.ones(1024, np.float32)}
    refused(tmp_path / "sd2.safetensors", {**checkpoint, **open_clip},
            r"is an SD 2.x checkpoint \(its text encoder is OpenCLIP.*" + SUPPORTED)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpainting = np.concatenate([checkpoint[key]] * 3, axis=1)[:, :9]
    refused(tmp_path / "inpainting.safetensors", {**checkpoint, key: inpainting},
            r"is an inpainting checkpoint \(its UNet takes 9 input channels\).*" + SUPPORTED)
    wide = {k: np.zeros((v.shape[0], 1024), np.float32) if k.endswith("attn2.to_k.weight") else v
            for k, v in checkpoint.items()}
    token_embedding = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    refused(tmp_path / "wide-text.safetensors", {**checkpoint, token_embedding: np.zeros((8, 1024), np.float32)},
            r"is an SD2.x checkpoint \(its text encoder is 1024 wide\)")
    refused(tmp_path / "wide.safetensors", wide,
            r"is an SD2.x checkpoint \(its UNet cross-attends to 1024-wide text encodings\)")


def test_broken_files_are_named(checkpoint, files, tmp_path, keras_home):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(files["float32"].read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated.safetensors is not a valid safetensors file"):
        load_components("tiny", weights=truncated)

    missing = "model.diffusion_model.output_blocks.1.0.in_layers.2.weight"
    refused(tmp_path / "missing.safetensors", {k: v for k, v in checkpoint.items() if k != missing},
            rf"does not fit the model: missing keys: {re.escape(missing)}\.")
    stranger = "model.diffusion_model.output_blocks.99.0.in_layers.2.weight"
    refused(tmp_path / "stranger.safetensors", {**checkpoint, stranger: np.ones(1, np.float32)},
            rf"UNet keys the configuration has no layer for: {re.escape(stranger)}\.")
    refused(tmp_path / "no-text.safetensors", {k: v for k, v in checkpoint.items() if not k.startswith("cond_")},
            r"has no text encoder \(cond_stage_model.transformer.\* keys\)")
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in checkpoint.items() if k.startswith("first_")}
    refused(tmp_path / "vae-only.safetensors", vae_only, "is a VAE, not a Stable Diffusion checkpoint: pass it as vae=")
    refused(tmp_path / "lora.safetensors", {**checkpoint, "lora_unet_down.weight": np.ones(1, np.float32)},
            "keys that are no part of an SD 1.x checkpoint: lora_unet_down.weight")


def test_a_file_that_does_not_fit_leaves_the_models_untouched(checkpoint, models, tmp_path):
    fill(models, save(tmp_path / "good.safetensors", checkpoint))
    before = [np.asarray(v) for v in models["unet"].model().weights]
    key = "model.diffusion_model.out.2.bias"
    doubled = {k: 2 * v if v.dtype == np.float32 else v for k, v in checkpoint.items()}
    bad = save(tmp_path / "bad.safetensors", {**doubled, key: np.ones(7, np.float32)})
    with pytest.raises(CheckpointError, match=r"shape mismatches: model.diffusion_model.out.2.bias \(7,\)"):
        fill(models, bad)
    for variable, value in zip(models["unet"].model().weights, before, strict=True):
        np.testing.assert_array_equal(np.asarray(variable), value)


def test_cli_passes_weights_and_vae(files, tmp_path, monkeypatch):
    """`kcv-sd generate --weights FILE --vae VAE` hands both to the pipeline (stopped there)."""
    from click.testing import CliRunner

    from kcv_sd.cli import main
    from kcv_sd.errors import InvalidArgumentError

    def stop(*configuration):
        raise InvalidArgumentError(f"pipeline {configuration}")

    monkeypatch.setattr("kcv_sd.generation.get_pipeline", stop)
    result = CliRunner().invoke(main, ["generate", "a", "--model", "tiny", "--precision", "float32", "--weights", str(files["float32"]),
                                       "--vae", "vae.safetensors", "-o", str(tmp_path / "x.png")])
    assert f"'{files['float32']}'," in result.output and result.output.endswith("'vae.safetensors', 'auto')\n")
