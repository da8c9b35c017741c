"""Monocular depth from an RGB image with a DPT (MiDaS) model, through transformers on the CPU.

Two uses: turning a photo into a control depth map, and checking whether a
generated image's depth follows the control's. Optional: transformers and
torch are imported only here, and the model downloads once from the Hugging
Face Hub (huggingface_hub caches it). DPT-MiDaS predicts relative inverse
depth, so its min..max stretch is ControlNet's convention: near = bright.
"""

import numpy as np
from PIL import Image

from kcv_sd.errors import MissingDependencyError, WeightsNotFoundError

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"


class DepthEstimator:
    """Callable: RGB image (PIL, path or array) -> float32 (H, W) depth in [0, 1] at its size, near = bright.

    A flat prediction gives all zeros.
    """

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    def __call__(self, image):
        import torch

        from kcv_sd.control import load_control_image

        rgb = Image.fromarray(load_control_image(image))
        inputs = self.processor(images=rgb, return_tensors="pt")
        with torch.no_grad():
            predicted = self.model(**inputs).predicted_depth
        resized = torch.nn.functional.interpolate(
            predicted[:, None], size=(rgb.height, rgb.width), mode="bicubic", align_corners=False)
        depth = resized[0, 0].numpy().astype(np.float64)
        low, high = depth.min(), depth.max()
        if high - low <= 1e-5 * max(abs(low), abs(high)):  # flat, up to float32 resize round-off
            return np.zeros(depth.shape, np.float32)
        return ((depth - low) / (high - low)).astype(np.float32)


def load_depth_estimator(model_id=DEFAULT_DEPTH_MODEL):
    """A `DepthEstimator` for a DPT checkpoint (Hub id or local folder)."""
    try:
        import torch  # noqa: F401  (the model runs on it)
        from transformers import DPTForDepthEstimation, DPTImageProcessor
    except ImportError:
        raise MissingDependencyError(
            "depth estimation needs transformers and torch: pip install transformers torch") from None
    try:
        processor = DPTImageProcessor.from_pretrained(model_id)
        model = DPTForDepthEstimation.from_pretrained(model_id)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"cannot load depth model {model_id!r} ({type(error).__name__}); check the id. "
            "It downloads from the Hugging Face Hub on first use, which needs a connection "
            "once; huggingface_hub caches it after") from None
    return DepthEstimator(model, processor)
