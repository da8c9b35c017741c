"""Samplers: a small config plus pure step math that never touches a model."""

from kcv_sd.schedulers.base import Schedule
from kcv_sd.schedulers.ddim import KerasCVDDIM

# Sampler names accepted by the pipeline and the CLI.
SAMPLERS = {
    "ddim": KerasCVDDIM(),
}

__all__ = ["KerasCVDDIM", "SAMPLERS", "Schedule"]
