"""UniPC as diffusers' `UniPCMultistepScheduler` runs SD 1.5: the bh2
variant of order 2 with x0 predictions, the corrector on every step but
the first, lower_order_final, and DPM-Solver++(2M)'s linspace timesteps and
sigmas (final sigma zero).

UniPC rather than DPM++ SDE: it is deterministic, so its whole run is
coefficient rows like the other ODE samplers. diffusers' DPM++ SDE draws
its noise from torchsde's Brownian tree (noise correlated across a step's
two stages and between steps), which neither a per-step noise input nor
parity with diffusers would reproduce simply.

Each call first corrects the latents it was given with the new x0
prediction (UniC: the previous step redone from the previous corrected
latents with the new prediction too), then predicts the next latents from
the corrected ones (UniP). Both are linear in the latents and the last
three x0 predictions, so a row holds their weights; orders: the first
predictor and the last are first order, as is the corrector right after
the first step, and a step next to a zero-length one (1000 steps repeat a
timestep) falls back to first order instead of dividing by zero.
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import (
    Schedule,
    check_num_steps,
    predict_x0,
    variance_preserving_levels,
)
from kcv_sd.samplers.dpm_solver import MultistepSigmas


def _corrector(h, h_prev, alpha, ratio):
    """Weights of (previous corrected latents, x0 at the previous two steps,
    new x0) in UniC-bh2 over a log-SNR step h, of order 2 when the step
    before it (h_prev) is given and not zero length."""
    if h == 0:
        return [1.0, 0.0, 0.0, 0.0]  # a zero-length step: the latents stay
    phi_1 = np.expm1(-h)  # bh2: B(h) = phi_1 as well
    g = alpha * phi_1
    if not h_prev:  # order 1: half the change of x0
        return [ratio, -g + 0.5 * g, 0.0, -0.5 * g]
    r = -h_prev / h  # where the older x0 lies, in steps of h
    phi_k = phi_1 / -h - 1
    b = [phi_k / phi_1, (phi_k / -h - 0.5) * 2 / phi_1]
    rho_prev, rho_new = np.linalg.solve([[1.0, 1.0], [r, 1.0]], b)
    return [ratio, -g + g * rho_prev / r + g * rho_new, -g * rho_prev / r, -g * rho_new]


def _predictor(h, h_prev, alpha, ratio):
    """Weights of (corrected latents, new x0, previous x0) in UniP-bh2, of
    order 2 when the step before (h_prev) is given and not zero length."""
    if h == 0:
        return [1.0, 0.0, 0.0]
    if np.isinf(h):
        return [0.0, 1.0, 0.0]  # to sigma = 0: the x0 prediction itself
    phi_1 = np.expm1(-h)
    if not h_prev:
        return [ratio, -alpha * phi_1, 0.0]
    g = 0.5 * alpha * phi_1 / (-h_prev / h)
    return [ratio, -alpha * phi_1 + g, -g]


@dataclasses.dataclass(frozen=True)
class UniPC(MultistepSigmas):
    """Coefficient rows hold sigma_t and alpha_t (the x0 prediction), the
    corrector's weights on the given latents, the previous corrected
    latents and the x0 predictions at the step before, two before and now,
    and the predictor's on the corrected latents, the new x0 and the
    previous x0. The state: corrected latents, last two x0 predictions."""

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        timesteps, sigmas = self.sigmas(num_steps)
        sigmas = np.append(sigmas, 0.0)
        alphas = 1 / np.sqrt(sigmas**2 + 1)
        with np.errstate(divide="ignore"):
            lambdas = -np.log(sigmas)  # log(alpha / (sigma alpha)); inf at the end
        h = np.diff(lambdas)  # h[i]: from step i to i + 1
        scale = sigmas * alphas
        rows = []
        for i in range(num_steps):
            call = i - skip
            if call <= 0:
                correct = [1.0, 0.0, 0.0, 0.0, 0.0]
            else:
                weights = _corrector(h[i - 1], h[i - 2] if call > 1 else 0,
                                     alphas[i], scale[i] / scale[i - 1])
                correct = [0.0, *weights]
            predict = _predictor(h[i], h[i - 1] if call > 0 and i < num_steps - 1 else 0,
                                 alphas[i + 1], scale[i + 1] / scale[i])
            rows.append([scale[i], alphas[i], *correct, *predict])
        return Schedule(
            timesteps=timesteps.astype(np.float32),
            coefficients=np.array(rows, np.float32),
            noise_levels=variance_preserving_levels(alphas[:-1] ** 2),
        ).starting_at(skip)

    def initial_state(self, sample):
        """Zero corrected latents and x0 predictions: the first row gives them weight 0."""
        return (sample * 0,) * 3

    def step(self, sample, noise_pred, coefficients, state):
        """Correct the given latents, then predict the next ones; numpy or tensors alike."""
        corrected, x0_prev, x0_prev2 = state
        c = coefficients
        x0 = predict_x0(sample, noise_pred, c)
        corrected = c[2] * sample + c[3] * corrected + c[4] * x0_prev + c[5] * x0_prev2 + c[6] * x0
        return c[7] * corrected + c[8] * x0 + c[9] * x0_prev, (corrected, x0, x0_prev)
