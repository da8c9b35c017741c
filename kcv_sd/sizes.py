"""The size rule: widths and heights are multiples of 8 from 64 to 2048, as diffusers takes them.

Eight pixels are one latent pixel (`kcv_sd.vae.PIXELS_PER_LATENT`). No
TensorFlow here, so the numpy-only `controlnet.sizing` shares the rule.
"""

import numpy as np

from kcv_sd.errors import InvalidArgumentError

SIZE_MULTIPLE = 8
MIN_SIZE, MAX_SIZE = 64, 2048
DEFAULT_SIZE = 512


def nearest_sizes(value):
    """The valid sizes next to `value` below and above (one where they meet)."""
    below, above = value // SIZE_MULTIPLE * SIZE_MULTIPLE, -(-value // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return sorted({int(min(max(side, MIN_SIZE), MAX_SIZE)) for side in (below, above)})


def check_size(name, value):
    """Refuse a width or height outside the rule in one line naming the nearest valid sizes."""
    rule = f"sizes are ints, multiples of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name}={value!r} is not supported: {rule}.")
    if value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
        sizes = nearest_sizes(value)
        nearest = f"the nearest are {sizes[0]} and {sizes[1]}" if len(sizes) == 2 else f"use {sizes[0]}"
        raise InvalidArgumentError(f"{name}={value} is not supported: {rule}; {nearest}.")
