"""Samplers against their references on the same stand-in model outputs.

Every sampler but DDIM against the diffusers scheduler of the same name
built from SD 1.5's scheduler config (the stochastic ones fed the same
fresh noise: diffusers' `randn_tensor` replaced by ours), DDIM against
KerasCV's own `generate_image` loop. Our step math runs eagerly on numpy
and on TF tensors, and inside one `tf.while_loop` over the coefficient
rows, which only works because it never branches on the step index.
"""

import dataclasses
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch
from click.testing import CliRunner
from helpers import assert_close, compiled_run, eager_run, fake_unet
from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase
from references import MORE_REFERENCE_SCHEDULERS, reference_scheduler
from references import REFERENCE_SCHEDULERS as REFERENCES

from kcv_sd.cli import main
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.samplers import (
    ALIASES,
    SAMPLERS,
    DPMSolverPP2M,
    EulerDiscrete,
    KerasCVDDIM,
    resolve,
)
from kcv_sd.samplers.ddim import kerascv_alphas_cumprod
from kcv_sd.step import fresh_noise, noise_keys

STEP_COUNTS = [1, 2, 3, 5, 20, 25, 50]
SHAPE = (2, 8, 8, 4)
CHECKED = [*REFERENCES, *MORE_REFERENCE_SCHEDULERS]  # every sampler with a diffusers reference
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers


def inputs(num_steps, seed=0):
    """Start latents, the stand-in model's noise per step and fresh noise per step."""
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(SHAPE, dtype=np.float32)
    return start, *rng.standard_normal((2, num_steps, *SHAPE), dtype=np.float32)


def diffusers_run(name, num_steps, start, noise, fresh_noise, skip=0, timesteps=None):
    """diffusers' trajectory from `start` (scaled by its initial sigma unless
    img2img skips steps), its stochastic steps fed `fresh_noise[i]` at step
    i; `timesteps` replace the scheduler's own."""
    scheduler = reference_scheduler(name)
    if name == "lcm" and num_steps > scheduler.config.original_inference_steps:
        scheduler.set_timesteps(num_steps, original_inference_steps=num_steps)  # ours spreads them so
    else:
        scheduler.set_timesteps(num_steps)
    if timesteps is not None:
        scheduler.timesteps = torch.from_numpy(timesteps.astype(np.int64))
    timesteps = scheduler.timesteps if timesteps is not None else scheduler.timesteps[skip:]
    if skip and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skip)
    sample = torch.from_numpy(start) * (1 if skip else scheduler.init_noise_sigma)
    step = {}
    module = sys.modules[type(scheduler).__module__]
    trajectory = []
    with pytest.MonkeyPatch.context() as patch:
        if hasattr(module, "randn_tensor"):
            patch.setattr(module, "randn_tensor", lambda shape, **_: torch.from_numpy(fresh_noise[step["i"]]))
        for i, t in enumerate(timesteps):
            step["i"] = i
            eps = fake_unet(scheduler.scale_model_input(sample, t), torch.from_numpy(noise[i]))
            sample = scheduler.step(eps, t, sample).prev_sample
            trajectory.append(sample.numpy())
    return timesteps.numpy(), float(scheduler.init_noise_sigma), np.stack(trajectory)


def test_registered():
    assert isinstance(SAMPLERS["dpmpp_2m"], DPMSolverPP2M)
    assert isinstance(SAMPLERS["euler"], EulerDiscrete)
    assert sorted(CHECKED) == sorted(set(SAMPLERS) - {"ddim"})
    assert sorted(ALIASES) == sorted(SAMPLERS)


def test_resolve_takes_canonical_and_a1111_names():
    for canonical, names in ALIASES.items():
        for name in (canonical, *names, canonical.upper(), *(n.lower() for n in names)):
            assert resolve(name) == canonical
    assert resolve(" Euler a ") == "euler_a" and resolve("PLMS") == "pndm" and resolve("DDIM") == "ddim"
    for bad in ("euler_ancestral", "", None, 3):
        with pytest.raises(InvalidArgumentError, match="use one of ddim .DDIM., dpmpp_2m") as error:
            resolve(bad)
        assert "\n" not in str(error.value)


def test_sd15_config_gives_the_class_default_spacing():
    """SD 1.5's config doesn't set timestep_spacing; PNDM's "leading" default
    is not carried over, so the other schedulers use their class default:
    "linspace" but for DDPM and LCM, whose own default is "leading" too."""
    for name in CHECKED:
        leading = name in ("pndm", "ddpm", "lcm")
        assert reference_scheduler(name).config.timestep_spacing == ("leading" if leading else "linspace")


# diffusers' float32 sigma table is 1.3e-5 relative off at t = 0, the only
# timestep of one linspace step; elsewhere we agree to ~1e-6, but for the
# multistep methods' float32 arithmetic on small differences.
TOLERANCES = {"dpmpp_2m_karras": 3e-5, "pndm": 3e-5, "unipc": 5e-5}


