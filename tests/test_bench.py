"""Tests for kcv-bench: one real tiny run in fresh processes, plus its pure parts.

No assertion here is about how fast anything is: only that the right things
were measured, in the right processes, and recorded.
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from click.testing import CliRunner

from bench import configs
from bench.ablation import LEVERS
from bench.benchmarks_md import as_text, render
from bench.cli import main
from bench.configs import Config, Run, Workload, emulated_precisions, parse_configs, parse_peers, plan_runs
from bench.flops import controlnet_flops, unet_flops
from bench.interleaved import interleaved_pairs, round_orders, run_interleaved, summarize_pair
from bench.launch import GRAPH_CACHE_VARIABLE, cpu_snapshot, fresh_memory_rate, other_load, run_worker
from bench.outputs import write_files
from bench.records import build_record, graph_cache_state, precision_note, skipped_record
from bench.table import cold_rows, interleaved_rows
from bench.targets import target_rows
from kcv_sd import routing
from kcv_sd.config import ControlNetConfig, UNetConfig
from kcv_sd.controlnet import ControlNet
from kcv_sd.precision import PRECISIONS
from kcv_sd.unet import UNet

# Two levels, attention on the lower one, one resblock per level down.
HAND_CONFIG = UNetConfig(block_channels=(4, 8), attention_levels=(False, True), layers_per_block=1,
                         num_heads=2, context_dim=6, timestep_dim=4, time_embed_dim=8,
                         latent_channels=4, norm_groups=2)


def test_flops_match_a_hand_count():
    # latent 4x4 (2x2 on level 1), batch 1, 3 context tokens; 2 FLOPs per multiply-add.
    conv3 = 2 * 9  # per output pixel, per input channel, per output channel
    transformer_2x2 = (
        2 * (2 * 4 * 8 * 8)  # proj_in, proj_out: 1x1 convs over 4 pixels
        + 4 * (2 * 4 * 8 * 8) + 2 * 2 * 4 * 4 * 8  # self-attention: q, k, v, out; scores and values
        + 2 * (2 * 4 * 8 * 8) + 2 * (2 * 3 * 6 * 8) + 2 * 2 * 4 * 3 * 8  # cross: q, out; k, v; matmuls
        + 2 * 4 * 8 * 64 + 2 * 4 * 32 * 8  # GEGLU 8 -> 64, dense 32 -> 8
    )
    expected = (
        2 * 4 * 8 + 2 * 8 * 8  # timestep dense layers
        + conv3 * 16 * 4 * 4  # conv_in
        + 2 * conv3 * 16 * 4 * 4 + 2 * 8 * 4  # level 0 resblock 4 -> 4, with its embedding projection
        + conv3 * 4 * 4 * 4  # stride-2 downsample, 2x2 output
        + conv3 * 4 * 4 * 8 + 2 * 8 * 8 + conv3 * 4 * 8 * 8 + 2 * 4 * 4 * 8  # level 1 resblock 4 -> 8
        + transformer_2x2
        + 2 * (2 * conv3 * 4 * 8 * 8 + 2 * 8 * 8) + transformer_2x2  # middle
        + conv3 * 4 * 16 * 8 + 2 * 8 * 8 + conv3 * 4 * 8 * 8 + 2 * 4 * 16 * 8 + transformer_2x2  # up 16 -> 8
        + conv3 * 4 * 12 * 8 + 2 * 8 * 8 + conv3 * 4 * 8 * 8 + 2 * 4 * 12 * 8 + transformer_2x2  # up 12 -> 8
        + conv3 * 16 * 8 * 8  # upsample conv at 4x4
        + conv3 * 16 * 12 * 4 + 2 * 8 * 4 + conv3 * 16 * 4 * 4 + 2 * 16 * 12 * 4  # up 12 -> 4
        + conv3 * 16 * 8 * 4 + 2 * 8 * 4 + conv3 * 16 * 4 * 4 + 2 * 16 * 8 * 4  # up 8 -> 4
        + conv3 * 16 * 4 * 4  # conv_out
    )
    assert expected == 173440
    assert unet_flops(HAND_CONFIG, 4, 4, batch=1, context_length=3) == expected
    assert unet_flops(HAND_CONFIG, 4, 4, batch=3, context_length=3) == 3 * expected


def _graph_matmul_flops(config, height, width, batch, context_length, controlnet=None):
    """FLOPs of every Conv2D, MatMul and BatchMatMul in the traced UNet graph
    (or, given a `ControlNetConfig` for `config`, its ControlNet's step model).

    Traced with static routes, as the pipeline does: run-time route choices
    (`tf.cond`) would hide the matmuls inside branch functions that this walk
    of the top-level graph does not enter."""
    specs = {"latent": tf.TensorSpec((batch, height, width, config.latent_channels)),
             "timestep_embedding": tf.TensorSpec((batch, config.timestep_dim)),
             "context": tf.TensorSpec((batch, context_length, config.context_dim))}
    if controlnet is None:
        model = UNet(config, initializer="zeros").model()
    else:
        model = ControlNet(controlnet, initializer="zeros").step_model()
        specs["control_embedding"] = tf.TensorSpec((batch, height, width, config.block_channels[0]))

    def traced(inputs):
        with routing.static_routes(batch, height, width, context_length):
            return model(inputs)

    graph = tf.function(traced).get_concrete_function(specs).graph
    total = 0
    for op in graph.get_operations():
        out = op.outputs[0].shape.as_list() if op.outputs else []
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            total += 2 * out[0] * out[1] * out[2] * out[3] * kh * kw * cin
        elif op.type == "MatMul":
            a = op.inputs[0].shape.as_list()
            total += 2 * out[0] * out[1] * (a[0] if op.get_attr("transpose_a") else a[1])
        elif op.type.startswith("BatchMatMul"):
            a = op.inputs[0].shape.as_list()
            inner = a[-2] if op.get_attr("adj_x") else a[-1]
            total += 2 * inner * int(tf.reduce_prod(out))
    return total


@pytest.mark.parametrize("config", [HAND_CONFIG, UNetConfig(block_channels=(8, 16, 16, 16), num_heads=2,
                                                            context_dim=16, timestep_dim=8,
                                                            time_embed_dim=16, norm_groups=4)])
@pytest.mark.parametrize("height, width", [(16, 16), (9, 13)])  # 9x13: odd at every level
def test_flops_match_the_traced_graph(config, height, width):
    assert (unet_flops(config, height, width, batch=2, context_length=77)
            == _graph_matmul_flops(config, height, width, 2, 77))


def test_controlnet_flops_match_the_traced_step_model():
    config = UNetConfig(block_channels=(8, 16, 16, 16), num_heads=2, context_dim=16, timestep_dim=8,
                        time_embed_dim=16, norm_groups=4)
    controlnet = ControlNetConfig(unet=config)
    assert (controlnet_flops(controlnet, 9, 13, batch=2, context_length=77)  # 9x13: odd at every level
            == _graph_matmul_flops(config, 9, 13, 2, 77, controlnet))


def test_config_grids():
    assert parse_configs("xla=off,on;precision=float32") == [Config(False, "float32"), Config(True, "float32")]
    assert len(parse_configs("all")) == 12 and sum(c.controlnet for c in parse_configs("all")) == 6
    assert parse_configs("xla=off;precision=float32;controlnet=off,on") == [
        Config(False, "float32"), Config(False, "float32", controlnet=True)]
    union = parse_configs("xla=on;precision=float32 + xla=off,on;precision=float32,mixed_bfloat16")
    assert union == [Config(True, "float32"), Config(False, "float32"), Config(False, "mixed_bfloat16"),
                     Config(True, "mixed_bfloat16")]
    assert parse_configs("xla=off;precision=bfloat16") == [Config(False, "bfloat16")]
    for bad in ("xla=maybe", "speed=fast", "xla=", "controlnet=depth", "precision=float64"):
        with pytest.raises(ValueError):
            parse_configs(bad)
    assert parse_peers("none") == []
    with pytest.raises(ValueError):
        parse_peers("kerascv,onnx")


def test_missing_peer_is_planned_as_skipped(monkeypatch):
    monkeypatch.setitem(configs.PEER_MODULES, "diffusers", ("no_such_module_for_kcv_bench",))
    workload = Workload("sd15", 128, 128, steps=1, batch=1, repeats=1)
    runs = plan_runs([Config(False, "float32")], ["diffusers"], workload)
    assert [(r.system, r.skip_reason) for r in runs] == [
        ("kcv-sd", None), ("diffusers", "not installed (no_such_module_for_kcv_bench)")]


def test_peers_run_once_per_precision_and_controlnet_setting():
    workload = Workload("sd15", 128, 128, steps=1, batch=1, repeats=1)
    configs = parse_configs("xla=off,on;precision=float32;controlnet=off,on")
    runs = plan_runs(configs, ["kerascv"], workload)
    peers = [(r.precision, r.controlnet, r.skip_reason) for r in runs if r.system == "kerascv"]
    assert peers[0][:2] == ("float32", False) and peers[0][2] in (None, "not installed (keras_cv)")
    assert peers[1] == ("float32", True, "KerasCV has no ControlNet")
    assert len(peers) == 2


def test_a_presets_16_bit_precision_that_this_cpu_emulates_is_planned_as_skipped():
    """As precision="auto" does, a preset leaves out what the CPU emulates: kcv-sd and its peers alike, asking the
    device kind only when the flags lack a type, and never on a GPU or TPU machine."""
    grid = parse_configs("xla=off;precision=float32,bfloat16,mixed_float16")

    def never():
        raise AssertionError("asked for the device kind with native instructions")

    assert emulated_precisions(grid, {"amx_bf16", "amx_fp16"}, never) == {}
    assert emulated_precisions(grid, set(), lambda: "gpu") == {}
    skipped = emulated_precisions(grid, {"avx512f", "avx512_bf16"}, lambda: "cpu")
    assert list(skipped) == ["mixed_float16"] and "emulates float16" in skipped["mixed_float16"]
    skipped = emulated_precisions(grid, {"avx512f"}, lambda: "cpu")
    assert list(skipped) == ["bfloat16", "mixed_float16"]
    assert "no avx512_bf16 or amx_bf16" in skipped["bfloat16"] and "--configs runs it anyway" in skipped["bfloat16"]

    workload = Workload("sd15", 128, 128, steps=1, batch=1, repeats=1)
    runs = plan_runs(parse_configs("xla=off;precision=float32,bfloat16"), ["kerascv"], workload,
                     {"bfloat16": skipped["bfloat16"]})
    planned = {(r.system, r.precision): r.skip_reason for r in runs}
    assert planned[("kcv-sd", "float32")] is None and planned[("kcv-sd", "bfloat16")] == skipped["bfloat16"]
    assert planned[("kerascv", "bfloat16")] == skipped["bfloat16"]
    records = [_row("kcv-sd", "float32", warm=5.0, step=2.0, cold=30.0),
               _row("kerascv", "float32", warm=10.0, step=4.0, cold=40.0),
               *(skipped_record(r) for r in runs if r.precision == "bfloat16")]
    _, rows = target_rows(records, 2)
    assert rows and all("bfloat16" not in row[0] for row in rows)


def test_precision_label_comes_from_measured_matmuls():
    probe = {"matmul": {"flops_per_s_by_dtype": {"float32": 100.0, "float16": 20.0, "bfloat16": 300.0}}}
    assert "no fast float16 on this device" in precision_note("mixed_float16", probe)
    assert precision_note("mixed_bfloat16", probe) is None
    assert precision_note("float32", probe) is None


def test_cold_start_split_and_host_overhead():
    raw = {"status": "ok", "pid": 1, "spawned_at": 100.0, "started_at": 100.1, "import_s": 2.0,
           "build_s": 3.0, "first_call_s": 10.0, "first_image_at": 115.2, "warm_s": [4.0, 6.0, 5.0],
           "stages": [{"text_encoding_s": 0.5, "step_s": [1.0, 1.0], "decode_s": 1.5}], "notes": []}
    workload = Workload("tiny", 64, 64, steps=2, batch=1, repeats=3)
    record = build_record(Run("kcv-sd", False, "float32"), raw, workload, 2e9, None)
    assert record["cold"]["total_s"] == pytest.approx(15.2)
    assert record["cold"]["interpreter_s"] == pytest.approx(0.1)
    assert record["cold"]["first_call_overhead_s"] == pytest.approx(5.0)
    assert record["warm"]["median_s"] == 5.0 and record["warm"]["runs"] == 3
    assert record["stages"]["host_overhead_s"] == pytest.approx(5.0 - 0.5 - 2 * 1.0 - 1.5)
    assert record["unet"]["achieved_flops_per_s"] == pytest.approx(2e9)


def test_controlnet_step_ratio_and_unet_flops_use_the_plain_step():
    raw = {"status": "ok", "pid": 1, "spawned_at": 100.0, "started_at": 100.1, "import_s": 2.0,
           "build_s": 3.0, "first_call_s": 10.0, "first_image_at": 115.2, "warm_s": [5.0], "notes": [],
           "peak_rss_bytes": 3 * 2**30,
           "stages": [{"text_encoding_s": 0.5, "control_embedding_s": 0.25, "step_s": [1.3, 1.2],
                       "unet_step_s": [1.0, 1.0], "controlnet_s": [0.3, 0.25], "decode_s": 1.5}]}
    workload = Workload("tiny", 64, 64, steps=2, batch=1, repeats=1)
    probe = {"matmul": {"flops_per_s_by_dtype": {"float32": 4e9, "float16": 1e9, "bfloat16": 8e9}},
             "controlnet_step_flops": 0.6e9}
    record = build_record(Run("kcv-sd", False, "mixed_bfloat16", controlnet=True), raw, workload, 2e9, probe)
    assert record["controlnet"] is True
    assert record["stages"]["step_s"] == pytest.approx(1.25)
    assert record["stages"]["controlnet_s"] == pytest.approx(0.275)
    assert record["stages"]["controlnet_step_ratio"] == pytest.approx(1.25)
    assert record["stages"]["controlnet_flop_ratio"] == pytest.approx(1.3)
    assert record["stages"]["host_overhead_s"] == pytest.approx(5.0 - 0.5 - 0.25 - 2 * 1.25 - 1.5)
    assert record["unet"]["achieved_flops_per_s"] == pytest.approx(2e9)
    assert record["unet"]["fraction_of_same_dtype_matmul"] == pytest.approx(0.25)  # bfloat16's rate
    assert record["memory"] == {"peak_rss_bytes": 3 * 2**30, "peak_rss_images_bytes": None, "peak_device_bytes": None}


def test_a_worker_that_dies_is_recorded(tmp_path):
    result = run_worker({}, tmp_path / "log", lambda line: None, timeout_s=60, module="bench.no_such_worker")
    assert result["status"] == "failed"
    assert "exited with code" in result["error"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real tiny benchmark: a good configuration, an invalid one, a peer to skip."""
    folder = tmp_path_factory.mktemp("bench")
    previous = os.getcwd()
    os.chdir(folder)
    # float64 is refused up front (test_bad_values_are_refused_before_any_process_starts); let it
    # through here so that one worker fails for real and the report must record it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configs, "_precisions", lambda: (*PRECISIONS, "float64"))
        result = CliRunner().invoke(main, [
            "--tiny", "--configs", "xla=off;precision=float32,float64 + xla=off;precision=float32;controlnet=on",
            "--peers", "kerascv", "--ablation",
            "--repeats", "2", "--output", "out", "--write-benchmarks-md",
        ])
    os.chdir(previous)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "results.json").read_text())
    return folder, result.output, report


