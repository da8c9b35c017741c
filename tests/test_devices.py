"""Device-aware defaults: each device kind's choices, forced on this CPU."""

import warnings

import pytest
from click.testing import CliRunner

from kcv_sd import devices
from kcv_sd.cli import main


@pytest.mark.parametrize("device,flags,capability,expected", [
    ("cpu", {"avx2", "avx512f", "avx512_bf16"}, None, ("bfloat16", False)),
    ("cpu", {"avx2", "amx_tile", "amx_bf16"}, None, ("bfloat16", False)),
    ("cpu", {"avx2", "avx512f"}, None, ("float32", False)),
    ("cpu", set(), None, ("float32", False)),
    ("gpu", set(), (7, 5), ("mixed_float16", True)),  # T4
    ("gpu", set(), (7, 0), ("mixed_float16", True)),  # V100
    ("gpu", set(), (6, 0), ("float32", True)),  # P100: no tensor cores
    ("gpu", set(), None, ("float32", True)),
    ("tpu", set(), None, ("mixed_bfloat16", True)),
])
def test_each_device_gets_its_recipe(device, flags, capability, expected):
    chosen = devices.choose_defaults(device, flags, capability)
    assert (chosen.precision, chosen.jit_compile) == expected and chosen.device == device
    assert chosen.reason


def test_auto_resolves_and_explicit_values_win():
    gpu = devices.choose_defaults("gpu", (), (8, 0))
    assert devices.resolve("auto", "auto", gpu) == ("mixed_float16", True)
    assert devices.resolve("float32", "auto", gpu) == ("float32", True)
    assert devices.resolve("auto", False, gpu) == ("mixed_float16", False)
    assert devices.resolve("bfloat16", True) == ("bfloat16", True)


def test_env_prints_devices_flags_and_defaults():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    chosen = devices.detected_defaults()
    assert "TensorFlow" in result.output and "devices: CPU" in result.output
    assert f"precision={chosen.precision}, jit_compile={chosen.jit_compile} ({chosen.reason})" in result.output
    assert "graph cache: off (KCV_SD_GRAPH_CACHE=off)" in result.output  # tests/conftest.py


@pytest.mark.skipif(devices.detected_defaults().jit_compile, reason="the graph cache is for CPUs without XLA")
def test_env_names_the_graph_caches_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KCV_SD_GRAPH_CACHE", str(tmp_path))
    assert f"graph cache: on, in {tmp_path} (KCV_SD_GRAPH_CACHE={tmp_path})" in CliRunner().invoke(main, ["env"]).output


def test_a_pipeline_takes_its_devices_defaults_and_routes(tiny_components):
    from kcv_sd.pipeline import Pipeline
    from kcv_sd.routing import ACCELERATOR_ROUTES, CPU_ROUTES

    here = Pipeline(components=tiny_components, device="cpu")
    assert here.route_policy == CPU_ROUTES and here.jit_compile is False  # "auto" on a CPU
    gpu = Pipeline(components=tiny_components, device="gpu")
    assert gpu.jit_compile is True and gpu.route_policy == ACCELERATOR_ROUTES
    assert Pipeline(components=tiny_components, device="gpu", jit_compile=False).jit_compile is False
    size = (1, 8, 8)
    assert "matmul" in {r for routes in here._route_key(size, (), 77) for r in routes}
    assert here._route_key(size, (), 77) != gpu._route_key(size, (), 77)


def test_generate_resolves_auto_before_caching(monkeypatch):
    from kcv_sd import generation

    built = []
    monkeypatch.setattr(generation, "_cached_pipeline", lambda *configuration: built.append(configuration))
    generation.get_pipeline("tiny", "random")
    generation.get_pipeline("tiny", "random", devices.detected_defaults().precision, False)
    assert built[0] == built[1] == ("tiny", "random", devices.detected_defaults().precision, False, False, False)


@pytest.mark.parametrize("precision,device,flags,expected", [
    ("bfloat16", "cpu", {"avx2", "avx512f"}, "bfloat16"),
    ("mixed_bfloat16", "cpu", set(), "bfloat16"),
    ("bfloat16", "cpu", {"avx512_bf16"}, None),
    ("mixed_bfloat16", "cpu", {"amx_bf16"}, None),
    ("float16", "cpu", {"amx_bf16"}, "float16"),  # AMX-BF16 alone does not make float16 native
    ("mixed_float16", "cpu", {"avx512_fp16"}, None),
    ("float32", "cpu", set(), None),
    ("bfloat16", "gpu", set(), None),
    ("mixed_float16", "gpu", set(), None),
    ("mixed_bfloat16", "tpu", set(), None),
])
def test_a_16_bit_precision_is_emulated_only_on_a_cpu_without_its_instructions(precision, device, flags, expected):
    assert devices.emulated_16_bit(precision, device, flags) == expected


def test_a_pipeline_warns_before_building_when_the_cpu_emulates_its_precision(monkeypatch):
    from kcv_sd import pipeline

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(pipeline, "load_components", lambda *args, **kwargs: 1 / 0)  # the build: after the warning
    with pytest.warns(UserWarning, match=r"precision='bfloat16' computes in bfloat16.*avx512_bf16 or amx_bf16.*"
                                         r"precision='auto' picks float32"), pytest.raises(ZeroDivisionError):
        pipeline.Pipeline(model="tiny", weights="random", precision="bfloat16", device="cpu")
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    with pytest.raises(ZeroDivisionError), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be raised before the build, and fail the test
        pipeline.Pipeline(model="tiny", weights="random", precision="bfloat16", device="cpu")
