"""Euler and Euler ancestral sampling as diffusers' `EulerDiscreteScheduler`
and `EulerAncestralDiscreteScheduler` run SD 1.5.

`<Scheduler>.from_config(<SD 1.5 scheduler config>)` drops the PNDM
config's defaulted "leading" spacing, so the class default applies:
"linspace" spacing (fractional timesteps; `steps_offset` unused), sigmas
linearly interpolated between the training steps, a final sigma of zero and
initial noise scaled by the largest sigma. The ancestral step goes down to
sigma_down and adds fresh noise of sigma_up, with
sigma_down^2 + sigma_up^2 = sigma_next^2.
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import ScaledLinearSampler, Schedule, check_num_steps


@dataclasses.dataclass(frozen=True)
class EulerDiscrete(ScaledLinearSampler):
    """Coefficient rows hold sqrt(sigma^2 + 1), which the UNet input is divided
    by, and the step sigma_next - sigma along the noise prediction. Latents
    are x0 + sigma * eps (noise levels (1, sigma))."""

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        # The model sees float32 timesteps, so sigmas are read at those.
        timesteps = np.linspace(0, self.num_train_timesteps - 1, num_steps)[::-1].astype(np.float32)
        sigmas = np.interp(timesteps.astype(np.float64), np.arange(self.num_train_timesteps), self.sigma_table())
        sigmas_next = np.append(sigmas[1:], 0.0)
        coefficients = np.stack([np.sqrt(sigmas**2 + 1), *self.moves(sigmas, sigmas_next)], -1)
        noise_levels = np.stack([np.ones(num_steps + 1), np.append(sigmas, 0.0)], -1)
        return Schedule(
            timesteps=timesteps,
            coefficients=coefficients.astype(np.float32),
            noise_levels=noise_levels.astype(np.float32),
            init_noise_sigma=float(np.float32(sigmas.max())),
        ).starting_at(skip)

    def moves(self, sigmas, sigmas_next):
        """The coefficient columns after the input scale."""
        return [sigmas_next - sigmas]

    def model_input(self, sample, coefficients):
        return sample / coefficients[0]

    def step(self, sample, noise_pred, coefficients, state=()):
        """x += (sigma_next - sigma) * eps: the ODE derivative of an epsilon
        model is its noise prediction. Numpy or tensors alike."""
        return sample + coefficients[1] * noise_pred, state


@dataclasses.dataclass(frozen=True)
class EulerAncestral(EulerDiscrete):
    """Coefficient rows hold sqrt(sigma^2 + 1), sigma_down - sigma and sigma_up."""

    stochastic = True

    def moves(self, sigmas, sigmas_next):
        sigma_up = sigmas_next * np.sqrt(1 - (sigmas_next / sigmas) ** 2)
        sigma_down = np.sqrt(sigmas_next**2 - sigma_up**2)
        return [sigma_down - sigmas, sigma_up]

    def step(self, sample, noise_pred, coefficients, state, noise):
        """An Euler step down to sigma_down, then fresh noise up to sigma_next."""
        return sample + coefficients[1] * noise_pred + coefficients[2] * noise, state