def _records(report):
    return {(r["system"], r["precision"]) + (("controlnet",) if r["controlnet"] else ()): r
            for r in report["results"]}


def test_report_schema(tiny_run):
    _, _, report = tiny_run
    assert {"schema_version", "command", "workload", "environment", "machine", "unet_step_flops",
            "results", "published"} <= set(report)
    env = report["environment"]
    assert env["weights"] == "random" and report["workload"]["weights"] == "random"
    assert {"tensorflow", "keras", "keras-cv", "torch"} <= set(env["versions"])
    assert env["cpu_count"] and env["devices"]
    assert report["machine"]["matmul"]["flops_per_s_by_dtype"]["float32"] > 0
    assert report["machine"]["matmul"]["compare_sizes"] == [1024, 2048]
    assert set(report["machine"]["matmul"]["flops_per_s_by_dtype"]) == {"float32", "float16", "bfloat16"}
    good = _records(report)[("kcv-sd", "float32")]
    assert good["status"] == "ok"
    assert {"interpreter_s", "import_s", "build_s", "first_call_s", "first_call_overhead_s",
            "generate_s", "total_s"} <= set(good["cold"])
    assert {"median_s", "min_s", "max_s", "q1_s", "q3_s"} <= set(good["warm"])
    assert {"text_encoding_s", "step_s", "decode_s", "host_overhead_s"} <= set(good["stages"])
    assert good["unet"]["flops_per_step"] == report["unet_step_flops"] > 0
    assert len(report["published"]["rows"]) == 2
    assert 2**20 < good["memory"]["peak_rss_images_bytes"] <= good["memory"]["peak_rss_bytes"]
    assert good["other_load_cores"] >= 0 and report["ablation"]["other_load_cores"] >= 0  # Linux: /proc/stat


