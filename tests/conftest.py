"""Shared fixtures (tiny random models are built once per worker) and the
number of pytest-xdist workers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from kcv_sd.components import load_components  # noqa: E402
from kcv_sd.pipeline import Pipeline  # noqa: E402

# A worker's resident memory by the end of its share of the tiny-model tests:
# TensorFlow does not give back all that tracing took (about 0.1-2 GB a test).
MEMORY_PER_WORKER = 10 * 2**30
CORES = len(os.sched_getaffinity(0))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))

# Workers share the cores rather than each spinning a pool as wide as the machine.
if WORKERS > 1:
    tf.config.threading.set_intra_op_parallelism_threads(max(1, CORES // WORKERS))
    tf.config.threading.set_inter_op_parallelism_threads(max(1, CORES // WORKERS))


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, as many as memory allows."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(CORES, memory // MEMORY_PER_WORKER))


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
    original = tiny_pipeline.step_function

    def counting(spec):
        step = original(spec)

        def counted(inputs):
            calls.append(bool(spec.controlnets))
            return step(inputs)

        return counted

    monkeypatch.setattr(tiny_pipeline, "step_function", counting)
    return calls
