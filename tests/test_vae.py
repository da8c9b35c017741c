"""The VAE's blocks compute KerasCV's blocks, bit for bit, with KerasCV's weight order."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv_sd.group_norm import GroupNorm
from kcv_sd.padded_conv import PaddedConv2D
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.vae_blocks import AttentionBlock, ResnetBlock


def kerascv_block(name, *args, **kwargs):
    """KerasCV's block, its Keras GroupNormalization layers computing as
    `GroupNorm` (the norm kcv-sd's VAE has always used, `test_group_norm.py`)."""
    from keras_cv.src.models.stable_diffusion import (
        attention_block,
        padded_conv2d,
        resnet_block,
    )

    blocks = {"PaddedConv2D": padded_conv2d.PaddedConv2D, "ResnetBlock": resnet_block.ResnetBlock,
              "AttentionBlock": attention_block.AttentionBlock}
    block = blocks[name](*args, **kwargs)
    for layer in block._flatten_layers():
        if type(layer) is keras.layers.GroupNormalization:
            layer.__class__ = GroupNorm
    return block


CASES = {
    "resnet, channels kept": (ResnetBlock, "ResnetBlock", (32,), 32),
    "resnet, channels changed": (ResnetBlock, "ResnetBlock", (64,), 32),
    "attention": (AttentionBlock, "AttentionBlock", (32,), 32),
    "conv, stride 2": (PaddedConv2D, "PaddedConv2D", (16, 3), 32),
}


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_blocks_are_kerascv_bit_for_bit(case, policy):
    ours_class, theirs_name, args, channels = CASES[case]
    kwargs = {"padding": ((0, 1), (0, 1)), "strides": 2} if ours_class is PaddedConv2D else {}
    x = np.random.default_rng(0).standard_normal((2, 9, 7, channels)).astype("float32")
    with dtype_policy_scope(policy):
        ours, theirs = ours_class(*args, **kwargs), kerascv_block(theirs_name, *args, **kwargs)
        ours.build(x.shape)
        theirs(x)
    assert [w.shape for w in theirs.weights] == [w.shape for w in ours.weights]
    rng = np.random.default_rng(1)
    for mine, reference in zip(ours.weights, theirs.weights):
        mine.assign(rng.standard_normal(mine.shape).astype("float32") * 0.2)
        reference.assign(mine.numpy())
    assert ours.compute_output_shape(x.shape) == tuple(theirs(x).shape)
    expected = np.asarray(tf.function(theirs)(x), "float32")
    assert np.array_equal(np.asarray(tf.function(ours)(x), "float32"), expected)