@pytest.mark.parametrize("num_steps", STEP_COUNTS)
@pytest.mark.parametrize("name", CHECKED)
def test_matches_diffusers(name, num_steps):
    sampler = SAMPLERS[name]
    schedule = sampler.schedule(num_steps)
    start, noise, fresh = inputs(len(schedule))
    timesteps, init_noise_sigma, expected = diffusers_run(name, num_steps, start, noise, fresh)
    rtol = 2e-5 if schedule.timesteps[0] == 0 else TOLERANCES.get(name, 1e-5)

    assert schedule.timesteps.dtype == np.float32 and schedule.coefficients.dtype == np.float32
    np.testing.assert_array_equal(schedule.timesteps, timesteps.astype(np.float32))
    np.testing.assert_allclose(schedule.init_noise_sigma, init_noise_sigma, rtol=rtol)
    on_numpy = eager_run(sampler, schedule, start, noise, np.asarray, fresh)
    assert_close(on_numpy, expected, rtol=rtol)
    if num_steps in (5, 25) or name in REFERENCES:  # the step math on tensors: a few step counts suffice
        assert_close(eager_run(sampler, schedule, start, noise, tf.constant, fresh), on_numpy, rtol=1e-6)
        assert_close(compiled_run(sampler, schedule, start, noise, fresh), on_numpy, rtol=1e-6)


@pytest.mark.parametrize("skip", [1, 2, 4])
@pytest.mark.parametrize("name", sorted(MORE_REFERENCE_SCHEDULERS))
def test_truncated_schedule_steps_as_diffusers_img2img(name, skip):
    """img2img's truncated schedules (test_img2img checks dpmpp_2m and euler):
    the multistep methods start first order wherever the schedule is cut.
    PNDM runs on the steps kept, the first taken twice: diffusers' scheduler
    stepping through our timesteps (its own img2img cuts its list of calls
    and loses track of the timestep; kcv_sd.samplers.pndm)."""
    num_steps = 6
    schedule = SAMPLERS[name].schedule(num_steps, skip)
    start, noise, fresh = inputs(len(schedule), seed=skip)
    start = start * schedule.noise_levels[0, 1]
    ours = schedule.timesteps if name == "pndm" else None
    timesteps, _, expected = diffusers_run(name, num_steps, start, noise, fresh, skip, ours)
    np.testing.assert_array_equal(schedule.timesteps, timesteps.astype(np.float32))
    unscaled = dataclasses.replace(schedule, init_noise_sigma=1.0)  # the start is already at its level
    assert_close(eager_run(SAMPLERS[name], unscaled, start, noise, np.asarray, fresh), expected,
                 rtol=TOLERANCES.get(name, 1e-5))


def test_dpm_solver_orders():
    """First and last steps are first order, the others use the previous x0."""
    weights = DPMSolverPP2M().schedule(6).coefficients[:, 4]
    assert weights[0] == 0 and weights[-1] == 0 and np.all(weights[1:-1] != 0)
    assert DPMSolverPP2M().schedule(1).coefficients[0, 2:].tolist() == [0, 1, 0]  # x = x0


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_allowed_step_count(name):
    """1 to 1000 steps (the training steps) give finite coefficients, and a
    model that knows the noise (clean latents of zero) is denoised to zero
    (PNDM: to alpha_cumprod[0]'s noise level; the stochastic samplers, fed
    other fresh noise, stay finite). Above 1000, one line says what to use.
    At 1000 steps the linspace multistep methods repeat a timestep (diffusers:
    NaN) and PNDM and DDPM would index past the table (diffusers:
    IndexError): ours step through."""
    sampler = SAMPLERS[name]
    noise, fresh = np.random.default_rng(0).standard_normal((2, 1, 2, 2, 4))
    for num_steps in (1, 2, 999, 1000):
        schedule = sampler.schedule(num_steps)
        assert np.isfinite(schedule.coefficients).all() and np.isfinite(schedule.noise_levels).all()
        assert schedule.timesteps.min() >= 0 and schedule.timesteps.max() <= 999
        sample = noise * schedule.noise_levels[0, 1]  # the noise at the first step's level
        state = sampler.initial_state(sample)
        for row in schedule.coefficients:
            sample, state = sampler.step(sample, noise, row, state, *((fresh,) if sampler.stochastic else ()))
        assert np.isfinite(sample).all(), num_steps
        if not sampler.stochastic:
            np.testing.assert_allclose(sample, 0, atol=0.03 * np.abs(noise).max(), err_msg=str(num_steps))
    for bad in (0, 1001):
        with pytest.raises(InvalidArgumentError, match=f"num_inference_steps={bad}: use an integer from 1 to 1000"):
            sampler.schedule(bad)


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_1000_steps_repeat_a_timestep_without_nan(name):
    """The repeated timestep is a zero-length step and the next one is first
    order; diffusers' own run returns NaN there."""
    schedule = SAMPLERS[name].schedule(1000)
    repeated = np.flatnonzero(np.diff(schedule.timesteps) == 0)
    assert len(repeated) == 1
    start, noise, fresh = inputs(1000)
    start, noise = start[:1, :2, :2], noise[:, :1, :2, :2]
    ours = eager_run(SAMPLERS[name], schedule, start, noise, np.asarray)
    i = repeated[0]
    assert np.isfinite(ours).all()
    if name == "dpmpp_2m":  # the zero-length step leaves the latents (UniPC's corrects them first)
        np.testing.assert_array_equal(ours[i], ours[i - 1])
    _, _, expected = diffusers_run(name, 1000, start, noise, fresh)
    assert np.isnan(expected[-1]).any()
    assert_close(ours[:i], expected[:i], rtol=1e-3)  # diffusers' float32 log-SNR steps: ~2e-4 at 500 steps


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
    start, noise, _ = inputs(num_steps)
    kerascv = _KerasCVLoop(noise)
    kerascv.generate_image(np.zeros((2, 77, 8), np.float32), batch_size=2, num_steps=num_steps,
                           diffusion_noise=start)

    schedule = KerasCVDDIM().schedule(num_steps)
    np.testing.assert_array_equal(schedule.timesteps, np.array(kerascv.timesteps, np.float32))
    ours = eager_run(KerasCVDDIM(), schedule, start, noise, np.asarray)[-1]
    np.testing.assert_allclose(ours, kerascv.final_latents, rtol=1e-5, atol=1e-5)