def test_controlnet_configuration_times_unet_and_controlnet_apart(tiny_run):
    folder, output, report = tiny_run
    records = _records(report)
    controlled = records[("kcv-sd", "float32", "controlnet")]
    assert controlled["status"] == "ok", controlled["error"]
    stages = controlled["stages"]
    assert stages["unet_step_s"] > 0 and stages["controlnet_s"] > 0
    assert stages["controlnet_step_ratio"] == pytest.approx(stages["step_s"] / stages["unet_step_s"])
    assert "unet_step_s" not in records[("kcv-sd", "float32")]["stages"]
    assert records[("kerascv", "float32", "controlnet")]["error"] == "KerasCV has no ControlNet"
    markdown = (folder / "BENCHMARKS.md").read_text()
    controlnet_table = markdown.split("### ControlNet step cost")[1].split("##")[0]
    assert f"{stages['controlnet_step_ratio']:.2f}x" in controlnet_table
    assert stages["control_embedding_s"] > 0 and f"{stages['controlnet_flop_ratio']:.2f}x" in controlnet_table
    assert 1 < stages["controlnet_flop_ratio"] < 2
    assert "ControlNet step cost" in output


def test_cold_runs_are_fresh_processes(tiny_run):
    _, _, report = tiny_run
    pids = [r["pid"] for r in report["results"] if r["pid"] is not None]
    assert len(pids) == 3 and len(set(pids)) == 3
    assert os.getpid() not in pids and report["runner_pid"] not in pids


