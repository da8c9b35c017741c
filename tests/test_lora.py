"""LoRAs: diffusers' numbers on a tiny UNet and CLIP, every file format to the
same weights, exact weights back after swaps, no retrace, one-line errors."""

import dataclasses
import json

import keras
import numpy as np
import pytest
from helpers import random_inputs
from references import (
    TINY_FAMILY_DIFFUSERS,
    diffusers_unet,
    hub_clip_state_dict,
    nchw,
    nhwc,
    numpy_state_dict,
    prompt_tokens,
    text_inputs,
    transformers_clip,
)
from safetensors.numpy import save_file

from kcv_sd.components import (
    FAMILIES,
    Components,
    randomize,
    with_diffusers_numerics,
)
from kcv_sd.convert import (
    CheckpointError,
    convert_clip_text_encoder,
    convert_diffusers_unet,
)
from kcv_sd.convert.ldm_unet import unet_prefixes
from kcv_sd.convert.renaming import replace_prefix
from kcv_sd.errors import InvalidArgumentError
from kcv_sd.generation import generate
from kcv_sd.lora import FusedLoras, parse_lora_argument
from kcv_sd.precision import dtype_policy_scope
from kcv_sd.text_encoder import TINY_TEXT, build_text_encoder
from kcv_sd.unet import UNet
from kcv_sd.weight_cache import FROZEN_WEIGHTS_VARIABLE

TOLERANCE = 1e-4
RANK = 2
# LCM-LoRA's target modules (diffusers' train_lcm_distill_lora_sd_wds.py).
LCM_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def torch_lora(module_shapes, seed, alpha=True):
    """{module path: (down, up, alpha)} for {module path: PyTorch weight shape}."""
    rng = np.random.default_rng(seed)
    lora = {}
    for index, (module, shape) in enumerate(sorted(module_shapes.items())):
        down = 0.3 * rng.standard_normal((RANK, *shape[1:])).astype(np.float32)
        up = 0.3 * rng.standard_normal((shape[0], RANK, *(1,) * (len(shape) - 2))).astype(np.float32)
        lora[module] = (down, up, np.float32(1 + index % 3) if alpha else None)
    return lora


def kohya_file(path, unet_lora, text_lora, unet_names=None):
    """kohya/A1111 layout; `unet_names` renames UNet modules (e.g. to LDM names)."""
    tensors = {}
    for prefix, lora, rename in (("lora_unet_", unet_lora, unet_names), ("lora_te_", text_lora, None)):
        for module, (down, up, alpha) in lora.items():
            name = prefix + (rename(module) if rename else module).replace(".", "_")
            tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up})
            if alpha is not None:
                tensors[f"{name}.alpha"] = np.asarray(alpha, np.float32)
    save_file(tensors, path)
    return path


def peft_file(path, unet_lora, text_lora, alpha):
    """diffusers/PEFT layout, alpha in the adapter metadata as diffusers saves it."""
    tensors = {}
    for prefix, lora in (("unet", unet_lora), ("text_encoder", text_lora)):
        for module, (down, up, _) in lora.items():
            tensors.update({f"{prefix}.{module}.lora_A.weight": down, f"{prefix}.{module}.lora_B.weight": up})
    metadata = {f"{prefix}.{key}": value for prefix in ("unet", "text_encoder")
                for key, value in {"r": RANK, "lora_alpha": alpha}.items()}
    save_file(tensors, path, metadata={"lora_adapter_metadata": json.dumps(metadata)})
    return path


def uniform_alpha(loras, alpha):
    return [{module: (down, up, np.float32(alpha)) for module, (down, up, _) in lora.items()} for lora in loras]


def old_diffusers_file(path, unet_lora, text_lora):
    """Older diffusers layouts: attention processors' to_q_lora, `.lora.down`,
    CLIP's lora_linear_layer, and an `.alpha` key per module."""
    processors = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    tensors = {}
    for prefix, lora in (("unet", unet_lora), ("text_encoder", text_lora)):
        for module, (down, up, alpha) in lora.items():
            parent, _, layer = module.rpartition(".")
            if module.endswith(".to_out.0"):
                parent, layer = module[: -len(".to_out.0")], "to_out.0"
            if prefix == "unet" and layer in processors:
                name, ending = f"unet.{parent}.processor.{processors[layer]}", ""
            else:
                name = f"{prefix}.{module}"
                ending = ".lora_linear_layer" if prefix == "text_encoder" else ".lora"
            tensors.update({f"{name}{ending}.down.weight": down, f"{name}{ending}.up.weight": up,
                            f"{prefix}.{module}.alpha": np.asarray(alpha, np.float32)})
    save_file(tensors, path)
    return path


