"""Checks of single arguments that need no model: numbers, seeds, texts.

Every entry point (Pipeline, DistributedPipeline, `generate()`, the CLI,
the study, kcv-bench) checks its arguments with these before building a
model, so a bad value costs milliseconds and reads the same everywhere.
"""

import math

import numpy as np

from kcv_sd.errors import InvalidArgumentError

MAX_SEED = 2**63 - 1  # what Keras' seeded random ops take


def is_number(value):
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_number(name, value, low=-math.inf, high=math.inf, fix="", above=False, below=False):
    """`value` as a float: a finite number in [low, high] (excluding `low`
    when `above`, `high` when `below`), else one line naming `name` and `fix`."""
    ok = (is_number(value) and math.isfinite(value) and (value > low if above else value >= low)
          and (value < high if below else value <= high))
    if not ok:
        raise InvalidArgumentError(f"{name}={value!r}: {fix or 'use a finite number'}.")
    return float(value)


def check_integer(name, value, low, high, fix):
    """`value` as an int in [low, high], else one line naming `name` and `fix`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or not low <= value <= high:
        raise InvalidArgumentError(f"{name}={value!r}: {fix}.")
    return int(value)


def check_seed(seed):
    """None (fresh noise) or an integer Keras can seed with."""
    if seed is not None:
        check_integer("seed", seed, 0, MAX_SEED, f"use an integer from 0 to 2**63 - 1 ({MAX_SEED}), "
                      "or none for a random one")
    return seed


def check_text(text, what):
    """`text` is a str that can be written as UTF-8 (a command line with
    invalid UTF-8 bytes reaches Python as unpaired surrogates)."""
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"The {what} is a {type(text).__name__}; give text (a str, or a list of str)."
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgumentError(
            f"The {what} is not valid UTF-8 text (a stray byte at character {error.start}): "
            "retype it or save it as UTF-8."
        ) from None
    return text