def test_a_row_that_wrote_graphs_starts_again_with_the_graph_cache_filled(tiny_run):
    folder, _, report = tiny_run
    records = _records(report)
    plain, controlled = records[("kcv-sd", "float32")], records[("kcv-sd", "float32", "controlnet")]
    # The ControlNet row found the text encoder's and decoder's graphs of the plain row, not its step's.
    assert plain["cold"]["graph_cache"] == "empty" and controlled["cold"]["graph_cache"] == "partly filled"
    for record in (plain, controlled):
        filled = record["cold_filled"]
        assert filled["graph_cache"] == "filled" and filled["total_s"] > 0
        # Its overhead is over its own second image, not over the first process's images.
        assert filled["generate_s"] != record["warm"]["median_s"]
        assert filled["first_call_overhead_s"] == pytest.approx(filled["first_call_s"] - filled["generate_s"])
    assert records[("kcv-sd", "float64")]["cold_filled"] is None
    cold_table = (folder / "BENCHMARKS.md").read_text().split("### Cold start, part by part")[1].split("\n##")[0]
    assert cold_table.count("| filled |") == 2 and cold_table.count("| empty |") == 1


def test_the_bench_names_kcv_sds_graph_cache_variable():
    from kcv_sd.cache import GRAPH_CACHE_VARIABLE as kcv_sds

    assert GRAPH_CACHE_VARIABLE == kcv_sds


