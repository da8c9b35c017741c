"""The control image every system gets when ControlNet is on (numpy only, so
peers import no other framework for it)."""

import numpy as np


def depth_ramp(width, height):
    """A smooth synthetic depth map (near at the bottom), as RGB uint8 (H, W, 3)."""
    ramp = np.linspace(0, 255, height, dtype=np.float32)[:, None] * np.ones((1, width), np.float32)
    return np.repeat(ramp[..., None], 3, axis=-1).astype(np.uint8)
