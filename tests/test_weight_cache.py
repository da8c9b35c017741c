"""oneDNN weight caching (`kcv_sd.weight_cache`) leaves kcv-sd's images unchanged.

The caching is process-wide and read once, so the cached run happens in a
fresh process: this file run as a script, which checks a `generate()` call
with image inputs first and only then turns caching on (as `kcv-sd generate`
decides it), writing its outputs to a file, while this process computes the
same outputs uncached. For the bfloat16 tiny model (the default precision on CPUs with
native bfloat16, and oneDNN's 16-bit kernels; float32 is left out for the
suite's time, docs/test_suite.md): the latents of several calls
in a row (two prompts and seeds, two sizes, a ControlNet, img2img, the first
call again), images decoded at two sizes, and a pipeline with one step
function for every size (`static_routes=False`) called at two sizes and the
first again, so that its kernels meet several shapes. Graph kernels of
every size cache (checked down to 8x32x32 products), so the tiny models
exercise the same kernels as SD1.5. As the hazard the caching brings, both
processes then halve the UNet's weights in place and repeat the first call:
the cached process does not see the change. `probe_stale` checks that caching is live at all: a bias-fused
matmul given new weights on its second call still uses its first ones.

Tolerance: the same kernels on the same shapes; results agree to 1e-5 of the
latents' magnitude (float32 differs by ~1e-6 where oneDNN picks another
kernel path for cached weights).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from kcv_sd.components import FAMILIES
from kcv_sd.weight_cache import (
    AMX_FLAG,
    FREE_COPIES_NEEDED,
    FROZEN_WEIGHTS_VARIABLE,
    GIB,
    cache_weights_for_inference,
    cached_bytes,
    choose_weight_cache,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # two processes, each tracing
PRECISIONS = ("bfloat16",)
CASES = ("first", "other prompt and seed", "other size", "controlnet", "img2img", "first again", "decoded",
         "decoded, other size", "one trace for every size", "one trace, other size", "one trace, first size again")


def probe_stale():
    rng = np.random.default_rng(0)
    x, first, second, bias = (tf.constant(rng.standard_normal(shape), tf.float32)
                              for shape in ((8, 64), (64, 64), (64, 64), (64,)))
    product = tf.function(lambda x, w: tf.nn.bias_add(tf.matmul(x, w), bias))
    product(x, first)
    return not np.allclose(product(x, second), x.numpy() @ second.numpy() + bias.numpy(), atol=1e-3)


def outputs(precision):
    from kcv_sd.components import load_components
    from kcv_sd.pipeline import Pipeline
    from kcv_sd.study import resolve_controlnet

    pipeline = Pipeline(components=load_components("tiny", "random", precision=precision, seed=0))
    controlnet = resolve_controlnet(pipeline, "random", seed=4)
    control = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype("uint8")

    def latent(prompt, **options):
        return pipeline(prompt, num_inference_steps=2, output_type="latent", **options)

    results = {
        "first": latent("a red cube", width=64, height=64, seed=1),
        "other prompt and seed": latent("a blue sphere", width=64, height=64, seed=2),
        "other size": latent("a red cube", width=128, height=64, seed=3),
        "controlnet": latent("a red cube", width=128, height=64, seed=4, image=control, controlnet=controlnet),
        "img2img": latent("a red cube", init_image=control, strength=0.5, seed=5),
        "first again": latent("a red cube", width=64, height=64, seed=1),
    }
    results["decoded"] = pipeline.decode(results["first"])
    results["decoded, other size"] = pipeline.decode(results["other size"])
    # One step function for every size: its kernels see several shapes.
    shared = Pipeline(components=pipeline.components, static_routes=False)
    for name, width in (("one trace for every size", 64), ("one trace, other size", 128),
                        ("one trace, first size again", 64)):
        results[name] = shared("a red cube", num_inference_steps=2, output_type="latent",
                               width=width, height=64, seed=6)
    for variable in pipeline.components.unet.model().weights:
        variable.assign(variable * 0.5)
    results["first, weights halved after"] = latent("a red cube", width=64, height=64, seed=1)
    return {f"{precision} {name}": np.asarray(value, np.float32) for name, value in results.items()}


def run(out_path=None):
    """Every output above, and the probe; saved to `out_path` when given."""
    results = {"probe_stale": np.array(probe_stale())}
    for precision in PRECISIONS:
        results.update(outputs(precision))
    if out_path is not None:
        np.savez(out_path, **results)
    return results


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    """The child, with caching on, started first so that it runs beside this process's references."""
    out_path = tmp_path_factory.mktemp("weight_cache") / "cached.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(FROZEN_WEIGHTS_VARIABLE, None)
    process = subprocess.Popen([sys.executable, __file__, str(out_path)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process, out_path
    process.kill()


@pytest.fixture(scope="module")
def both(cached_run):
    if os.environ.get(FROZEN_WEIGHTS_VARIABLE, "0") != "0":
        pytest.skip(f"this test process has {FROZEN_WEIGHTS_VARIABLE} set: it must run uncached")
    uncached = run()
    process, out_path = cached_run
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    cached = dict(np.load(out_path))
    if not cached["probe_stale"]:
        pytest.skip("this TensorFlow build does not cache oneDNN weights: nothing to compare")
    return uncached, cached


def test_the_uncached_process_is_not_stale(both):
    uncached, _ = both
    assert not uncached["probe_stale"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES)
def test_cached_weights_leave_pipeline_outputs_unchanged(both, precision, case):
    uncached, cached = both
    reference = uncached[f"{precision} {case}"]
    scale = np.abs(reference).max()
    assert np.abs(cached[f"{precision} {case}"] - reference).max() <= 1e-5 * scale


@pytest.mark.parametrize("precision", PRECISIONS)
def test_weights_changed_after_a_run_are_not_seen_with_caching(both, precision):
    """The hazard the docs warn of, and proof that the pipeline's own kernels cache:
    after the UNet's weights are halved in place, the cached process differs
    from the uncached one."""
    uncached, cached = both
    name = f"{precision} first, weights halved after"
    scale = np.abs(uncached[name]).max()
    assert np.abs(uncached[name] - uncached[f"{precision} first"]).max() > 1e-2 * scale
    assert np.abs(cached[name] - uncached[name]).max() > 1e-2 * scale


def test_the_parameter_counts_are_the_models(tiny_counts):
    family = FAMILIES["tiny"]
    assert tiny_counts == (family.unet_parameters, family.controlnet_parameters)


@pytest.fixture(scope="module")
def tiny_counts():
    return parameter_counts("tiny")


def parameter_counts(name):
    from kcv_sd.controlnet import ControlNet
    from kcv_sd.unet import UNet

    family = FAMILIES[name]
    return tuple(model.model().count_params() for model in
                 (UNet(family.unet, initializer="zeros"), ControlNet(family.controlnet, initializer="zeros")))


@pytest.mark.full_size
def test_sd15_parameter_counts_are_the_models():
    family = FAMILIES["sd15"]
    assert parameter_counts("sd15") == (family.unet_parameters, family.controlnet_parameters)


def test_auto_caches_where_four_copies_are_free(monkeypatch):
    """SD1.5 + one ControlNet in float32 on an AMX CPU: a 4.5 GiB copy; bfloat16 halves it."""
    monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE, raising=False)
    family, amx = FAMILIES["sd15"], {"avx512f", AMX_FLAG}
    extra = cached_bytes(family, "float32", controlnets=1)
    assert round(extra / GIB, 2) == 4.55 and cached_bytes(family, "bfloat16", controlnets=1) == extra // 2
    assert cached_bytes(family, "float32", 1, step_functions=2) == 2 * extra
    cached, why = choose_weight_cache("auto", family, "float32", 1, available=FREE_COPIES_NEEDED * extra - 1,
                                      flags=amx)
    assert not cached and os.environ[FROZEN_WEIGHTS_VARIABLE] == "0"
    assert why.startswith("weight cache off: it would take 4.5 GiB more, and 18.2 GiB is free")
    monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE)
    cached, why = choose_weight_cache("auto", family, "float32", 1, available=FREE_COPIES_NEEDED * extra, flags=amx)
    assert cached and os.environ[FROZEN_WEIGHTS_VARIABLE] == "1"
    cached, _ = choose_weight_cache("auto", family, "float32", 1, available=0, flags=amx)
    assert cached, "an environment value stands under auto"


