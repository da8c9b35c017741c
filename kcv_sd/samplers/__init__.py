"""Samplers: a small config plus pure step math that never touches a model.

`SAMPLERS` maps each canonical name to its sampler; `resolve` also takes
the names AUTOMATIC1111's web UI shows (`ALIASES`), in any case.
"""

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.samplers.base import Schedule
from kcv_sd.samplers.ddim import KerasCVDDIM
from kcv_sd.samplers.ddpm import DDPM
from kcv_sd.samplers.dpm_solver import DPMSolverPP2M
from kcv_sd.samplers.euler import EulerAncestral, EulerDiscrete
from kcv_sd.samplers.lcm import LCM
from kcv_sd.samplers.pndm import PNDM
from kcv_sd.samplers.unipc import UniPC

# Sampler names accepted by the pipeline and the CLI.
SAMPLERS = {
    "ddim": KerasCVDDIM(),
    "dpmpp_2m": DPMSolverPP2M(),
    "dpmpp_2m_karras": DPMSolverPP2M(karras=True),
    "euler": EulerDiscrete(),
    "euler_a": EulerAncestral(),
    "pndm": PNDM(),
    "unipc": UniPC(),
    "ddpm": DDPM(),
    "lcm": LCM(),
}
# The names AUTOMATIC1111's web UI gives them (PLMS is its name for PNDM).
ALIASES = {
    "ddim": ("DDIM",),
    "dpmpp_2m": ("DPM++ 2M",),
    "dpmpp_2m_karras": ("DPM++ 2M Karras",),
    "euler": ("Euler",),
    "euler_a": ("Euler a",),
    "pndm": ("PLMS", "PNDM"),
    "unipc": ("UniPC",),
    "ddpm": ("DDPM",),
    "lcm": ("LCM",),
}
_BY_NAME = {name.lower(): canonical for canonical, names in ALIASES.items() for name in (canonical, *names)}


def resolve(name):
    """The canonical `SAMPLERS` name of a canonical or A1111 sampler name (any case)."""
    canonical = _BY_NAME.get(name.strip().lower()) if isinstance(name, str) else None
    if canonical is None:
        listed = ", ".join(f"{canonical} ({', '.join(names)})" for canonical, names in ALIASES.items())
        raise InvalidArgumentError(f"sampler={name!r}: use one of {listed}.")
    return canonical


__all__ = [
    "ALIASES",
    "DDPM",
    "LCM",
    "PNDM",
    "SAMPLERS",
    "DPMSolverPP2M",
    "EulerAncestral",
    "EulerDiscrete",
    "KerasCVDDIM",
    "Schedule",
    "UniPC",
    "resolve",
]
