"""The text encoder computes KerasCV's `TextEncoder`, bit for bit, with fewer graph ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv_sd.precision import dtype_policy_scope
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder
from kcv_sd.tokenizer import MAX_PROMPT_LENGTH

INPUT_SPEC = {"tokens": tf.TensorSpec((None, 77), tf.int32), "positions": tf.TensorSpec((None, 77), tf.int32)}


def _encoder(policy):
    with dtype_policy_scope(policy):
        encoder = build_text_encoder(TINY_TEXT)
    rng = np.random.default_rng(0)
    for weight in encoder.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.1)
    return encoder


def test_encoder_graph_has_no_tensordot():
    """Each projection is one MatMul, and no op reads the batch size: about half KerasCV's graph."""
    encoder = _encoder("float32")
    graph = tf.function(encoder).get_concrete_function(INPUT_SPEC).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("MatMul") == 6 * TINY_TEXT.num_layers
    assert not {"Prod", "ConcatV2", "Shape"} & set(types)


def kerascv_text_encoder(config):
    """KerasCV's `TextEncoder` layers at `config`'s sizes (its class fixes SD1.5's)."""
    from keras_cv.src.models.stable_diffusion.text_encoder import (
        CLIPEmbedding,
        CLIPEncoderLayer,
        quick_gelu,
    )

    tokens = keras.Input((MAX_PROMPT_LENGTH,), dtype="int32", name="tokens")
    positions = keras.Input((MAX_PROMPT_LENGTH,), dtype="int32", name="positions")
    x = CLIPEmbedding(config.vocab_size, config.embed_dim, MAX_PROMPT_LENGTH)([tokens, positions])
    for _ in range(config.num_layers):
        x = CLIPEncoderLayer(config.embed_dim, config.num_heads, activation=quick_gelu)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model({"tokens": tokens, "positions": positions}, x)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_encoder_is_kerascv_bit_for_bit(policy):
    """Same weight order (KerasCV's `.h5` files load by order) and the same numbers."""
    ours = _encoder(policy)
    with dtype_policy_scope(policy):
        theirs = kerascv_text_encoder(TINY_TEXT)
    assert [w.shape for w in theirs.weights] == [w.shape for w in ours.weights]
    for mine, reference in zip(ours.weights, theirs.weights):
        reference.assign(mine.numpy())
    rng = np.random.default_rng(1)
    inputs = {"tokens": rng.integers(0, TINY_TEXT.vocab_size, (2, 77)).astype("int32"),
              "positions": np.tile(np.arange(77, dtype="int32"), (2, 1))}
    expected = np.asarray(tf.function(theirs)(inputs), "float32")
    assert np.array_equal(np.asarray(tf.function(ours)(inputs), "float32"), expected)
