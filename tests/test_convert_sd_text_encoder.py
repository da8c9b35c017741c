"""A transformers CLIPTextModel, converted, encodes prompts as transformers does."""

import numpy as np
import pytest
import torch
from references import (
    hub_clip_state_dict,
    numpy_state_dict,
    prompt_tokens,
    text_inputs,
    transformers_clip,
)

from kcv_sd.convert import CheckpointError, convert_clip_text_encoder
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return transformers_clip(TINY_TEXT, seed=5)


@pytest.fixture(scope="module")
def text_encoder():
    """One model; every conversion onto it overwrites all its weights."""
    return build_text_encoder(TINY_TEXT)


@pytest.mark.parametrize("saved_by", ["transformers<5", "transformers>=5"])
def test_tiny_text_encoder_matches_transformers(reference, text_encoder, saved_by):
    """Hub files prefix keys with text_model. and carry position_ids; newer saves do neither."""
    hub = saved_by == "transformers<5"
    convert_clip_text_encoder(hub_clip_state_dict(reference) if hub else numpy_state_dict(reference),
                              text_encoder)
    tokens = prompt_tokens([5, 30, 75])  # the longest fills all 77 positions
    ours = np.asarray(text_encoder(text_inputs(tokens)))
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)


def refused(state_dict, match, text_encoder):
    with pytest.raises(CheckpointError, match=match):
        convert_clip_text_encoder(state_dict, text_encoder)


def test_checkpoints_that_do_not_fit_are_named(reference, text_encoder):
    refused({"decoder.conv_out.weight": np.zeros((3, 4, 3, 3), np.float32)},
            "not a transformers CLIPTextModel.*a VAE", text_encoder)

    # SD2.x's OpenCLIP ViT-H is 1024 wide; only the width is read.
    sd2 = {"text_model.embeddings.token_embedding.weight": np.broadcast_to(np.float32(0), (49408, 1024))}
    refused(sd2, "1024-wide text encoder \\(SD2.x\\); the model is 16 wide", text_encoder)

    weights = hub_clip_state_dict(reference)
    deeper = {**weights, **{k.replace("layers.1.", "layers.2."): v
                            for k, v in weights.items() if ".layers.1." in k}}
    refused(deeper, "unexpected keys: text_model.encoder.layers.2.", text_encoder)

    wider_mlp = {**weights, "text_model.encoder.layers.0.mlp.fc1.weight": np.zeros((32, 16), np.float32)}
    refused(wider_mlp, r"shape mismatches: text_model.encoder.layers.0.mlp.fc1.weight \(32, 16\) "
                       r"\(needs \(16, 64\)", text_encoder)