def test_kerascv_alphas_table_is_derived_exactly():
    """DDIM's table, derived from SD's betas, equals KerasCV's literal `_ALPHAS_CUMPROD` value for value."""
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    table = kerascv_alphas_cumprod()
    assert table.dtype == np.float64 and table.tolist() == list(_ALPHAS_CUMPROD)
    assert not table.flags.writeable


def test_fresh_noise_is_the_same_eager_in_graphs_and_under_xla():
    """The stochastic samplers' per-step noise, drawn from each image's key
    and the step index: the same in the step-by-step loop, a compiled loop
    and XLA; per image, whatever batch the image is in."""
    noise = tf.constant(np.random.default_rng(0).standard_normal((3, 4, 6, 4), dtype=np.float32))
    keys = noise_keys(noise)
    eager = np.stack([fresh_noise(keys, step, (4, 6, 4)) for step in range(3)])
    def loop(keys):  # as the compiled loop draws them
        def body(step, drawn):
            return step + 1, drawn.write(step, fresh_noise(keys, step, (4, 6, 4)))

        return tf.while_loop(lambda step, _: step < 3, body, (0, tf.TensorArray(tf.float32, 3)))[1].stack()

    for jit_compile in (False, True):
        drawn = tf.function(loop, jit_compile=jit_compile)(keys)
        if jit_compile:  # XLA's log, cos and sqrt round differently
            np.testing.assert_allclose(drawn, eager, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(drawn, eager)
    np.testing.assert_array_equal(fresh_noise(noise_keys(noise[1:2]), 2, (4, 6, 4))[0], eager[2, 1])
    assert np.abs(eager[0] - eager[1]).min() > 0 and np.abs(eager[:, 0] - eager[:, 1]).min() > 0
    assert abs(eager.mean()) < 0.1 and abs(eager.std() - 1) < 0.1


def test_pipeline_ancestral_inpainting_is_reproducible(tiny_pipeline):
    """Euler ancestral ("Euler a") inpainting in the tiny pipeline: a
    truncated schedule, the blend after every step and fresh noise every
    step. The same seed gives the same latents, another seed others
    (test_pipeline checks the compiled loop draws the same noise)."""
    y, x = np.mgrid[0:64, 0:64] / 32.0
    init = (np.stack([np.sin(x), np.cos(y), np.sin(x + y)], -1) * 100 + 120).astype("uint8")
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    args = {"init_image": init, "mask_image": mask, "strength": 0.75, "num_inference_steps": 4,
            "output_type": "latent"}
    first = tiny_pipeline("a cat", sampler="Euler a", seed=3, **args)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(tiny_pipeline("a cat", sampler="euler_a", seed=3, **args), first)
    assert np.abs(tiny_pipeline("a cat", sampler="euler_a", seed=4, **args) - first).mean() > 0.1


def test_cli_lists_and_takes_a1111_names(tmp_path):
    """`--sampler list` prints each name with its A1111 names; an A1111 name
    passes the checks (the steps above the training steps are what fails)."""
    listed = CliRunner().invoke(main, ["generate", "--sampler", "list"])
    assert listed.exit_code == 0
    assert listed.output.splitlines() == [f"{name}: {', '.join(names)}" for name, names in ALIASES.items()]
    args = ["generate", "a", "--model", "tiny", "--precision", "float32", "--weights", "random", "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(main, [*args, "--sampler", "Euler a", "--steps", "1001"])
    assert result.exit_code == 2 and "num_inference_steps=1001" in result.output
    result = CliRunner().invoke(main, [*args, "--sampler", "k_euler"])
    assert result.exit_code == 2 and "sampler='k_euler': use one of ddim (DDIM)" in result.output
