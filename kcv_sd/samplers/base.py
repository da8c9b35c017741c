"""What every sampler hands the pipeline: per-step constants and pure step math.

A sampler is a frozen config with four methods:

- `schedule(num_steps, skip=0) -> Schedule`: timesteps, per-step
  coefficient rows and noise levels, without the first `skip` steps (img2img);
- `initial_state(sample) -> tuple`: the tensors a multistep method carries;
- `model_input(sample, coefficients)`: what the UNet sees (e.g. sigma scaling);
- `step(sample, noise_pred, coefficients, state) -> (sample, state)`.

Step math never branches on the step index in Python: whatever differs
between steps (first- vs second-order updates, the final step) is folded
into the coefficient rows, so the whole loop can run as one compiled
`tf.while_loop` as well as step by step.

Every sampler's latents at a step are `signal * x0 + noise * eps` for its own
pair of scales (variance preserving for DDIM and DPM-Solver, x0 + sigma eps
for Euler); `Schedule.noise_levels` lists those pairs, so one `add_noise`
serves img2img's start and inpainting's per-step blend for all samplers.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-step constants in the order the steps run (noisiest first)."""

    timesteps: np.ndarray  # float32 (steps,), what the timestep embedding gets
    coefficients: np.ndarray  # float32 (steps, K), the step math's constants
    # float32 (steps + 1, 2): (signal, noise) scales of the latents each step
    # receives, then of the final latents, which are clean: (1, 0).
    noise_levels: np.ndarray
    init_noise_sigma: float = 1.0  # initial latents are unit noise times this

    def __len__(self):
        return len(self.timesteps)

    def starting_at(self, step):
        """The steps from `step` on, as img2img runs a truncated schedule."""
        if not 0 <= step <= len(self):
            raise ValueError(f"cannot start at step {step} of {len(self)}")
        return dataclasses.replace(self, timesteps=self.timesteps[step:],
                                   coefficients=self.coefficients[step:],
                                   noise_levels=self.noise_levels[step:])


@dataclasses.dataclass(frozen=True)
class ScaledLinearSampler:
    """The config diffusers' SD 1.5 schedulers share: SD's "scaled_linear"
    betas over the training steps."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    def sigma_table(self):
        """Noise levels sqrt((1 - a_t) / a_t) of every training step t, float64."""
        return scaled_linear_sigmas(self.beta_start, self.beta_end, self.num_train_timesteps)


def scaled_linear_sigmas(beta_start, beta_end, num_train_timesteps):
    """Noise levels sqrt((1 - a_t) / a_t) of SD's "scaled_linear" schedule in
    float64, t = 0..num_train_timesteps - 1 (diffusers rounds its table to
    float32 before use, which costs ~1e-5 relative at small t)."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def check_num_steps(num_steps):
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def variance_preserving_levels(alphas_cumprod):
    """Noise levels (sqrt(a), sqrt(1 - a)) of each step's alpha_cumprod `a`,
    with the clean final level appended; float32 (steps + 1, 2)."""
    alphas = np.append(np.asarray(alphas_cumprod, np.float64), 1.0)
    return np.sqrt(np.stack([alphas, 1 - alphas], -1)).astype(np.float32)


def add_noise(sample, noise, level):
    """`sample` noised to `level`, a row of `Schedule.noise_levels`: what
    diffusers' `scheduler.add_noise` gives at that step. Numpy or tensors."""
    return level[0] * sample + level[1] * noise
