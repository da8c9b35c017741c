"""Checkpoint files: safetensors without torch, pickles only when allowed."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file
from references import (
    TINY_CONTROLNETS,
    diffusers_controlnet,
    diffusers_unet,
    numpy_state_dict,
)

from kcv_sd.convert import (
    CheckpointError,
    convert_controlnet,
    convert_controlnet_file,
    load_diffusers_unet,
    read_state_dict,
)
from kcv_sd.errors import WeightsNotFoundError

CONFIG = TINY_CONTROLNETS["two-levels"]


def weights_of(model):
    return [np.asarray(v) for v in model.model().weights]


def test_safetensors_controlnet_and_unet_load(tmp_path):
    controlnet_path = tmp_path / "diffusion_pytorch_model.safetensors"
    reference = numpy_state_dict(diffusers_controlnet(CONFIG))
    save_file(reference, controlnet_path)
    controlnet = convert_controlnet_file(controlnet_path, CONFIG)
    kernel = np.transpose(reference["conv_in.weight"], (2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(controlnet.conv_in.conv2d.kernel), kernel)

    unet_path = tmp_path / "unet.safetensors"
    save_file(numpy_state_dict(diffusers_unet(CONFIG.unet)), unet_path)
    unet = load_diffusers_unet(unet_path, CONFIG.unet)
    assert unet.model().count_params() > 0


def test_half_precision_weights_widen_to_float32():
    state_dict = {k: v.astype(np.float16) for k, v in
                  numpy_state_dict(diffusers_controlnet(CONFIG)).items()}
    controlnet = convert_controlnet(state_dict, CONFIG)
    assert {w.dtype for w in weights_of(controlnet)} == {np.dtype("float32")}
    bias = state_dict["controlnet_mid_block.bias"].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(controlnet.mid_zero_conv.conv2d.bias), bias)


def test_pickles_need_permission(tmp_path):
    path = tmp_path / "control_v11p_sd15_canny.pth"
    torch.save({"state_dict": {"x": torch.ones(2, dtype=torch.bfloat16)}}, path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        read_state_dict(path)
    tensors = read_state_dict(path, allow_pickle=True)
    assert tensors["x"].dtype == np.float32 and tensors["x"].tolist() == [1.0, 1.0]


def test_bfloat16_safetensors_read_without_torch(tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_torch_file({"x": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, path)
    tensors = read_state_dict(path)
    assert tensors["x"].astype(np.float32).tolist() == [1.5, -2.0]


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "absent.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_state_dict(truncated)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        read_state_dict(odd)


def test_repo_id_is_converted_once_and_cached_in_float32(tmp_path, monkeypatch):
    import huggingface_hub

    from kcv_sd import control

    checkpoint = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(numpy_state_dict(diffusers_controlnet(CONFIG, seed=3)), checkpoint)
    downloads = []
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: downloads.append(repo) or str(checkpoint))
    direct = weights_of(convert_controlnet_file(checkpoint, CONFIG))

    half = control.load_controlnet("someone/tiny-controlnet", CONFIG, "mixed_bfloat16")
    assert half.conv_in.conv2d.kernel.dtype == "bfloat16"  # large weights stored in the compute dtype
    again = control.load_controlnet("someone/tiny-controlnet", CONFIG, "float32")
    assert downloads == ["someone/tiny-controlnet"]  # the second load came from the cache
    for cached, expected in zip(weights_of(again), direct):
        np.testing.assert_array_equal(cached, expected)  # not rounded through bfloat16


def test_a_damaged_cache_entry_is_converted_again(tmp_path, monkeypatch):
    import huggingface_hub

    from kcv_sd import control

    checkpoint = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(numpy_state_dict(diffusers_controlnet(CONFIG, seed=3)), checkpoint)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(checkpoint))
    direct = weights_of(control.load_controlnet("someone/tiny-controlnet", CONFIG))
    cache = tmp_path / "keras" / "kcv_sd" / "controlnets"
    (entry,) = cache.iterdir()  # written whole under its final name, no temp file left
    entry.write_bytes(entry.read_bytes()[:1000])  # a disk that filled up, a killed copy
    with pytest.warns(UserWarning, match="cannot be read.*converting it again"):
        again = control.load_controlnet("someone/tiny-controlnet", CONFIG)
    for rebuilt, expected in zip(weights_of(again), direct):
        np.testing.assert_array_equal(rebuilt, expected)
    assert [path.name for path in cache.iterdir()] == [entry.name]
    weights_of(control.load_controlnet("someone/tiny-controlnet", CONFIG))  # the rewritten entry reads
