"""DPM-Solver++(2M) as diffusers' `DPMSolverMultistepScheduler` runs SD 1.5,
with its own sigmas or Karras sigmas (`use_karras_sigmas=True`).

Configured as algorithm_type="dpmsolver++", solver_order=2,
prediction_type="epsilon", lower_order_final=True and final_sigmas_type="zero".
Without Karras sigmas the class default "linspace" spacing applies (integer
timesteps round(linspace(0, 999, n + 1)), the last dropped; `steps_offset`
unused). Karras sigmas run from the largest to the smallest training sigma
evenly in sigma^(1/7); the UNet sees each one's timestep interpolated in
log sigma over the training steps and rounded.

The first step run (also when img2img skips the leading ones) has no
previous prediction and the last one steps to sigma = 0, so both are first
order (DDIM-like); every other step is second order. In
sigma = sqrt((1 - a) / a) terms, with alpha = 1 / sqrt(sigma^2 + 1) and
lambda = -log(sigma), one step from sigma to sigma_next is

    x0 = (x - sigma * alpha * eps) / alpha
    x_next = (sigma_next alpha_next) / (sigma alpha) * x
             + k * ((1 + w) * x0 - w * x0_prev)

with k = alpha_next * (1 - sigma_next / sigma) and w = h / (2 h_prev) for the
log-sigma steps h, h_prev of this and the previous step (w = 0 when first
order). At 1000 linspace steps one timestep repeats: that step has h = 0
and leaves x as it is, and the next one is first order (diffusers divides
by h_prev = 0 there and returns NaN).
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import (
    ScaledLinearSampler,
    Schedule,
    check_num_steps,
    predict_x0,
    variance_preserving_levels,
)

KARRAS_RHO = 7.0  # the Karras et al. (2022) schedule's exponent


def karras_sigmas(sigma_min, sigma_max, num_steps):
    """`num_steps` sigmas from `sigma_max` down to `sigma_min`, evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, num_steps)
    top, bottom = sigma_max ** (1 / KARRAS_RHO), sigma_min ** (1 / KARRAS_RHO)
    return (top + ramp * (bottom - top)) ** KARRAS_RHO


@dataclasses.dataclass(frozen=True)
class MultistepSigmas(ScaledLinearSampler):
    """The timesteps and sigmas diffusers' multistep solvers (DPM-Solver,
    UniPC) share."""

    karras: bool = False  # Karras sigmas instead of the linspace timesteps' own

    def sigmas(self, num_steps):
        """(timesteps, sigmas) of the steps, noisiest first, float64."""
        table = self.sigma_table()
        if self.karras:
            sigmas = karras_sigmas(table[0], table[-1], num_steps)
            return np.interp(np.log(sigmas), np.log(table), np.arange(len(table))).round(), sigmas
        timesteps = np.linspace(0, len(table) - 1, num_steps + 1).round()[::-1][:-1]
        return timesteps, table[timesteps.astype(np.int64)]


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M(MultistepSigmas):
    """Coefficient rows hold sigma * alpha, alpha, the sample ratio
    (sigma_next alpha_next) / (sigma alpha), k (1 + w) and -k w; the state is
    the previous step's x0 prediction."""

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        timesteps, sigmas = self.sigmas(num_steps)
        sigmas_next = np.append(sigmas[1:], 0.0)
        alphas, alphas_next = 1 / np.sqrt(sigmas**2 + 1), 1 / np.sqrt(sigmas_next**2 + 1)
        k = alphas_next * (1 - sigmas_next / sigmas)
        # Second order on all but the first and last step, and after a zero-length step.
        log_steps = np.log(sigmas[:-1] / sigmas[1:])
        w = np.zeros(num_steps)
        w[1:-1] = 0.5 * log_steps[1:] / np.where(log_steps[:-1] > 0, log_steps[:-1], np.inf)
        w[skip : skip + 1] = 0  # the first step run has no previous x0, also when truncated
        coefficients = np.stack([
            sigmas * alphas,
            alphas,
            sigmas_next * alphas_next / (sigmas * alphas),
            k * (1 + w),
            -k * w,
        ], -1)
        return Schedule(
            timesteps=timesteps.astype(np.float32),
            coefficients=coefficients.astype(np.float32),
            noise_levels=variance_preserving_levels(alphas**2),
        ).starting_at(skip)

    def initial_state(self, sample):
        """A zero previous x0: the first row gives it weight 0."""
        return (sample * 0,)

    def step(self, sample, noise_pred, coefficients, state):
        """One DPM-Solver++ update; numpy or tensors alike."""
        (x0_prev,) = state
        x0 = predict_x0(sample, noise_pred, coefficients)
        return coefficients[2] * sample + coefficients[3] * x0 + coefficients[4] * x0_prev, (x0,)
