"""Conditioning scale and guess mode: how strongly residuals steer the UNet.

Kept out of the model so that one compiled ControlNet serves every scale.
"""

import numpy as np


def control_scales(num_residuals, conditioning_scale=1.0, guess_mode=False):
    """One multiplier per residual, skips first and the middle block last.

    Guess mode ramps from 0.1 at the first skip to 1 at the middle block
    (logarithmically, as diffusers' `ControlNetModel` does), so the coarse,
    semantic residuals dominate when the prompt is empty.
    """
    if guess_mode:
        ramp = np.logspace(-1, 0, num_residuals, dtype=np.float32)
        return [float(s) * conditioning_scale for s in ramp]
    return [float(conditioning_scale)] * num_residuals


def scale_residuals(residuals, names, conditioning_scale=1.0, guess_mode=False):
    """Residuals (a dict of tensors) times their scales.

    `names` gives the residual order, e.g. `ControlNet.output_names`: a
    dict's own order is not trusted to carry the skip order.
    """
    scales = control_scales(len(names), conditioning_scale, guess_mode)
    return {name: residuals[name] * scale for name, scale in zip(names, scales)}
