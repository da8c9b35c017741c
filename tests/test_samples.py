"""The shipped sample depth maps exist, have their documented sizes, and re-render identically."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controlnet.control_images import load_depth
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.samples import sample_depth_path, sample_names, sample_prompt

SIZES = {"square": (512, 512), "wide": (1216, 512), "tall": (512, 768)}
SCENES = ("room", "street", "bust")


@pytest.fixture(scope="module")
def render_scenes():
    path = Path(__file__).resolve().parents[1] / "samples" / "render_scenes.py"
    spec = importlib.util.spec_from_file_location("render_scenes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_scene_ships_at_every_aspect():
    names = sample_names()
    assert names == sorted(f"{scene}_{aspect}" for scene in SCENES for aspect in SIZES)
    total_bytes = 0
    for name in names:
        path = sample_depth_path(name)
        total_bytes += path.stat().st_size
        with Image.open(path) as image:
            assert image.mode == "I;16"
            assert image.size == SIZES[name.rsplit("_", 1)[1]]
        assert len(sample_prompt(name)) > 20
    assert total_bytes < 2_000_000


def test_samples_are_near_bright_depth_maps():
    depth = load_depth(sample_depth_path("room_square"))
    assert depth.min() == 0 and depth.max() == 1
    middle_row = depth.shape[0] // 2
    assert depth[-1].mean() > 2 * depth[middle_row].mean()  # the floor in front is nearest


def test_unknown_sample_lists_the_names():
    with pytest.raises(InvalidArgumentError, match="no sample named 'moon'.*bust_square"):
        sample_prompt("moon")


def test_rendering_reproduces_the_shipped_pixels(render_scenes, tmp_path):
    pixels = render_scenes.render_disparity_png("room", *SIZES["square"])
    Image.fromarray(pixels).save(tmp_path / "room_square.png")
    with Image.open(tmp_path / "room_square.png") as rerendered, \
            Image.open(sample_depth_path("room_square")) as shipped:
        np.testing.assert_array_equal(np.asarray(rerendered), np.asarray(shipped))


def test_prompts_json_is_what_the_script_writes(render_scenes):
    shipped = json.loads(sample_depth_path("room_square").parents[1].joinpath(
        "prompts.json").read_text())
    assert shipped == render_scenes.sample_index()
