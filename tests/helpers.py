"""Helpers, no tests: tiny models and inputs the tests share (numpy and
TensorFlow only; the torch references are in references.py)."""

import numpy as np
import tensorflow as tf

from kcv_sd.components import randomize
from kcv_sd.config import CONTROLNET_TINY
from kcv_sd.controlnet import ControlNet
from kcv_sd.unet import timestep_embedding


def random_controlnet(seed, config=CONTROLNET_TINY):
    model = ControlNet(config)
    randomize([layer for layer in model.model().layers if layer.weights], seed)
    return model


def random_inputs(config, batch=2, height=8, width=8, tokens=7, seed=0):
    """Our inputs (NHWC, timestep embedded) and the integer timesteps for diffusers."""
    rng = np.random.default_rng(seed)
    timesteps = rng.integers(0, 1000, batch)
    inputs = {
        "latent": rng.standard_normal((batch, height, width, config.latent_channels)),
        "timestep_embedding": np.asarray(timestep_embedding(timesteps, config.timestep_dim)),
        "context": rng.standard_normal((batch, tokens, config.context_dim)),
    }
    return {k: v.astype("float32") for k, v in inputs.items()}, timesteps


def control_image(batch, height, width, seed=1):
    """A control image (B, 8h, 8w, 3) in [0, 1] for a latent of (h, w)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch, 8 * height, 8 * width, 3)).astype("float32")


# img2img and inpainting images: the size `block_mask` draws for.
HEIGHT, WIDTH = 64, 128


def block_mask(height=HEIGHT, width=WIDTH):
    """White (repaint) on the left half and a block-aligned square, else black."""
    mask = np.zeros((height, width), bool)
    mask[:, : width // 2] = True
    mask[8:24, -32:-8] = True
    return mask


# Samplers stepped on stand-in model outputs (test_samplers, test_img2img).

def fake_unet(model_input, noise):
    """Depends on what the model sees, so `model_input` scaling is checked too."""
    return noise - 0.5 * model_input


def eager_run(sampler, schedule, start, noise, to_array, fresh_noise=None):
    """The trajectory of `sampler` over `schedule` on `fake_unet`; a
    stochastic sampler gets `fresh_noise[i]` at step i."""
    sample = to_array(start * schedule.init_noise_sigma)
    state = sampler.initial_state(sample)
    trajectory = []
    for i, row in enumerate(schedule.coefficients):
        row = to_array(row)
        eps = fake_unet(sampler.model_input(sample, row), to_array(noise[i]))
        fresh = (to_array(fresh_noise[i]),) if sampler.stochastic else ()
        sample, state = sampler.step(sample, eps, row, state, *fresh)
        trajectory.append(np.asarray(sample))
    return np.stack(trajectory)


def compiled_run(sampler, schedule, start, noise, fresh_noise=None, jit_compile=False):
    """All steps in one graph: a while loop indexing the coefficient rows."""

    @tf.function(jit_compile=jit_compile)
    def run(start, coefficients, noise, fresh_noise):
        steps = tf.shape(coefficients)[0]

        def body(i, sample, state, trajectory):
            row = coefficients[i]
            eps = fake_unet(sampler.model_input(sample, row), noise[i])
            fresh = (fresh_noise[i],) if sampler.stochastic else ()
            sample, state = sampler.step(sample, eps, row, state, *fresh)
            return i + 1, sample, state, trajectory.write(i, sample)

        loop_vars = (0, start, sampler.initial_state(start), tf.TensorArray(tf.float32, steps))
        return tf.while_loop(lambda i, *_: i < steps, body, loop_vars)[3].stack()

    fresh_noise = noise if fresh_noise is None else fresh_noise
    return run(start * schedule.init_noise_sigma, schedule.coefficients, noise, fresh_noise).numpy()


def assert_close(actual, expected, rtol):
    """Step by step, relative to each step's scale: sigma-scaled latents start
    near 15 and elementwise tolerances alone would fail near zero."""
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max(), err_msg=f"step {step}")
