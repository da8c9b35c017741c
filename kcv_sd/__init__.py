"""kcv-sd: fast, controllable Stable Diffusion 1.x on Keras 3, built around KerasCV.

Importing `kcv_sd` (or a light module such as `kcv_sd.errors`) loads neither
TensorFlow nor KerasCV: the names below that need them are imported on
first use.
"""

import importlib
import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) drowns the
# CLI's output; an explicit TF_CPP_MIN_LOG_LEVEL from the user still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kcv_sd.errors import InvalidArgumentError, KcvSdError, WeightsNotFoundError  # noqa: E402
from kcv_sd.weight_cache import cache_weights_for_inference  # noqa: E402

# Public names defined in modules that load TensorFlow: {name: module}.
_LAZY = {
    "DistributedPipeline": "kcv_sd.distribute",
    "Pipeline": "kcv_sd.pipeline",
    "StableDiffusion": "kcv_sd.kerascv_api",
    "generate": "kcv_sd.generation",
    "get_pipeline": "kcv_sd.generation",
}

__all__ = ["InvalidArgumentError", "KcvSdError", "WeightsNotFoundError", "cache_weights_for_inference", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'kcv_sd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
