"""The CLI: files with metadata, no silent overwrite, one-line errors."""

import numpy as np
import pytest
from click.testing import CliRunner

from kcv_sd.cli import main
from kcv_sd.png import read_parameters

pytestmark = pytest.mark.usefixtures("generate_on_tiny_pipeline")
TINY = ["--model", "tiny", "--precision", "float32", "--weights", "random", "--width", "64", "--height", "64",
        "--steps", "2", "--no-progress"]


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_generate_writes_png_with_reproducible_metadata(tmp_path):
    out = tmp_path / "cat.png"
    result = run(["generate", "a cat", "-o", str(out), "--seed", "5", *TINY])
    assert result.exit_code == 0, result.output
    params = read_parameters(out)
    assert params["prompt"] == "a cat" and params["seed"] == 5 and params["steps"] == 2
    assert params["width"] == 64 and params["model"] == "tiny" and params["guidance"] == 7.5
    again = tmp_path / "again.png"
    run(["generate", "a cat", "-o", str(again), "--seed", "5", *TINY])
    assert out.read_bytes() == again.read_bytes()


def test_cfg_cutoff_is_recorded_and_changes_the_image(tmp_path):
    plain, cut = tmp_path / "plain.png", tmp_path / "cut.png"
    run(["generate", "a cat", "-o", str(plain), "--seed", "5", *TINY])
    result = run(["generate", "a cat", "-o", str(cut), "--seed", "5", "--cfg-cutoff", "0", *TINY])
    assert result.exit_code == 0, result.output
    assert read_parameters(cut)["cfg_cutoff"] == 0 and read_parameters(plain)["cfg_cutoff"] is None
    assert plain.read_bytes() != cut.read_bytes()


def test_unseeded_run_records_the_seed_it_drew(tmp_path):
    out = tmp_path / "a.png"
    assert run(["generate", "a", "-o", str(out), *TINY]).exit_code == 0
    assert isinstance(read_parameters(out)["seed"], int)


def test_several_images_get_numbered_names(tmp_path):
    out = tmp_path / "batch.png"
    result = run(["generate", "a", "-o", str(out), "--num-images", "2", *TINY])
    assert result.exit_code == 0
    assert (tmp_path / "batch-0.png").exists() and (tmp_path / "batch-1.png").exists()
    assert read_parameters(tmp_path / "batch-1.png")["image_index"] == 1


def test_existing_output_is_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["generate", "a", "-o", str(out), *TINY])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"precious"
    assert run(["generate", "a", "-o", str(out), "--overwrite", *TINY]).exit_code == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize("args,message", [
    (["--width", "100"], "width=100 is not supported: sizes are ints, multiples of 8 from 64 to 2048; "
                         "the nearest are 96 and 104."),
    (["--steps", "0"], "num_inference_steps=0"),
    (["--guidance", "-1"], "guidance_scale=-1"),
    (["-o", "/no/such/dir/x.png"], "does not exist"),
    (["-o", "x.jpg"], "must end in .png"),
    (["--cfg-cutoff", "2"], "cfg_cutoff_step_ratio=2"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    base = [*TINY, "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(main, ["generate", "a", *base, *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not list(tmp_path.glob("*.png"))


def test_too_long_a_prompt_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["generate", "word " * 1501, *TINY, "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "longer than 20 chunks of 75 tokens" in result.output


def test_img2img_and_inpainting_from_the_cli(tmp_path):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.fromarray(np.full((64, 128, 3), 90, np.uint8)).save(init)
    mask = np.zeros((64, 128), np.uint8)
    mask[:, 64:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "inpainted.png"
    result = run(["generate", "a", "-o", str(out), "--init-image", str(init), "--mask",
                  str(tmp_path / "mask.png"), "--model", "tiny", "--precision", "float32", "--weights", "random",
                  "--steps", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (64, 128, 3)
    assert (pixels[:, :64] == 90).all()  # kept where the mask is black
    params = read_parameters(out)
    assert params["init_image"] == str(init) and params["strength"] is None


def test_strength_without_init_image_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["generate", "a", *TINY, "--strength", "0.5", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "init_image" in result.output