def test_graph_cache_state_names_what_a_process_found():
    assert graph_cache_state([]) is None and graph_cache_state(["uncached"]) is None
    assert graph_cache_state(["traced", "traced"]) == "empty"
    assert graph_cache_state(["cache", "traced"]) == "partly filled"
    assert graph_cache_state(["cache", "cache", "uncached"]) == "filled (1 of 3 graphs not kept)"


def test_warm_up_is_excluded(tiny_run):
    _, _, report = tiny_run
    good = _records(report)[("kcv-sd", "float32")]
    assert good["warm"]["runs"] == 2 and len(good["warm"]["times_s"]) == 2
    assert good["warm"]["warmup_runs_excluded"] == 1
    assert good["stages"]["passes"] == 2


def test_failing_configuration_is_recorded_and_the_run_goes_on(tiny_run):
    _, output, report = tiny_run
    records = _records(report)
    bad = records[("kcv-sd", "float64")]
    assert bad["status"] == "failed" and "float64" in bad["error"]
    assert bad["failed_during"] == "build"
    assert records[("kcv-sd", "float32")]["status"] == "ok"
    assert records[("kerascv", "float32")]["status"] == "skipped"
    assert "failed: InvalidArgumentError" in output


def test_files_are_written(tiny_run):
    folder, output, report = tiny_run
    out = folder / "out"
    assert (out / "cold_warm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.csv") as rows:
        assert len(list(csv.DictReader(rows))) == len(report["results"])
    markdown = (folder / "BENCHMARKS.md").read_text()
    assert "Published figures (not measured here)" in markdown and "random" in markdown
    assert "cold start s" in output and "Published (not measured here)" in output