def weight_shapes(module):
    import torch

    return {name: tuple(child.weight.shape) for name, child in module.named_modules()
            if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d))}


def snapshot(components):
    return [np.array(keras.ops.convert_to_numpy(v)) for m in (components.unet.model(), components.text_encoder)
            for v in m.weights]


def assert_identical(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def references():
    return diffusers_unet(TINY_FAMILY_DIFFUSERS, seed=3), transformers_clip(TINY_TEXT, seed=4)


@pytest.fixture(scope="module")
def ours(references):
    torch_unet, clip = references
    text_encoder = build_text_encoder(TINY_TEXT)
    convert_clip_text_encoder(hub_clip_state_dict(clip), text_encoder)
    unet = convert_diffusers_unet(numpy_state_dict(torch_unet), TINY_FAMILY_DIFFUSERS)
    return Components(with_diffusers_numerics(FAMILIES["tiny"]), text_encoder, unet, None, "test", "float32")


@pytest.fixture(scope="module")
def loras(references):
    """Random LoRAs on every Linear and Conv2d of the UNet and CLIP (LoCon included)."""
    torch_unet, clip = references
    unet_shapes = weight_shapes(torch_unet)
    # kohya's files name CLIP's modules as transformers < 5 did, under "text_model.".
    text_shapes = {name if name.startswith("text_model.") else f"text_model.{name}": shape
                   for name, shape in weight_shapes(clip).items()}
    return torch_lora(unet_shapes, seed=5), torch_lora(text_shapes, seed=6)


def test_kohya_locon_matches_diffusers_fused(references, ours, loras, tmp_path):
    """diffusers' own loader (kohya -> PEFT) and fuse_lora at scale 0.7, on UNet and text encoder."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.lora_base import fuse_text_encoder_lora

    pytest.importorskip("peft")
    torch_unet, clip = references
    # One alpha (not the rank) for all: diffusers 0.42 drops per-module
    # alphas of kohya attention modules (peft warns that they match nothing).
    path = kohya_file(tmp_path / "style.safetensors", *uniform_alpha(loras, 1))
    inputs, timesteps = random_inputs(TINY_FAMILY_DIFFUSERS, height=8, width=8, tokens=5)
    tokens = prompt_tokens([3, 9])
    fused = FusedLoras(ours)
    try:
        fused.set([(path, 0.7)])
        noise = np.asarray(ours.unet.model()(inputs))
        text = np.asarray(ours.text_encoder(text_inputs(tokens)))
    finally:
        fused.set([])
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, torch_unet)
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, clip, prefix="text_encoder")
    torch_unet.fuse_lora(lora_scale=0.7)
    fuse_text_encoder_lora(clip, lora_scale=0.7)
    with torch.no_grad():
        expected_noise = nhwc(torch_unet(nchw(inputs["latent"]), torch.from_numpy(timesteps),
                                         encoder_hidden_states=torch.from_numpy(inputs["context"])).sample)
        expected_text = clip(torch.from_numpy(tokens.astype(np.int64))).last_hidden_state.numpy()
    plain_noise = np.asarray(ours.unet.model()(inputs))
    np.testing.assert_allclose(noise, expected_noise, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(text, expected_text, atol=TOLERANCE, rtol=0)
    assert np.abs(noise - plain_noise).max() > 100 * TOLERANCE  # the LoRA mattered


def test_every_format_fuses_the_same_weights_and_unloading_restores_them(ours, loras, tmp_path):
    unet_lora, text_lora = loras
    uniform = uniform_alpha(loras, 3)
    inverse = {new: old for old, new in unet_prefixes(TINY_FAMILY_DIFFUSERS).items()}
    files = {
        "kohya": kohya_file(tmp_path / "kohya.safetensors", *uniform),
        "kohya, CompVis names": kohya_file(tmp_path / "ldm.safetensors", *uniform,
                                           lambda m: replace_prefix(m + ".weight", inverse)[:-7]),
        "PEFT": peft_file(tmp_path / "peft.safetensors", *uniform, alpha=3),
        "older diffusers": old_diffusers_file(tmp_path / "old.safetensors", *uniform),
    }
    original = snapshot(ours)
    fused = FusedLoras(ours)
    results = {}
    for name, path in files.items():
        fused.set([(path, 0.5)])
        results[name] = snapshot(ours)
    for name in files:
        assert_identical(results["kohya"], results[name])
    assert any(a.tobytes() != b.tobytes() for a, b in zip(original, results["kohya"]))
    # Many swaps, two LoRAs at once, then none: the loaded weights, bit for bit.
    other = kohya_file(tmp_path / "other.safetensors", dict(list(unet_lora.items())[:3]), text_lora)
    for scale in (1.0, -0.3, 0.8):
        fused.set([(files["kohya"], scale), (files["PEFT"], 0.25)])
    fused.set([other])
    fused.set([])
    assert_identical(original, snapshot(ours))
    assert not fused.originals


def test_16_bit_weights_are_rounded_once_and_restored_exactly(ours, tmp_path):
    with dtype_policy_scope("bfloat16"):
        unet = UNet(TINY_FAMILY_DIFFUSERS, initializer="zeros")
        randomize(unet.kerascv_layer_order(), seed=2)
    components = dataclasses.replace(ours, unet=unet, precision="bfloat16", loras=None)
    path = tmp_path / "one.safetensors"
    rng = np.random.default_rng(0)
    # conv_in (3x3, 4 -> 8 channels) as a LoCon module.
    down, up = rng.standard_normal((RANK, 4, 3, 3)).astype(np.float32), rng.standard_normal((8, RANK, 1, 1))
    save_file({"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up.astype(np.float32),
               "lora_unet_conv_in.alpha": np.asarray(1, np.float32)}, path)
    fused = FusedLoras(components)
    target = fused.tables.targets["unet"]["conv_in"].variable
    assert str(target.dtype) == "bfloat16"
    before = np.array(keras.ops.convert_to_numpy(target))
    fused.set([(path, 0.5)])
    delta = 0.5 * 1 / RANK * (up.reshape(8, RANK).astype(np.float32) @ down.reshape(RANK, -1)).reshape(8, 4, 3, 3)
    expected = (before.astype(np.float32) + delta.transpose(2, 3, 1, 0)).astype(before.dtype)
    assert np.array(keras.ops.convert_to_numpy(target)).tobytes() == expected.tobytes()
    fused.set([])
    assert np.array(keras.ops.convert_to_numpy(target)).tobytes() == before.tobytes()


def lcm_lora(tiny_pipeline, path):
    """A PEFT-format LoRA on LCM-LoRA's target modules of the tiny family's UNet."""
    from kcv_sd.convert.lora_targets import unet_targets

    targets = unet_targets(tiny_pipeline.components.unet)
    shapes = {module: target.torch_shape for module, target in targets.items()
              if module.endswith(LCM_MODULES)}
    return peft_file(path, torch_lora(shapes, seed=7, alpha=False), {}, alpha=RANK)


def test_swapping_loras_neither_rebuilds_nor_retraces(generate_on_tiny_pipeline, tmp_path):
    """LCM-LoRA's layout, the lcm sampler at 4 steps and guidance 1; swaps keep
    every compiled step; generate(loras=...) keeps exactly the LoRAs asked for."""
    tiny_pipeline = generate_on_tiny_pipeline
    path = lcm_lora(tiny_pipeline, tmp_path / "lcm.safetensors")
    run = dict(prompt="a cat", width=64, height=64, num_inference_steps=4, guidance_scale=1, sampler="lcm",
               seed=1, output_type="latent")
    models = (tiny_pipeline.components.unet, tiny_pipeline.components.text_encoder)
    plain = tiny_pipeline(**run)
    step = tiny_pipeline.step_function(tiny_pipeline.step_spec("lcm", False))
    traces = step.experimental_get_tracing_count(), tiny_pipeline._encode.experimental_get_tracing_count()
    try:
        tiny_pipeline.load_lora(path, 0.8)
        with_lora = tiny_pipeline(**run)
        tiny_pipeline.set_loras([f"{path}:0.4"])
        assert tiny_pipeline.loras[0].scale == 0.4
        tiny_pipeline.load_lora(path, 0.8)
        assert np.array_equal(tiny_pipeline(**run), with_lora)
        generated = generate(model="tiny", weights="random", precision="float32", loras=[(path, 0.8)], **run)
        assert np.array_equal(generated, with_lora)
        assert np.array_equal(generate(model="tiny", weights="random", precision="float32", **run), plain)
    finally:
        tiny_pipeline.unload_loras()
    assert np.isfinite(with_lora).all() and np.abs(with_lora - plain).max() > 1e-3
    assert np.array_equal(tiny_pipeline(**run), plain)
    assert (step.experimental_get_tracing_count(), tiny_pipeline._encode.experimental_get_tracing_count()) == traces
    assert (tiny_pipeline.components.unet, tiny_pipeline.components.text_encoder) == models


def test_text_encoder_loras_change_the_empty_prompt_encoding(tiny_pipeline, tmp_path):
    text_lora = torch_lora({"text_model.encoder.layers.0.mlp.fc1": (64, 16)}, seed=8)
    path = kohya_file(tmp_path / "te.safetensors", {}, text_lora)
    empty = np.asarray(tiny_pipeline.encode_prompts([""]))
    try:
        tiny_pipeline.load_lora(path)
        changed = np.asarray(tiny_pipeline.encode_prompts([""]))
    finally:
        tiny_pipeline.unload_loras()
    assert np.abs(changed - empty).max() > 1e-3
    assert np.array_equal(np.asarray(tiny_pipeline.encode_prompts([""])), empty)


def save(path, tensors):
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, path)
    return path


UNET_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
BAD_FILES = {
    "unknown module": ({"lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight": np.zeros((2, 8, 3, 3)),
                        "lora_unet_down_blocks_9_resnets_0_conv1.lora_up.weight": np.zeros((8, 2, 1, 1))},
                       "do not have: lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight"),
    "rank mismatch": ({f"{UNET_Q}.lora_down.weight": np.zeros((2, 8)), f"{UNET_Q}.lora_up.weight": np.zeros((8, 3))},
                      f"{UNET_Q}.lora_down.weight (2, 8) with up (8, 3) does not fit UNet weight (8, 8)"),
    "SDXL text encoder 2": ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((2, 1280)),
                             "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": np.zeros((5120, 2))},
                            "is an SDXL LoRA"),
    "SDXL UNet": ({"lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight": np.zeros((2, 2048)),
                   "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_up.weight": np.zeros((640, 2))},
                  "cross-attends to 2048-wide text encodings (SDXL"),
    "not a LoRA": ({"conv_in.weight": np.zeros((8, 4, 3, 3))}, "is not a LoRA file"),
    "LoHa": ({f"{UNET_Q}.hada_w1_a": np.zeros((8, 2))}, "LoRA variant kcv-sd does not apply"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_one_line_naming_file_and_key(tiny_components, tmp_path, name):
    tensors, message = BAD_FILES[name]
    path = save(tmp_path / "bad.safetensors", tensors)
    before = snapshot(tiny_components)
    with pytest.raises(CheckpointError, match="bad.safetensors") as error:
        FusedLoras(tiny_components).set([path])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert_identical(before, snapshot(tiny_components))


def test_lora_arguments():
    assert parse_lora_argument("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora_argument("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)
    with pytest.raises(InvalidArgumentError, match="not a finite number"):
        FusedLoras(None).set([("a.safetensors", "strong")])


def test_cli_lora_errors_before_any_model(tmp_path):
    from click.testing import CliRunner

    from kcv_sd.cli import main

    path = save(tmp_path / "xl.safetensors", BAD_FILES["SDXL text encoder 2"][0])
    result = CliRunner().invoke(main, ["generate", "a", "--model", "tiny", "--weights", "random",
                                       "--lora", f"{path}:0.5", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "xl.safetensors is an SDXL LoRA" in result.output


def test_frozen_weights_refuse_a_change_after_the_first_image(tiny_pipeline, tmp_path, monkeypatch):
    tiny_pipeline.encode_prompts(["a"])  # the pipeline has run
    monkeypatch.setenv(FROZEN_WEIGHTS_VARIABLE, "1")
    tiny_pipeline.set_loras([])  # no change: allowed
    path = kohya_file(tmp_path / "te.safetensors", {}, torch_lora({"text_model.encoder.layers.0.mlp.fc1": (64, 16)}, 9))
    with pytest.raises(InvalidArgumentError, match="TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1"):
        tiny_pipeline.load_lora(path)
    assert tiny_pipeline.loras == ()


@pytest.mark.full_size
def test_sd15_modules_by_every_name():
    """SD1.5's LoRA targets: every Linear and Conv2d weight of the UNet (282)
    and CLIP text encoder (72), by diffusers' and CompVis' underscored names."""
    from kcv_sd.components import build_models
    from kcv_sd.convert.lora_delta import ModuleTables

    text_encoder, unet, _ = build_models(with_diffusers_numerics(FAMILIES["sd15"]), "float32")
    tables = ModuleTables(unet, text_encoder)
    assert (len(tables.targets["unet"]), len(tables.targets["text_encoder"])) == (282, 72)
    assert len(tables.kohya["unet"]) == 2 * 282
    assert tables.kohya["unet"]["output_blocks_5_2_conv"] == "up_blocks.1.upsamplers.0.conv"
    assert tables.kohya["unet"]["input_blocks_1_1_proj_in"] == "down_blocks.0.attentions.0.proj_in"
