"""DDPM ancestral sampling as diffusers' `DDPMScheduler` runs SD 1.5.

SD 1.5's config gives "leading" spacing with steps_offset=1 (timesteps
i * (1000 // n) + 1) and the "fixed_small" variance: each step moves to the
posterior mean of the next timestep's latents given the x0 prediction, then
adds fresh noise with the posterior's standard deviation. The last step
lands on alpha = 1 (clean latents).
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import (
    ScaledLinearSampler,
    check_num_steps,
    predict_x0,
    x0_schedule,
)


@dataclasses.dataclass(frozen=True)
class DDPM(ScaledLinearSampler):
    """Coefficient rows hold sqrt(1 - a) and sqrt(a) (the x0 prediction),
    the posterior mean's weights on x0 and on the latents, and the
    posterior's standard deviation (0 at timestep 0)."""

    stochastic = True

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        timesteps = self.leading_timesteps(num_steps)
        alphas = self.alphas_cumprod()[timesteps]
        alphas_prev = np.append(alphas[1:], 1.0)
        betas = 1 - alphas / alphas_prev  # of the one step from t to t_prev
        variance = np.maximum((1 - alphas_prev) / (1 - alphas) * betas, 1e-20)
        return x0_schedule(timesteps, alphas, [
            np.sqrt(alphas_prev) * betas / (1 - alphas),
            np.sqrt(alphas / alphas_prev) * (1 - alphas_prev) / (1 - alphas),
            np.where(timesteps > 0, np.sqrt(variance), 0.0),
        ], skip)

    def step(self, sample, noise_pred, coefficients, state, noise):
        """The posterior mean given the x0 prediction, plus its noise."""
        x0 = predict_x0(sample, noise_pred, coefficients)
        return coefficients[2] * x0 + coefficients[3] * sample + coefficients[4] * noise, state
