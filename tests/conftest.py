"""Shared fixtures: tiny random models are built once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from kcv_sd.components import load_components  # noqa: E402
from kcv_sd.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_components():
    return load_components("tiny", "random", seed=0)


# The shared pipelines choose layer routes at run time, so the many sizes the
# tests use share one trace; `Pipeline`'s default (static routes, a trace per
# size class) is tested by the tests that build their own pipelines.
@pytest.fixture(scope="session")
def tiny_pipeline(tiny_components):
    return Pipeline(components=tiny_components, jit_compile=False, static_routes=False)


@pytest.fixture(scope="session")
def tiny_xla_pipeline(tiny_components):
    return Pipeline(components=tiny_components, jit_compile=True, static_routes=False)


@pytest.fixture
def controlnet_step_calls(tiny_pipeline, monkeypatch):
    """Records, for each denoising step `tiny_pipeline` runs, whether it ran ControlNets."""
    calls = []
    original = tiny_pipeline.denoise_step

    def counting(guided, sampler="ddim", controlnets=(), guess_mode=False, size=None):
        step = original(guided, sampler, controlnets, guess_mode, size)

        def counted(*args):
            calls.append(bool(controlnets))
            return step(*args)

        return counted

    monkeypatch.setattr(tiny_pipeline, "denoise_step", counting)
    return calls