@pytest.mark.parametrize("flags", [set(), {"avx512f", "avx512_bf16", "avx512_vnni"}])
def test_auto_leaves_it_off_without_amx(monkeypatch, flags):
    """On a CPU without AMX caching made 256x256 and 512x512 steps no faster (docs section 23), so "auto" keeps
    the memory and the first call's time, however much memory is free."""
    monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE, raising=False)
    cached, why = choose_weight_cache("auto", FAMILIES["sd15"], "bfloat16", available=1000 * GIB, flags=flags)
    assert not cached and os.environ[FROZEN_WEIGHTS_VARIABLE] == "0"
    assert why.startswith("weight cache off: without AMX") and "--weight-cache on" in why
    monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE)
    cached, _ = choose_weight_cache("on", FAMILIES["sd15"], "bfloat16", available=0, flags=flags)
    assert cached, "an explicit on still caches"


@pytest.mark.parametrize("setting", ["on", "off"])
def test_an_explicit_setting_wins(monkeypatch, setting):
    monkeypatch.setenv(FROZEN_WEIGHTS_VARIABLE, "0" if setting == "on" else "1")
    cached, _ = choose_weight_cache(setting, FAMILIES["sd15"], "float32", available=0 if setting == "on" else None)
    assert cached == (setting == "on") and os.environ[FROZEN_WEIGHTS_VARIABLE] == ("1" if cached else "0")


