"""The software and hardware a run measured, without importing the frameworks."""

import contextlib
import importlib.metadata
import os
import platform

PACKAGES = ("tensorflow", "keras", "keras-cv", "numpy", "torch", "diffusers", "transformers")


def package_versions():
    versions = dict.fromkeys(PACKAGES)
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib():
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def describe():
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "memory_gib": memory_gib(), "versions": package_versions(),
            "weights": "random"}


def load_average():
    """Other work on the machine skews every figure: it is recorded, not hidden."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None
