"""What every sampler hands the pipeline: per-step constants and pure step math.

A sampler is a frozen config with four methods:

- `schedule(num_steps) -> Schedule`: timesteps and per-step coefficient rows;
- `initial_state(sample) -> tuple`: the tensors a multistep method carries;
- `model_input(sample, coefficients)`: what the UNet sees (e.g. sigma scaling);
- `step(sample, noise_pred, coefficients, state) -> (sample, state)`.

Step math never branches on the step index in Python: whatever differs
between steps (first- vs second-order updates, the final step) is folded
into the coefficient rows, so the whole loop can run as one compiled
`tf.while_loop` as well as step by step.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-step constants in the order the steps run (noisiest first)."""

    timesteps: np.ndarray  # float32 (steps,), what the timestep embedding gets
    coefficients: np.ndarray  # float32 (steps, K), the step math's constants
    init_noise_sigma: float = 1.0  # initial latents are unit noise times this

    def __len__(self):
        return len(self.timesteps)
