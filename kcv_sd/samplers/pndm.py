"""PNDM (PLMS) as diffusers' `PNDMScheduler` runs SD 1.5, the SD 1.5
pipeline's default: "leading" spacing with steps_offset=1, skip_prk_steps
(no Runge-Kutta warm-up) and a final alpha of alpha_cumprod[0].

A linear multistep method on the noise predictions, with the pseudo
numerical step of the PNDM paper (formula 9) from each timestep t to
t - 1000 // n. n steps run n + 1 UNet calls: the first step is taken with
one prediction, then redone from the same latents with the mean of that
prediction and the one at the latents it reached (the second call repeats
the second timestep); after that the steps combine the new prediction with
the 1, 2, then 3 kept before it (Adams-Bashforth weights).

img2img runs PNDM on the steps it keeps, the first of them taken twice
(n - skip + 1 calls). diffusers instead cuts its list of calls,
repeat included, at `skip`: from skip 2 on, every step after the redo is
told the timestep below the one its latents are at (skip 1 redoes the
first step from one timestep too high), which these noise levels would
contradict. The last step lands on alpha_cumprod[0], not on clean latents;
inpainting still blends the clean init latents in after it, as diffusers
does.
"""

import dataclasses

import numpy as np

from kcv_sd.samplers.base import (
    ScaledLinearSampler,
    Schedule,
    check_num_steps,
    variance_preserving_levels,
)

# Weights of the new noise prediction and the kept ones (newest first) at
# each call of a run: first step, its redo, then the multistep orders 2, 3, 4.
WEIGHTS = np.array([
    [1, 0, 0, 0],
    [1 / 2, 1 / 2, 0, 0],
    [3 / 2, -1 / 2, 0, 0],
    [23 / 12, -16 / 12, 5 / 12, 0],
    [55 / 24, -59 / 24, 37 / 24, -9 / 24],
])


@dataclasses.dataclass(frozen=True)
class PNDM(ScaledLinearSampler):
    """Coefficient rows hold the latents' and the combined prediction's
    weights in the step, the four prediction weights, and three switches:
    redo (start from the stored latents), push (keep the new prediction)
    and store (keep these latents for the redo). The state is the stored
    latents and the three kept predictions, newest first."""

    def schedule(self, num_steps, skip=0):
        check_num_steps(num_steps, self.num_train_timesteps)
        if not 0 <= skip <= num_steps:
            raise ValueError(f"cannot start at step {skip} of {num_steps}")
        steps = self.leading_timesteps(num_steps)[skip:]
        timesteps = np.insert(steps, 1, steps[1]) if len(steps) > 1 else steps  # the UNet's
        stride = self.num_train_timesteps // num_steps
        call = np.arange(len(timesteps))
        redo = call == 1
        starts = np.where(redo, timesteps + stride, timesteps)
        ends = np.where(redo, timesteps, timesteps - stride)
        table = self.alphas_cumprod()
        alphas = table[starts]
        alphas_next = np.where(ends >= 0, table[np.maximum(ends, 0)], table[0])
        denominator = alphas * np.sqrt(1 - alphas_next) + np.sqrt(alphas * (1 - alphas) * alphas_next)
        coefficients = np.concatenate([
            np.stack([np.sqrt(alphas_next / alphas), (alphas - alphas_next) / denominator], -1),
            WEIGHTS[np.minimum(call, len(WEIGHTS) - 1)],
            np.stack([redo, ~redo, call == 0], -1),
        ], -1)
        return Schedule(
            timesteps=timesteps.astype(np.float32),
            coefficients=coefficients.astype(np.float32),
            noise_levels=variance_preserving_levels(table[timesteps]),
        )

    def initial_state(self, sample):
        """No stored latents and no kept predictions: the first rows give them weight 0."""
        return (sample * 0,) * 4

    def step(self, sample, noise_pred, coefficients, state):
        """One pseudo linear multistep update; numpy or tensors alike."""
        stored, *kept = state
        c = coefficients
        eps = c[2] * noise_pred + c[3] * kept[0] + c[4] * kept[1] + c[5] * kept[2]
        start = c[6] * stored + (1 - c[6]) * sample
        push, hold = c[7], 1 - c[7]
        kept = (push * noise_pred + hold * kept[0], push * kept[0] + hold * kept[1], push * kept[1] + hold * kept[2])
        stored = c[8] * sample + (1 - c[8]) * stored
        return c[0] * start + c[1] * eps, (stored, *kept)
