"""The aspect-ratio study: ratio parsing and sizes, the study on the tiny family, writers, CLI."""

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from controlnet.control_images import depth_to_control, load_depth
from controlnet.sizing import MAX_ASPECT_RATIO
from kcv_sd import cli_study, study
from kcv_sd.config import CONTROLNET_TINY
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.png import read_parameters
from kcv_sd.samples import sample_depth_path

SMALL_BUDGET = 128 * 128  # the least that native sizing accepts: fast images
ARGS = dict(steps=1, seed=0, pixel_budget=SMALL_BUDGET)


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_pipeline):
    return study.resolve_controlnet(tiny_pipeline, "random", seed=1)


@pytest.fixture(scope="module")
def records(tiny_pipeline, tiny_controlnet):
    return study.aspect_ratio_study(tiny_pipeline, _room(), "a room", "1:1,2:1", tiny_controlnet, **ARGS)


def _room():
    return sample_depth_path("room_wide")


def test_ratios_parse():
    assert study.parse_ratios("1:1, 3:2,21:9") == [(1, 1), (3, 2), (21, 9)]
    assert study.parse_ratios(["16:9"]) == [(16, 9)]


@pytest.mark.parametrize("text,match", [
    ("3x2", "not W:H"), ("3:", "not W:H"), ("-3:2", "not W:H"), ("1.5:1", "not W:H"),
    ("0:1", "zero side"), ("5:1", "beyond the 4:1 limit"), ("1:1,2:1,1:1", "1:1 given twice"),
    ("", "not W:H"), ([], "no ratios"),
])
def test_bad_ratios(text, match):
    with pytest.raises(InvalidArgumentError, match=match):
        study.parse_ratios(text)


@pytest.mark.parametrize("ratio", ["1:1", "3:2", "2:3", "16:9", "9:16", "21:9", "4:1", "1:4"])
def test_sizes_at_the_default_budget(ratio):
    (w, h), = study.parse_ratios(ratio)
    width, height = study.ratio_size((w, h))
    assert width % 8 == 0 and height % 8 == 0
    assert width * height <= 512 * 512
    assert abs(math.log(width / height / (w / h))) < 0.02  # 21:9 is the worst: 776x336
    assert max(width / height, height / width) <= MAX_ASPECT_RATIO
    if ratio == "1:1":
        assert (width, height) == (512, 512)


def test_sizes_are_native_sizing_of_the_ratio():
    assert study.ratio_size((21, 9)) == (776, 336)  # 2.31 for 2.33: the nearest snap in budget
    assert study.ratio_size((16, 9)) == (680, 384)


def test_random_controlnet_matches_the_family(tiny_pipeline, tiny_controlnet):
    assert tiny_controlnet.config == CONTROLNET_TINY
    assert any(np.abs(w).max() > 0 for w in tiny_controlnet.model().get_weights())


def test_study_records(records):
    assert [(r.ratio, r.width, r.height) for r in records] == [("1:1", 128, 128), ("2:1", 176, 88)]
    for record in records:
        assert record.image.size == (record.width, record.height)
        assert record.first_call_s > 0 and record.latency_s > 0
        assert 0 <= record.edge_f1 <= 1 and record.depth_correlation is None
        assert set(record.row()) == set(study.RECORD_KEYS)


def test_stub_depth_estimator_gives_a_correlation(tiny_pipeline, tiny_controlnet):
    seen = []

    def brightness(image):
        seen.append(np.shape(image))
        return np.asarray(image, np.float32).mean(axis=-1)[::2, ::2]  # half size: resized back

    records = study.aspect_ratio_study(tiny_pipeline, _room(), "a room", ["2:1"], tiny_controlnet,
                                       depth_estimator=brightness, **ARGS)
    assert seen == [(88, 176, 3)]
    assert -1 <= records[0].depth_correlation <= 1


def test_depth_correlation():
    ramp = np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(32, 64)
    assert study.depth_correlation(ramp, ramp) == pytest.approx(1)
    assert study.depth_correlation(ramp, 1 - ramp[::2, ::2]) == pytest.approx(-1, abs=1e-2)
    assert math.isnan(study.depth_correlation(ramp, np.zeros((32, 64))))
    with pytest.raises(InvalidArgumentError, match="depth"):
        study.depth_correlation(ramp, np.zeros((32, 64, 3)))


def test_native_sizing_is_refused(tiny_pipeline, tiny_controlnet):
    with pytest.raises(InvalidArgumentError, match="use one of crop, pad, resize"):
        study.aspect_ratio_study(tiny_pipeline, _room(), "a", "1:1", tiny_controlnet, sizing="native")


