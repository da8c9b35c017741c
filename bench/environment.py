"""The software and hardware a run measured, without importing the frameworks."""

import importlib.metadata
import os
import platform

PACKAGES = ("tensorflow", "keras", "keras-cv", "numpy", "torch", "diffusers", "transformers")


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe():
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "versions": package_versions(),
        "weights": "random",
    }


def load_average():
    """Other work on the machine skews every figure: it is recorded, not hidden."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _memory_gib():
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)
