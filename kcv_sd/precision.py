"""Precision policies, applied only while a pipeline builds its models.

Keras layers read the global dtype policy when they are constructed, so the
policy is set for the duration of the build and then restored: the caller's
global policy never changes.
"""

import contextlib

import keras

from kcv_sd.errors import InvalidArgumentError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


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
