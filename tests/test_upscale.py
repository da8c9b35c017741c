"""The upscale path on the tiny family: native pass, Lanczos enlargement,
img2img refine with the same prompt, seed and ControlNet; API, CLI, bad input."""

import numpy as np
import pytest
from click.testing import CliRunner

import kcv_sd
from kcv_sd.cli import main
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.png import read_parameters
from kcv_sd.upscale import generate_upscaled

ARGS = dict(num_inference_steps=4, seed=2, refine_strength=0.5)


def control_image(height=64, width=64):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + y) % 256] * 3, -1).astype("uint8")


def test_output_size_doubles(tiny_pipeline):
    images = generate_upscaled(tiny_pipeline, "a", width=128, height=64, **ARGS)
    assert [image.size for image in images] == [(256, 128)]


def test_batches_and_float_factors(tiny_pipeline):
    """Each image is refined on its own; 1.5x of 64x128 is 96x192, multiples of 8."""
    images = generate_upscaled(tiny_pipeline, ["a", "b"], "c", width=64, height=128, upscale=1.5,
                               output_type="np", **ARGS)
    assert images.shape == (2, 192, 96, 3)


def test_refine_pass_runs_the_controlnet(tiny_pipeline, shared_controlnet, controlnet_step_calls):
    """4 native steps, then int(4 * 0.5) refine steps, all with the ControlNet."""
    latents = generate_upscaled(tiny_pipeline, "a", width=64, height=64, image=control_image(),
                                controlnet=shared_controlnet(1), output_type="latent", **ARGS)
    assert latents.shape == (1, 16, 16, 4)
    assert controlnet_step_calls == [True] * 6


def test_native_control_sizing_refines_at_the_upscaled_size(tiny_pipeline, shared_controlnet):
    images = generate_upscaled(tiny_pipeline, "a", image=control_image(64, 128), controlnet=shared_controlnet(1),
                               control_sizing="native", upscale=1.25, num_inference_steps=1, seed=1,
                               refine_strength=1.0, output_type="np")
    assert images.shape == (1, 448, 896, 3)  # 720x360 at ~512x512 pixels; x1.25 is 900x450, to multiples of 8


@pytest.mark.parametrize("options,message", [
    (dict(upscale=1), "upscale=1: use a factor > 1"),
    (dict(upscale=0.5), "upscale=0.5"),
    (dict(upscale=True), "upscale=True"),
    (dict(upscale="2"), "upscale='2'"),
    (dict(upscale=3, width=1024, height=512), "3072x1536, beyond 2048"),
    (dict(refine_strength=1.5), "refine_strength=1.5"),
])
def test_bad_arguments(tiny_pipeline, options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        generate_upscaled(tiny_pipeline, "a", **options)


def test_generate_upscales(generate_on_tiny_pipeline):
    images = kcv_sd.generate("a", model="tiny", precision="float32", weights="random", width=64, height=64, upscale=2, **ARGS)
    assert images[0].size == (128, 128)


def test_cli(tmp_path, generate_on_tiny_pipeline):
    out = tmp_path / "big.png"
    tiny = ["--model", "tiny", "--precision", "float32", "--weights", "random", "--width", "64", "--height", "64", "--steps", "2",
            "--no-progress", "--seed", "3"]
    result = CliRunner().invoke(main, ["generate", "a", "-o", str(out), "--upscale", "2", "--refine-strength", "0.5",
                                       *tiny], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    params = read_parameters(out)
    assert params["upscale"] == 2 and params["refine_strength"] == 0.5 and params["width"] == 64
    from PIL import Image

    assert Image.open(out).size == (128, 128)
    bad = CliRunner().invoke(main, ["generate", "a", "-o", str(tmp_path / "x.png"), "--upscale", "1", *tiny])
    assert bad.exit_code == 2
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1 and "upscale=1" in lines[0]
