"""Samplers: a small config plus pure step math that never touches a model."""

from kcv_sd.schedulers.ddim import DDIMSchedule, KerasCVDDIM

__all__ = ["DDIMSchedule", "KerasCVDDIM"]