def test_writers(records, tmp_path):
    study.write_contact_sheet(records, tmp_path / "sheet.png")
    study.write_records(records, tmp_path / "s.csv", tmp_path / "s.json", {"prompt": "a room", "seed": 0})
    assert (tmp_path / "sheet.png").stat().st_size > 0
    with open(tmp_path / "s.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["ratio"] for row in rows] == ["1:1", "2:1"] and tuple(rows[0]) == study.RECORD_KEYS
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["parameters"] == {"prompt": "a room", "seed": 0}
    assert [tuple(r) for r in written["records"]] == [study.RECORD_KEYS] * 2
    assert study.panel_title(records[0]).startswith("1:1 128x128 | ")


def test_json_has_no_infinities(records, tmp_path):
    edgeless = [study.RatioRecord(**{**records[0].row(), "chamfer_px": math.inf}, image=records[0].image)]
    study.write_records(edgeless, tmp_path / "s.csv", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["records"][0]["chamfer_px"] is None


CLI = ["aspect-ratio", "--model", "tiny", "--precision", "float32", "--weights", "random", "--steps", "1",
       "--pixel-budget", str(SMALL_BUDGET), "--ratios", "1:1,1:2"]


def test_cli_writes_the_study(tiny_pipeline, tiny_controlnet, tmp_path, monkeypatch):
    # The session's pipeline and ControlNet: no second tracing of the tiny models.
    monkeypatch.setattr(cli_study, "get_pipeline", lambda *args: tiny_pipeline)
    monkeypatch.setattr(study, "resolve_controlnet", lambda *args: tiny_controlnet)
    result = CliRunner().invoke(cli_study.study, [*CLI, "--controlnet", "random", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("edge F1") == 2
    names = {"contact_sheet.png", "study.csv", "study.json", "ratio_1-1.png", "ratio_1-2.png"}
    assert {path.name for path in tmp_path.iterdir()} == names
    parameters = json.loads((tmp_path / "study.json").read_text())["parameters"]
    assert parameters["controlnet_weights"] == "random" and parameters["weights"] == "random"
    assert parameters["control"].endswith("room_wide.png") and parameters["prompt"]
    assert read_parameters(tmp_path / "ratio_1-2.png")["height"] == 176


def test_cli_estimates_depth_from_a_photo_and_scores_it(tiny_pipeline, tiny_controlnet, tmp_path,
                                                         monkeypatch):
    def brightness(image):
        return np.asarray(image, np.float32).mean(axis=-1) / 255

    photo = tmp_path / "photo.png"
    Image.fromarray(depth_to_control(load_depth(_room()))).save(photo)
    monkeypatch.setattr(cli_study, "get_pipeline", lambda *args: tiny_pipeline)
    monkeypatch.setattr(study, "resolve_controlnet", lambda *args: tiny_controlnet)
    monkeypatch.setattr(cli_study, "load_depth_estimator", lambda model_id: brightness)
    result = CliRunner().invoke(cli_study.study, [
        *CLI, "--controlnet", "random", "--control", str(photo), "--prompt", "a room",
        "--estimate-depth", "--depth-estimator", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "study.json").read_text())
    assert written["parameters"]["depth_model"] == "Intel/dpt-hybrid-midas"
    assert all(-1 <= record["depth_correlation"] <= 1 for record in written["records"])


def test_cli_refuses_to_overwrite(tmp_path):
    (tmp_path / "study.csv").write_text("kept")
    result = CliRunner().invoke(cli_study.study, [*CLI, "--controlnet", "random", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "study.csv already exists: pass --overwrite" in result.output
    assert (tmp_path / "study.csv").read_text() == "kept"


@pytest.mark.parametrize("extra,match", [
    (["--controlnet", "random", "--ratios", "9:1"], "beyond the 4:1 limit"),
    ([], "--model tiny needs --controlnet"),
    (["--controlnet", "random", "--control", "depth.png"], "--prompt is required with --control"),
    (["--controlnet", "random", "--estimate-depth"], "--estimate-depth needs --control"),
    (["--controlnet", "random", "--pixel-budget", "1000"], "pixel budget 1000"),
    (["--controlnet", "random", "--control", "missing.png", "--prompt", "a"], "missing.png does not exist"),
])
def test_cli_errors_are_one_line(tmp_path, extra, match):
    result = CliRunner().invoke(cli_study.study, [*CLI, "--output-dir", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert match in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
