"""Shared fixtures (tiny random models are built once per worker) and the
number of pytest-xdist workers."""

import contextlib
import ctypes
import functools
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Pipelines keep no graphs on disk unless a test asks (tests/test_graph_cache.py): tests patch layers and methods
# that a saved graph would not see, and a test run must not fill the user's cache.
os.environ["KCV_SD_GRAPH_CACHE"] = "off"

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from helpers import random_controlnet  # noqa: E402

from kcv_sd.components import load_components  # noqa: E402
from kcv_sd.pipeline import Pipeline  # noqa: E402

from kcv_sd import generation as generate_module  # noqa: E402
from kcv_sd.weight_cache import FROZEN_WEIGHTS_VARIABLE  # noqa: E402

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


def pytest_collection_modifyitems(items):
    """Files holding a `slow` test go first, in their order, then the rest:
    with `--dist loadfile --no-loadscope-reorder` (setup.cfg) the workers
    start on them instead of one worker running them alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.hookimpl(trylast=True)  # after the file's fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a file of SD1.5-size models, its garbage goes back to the system: a worker runs
    several such files, and without this its peak grew file by file past 10 GB (figures: docs/test_suite.md)."""
    if item.get_closest_marker("full_size") and (nextitem is None or nextitem.path != item.path):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True)
def weight_cache_variable(monkeypatch):
    """`kcv-sd generate` sets the weight-cache variable for its process; in a
    test process it would reach every later test, so each test gets it back."""
    value = os.environ.get(FROZEN_WEIGHTS_VARIABLE)
    monkeypatch.setenv(FROZEN_WEIGHTS_VARIABLE, value or "")  # restored (or removed) after the test
    if value is None:
        monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE)


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
def generate_on_tiny_pipeline(tiny_pipeline, monkeypatch):
    """`kcv-sd generate --model tiny --weights random` and `kcv_sd.generate(model="tiny",
    weights="random")` run on `tiny_pipeline`, which already holds this worker's
    compiled steps for every size; the pipeline they would cache for
    themselves (same weights, static routes) traces again per size class.
    Other configurations get their own cached pipeline as usual."""
    cached_pipeline = generate_module._cached_pipeline

    def shared(*configuration):
        if configuration == ("tiny", "random", "float32", False, False, False):
            return tiny_pipeline
        return cached_pipeline(*configuration)

    monkeypatch.setattr(generate_module, "_cached_pipeline", shared)
    return tiny_pipeline


@pytest.fixture(scope="session")
def shared_controlnet():
    """`shared_controlnet(seed)`: `helpers.random_controlnet(seed)`, one instance
    per seed and worker. Pipelines compile a step per ControlNet instance, so
    tests that share the instance share its compiled steps."""
    return functools.cache(random_controlnet)


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
