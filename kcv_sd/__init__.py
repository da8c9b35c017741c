"""kcv-sd: fast, controllable Stable Diffusion 1.x on Keras 3, built around KerasCV."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns the
# CLI's output; an explicit TF_CPP_MIN_LOG_LEVEL from the user still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from kcv_sd.distribute import DistributedPipeline  # noqa: E402  (imports Pipeline)
from kcv_sd.errors import InvalidArgumentError, KcvSdError, WeightsNotFoundError
from kcv_sd.generate import generate, get_pipeline
from kcv_sd.pipeline import Pipeline
from kcv_sd.weight_cache import cache_weights_for_inference

__all__ = [
    "DistributedPipeline",
    "InvalidArgumentError",
    "KcvSdError",
    "Pipeline",
    "WeightsNotFoundError",
    "cache_weights_for_inference",
    "generate",
    "get_pipeline",
]
__version__ = "0.1.0"