def test_kcv_sd_env_says_what_auto_decides():
    from click.testing import CliRunner

    from kcv_sd.cli import main
    from kcv_sd.devices import cpu_flags

    output = CliRunner().invoke(main, ["env"]).output
    lines = [line for line in output.splitlines() if "--weight-cache auto" in line]
    assert len(lines) == 2 and all(": weight cache o" in line for line in lines), output
    if AMX_FLAG not in cpu_flags():
        assert all(": weight cache off: without AMX" in line for line in lines), lines
    assert os.environ.get(FROZEN_WEIGHTS_VARIABLE) is None, "reporting decides nothing"


def test_kcv_sd_generate_refuses_an_unknown_setting():
    from click.testing import CliRunner

    from kcv_sd.cli import main

    result = CliRunner().invoke(main, ["generate", "a cat", "--weight-cache", "sometimes"])
    assert result.exit_code == 2 and "'sometimes' is not one of 'auto', 'on', 'off'" in result.output


def test_environment_value_stands(monkeypatch):
    monkeypatch.setenv(FROZEN_WEIGHTS_VARIABLE, "0")
    assert not cache_weights_for_inference()
    monkeypatch.delenv(FROZEN_WEIGHTS_VARIABLE)
    assert cache_weights_for_inference()
    assert os.environ[FROZEN_WEIGHTS_VARIABLE] == "1"


def check_then_cache():
    """What `kcv-sd generate` does before its first model runs: check the call (images read, noise drawn), then
    decide the caching."""
    from kcv_sd.generation import check_generate

    control = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    check_generate("a red cube", model="tiny", init_image=control, strength=0.5, seed=1)
    check_generate("a red cube", model="tiny", init_image=control, mask_image=control[..., 0], seed=2)
    cached, why = choose_weight_cache("on", FAMILIES["tiny"], PRECISIONS[0])
    assert cached, why


if __name__ == "__main__":
    check_then_cache()
    run(sys.argv[1])
