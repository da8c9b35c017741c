"""Precision policies, applied only while a pipeline builds its models.

Keras layers read the global dtype policy when they are constructed, so the
policy is set for the duration of the build and then restored: the caller's
global policy never changes.

"mixed_float16" and "mixed_bfloat16" run the UNet (and ControlNets) in 16
bits and keep the text encoder and VAE in float32. "float16" and "bfloat16"
run every model in 16 bits, as KerasCV under that global policy and
diffusers with that `torch_dtype` do: the VAE decodes faster where the
processor has fast 16-bit matrix units (docs/latency_levers.md, section 7),
and pixels differ slightly. In all of
them GroupNorm statistics, the UNet's softmax and exit convolution, and the
sampler stay float32.
"""

import contextlib

import keras

from kcv_sd.errors import InvalidArgumentError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise InvalidArgumentError(
            f"Unknown precision {precision!r}. Use one of: {', '.join(PRECISIONS)}."
        )
    return precision


@contextlib.contextmanager
def dtype_policy_scope(precision):
    """Build layers under `precision`, restoring the caller's policy after."""
    check_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def text_and_vae_precision(precision):
    """The policy of the text encoder and VAE under a pipeline's `precision`."""
    return precision if precision in ("float16", "bfloat16") else "float32"
