"""Samplers against their references on the same stand-in model outputs.

DPM-Solver++(2M) and Euler against diffusers' schedulers built from SD 1.5's
scheduler config, DDIM against KerasCV's own `generate_image` loop. Our step
math runs eagerly on numpy and on TF tensors, and inside one `tf.while_loop`
over the coefficient rows, which only works because it never branches on the
step index.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch
from helpers import assert_close, compiled_run, eager_run, fake_unet
from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase
from references import REFERENCE_SCHEDULERS as REFERENCES
from references import reference_scheduler

from kcv_sd.samplers import SAMPLERS, DPMSolverPP2M, EulerDiscrete, KerasCVDDIM

STEP_COUNTS = [1, 2, 3, 5, 20, 25, 50]
SHAPE = (2, 8, 8, 4)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers


def inputs(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(SHAPE, dtype=np.float32)
    return start, rng.standard_normal((num_steps, *SHAPE), dtype=np.float32)


def diffusers_run(name, num_steps, start, noise):
    scheduler = reference_scheduler(name)
    scheduler.set_timesteps(num_steps)
    sample = torch.from_numpy(start) * scheduler.init_noise_sigma
    trajectory = []
    for i, t in enumerate(scheduler.timesteps):
        eps = fake_unet(scheduler.scale_model_input(sample, t), torch.from_numpy(noise[i]))
        sample = scheduler.step(eps, t, sample).prev_sample
        trajectory.append(sample.numpy())
    return scheduler.timesteps.numpy(), float(scheduler.init_noise_sigma), np.stack(trajectory)


def test_registered():
    assert isinstance(SAMPLERS["dpmpp_2m"], DPMSolverPP2M)
    assert isinstance(SAMPLERS["euler"], EulerDiscrete)


def test_sd15_config_gives_the_class_default_spacing():
    """SD 1.5's config doesn't set timestep_spacing; PNDM's "leading" default
    is not carried over, so both references use "linspace"."""
    for name in REFERENCES:
        assert reference_scheduler(name).config.timestep_spacing == "linspace"


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("name", ["dpmpp_2m", "euler"])
def test_matches_diffusers(name, num_steps):
    sampler = SAMPLERS[name]
    schedule = sampler.schedule(num_steps)
    start, noise = inputs(num_steps)
    timesteps, init_noise_sigma, expected = diffusers_run(name, num_steps, start, noise)
    # diffusers' float32 sigma table is 1.3e-5 relative off at t = 0, the only
    # timestep of one linspace step; elsewhere we agree to ~1e-6.
    rtol = 2e-5 if schedule.timesteps[0] == 0 else 1e-5

    assert schedule.timesteps.dtype == np.float32 and schedule.coefficients.dtype == np.float32
    np.testing.assert_array_equal(schedule.timesteps, timesteps.astype(np.float32))
    np.testing.assert_allclose(schedule.init_noise_sigma, init_noise_sigma, rtol=rtol)
    on_numpy = eager_run(sampler, schedule, start, noise, np.asarray)
    assert_close(on_numpy, expected, rtol=rtol)
    assert_close(eager_run(sampler, schedule, start, noise, tf.constant), on_numpy, rtol=1e-6)
    assert_close(compiled_run(sampler, schedule, start, noise), on_numpy, rtol=1e-6)


def test_dpm_solver_orders():
    """First and last steps are first order, the others use the previous x0."""
    weights = DPMSolverPP2M().schedule(6).coefficients[:, 4]
    assert weights[0] == 0 and weights[-1] == 0 and np.all(weights[1:-1] != 0)
    assert DPMSolverPP2M().schedule(1).coefficients[0, 2:].tolist() == [0, 1, 0]  # x = x0


@pytest.mark.parametrize("sampler", [DPMSolverPP2M(), EulerDiscrete()])
def test_rejects_zero_steps(sampler):
    with pytest.raises(ValueError):
        sampler.schedule(0)


class _KerasCVLoop(StableDiffusionBase):
    """KerasCV's `generate_image` around a stand-in UNet and decoder: records
    the timesteps it runs and the latents it would decode."""

    def __init__(self, noise):
        super().__init__(img_height=64, img_width=64)
        self.noise, self.timesteps, self.final_latents = noise, [], None

    diffusion_model = decoder = property(lambda self: self)

    def predict_on_batch(self, inputs):
        if isinstance(inputs, dict):  # the UNet, called for both CFG halves
            return fake_unet(inputs["latent"], self.noise[len(self.timesteps) - 1])
        self.final_latents = np.asarray(inputs)  # the decoder
        return np.zeros((*inputs.shape[:3], 3), np.float32)

    def _get_unconditional_context(self):
        return np.zeros((1, 77, 8), np.float32)

    def _get_timestep_embedding(self, timestep, batch_size, dim=320, max_period=10000):
        self.timesteps.append(int(timestep))
        return np.zeros((batch_size, dim), np.float32)


@pytest.mark.parametrize("num_steps", [1, 2, 50])
def test_ddim_matches_kerascv_generate_image(num_steps):
    start, noise = inputs(num_steps)
    kerascv = _KerasCVLoop(noise)
    kerascv.generate_image(np.zeros((2, 77, 8), np.float32), batch_size=2, num_steps=num_steps,
                           diffusion_noise=start)

    schedule = KerasCVDDIM().schedule(num_steps)
    np.testing.assert_array_equal(schedule.timesteps, np.array(kerascv.timesteps, np.float32))
    ours = eager_run(KerasCVDDIM(), schedule, start, noise, np.asarray)[-1]
    np.testing.assert_allclose(ours, kerascv.final_latents, rtol=1e-5, atol=1e-5)
