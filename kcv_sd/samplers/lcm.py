"""Latent Consistency Model sampling as diffusers' `LCMScheduler` runs SD 1.5.

For LCM-distilled UNets (or SD 1.5 with an LCM-LoRA merged in): 2 to 8
steps at guidance 1 to 2. The timesteps are n of the distillation
schedule's `original_inference_steps` (50) evenly spaced timesteps
i * (1000 // 50) - 1, picked at evenly spaced indices. Each step maps the
latents to the consistency function's denoised estimate
c_skip * x + c_out * x0 and, but for the last, noises it afresh to the next
timestep. diffusers refuses more steps than the original schedule has;
here more than 50 steps spread over a schedule of that many (1000 steps
are every training step).
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import (
    ScaledLinearSampler,
    check_num_steps,
    predict_x0,
    x0_schedule,
)

SIGMA_DATA = 0.5  # the consistency boundary condition's data scale


@dataclasses.dataclass(frozen=True)
class LCM(ScaledLinearSampler):
    """Coefficient rows hold sqrt(1 - a) and sqrt(a) (the x0 prediction),
    c_out and c_skip, and the next timestep's sqrt(a) and sqrt(1 - a)
    (1 and 0 at the last step: no noise)."""

    original_inference_steps: int = 50
    timestep_scaling: float = 10.0
    stochastic = True

    def timesteps(self, num_steps):
        original = max(self.original_inference_steps, num_steps)
        spacing = self.num_train_timesteps // original
        descending = (np.arange(1, original + 1) * spacing - 1)[::-1]
        return descending[np.floor(np.linspace(0, original, num_steps, endpoint=False)).astype(np.int64)]

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        timesteps = self.timesteps(num_steps)
        alphas = self.alphas_cumprod()[timesteps]
        alphas_next = np.append(alphas[1:], 1.0)  # the last step returns the estimate as it is
        scaled = timesteps * self.timestep_scaling
        return x0_schedule(timesteps, alphas, [
            scaled / np.sqrt(scaled**2 + SIGMA_DATA**2),
            SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2),
            np.sqrt(alphas_next),
            np.sqrt(1 - alphas_next),
        ], skip)

    def step(self, sample, noise_pred, coefficients, state, noise):
        """The denoised estimate, noised to the next timestep."""
        x0 = predict_x0(sample, noise_pred, coefficients)
        denoised = coefficients[2] * x0 + coefficients[3] * sample
        return coefficients[4] * denoised + coefficients[5] * noise, state
