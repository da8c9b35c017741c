"""A diffusers AutoencoderKL, converted, decodes and encodes as diffusers does."""


import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from references import (
    TINY_VAE_CHANNELS,
    diffusers_vae,
    nchw,
    nhwc,
    numpy_state_dict,
)

from kcv_sd.convert import CheckpointError, convert_diffusers_vae
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder
from kcv_sd.vae import LATENT_SCALE, SD15_VAE, VAEConfig, build_decoder, build_encoder

# KerasCV's epsilon (1e-5) would miss by ~2e-4: the tolerance pins diffusers' 1e-6.
TOLERANCE = 1e-4
CONFIG = VAEConfig(block_channels=TINY_VAE_CHANNELS, norm_epsilon=1e-6)


@pytest.fixture(scope="module")
def reference():
    return diffusers_vae(CONFIG, seed=3)


@pytest.fixture(scope="module")
def weights(reference):
    return numpy_state_dict(reference)


@pytest.fixture(scope="module")
def converted(weights):
    decoder, encoder = build_decoder(CONFIG), build_encoder(CONFIG)
    assert convert_diffusers_vae(weights, decoder, encoder) == ()
    return decoder, encoder


def compare(ours, run_reference, reference):
    with torch.no_grad():
        expected = run_reference(reference)
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)


def test_tiny_decoder_matches_diffusers(reference, converted):
    latent = np.random.default_rng(0).standard_normal((2, 4, 6, 4)).astype("float32")
    # Our decoder unscales the latent itself; diffusers' decode takes it unscaled.
    compare(np.asarray(converted[0](latent)),
            lambda vae: nhwc(vae.decode(nchw(latent / LATENT_SCALE)).sample), reference)


def test_tiny_encoder_matches_diffusers(reference, converted):
    image = np.random.default_rng(1).uniform(-1, 1, (2, 32, 48, 3)).astype("float32")
    compare(np.asarray(converted[1](image)),
            lambda vae: nhwc(vae.encode(nchw(image)).latent_dist.mean) * LATENT_SCALE, reference)


@pytest.fixture(scope="module")
def spare_decoder():
    """A second decoder; every conversion onto it overwrites all its weights."""
    return build_decoder(CONFIG)


def assert_same_weights(model, expected):
    for ours, theirs in zip(model.weights, expected.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_decoder_only_returns_the_encoder_keys_it_skips(weights, converted, spare_decoder):
    skipped = convert_diffusers_vae(weights, spare_decoder)
    assert skipped == tuple(sorted(k for k in weights if k.startswith(("encoder.", "quant_conv."))))
    assert "quant_conv.weight" in skipped
    assert len(skipped) + len(spare_decoder.weights) == len(weights)
    assert_same_weights(spare_decoder, converted[0])


def test_legacy_attention_names_and_conv_shapes_convert(weights, converted, spare_decoder):
    """Pre-0.14 names (query/key/value/proj_attn), and 1x1-conv-shaped projections."""
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    prefix = "decoder.mid_block.attentions.0."
    renamed = {k: v for k, v in weights.items() if not k.startswith(prefix)}
    for new, old in legacy.items():
        weight = weights[f"{prefix}{new}.weight"]
        renamed[f"{prefix}{old}.weight"] = weight[:, :, None, None] if new == "to_k" else weight
        renamed[f"{prefix}{old}.bias"] = weights[f"{prefix}{new}.bias"]
    renamed[f"{prefix}group_norm.weight"] = weights[f"{prefix}group_norm.weight"]
    renamed[f"{prefix}group_norm.bias"] = weights[f"{prefix}group_norm.bias"]
    convert_diffusers_vae(renamed, spare_decoder)
    assert_same_weights(spare_decoder, converted[0])


def refused(state_dict, match, decoder, encoder=None):
    with pytest.raises(CheckpointError, match=match):
        convert_diffusers_vae(state_dict, decoder, encoder)


def test_checkpoints_that_do_not_fit_are_named(weights, converted):
    decoder, encoder = converted
    clip_like = {"text_model.embeddings.token_embedding.weight": np.zeros((4, 4), np.float32)}
    refused(clip_like, "not a diffusers AutoencoderKL.*a CLIP text encoder", decoder)

    missing = {k: v for k, v in weights.items() if k != "encoder.conv_in.bias"}
    refused(missing, "missing keys: encoder.conv_in.bias", decoder, encoder)

    stray = {**weights, "decoder.up_blocks.0.extra.weight": np.zeros(2, np.float32)}
    refused(stray, "unexpected keys: decoder.up_blocks.0.extra.weight", decoder)

    twice = {**weights, "decoder.mid_block.attentions.0.query.weight": np.zeros((64, 64), np.float32)}
    refused(twice, "decoder.mid_block.attentions.0.to_q.weight twice.*keep one", decoder)

    narrow = numpy_state_dict(diffusers_vae(VAEConfig(block_channels=(32,) * 4)))
    refused(narrow, r"missing keys: decoder.up_blocks.1.resnets.0.conv_shortcut.bias.*"
                    r"shape mismatches: decoder.conv_in.bias \(32,\) \(needs \(64,\)", decoder, encoder)

    refused(weights, "text_encoder has 4 weighted layers where a diffusers VAE has 22.*build_decoder",
            build_text_encoder(TINY_TEXT))


@pytest.mark.full_size
def test_sd15_vae_maps_all_248_keys():
    """Key and shape coverage at full size; the tiny tests above prove the numbers."""
    with torch.device("meta"):  # names and shapes, no memory
        reference = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
    state_dict = {key: np.zeros(tuple(value.shape), np.float16)
                  for key, value in reference.state_dict().items()}
    assert len(state_dict) == 248
    decoder, encoder = build_decoder(SD15_VAE), build_encoder(SD15_VAE)
    assert convert_diffusers_vae(state_dict, decoder, encoder) == ()
    assert decoder.count_params() + encoder.count_params() == sum(v.size for v in state_dict.values())
