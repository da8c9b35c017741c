"""Depth estimation: the output contract on a tiny random DPT, and clear errors when it cannot load."""

import sys

import numpy as np
import pytest

from controlnet.depth_estimation import DepthEstimator, MissingDependencyError, load_depth_estimator
from kcv_sd.errors import WeightsNotFoundError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def tiny_dpt():
    """A randomly initialised DPT small enough to build and run in well under a second."""
    config = transformers.DPTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8)
    torch.manual_seed(0)
    model = transformers.DPTForDepthEstimation(config)
    processor = transformers.DPTImageProcessor(size={"height": 32, "width": 32})
    return model, processor


def test_output_contract_through_the_loader(monkeypatch):
    model, processor = tiny_dpt()
    requested = []

    def pretrained(value):
        return classmethod(lambda cls, model_id: requested.append(model_id) or value)

    monkeypatch.setattr(transformers.DPTForDepthEstimation, "from_pretrained", pretrained(model))
    monkeypatch.setattr(transformers.DPTImageProcessor, "from_pretrained", pretrained(processor))
    estimate = load_depth_estimator()
    photo = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    depth = estimate(photo)
    assert requested == ["Intel/dpt-hybrid-midas"] * 2
    assert depth.shape == (48, 80) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 1


def test_flat_prediction_is_zeros():
    class Flat(torch.nn.Module):
        def forward(self, pixel_values):
            return transformers.modeling_outputs.DepthEstimatorOutput(
                predicted_depth=torch.ones(1, 8, 8))

    _, processor = tiny_dpt()
    depth = DepthEstimator(Flat(), processor)(np.zeros((20, 30, 3), np.uint8))
    assert depth.shape == (20, 30) and not depth.any()


def test_missing_packages_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match="pip install transformers torch"):
        load_depth_estimator()


def test_offline_names_the_model_and_the_connection(monkeypatch):
    def offline(cls, model_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.DPTImageProcessor, "from_pretrained", classmethod(offline))
    with pytest.raises(WeightsNotFoundError, match="'Intel/dpt-hybrid-midas'.*needs a connection once"):
        load_depth_estimator()
