"""DDIM (eta=0) exactly as KerasCV's `StableDiffusion.generate_image` runs it.

KerasCV spaces its timesteps as round(i * 999 / (n - 1)), i.e. from 999 down
to 0 inclusive, and reads alphas from its own rounded `_ALPHAS_CUMPROD` table;
both are reproduced here so the same model outputs give the same latents. The
table is SD's scaled-linear alpha_cumprod rounded to float32 and written as the
shortest decimal that reads back as that float32, so `kerascv_alphas_cumprod`
derives it instead of importing KerasCV (tests/test_samplers.py compares all
1000 values).
"""

import dataclasses
import functools

import numpy as np

from kcv_sd.samplers.base import (
    Sampler,
    Schedule,
    check_num_steps,
    scaled_linear_alphas_cumprod,
    variance_preserving_levels,
)


@functools.cache
def kerascv_alphas_cumprod(num_train_timesteps=1000):
    """KerasCV's `_ALPHAS_CUMPROD` (SD's betas 0.00085 to 0.012), as a read-only float64 array."""
    exact = scaled_linear_alphas_cumprod(0.00085, 0.012, num_train_timesteps)
    table = np.array([float(np.format_float_positional(np.float32(a), unique=True)) for a in exact])
    table.setflags(write=False)
    return table


@dataclasses.dataclass(frozen=True)
class KerasCVDDIM(Sampler):
    """Coefficient rows hold sqrt(1 - a), sqrt(a), sqrt(1 - a_prev),
    sqrt(a_prev), computed in float64 and rounded once to float32: exactly
    the constants KerasCV's Python-float arithmetic produces."""

    num_train_timesteps: int = 1000

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        n = self.num_train_timesteps
        ratio = (n - 1) / (num_steps - 1) if num_steps > 1 else n
        ascending = (np.arange(0, num_steps) * ratio).round().astype(np.int64)
        alphas = kerascv_alphas_cumprod(n)[ascending]
        alphas_prev = np.concatenate([[1.0], alphas[:-1]])
        coefficients = np.sqrt(np.stack([1 - alphas, alphas, 1 - alphas_prev, alphas_prev], -1))
        return Schedule(
            timesteps=ascending[::-1].astype(np.float32),
            coefficients=coefficients[::-1].astype(np.float32),
            noise_levels=variance_preserving_levels(alphas[::-1]),
        ).starting_at(skip)

    def step(self, sample, noise_pred, coefficients, state=()):
        """One deterministic DDIM update; numpy or tensors alike."""
        noise_scale, signal_scale, noise_scale_prev, signal_scale_prev = (
            coefficients[0], coefficients[1], coefficients[2], coefficients[3]
        )
        pred_x0 = (sample - noise_scale * noise_pred) / signal_scale
        return noise_pred * noise_scale_prev + signal_scale_prev * pred_x0, state
