"""The text encoder's layers compute KerasCV's `CLIPEncoderLayer` with fewer graph ops."""

import numpy as np
import pytest
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.text_encoder import CLIPEncoderLayer

from kcv_sd.precision import dtype_policy_scope
from kcv_sd.text_encoder import TINY_TEXT, ShapedCLIPEncoderLayer, build_text_encoder

INPUT_SPEC = {"tokens": tf.TensorSpec((None, 77), tf.int32), "positions": tf.TensorSpec((None, 77), tf.int32)}


def _encoder(policy):
    with dtype_policy_scope(policy):
        encoder = build_text_encoder(TINY_TEXT)
    rng = np.random.default_rng(0)
    for weight in encoder.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.1)
    return encoder


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_encoder_layers_are_kerascv_bit_for_bit(policy, monkeypatch):
    encoder = _encoder(policy)
    rng = np.random.default_rng(1)
    inputs = {"tokens": rng.integers(0, TINY_TEXT.vocab_size, (2, 77)).astype("int32"),
              "positions": np.tile(np.arange(77, dtype="int32"), (2, 1))}
    ours = np.asarray(tf.function(encoder)(inputs), "float32")
    monkeypatch.setattr(ShapedCLIPEncoderLayer, "call", CLIPEncoderLayer.call)
    assert np.array_equal(ours, np.asarray(tf.function(encoder)(inputs), "float32"))


def test_encoder_graph_has_no_tensordot():
    """Each projection is one MatMul, and no op reads the batch size: about half KerasCV's graph."""
    encoder = _encoder("float32")
    graph = tf.function(encoder).get_concrete_function(INPUT_SPEC).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("MatMul") == 6 * TINY_TEXT.num_layers
    assert not {"Prod", "ConcatV2", "Shape"} & set(types)