def test_sizes_follow_kcv_sds_rule_before_any_process_starts(tmp_path):
    result = CliRunner().invoke(main, ["--tiny", "--width", "100", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "width=100 is not supported" in result.output and "the nearest are 96 and 104" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--configs", "precision=float64"], "precision='float64': use float32 or mixed_float16"),
    (["--configs", "xla=maybe"], "xla='maybe': use off or on"),
    (["--steps", "0"], "--steps"),
    (["--steps", "1001"], "--steps"),
    (["--repeats", "0"], "--repeats"),
    (["--timeout", "0"], "--timeout"),
    (["--output", "/proc/kcv-bench"], "cannot write to /proc/kcv-bench"),
])
def test_bad_values_are_refused_before_any_process_starts(tmp_path, args, message):
    args = ["--output", str(tmp_path / "out"), *args] if "--output" not in args else args
    result = CliRunner().invoke(main, ["--tiny", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("Error") == 1
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_report_whose_every_row_failed_is_still_written(tiny_run, tmp_path):
    _, _, report = tiny_run
    failed = [{**record, "status": "failed", "error": "boom", "cold": None, "warm": None, "stages": None}
              for record in report["results"]]
    report = {**report, "results": failed}
    write_files(report, tmp_path, "all failed")
    assert (tmp_path / "cold_warm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["results"][0]["status"] == "failed"
    assert "failed" in as_text(report) and "failed" in render(report)


def test_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for option in ("--quick", "--tiny", "--preset", "--configs", "--peers", "--repeats", "--output",
                   "--write-benchmarks-md", "[default: sd512]"):
        assert option in " ".join(result.output.split())  # as read, whatever the wrapping


def test_ablation_times_every_lever_against_its_baseline(tiny_run):
    folder, _, report = tiny_run
    ablation = report["ablation"]
    assert ablation["status"] == "ok", ablation.get("error")
    rows = {row["lever"]: row for row in ablation["rows"]}
    assert list(rows) == [lever.name for lever in LEVERS]
    assert rows["baseline"]["ratio_to_baseline"] == 1.0
    assert all(len(row["times_s"]) == report["workload"]["repeats"] for row in rows.values())
    window = rows["ControlNet window end 0.5"]
    assert window["ratio_to_baseline"] == pytest.approx(
        window["median_s"] / rows["ControlNet, every step"]["median_s"])
    assert "## Ablation: one lever at a time" in (folder / "BENCHMARKS.md").read_text()


def _row(system, precision, warm, step, cold, controlnet=False, unet_step=None, **extra):
    stages = {"step_s": step}
    if unet_step:
        stages.update(unet_step_s=unet_step, controlnet_step_ratio=step / unet_step)
    return {"system": system, "xla": False, "precision": precision, "controlnet": controlnet, "status": "ok",
            "warm": {"median_s": warm}, "stages": stages, "cold": {"total_s": cold, "first_call_overhead_s": 2.0},
            "unet": {"flops_per_step": 1e9}, **extra}


def test_targets_compare_best_rows_in_the_same_precision():
    records = [
        _row("kcv-sd", "float32", warm=8.0, step=3.0, cold=60.0),
        _row("kcv-sd", "float32", warm=6.0, step=2.0, cold=70.0),  # the best warm row
        _row("kcv-sd", "float32", warm=9.0, step=2.6, cold=80.0, controlnet=True, unet_step=2.0,
             memory={"peak_rss_images_bytes": 12 * 2**30}),
        _row("kerascv", "float32", warm=10.0, step=4.0, cold=100.0),
        _row("kerascv", "bfloat16", warm=5.0, step=2.0, cold=100.0),
        _row("diffusers", "mixed_bfloat16", warm=5.0, step=2.0, cold=40.0),
    ]
    _, rows = target_rows(records, workload_steps=2, matmul_rates={"float32": 1e9, "bfloat16": 1e12})
    by_name = {row[0].split(" (")[0]: row for row in rows}
    assert by_name["warm image vs KerasCV, equal steps"][3:] == ["0.60x", "<= 0.60x", "met"]
    # (6 + 18 * 2) / (10 + 48 * 4) = 42 / 202
    assert by_name["DPM++ 2M 20 steps vs KerasCV DDIM 50"][3] == f"{42 / 202:.2f}x"
    assert by_name["first-call overhead vs 3 s"][1:] == ["2.00", "3.00", "0.67x", "<= 1.00x", "met"]
    assert by_name["UNet+ControlNet step / UNet step"][3:] == ["1.30x", "<= 1.30x", "met"]
    assert by_name["peak RSS, images, with a ControlNet vs 10 GiB"][1:] == ["12.0", "10.0", "1.20x", "<= 1.00x",
                                                                            "missed"]
    assert by_name["UNet step FLOP/s / float32 matmul FLOP/s"][3:] == ["50%", ">= 95%", "missed"]
    assert by_name["warm image, best precision vs KerasCV's best"][0].endswith("(kcv-sd float32, KerasCV bfloat16; s)")
    assert by_name["warm image, best precision vs KerasCV's best"][3:] == ["1.20x", "<= 0.40x", "missed"]
    assert "warm image vs diffusers, equal steps" not in by_name  # no diffusers row in float32


def test_first_call_and_cold_start_targets_are_checked_with_the_graph_cache_empty_and_filled():
    ours = _row("kcv-sd", "float32", warm=6.0, step=2.0, cold=40.0)
    ours["cold"].update(graph_cache="empty", first_call_overhead_s=15.0)
    ours["cold_filled"] = {"total_s": 25.0, "first_call_overhead_s": 2.5, "graph_cache": "filled",
                           "other_load_cores": 0.5}  # another process ran beside it
    _, rows = target_rows([ours, _row("diffusers", "float32", warm=9.0, step=3.0, cold=30.0)], workload_steps=2)
    by_name = {row[0]: row[1:] for row in rows}
    assert by_name["first-call overhead vs 3 s (xla=off, float32, graph cache empty; s)"][-1] == "missed"
    assert by_name["first-call overhead vs 3 s (xla=off, float32, graph cache filled; s)"][-1] == "unreliable (load)"
    assert by_name["cold start vs diffusers (float32; s)"][2:] == ["1.33x", "<= 1.00x", "missed"]
    assert by_name["cold start, graph cache filled, vs diffusers (float32; s)"][2:] == ["0.83x", "<= 1.00x",
                                                                                         "unreliable (load)"]
    headers, table = cold_rows([ours])
    assert [row[headers.index("graph cache")] for row in table] == ["empty", "filled"]


def test_targets_against_diffusers_use_the_interleaved_pair():
    records = [_row("kcv-sd", "bfloat16", warm=1.0, step=0.3, cold=30.0),
               _row("diffusers", "bfloat16", warm=2.0, step=0.4, cold=15.0)]
    pair = {"precision": "bfloat16", "status": "ok", "rounds": 2,
            "systems": [{"system": "kcv-sd", "config": {"xla": False}}, {"system": "diffusers", "config": {}}],
            "warm": [{"median_s": 0.9, "min_s": 0.8, "max_s": 1.0}, {"median_s": 1.0, "min_s": 1.0, "max_s": 1.1}],
            "round_ratios": [0.8, 1.0], "ratio": 0.9}
    _, fresh = target_rows(records, workload_steps=2)
    assert [row[3] for row in fresh if "diffusers" in row[0]] == ["0.50x", "2.00x"]  # warm image, cold start
    _, rows = target_rows(records, workload_steps=2, interleaved=[pair])
    assert [row[:4] for row in rows if "diffusers" in row[0]][0] == [
        "warm image vs diffusers, equal steps, interleaved (bfloat16; s)", "0.90", "1.00", "0.90x"]
    _, failed = target_rows(records, workload_steps=2, interleaved=[{**pair, "status": "failed"}])
    assert [row[3] for row in failed if "diffusers" in row[0]][0] == "0.50x"
    assert interleaved_rows([{**pair, "other_load_cores": 0.04}])[1] == [[
        "bfloat16", "xla=off", "diffusers", "0.90 (0.80-1.00)", "1.00 (1.00-1.10)", "0.90x", "0.80-1.00x", "0.04",
        "ok"]]


def test_a_target_timed_beside_other_load_is_unreliable_and_keeps_its_ratio():
    memory = {"peak_rss_images_bytes": 4 * 2**30}
    peers = [_row("kerascv", "float32", warm=10.0, step=4.0, cold=40.0, other_load_cores=0.1),
             _row("diffusers", "float32", warm=10.0, step=4.0, cold=20.0, memory=memory)]  # None: no /proc/stat
    pair = {"precision": "float32", "status": "ok", "other_load_cores": 0.05,
            "systems": [{"system": "kcv-sd", "config": {"xla": False}}, {"system": "diffusers", "config": {}}],
            "warm": [{"median_s": 7.0}, {"median_s": 10.0}]}

    def status(load, pair_load=0.05):
        ours = _row("kcv-sd", "float32", warm=5.0, step=2.0, cold=30.0, memory=memory, other_load_cores=load)
        _, rows = target_rows([ours, *peers], 2, interleaved=[{**pair, "other_load_cores": pair_load}])
        return {row[0].split(" (")[0]: row[3:] for row in rows}

    loaded = status(0.9)
    assert loaded["warm image vs KerasCV, equal steps"] == ["0.50x", "<= 0.60x", "unreliable (load)"]
    assert loaded["cold start vs diffusers"] == ["1.50x", "<= 1.00x", "unreliable (load)"]
    assert loaded["warm image vs diffusers, equal steps, interleaved"][2] == "met"  # its pair ran quiet
    assert loaded["peak RSS, images, vs diffusers"] == ["1.00x", "<= 1.00x", "met"]  # load does not grow memory
    assert status(0.9, pair_load=0.3)["warm image vs diffusers, equal steps, interleaved"][2] == "unreliable (load)"
    for quiet in (None, 0.2):  # None: not measured (no /proc/stat), so judged
        assert status(quiet)["warm image vs KerasCV, equal steps"][2] == "met"
        assert status(quiet)["cold start vs diffusers"][2] == "missed"


def test_cold_figures_from_a_machine_slow_to_give_fresh_memory_are_unreliable():
    """A cold start allocates gigabytes: where first touches of memory crawl, its figures are not judged; warm
    figures still are, and a row without the measure is judged as before."""
    def status(rate):
        ours = _row("kcv-sd", "float32", warm=5.0, step=2.0, cold=30.0, fresh_memory_gib_s=rate)
        peers = [_row("kerascv", "float32", warm=10.0, step=4.0, cold=40.0),
                 _row("diffusers", "float32", warm=10.0, step=4.0, cold=20.0, fresh_memory_gib_s=5.0)]
        _, rows = target_rows([ours, *peers], 2)
        return {row[0].split(" (")[0]: row[5] for row in rows}

    slow = status(0.06)
    assert slow["cold start vs diffusers"] == "unreliable (slow fresh memory)"
    assert slow["first-call overhead vs 3 s"] == "unreliable (slow fresh memory)"
    assert slow["warm image vs KerasCV, equal steps"] == "met"
    for judged in (None, 0.5, 8.0):
        assert status(judged)["cold start vs diffusers"] == "missed"
        assert status(judged)["first-call overhead vs 3 s"] == "met"
    row = _row("kcv-sd", "float32", warm=5.0, step=2.0, cold=30.0, fresh_memory_gib_s=0.06)
    headers, rows = cold_rows([row, {**row, "fresh_memory_gib_s": None}])
    assert headers[-1] == "fresh memory GiB/s" and [r[-1] for r in rows] == ["0.06", "-"]


def test_fresh_memory_rate_touches_new_pages():
    rate = fresh_memory_rate(16 * 2**20)
    assert isinstance(rate, float) and rate > 0


SPIN = "import time\nend = time.{clock}() + {seconds}\nwhile time.{clock}() < end: pass"


def test_other_load_counts_other_processes_and_not_ours():
    """Our grandchild's busy second is ours; a busy process outside our tree (a shell's orphan) is other load."""
    if not os.path.exists("/proc/stat"):
        assert other_load(cpu_snapshot()) is None
        return
    start = cpu_snapshot()
    grandchild = SPIN.format(clock="process_time", seconds=1.0)  # one CPU second, however loaded the machine
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    subprocess.run([sys.executable, "-c", child], check=True)
    quiet, ours = other_load(start), cpu_snapshot()[2] - start[2]
    start = cpu_snapshot()
    subprocess.run(["sh", "-c", '"$0" -c "$1" &', sys.executable, SPIN.format(clock="time", seconds=2.0)], check=True)
    time.sleep(1.5)
    busy = other_load(start)
    assert ours >= 1.0
    assert 0.5 <= busy <= os.cpu_count() + 0.1
    assert quiet <= busy - 0.25  # were our second counted, the quiet interval would look as busy


def test_targets_against_openvino_in_float32_and_bfloat16_only():
    records = [_row("kcv-sd", precision, warm=1.0, step=0.3, cold=30.0)
               for precision in ("float32", "mixed_bfloat16", "bfloat16")]
    records += [_row("openvino", precision, warm=1.25, step=0.25, cold=20.0)
                for precision in ("float32", "mixed_bfloat16", "bfloat16")]
    pair = {"precision": "bfloat16", "status": "ok", "rounds": 2,
            "systems": [{"system": "kcv-sd", "config": {"xla": False}}, {"system": "openvino", "config": {}}],
            "warm": [{"median_s": 1.1}, {"median_s": 1.0}], "round_ratios": [1.1, 1.1], "ratio": 1.1}
    _, rows = target_rows(records, workload_steps=2, interleaved=[pair])
    assert [row[:4] + row[5:] for row in rows if "openvino" in row[0]] == [
        ["warm image vs openvino, equal steps (float32; s)", "1.00", "1.25", "0.80x", "met"],
        ["guided UNet step vs openvino (float32; s)", "0.30", "0.25", "1.20x", "missed"],
        ["warm image vs openvino, equal steps, interleaved (bfloat16; s)", "1.10", "1.00", "1.10x", "missed"],
        ["guided UNet step vs openvino (bfloat16; s)", "0.30", "0.25", "1.20x", "missed"]]


def test_interleaved_pairs_take_the_fastest_plain_kcv_sd_row_per_precision():
    runs = [Run("kcv-sd", False, "float32"), Run("kcv-sd", True, "float32"),
            Run("kcv-sd", False, "float32", controlnet=True), Run("kcv-sd", False, "bfloat16"),
            Run("diffusers", None, "float32"), Run("diffusers", None, "float32", controlnet=True),
            Run("diffusers", None, "bfloat16"), Run("kerascv", True, "float32")]
    warm = [2.0, 1.5, 1.0, None, 3.0, 3.0, 3.0, 3.0]  # the ControlNet row is fastest but not plain
    records = [{"status": "ok" if w else "failed", "warm": {"median_s": w} if w else None} for w in warm]
    assert interleaved_pairs(runs, records) == [(runs[1], runs[4])]  # no ok bfloat16 row of kcv-sd
    openvino = [Run("openvino", None, "float32"), Run("openvino", None, "bfloat16", skip_reason="not installed")]
    assert interleaved_pairs(runs + openvino, records + records[-2:]) == [(runs[1], runs[4]), (runs[1], openvino[0])]


def test_interleaved_rounds_flip_the_order_and_ratios_pair_rounds():
    assert round_orders(3) == [(0, 1), (1, 0), (0, 1)]
    summary = summarize_pair([[1.0, 3.0, 2.0], [2.0, 2.0, 5.0]])
    assert summary["round_ratios"] == [0.5, 1.5, 0.4]
    assert summary["ratio"] == 1.0 and summary["warm"][1]["median_s"] == 2.0


def _tiny_spec(precision):
    return {"system": "kcv-sd", "config": {"xla": False, "precision": precision, "controlnet": False},
            "workload": dataclasses.asdict(Workload("tiny", 64, 64, steps=1, batch=1, repeats=1)), "token_ids": None}


def test_interleaved_run_takes_images_in_turn_from_two_processes(tmp_path):
    lines = []
    result = run_interleaved([_tiny_spec("float32"), _tiny_spec("mixed_bfloat16")], 2, tmp_path / "log",
                             lines.append, timeout_s=600)
    assert result["status"] == "ok", result.get("error")
    assert [w["runs"] for w in result["warm"]] == [2, 2]
    assert len(result["round_ratios"]) == 2 and result["ratio"] > 0 and result["other_load_cores"] >= 0
    assert [line.split(":")[0] for line in lines if line.startswith("round")] == ["round 1/2", "round 2/2"]


def test_interleaved_run_records_a_worker_that_cannot_build(tmp_path):
    result = run_interleaved([_tiny_spec("float64"), _tiny_spec("float32")], 2, tmp_path / "log",
                             lambda line: None, timeout_s=600)
    assert result["status"] == "failed"
    assert result["error"].startswith("kcv-sd: ") and "float64" in result["error"]
    assert "Traceback" in (tmp_path / "log").read_text()
