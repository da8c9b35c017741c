"""kcv-sd: fast, controllable Stable Diffusion 1.x on Keras 3, built around KerasCV."""

from kcv_sd.errors import InvalidArgumentError, KcvSdError, WeightsNotFoundError
from kcv_sd.generate import generate, get_pipeline
from kcv_sd.pipeline import Pipeline

__all__ = [
    "InvalidArgumentError",
    "KcvSdError",
    "Pipeline",
    "WeightsNotFoundError",
    "generate",
    "get_pipeline",
]
__version__ = "0.1.0"
