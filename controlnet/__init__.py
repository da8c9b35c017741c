"""ControlNet for SD1.x on Keras 3: model, configurations, residual scaling."""

from controlnet.config import SD15, TINY, ControlNetConfig
from controlnet.model import ControlNet
from controlnet.scales import control_scales, scale_residuals

__all__ = ["SD15", "TINY", "ControlNet", "ControlNetConfig", "control_scales", "scale_residuals"]
