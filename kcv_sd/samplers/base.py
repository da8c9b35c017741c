"""What every sampler hands the pipeline: per-step constants and pure step math.

A sampler is a frozen config with four methods:

- `schedule(num_steps, skip=0) -> Schedule`: timesteps, per-step
  coefficient rows and noise levels, without the first `skip` steps
  (img2img); one row per UNet call (PNDM's n steps take n + 1);
- `initial_state(sample) -> tuple`: the tensors a multistep method carries;
- `model_input(sample, coefficients)`: what the UNet sees (e.g. sigma scaling);
- `step(sample, noise_pred, coefficients, state) -> (sample, state)`; a
  `stochastic` sampler's (ancestral, DDPM, LCM) also takes `noise`, fresh
  unit noise of the sample's shape for this step, which the caller draws
  (the pipeline from a key per image and the step index, so a compiled
  loop and a step-by-step run draw the same noise).

Step math never branches on the step index in Python: whatever differs
between steps (first- vs second-order updates, the final step) is folded
into the coefficient rows, so the whole loop can run as one compiled
`tf.while_loop` as well as step by step.

Every sampler's latents at a step are `signal * x0 + noise * eps` for its own
pair of scales (variance preserving for all but Euler and Euler ancestral,
x0 + sigma eps for those); `Schedule.noise_levels` lists those pairs, so one
`add_noise` serves img2img's start and inpainting's per-step blend for all
samplers.
"""

import dataclasses

import numpy as np

from kcv_sd.errors import InvalidArgumentError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-step constants in the order the steps run (noisiest first)."""

    timesteps: np.ndarray  # float32 (steps,), what the timestep embedding gets
    coefficients: np.ndarray  # float32 (steps, K), the step math's constants
    # float32 (steps + 1, 2): (signal, noise) scales of the latents each step
    # receives, then of the final latents, which are clean: (1, 0) (PNDM's
    # land on alpha_cumprod[0]; inpainting blends clean latents in, as diffusers).
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


class Sampler:
    """The defaults of a sampler: no state, the UNet sees the latents as
    they are, and `step` needs no fresh noise."""

    stochastic = False  # True: `step(..., noise)` adds fresh unit noise

    def initial_state(self, sample):
        return ()

    def model_input(self, sample, coefficients):
        return sample


@dataclasses.dataclass(frozen=True)
class ScaledLinearSampler(Sampler):
    """The config diffusers' SD 1.5 schedulers share: SD's "scaled_linear"
    betas over the training steps."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    def sigma_table(self):
        """Noise levels sqrt((1 - a_t) / a_t) of every training step t, float64."""
        return scaled_linear_sigmas(self.beta_start, self.beta_end, self.num_train_timesteps)

    def alphas_cumprod(self):
        """alpha_cumprod of every training step t, float64."""
        return 1 / (1 + self.sigma_table() ** 2)

    def leading_timesteps(self, num_steps, offset=1):
        """diffusers' "leading" spacing with SD 1.5's `steps_offset`:
        i * (train steps // num_steps) + offset, noisiest first. Where the
        offset would take the top timestep past the last training step (at
        1000 steps, where diffusers indexes past its table), it is dropped
        as far as needed: 1000 steps are then every training step."""
        timesteps = np.arange(num_steps) * (self.num_train_timesteps // num_steps) + offset
        return (timesteps - max(0, timesteps[-1] - (self.num_train_timesteps - 1)))[::-1]


def scaled_linear_sigmas(beta_start, beta_end, num_train_timesteps):
    """Noise levels sqrt((1 - a_t) / a_t) of SD's "scaled_linear" schedule in
    float64, t = 0..num_train_timesteps - 1 (diffusers rounds its table to
    float32 before use, which costs ~1e-5 relative at small t)."""
    alphas_cumprod = scaled_linear_alphas_cumprod(beta_start, beta_end, num_train_timesteps)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def scaled_linear_alphas_cumprod(beta_start, beta_end, num_train_timesteps):
    """alpha_cumprod of SD's "scaled_linear" betas in float64, t = 0..num_train_timesteps - 1."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


def check_num_steps(num_steps, num_train_timesteps):
    """Refuse step counts a sampler has no timesteps for: from 1 to the
    model's training steps."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise InvalidArgumentError(
            f"num_inference_steps={num_steps}: use an integer from 1 to {num_train_timesteps}, "
            "the steps the model was trained with.")


def variance_preserving_levels(alphas_cumprod):
    """Noise levels (sqrt(a), sqrt(1 - a)) of each step's alpha_cumprod `a`,
    with the clean final level appended; float32 (steps + 1, 2)."""
    alphas = np.append(np.asarray(alphas_cumprod, np.float64), 1.0)
    return np.sqrt(np.stack([alphas, 1 - alphas], -1)).astype(np.float32)


def x0_schedule(timesteps, alphas_cumprod, columns, skip=0):
    """The `Schedule` of variance-preserving latents whose rows start with
    sqrt(1 - a) and sqrt(a), as `predict_x0` takes them, then `columns`."""
    coefficients = np.stack([np.sqrt(1 - alphas_cumprod), np.sqrt(alphas_cumprod), *columns], -1)
    return Schedule(
        timesteps=np.asarray(timesteps, np.float32),
        coefficients=coefficients.astype(np.float32),
        noise_levels=variance_preserving_levels(alphas_cumprod),
    ).starting_at(skip)


def predict_x0(sample, noise_pred, coefficients):
    """The clean latents an epsilon prediction implies, from a row that
    starts with sqrt(1 - a) and sqrt(a) (`x0_schedule`, DPM-Solver, UniPC)."""
    return (sample - coefficients[0] * noise_pred) / coefficients[1]


def add_noise(sample, noise, level):
    """`sample` noised to `level`, a row of `Schedule.noise_levels`: what
    diffusers' `scheduler.add_noise` gives at that step. Numpy or tensors."""
    return level[0] * sample + level[1] * noise
