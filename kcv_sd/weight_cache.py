"""oneDNN weight caching, for processes that only run kcv-sd's pipelines.

On the CPU, TensorFlow's oneDNN convolutions and bias-fused matmuls reorder
their weights into a blocked layout on every call; with
`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1` each kernel keeps the weights it
reordered first. Faster images, at the price of one more copy of the
denoising weights (UNet and ControlNets) per compiled step function
(measured in docs/latency_levers.md, sections 10 and 14).

The hazard: TensorFlow reads the variable at the process's first oneDNN
kernel and applies it to every kernel, and a kernel that later sees other
weights keeps computing with its first ones, silently. kcv-sd's pipelines
load all weights before their first call and run their models only inside
compiled functions, so their outputs do not change
(`tests/test_weight_cache.py`). `kcv-sd generate` decides with
`choose_weight_cache`: cached on CPUs with AMX where memory allows; on the
other CPUs measured it made 256x256 and 512x512 steps no faster and only cost
memory and first-call time (docs/latency_levers.md, section 23). Python
callers opt in. GPU kernels are unaffected.
"""

import contextlib
import os
from pathlib import Path

from kcv_sd.devices import cpu_flags
from kcv_sd.errors import InvalidArgumentError

FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
SETTINGS = ("auto", "on", "off")
# "auto" caches when this many copies of the cached weights are still free:
# one for the copy, the rest for the activations (up to about as much again
# at 512x512) and whatever else the machine runs.
FREE_COPIES_NEEDED = 4
GIB = 2**30
# The CPU feature under which "auto" caches (Linux's flag for AMX's tiles).
AMX_FLAG = "amx_tile"


def cache_weights_for_inference():
    """Ask TensorFlow's oneDNN kernels to keep their reordered weights,
    unless the environment already sets the variable (then that value
    stands: 0 turns caching off). Returns whether caching is asked for.

    Effective only before the process's first oneDNN convolution or matmul
    and for the whole process: call it only where nothing but inference with
    fixed weights runs."""
    os.environ.setdefault(FROZEN_WEIGHTS_VARIABLE, "1")
    return caching_asked()


def caching_asked():
    """Whether this process's environment asks oneDNN to cache weights."""
    return os.environ.get(FROZEN_WEIGHTS_VARIABLE, "").strip().lower() in ("1", "true")


def available_memory():
    """Bytes this process can still take: the kernel's MemAvailable, or the
    cgroup's limit less its usage where that is lower; None where unknown."""
    amounts = []
    with contextlib.suppress(OSError, ValueError):
        amounts += [int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            amounts.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(amounts, default=None)


def cached_bytes(family, precision, controlnets=0, step_functions=1):
    """Memory the caching adds: a copy of the UNet's and the ControlNets'
    weights in the compute dtype per compiled step function."""
    per_parameter = 4 if precision == "float32" else 2
    parameters = family.unet_parameters + controlnets * family.controlnet_parameters
    return step_functions * per_parameter * parameters


def auto_decision(family, precision, controlnets=0, step_functions=1, available=None, flags=None):
    """What "auto" decides where the environment does not: (cached, why).
    On where the CPU has AMX (`flags`, default this CPU's) and
    `FREE_COPIES_NEEDED` times `cached_bytes` are free (`available`, default
    `available_memory()`)."""
    if AMX_FLAG not in (cpu_flags() if flags is None else flags):
        return False, ("weight cache off: without AMX it made no step faster at 256x256 or 512x512 "
                       "(docs/latency_levers.md, section 23); --weight-cache on turns it on")
    extra = cached_bytes(family, precision, controlnets, step_functions)
    available = available_memory() if available is None else available
    if available is None or available < FREE_COPIES_NEEDED * extra:
        free = "unknown" if available is None else f"{available / GIB:.1f} GiB"
        return False, (f"weight cache off: it would take {extra / GIB:.1f} GiB more, and {free} is free "
                       f"(auto asks for {FREE_COPIES_NEEDED}x that)")
    return True, f"weight cache on: {extra / GIB:.1f} GiB more, {available / GIB:.1f} GiB free"


def choose_weight_cache(setting, family, precision, controlnets=0, step_functions=1, available=None, flags=None):
    """Turn caching on or off for this process, as `setting` says: "on",
    "off", or "auto": an environment value of the variable stands, else
    `auto_decision`. Call before any model runs. Returns (cached, why)."""
    if setting not in SETTINGS:
        raise InvalidArgumentError(f"weight cache {setting!r}: use {', '.join(SETTINGS)}")
    if setting == "auto" and FROZEN_WEIGHTS_VARIABLE in os.environ:
        cached = caching_asked()
        return cached, f"weight cache {'on' if cached else 'off'}: {FROZEN_WEIGHTS_VARIABLE} is set"
    if setting == "auto":
        cached, why = auto_decision(family, precision, controlnets, step_functions, available, flags)
    else:
        cached, why = setting == "on", f"weight cache {setting} as asked"
    os.environ[FROZEN_WEIGHTS_VARIABLE] = "1" if cached else "0"
    return cached, why


def report(family, label, precision):
    """`kcv-sd env`'s lines on what "auto" decides here, for `family` (named
    `label`) with and without a ControlNet; decides nothing."""
    lines = []
    if FROZEN_WEIGHTS_VARIABLE in os.environ:
        lines.append(f"{FROZEN_WEIGHTS_VARIABLE}={os.environ[FROZEN_WEIGHTS_VARIABLE]} is set: "
                     "`kcv-sd generate --weight-cache auto` keeps it")
    for controlnets in (0, 1):
        _, why = auto_decision(family, precision, controlnets)
        lines.append(f"kcv-sd generate --weight-cache auto, {label}{' + a ControlNet' * controlnets} in "
                     f"{precision}: {why}")
    return "\n".join(lines)
