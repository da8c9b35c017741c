"""Samplers: a small config plus pure step math that never touches a model."""

from kcv_sd.samplers.base import Schedule
from kcv_sd.samplers.ddim import KerasCVDDIM
from kcv_sd.samplers.dpm_solver import DPMSolverPP2M
from kcv_sd.samplers.euler import EulerDiscrete

# Sampler names accepted by the pipeline and the CLI.
SAMPLERS = {
    "ddim": KerasCVDDIM(),
    "dpmpp_2m": DPMSolverPP2M(),
    "euler": EulerDiscrete(),
}

__all__ = ["DPMSolverPP2M", "EulerDiscrete", "KerasCVDDIM", "SAMPLERS", "Schedule"]
