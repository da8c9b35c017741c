import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv_sd.group_norm import GroupNorm
from kcv_sd.vae import TINY_VAE, build_decoder, build_encoder


def exact_group_norm(x, gamma, beta, groups, epsilon):
    """Group normalization in float64 numpy, channels last."""
    x = np.asarray(x, np.float64)
    grouped = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    variance = grouped.var(axis=(1, 3), keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(x.shape)
    return normalized * gamma + beta


def filled(layer, shape, seed=0):
    layer.build(shape)
    rng = np.random.default_rng(seed)
    layer.gamma.assign(rng.normal(size=shape[-1]).astype("float32"))
    layer.beta.assign(rng.normal(size=shape[-1]).astype("float32"))
    return layer


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 64), 32), ((1, 64, 64, 128), 32), ((3, 5, 16), 4)])
def test_matches_float64_group_norm(shape, groups):
    x = np.random.default_rng(1).normal(2.0, 3.0, size=shape).astype("float32")
    layer = filled(GroupNorm(groups=groups, epsilon=1e-5), shape)
    exact = exact_group_norm(x, layer.gamma.numpy(), layer.beta.numpy(), groups, 1e-5)
    assert np.abs(layer(x).numpy() - exact).max() < 3e-6


def test_large_groups_are_closer_to_float64_than_keras():
    # Keras' E[x^2] - E[x]^2 loses digits as a group grows (here 64x64x4 values).
    shape = (1, 64, 64, 128)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=shape).astype("float32")
    ours = filled(GroupNorm(groups=32, epsilon=1e-5), shape)
    theirs = filled(keras.layers.GroupNormalization(groups=32, epsilon=1e-5), shape)
    exact = exact_group_norm(x, ours.gamma.numpy(), ours.beta.numpy(), 32, 1e-5)
    assert np.abs(ours(x).numpy() - exact).max() * 5 < np.abs(theirs(x).numpy() - exact).max()


def test_statistics_stay_float32_under_bfloat16():
    shape = (1, 16, 16, 64)
    x = np.random.default_rng(2).normal(50.0, 1.0, size=shape).astype("float32")
    layer = filled(GroupNorm(groups=32, epsilon=1e-5, dtype="mixed_bfloat16"), shape)
    out = layer(tf.cast(x, tf.bfloat16))
    assert out.dtype == tf.bfloat16
    # bfloat16 inputs near 50 keep about 3 significant digits; a bfloat16
    # variance would be pure rounding noise and give errors of order 1.
    exact = exact_group_norm(tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy(),
                             layer.gamma.numpy(), layer.beta.numpy(), 32, 1e-5)
    assert np.abs(tf.cast(out, tf.float32).numpy() - exact).max() < 0.05


def test_only_the_last_axis():
    with pytest.raises(ValueError, match="last axis"):
        GroupNorm(groups=4, axis=1).build((1, 8, 8, 8))


def test_vae_norms_are_group_norms_with_the_configured_epsilon():
    config = dataclasses.replace(TINY_VAE, norm_epsilon=1e-6)
    for model in (build_decoder(config), build_encoder(config)):
        norms = [layer for layer in model._flatten_layers()
                 if isinstance(layer, keras.layers.GroupNormalization)]
        assert len(norms) > 10 and all(type(layer) is GroupNorm for layer in norms)
        assert {layer.epsilon for layer in norms} == {1e-6}
