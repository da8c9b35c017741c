"""DDIM (eta=0) exactly as KerasCV's `StableDiffusion.generate_image` runs it.

KerasCV spaces its timesteps as round(i * 999 / (n - 1)), i.e. from 999 down
to 0 inclusive, and reads alphas from its own rounded `_ALPHAS_CUMPROD` table;
both are reproduced here so the same model outputs give the same latents.
"""

import dataclasses

import numpy as np
from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

from kcv_sd.samplers.base import (
    Sampler,
    Schedule,
    check_num_steps,
    variance_preserving_levels,
)


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
        alphas = np.asarray(_ALPHAS_CUMPROD, np.float64)[ascending]
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
