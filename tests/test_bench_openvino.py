"""The OpenVINO peer of kcv-bench: planned as skipped without the `openvino` extra, and, with it, the adapter end to
end on tiny diffusers parts in this process (no benchmark subprocess), its images matching diffusers' own pipeline."""

import dataclasses
import importlib.util
import time

import numpy as np
import pytest

from bench import configs
from bench.configs import Config, Run, Workload, plan_runs
from bench.records import build_record

# Tiny diffusers parts: a one-level UNet, a 4-level VAE (8x upsampling, as SD1.5's), a one-layer CLIP.
TINY_PARTS = {
    "unet": {"block_out_channels": (32,), "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32,
             "attention_head_dim": 4, "down_block_types": ("CrossAttnDownBlock2D",),
             "up_block_types": ("CrossAttnUpBlock2D",)},
    "vae": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "projection_dim": 32},
}
TOKEN_IDS = [[49406, 320, 1125] + [49407] * 74, [49406] + [49407] * 76]  # a prompt, then the empty negative


def test_openvino_is_planned_as_skipped_without_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(configs.importlib.util, "find_spec", lambda name: None if name == "openvino"
                        else find_spec(name))
    sd15 = Workload("sd15", 128, 128, steps=1, batch=1, repeats=1)
    runs = plan_runs([Config(False, "float32"), Config(False, "float32", controlnet=True)], ["openvino"], sd15)
    assert [(r.system, r.xla, r.controlnet, r.skip_reason) for r in runs[2:]] == [
        ("openvino", None, False, "not installed (openvino)"),
        ("openvino", None, True, "the OpenVINO peer converts no ControlNet")]
    assert configs.parse_peers("openvino,diffusers") == ["openvino", "diffusers"]


def test_openvino_precision_hints():
    peer = pytest.importorskip("bench.peer_openvino")
    assert peer.hints("float32") == {"text_encoder": "f32", "unet": "f32", "vae": "f32"}
    assert peer.hints("mixed_bfloat16") == {"text_encoder": "f32", "unet": "bf16", "vae": "f32"}
    assert peer.hints("bfloat16") == {"text_encoder": "bf16", "unet": "bf16", "vae": "bf16"}
    assert peer.hints("float16")["vae"] == "f16"
    with pytest.raises(ValueError, match="float64"):
        peer.hints("float64")


def test_openvino_runner_end_to_end_on_tiny_parts(monkeypatch):
    """The cold worker's job in this process, then the same image from diffusers on the same random weights."""
    pytest.importorskip("openvino")
    torch = pytest.importorskip("torch")
    from bench import peer_diffusers, peer_openvino
    from bench.worker import cold

    workload = Workload("sd15", 64, 64, steps=2, batch=1, repeats=1)
    spec = {**Run("openvino", None, "float32").spec(dataclasses.asdict(workload), TOKEN_IDS), "part_configs": TINY_PARTS,
            "spawned_at": time.time()}
    built = []
    monkeypatch.setattr(peer_openvino, "Runner", lambda s, runner=peer_openvino.Runner: built.append(runner(s))
                        or built[-1])
    torch.manual_seed(0)
    raw = {}
    cold(spec, raw)
    record = build_record(Run("openvino", None, "float32"), {**raw, "status": "ok"}, workload, None, None)
    assert record["status"] == "ok" and record["cold"]["build_s"] > 0 and record["warm"]["runs"] == 1
    assert len(raw["stages"][0]["step_s"]) == 2 and record["stages"]["decode_s"] > 0
    assert "inference precision: text_encoder f32, unet f32, vae f32" in record["notes"]

    torch.manual_seed(0)  # the same random parts
    ours = built[0].generate(3)
    theirs = peer_diffusers.Runner({**spec, "system": "diffusers"}).generate(3)
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
