"""The machine kcv-sd runs on, and the defaults it picks there.

`precision="auto"` and `jit_compile="auto"` resolve here. GPUs and TPUs get
the vendors' recipe, 16-bit compute with XLA: mixed_float16 on GPUs whose
compute capability is 7.0 or more (V100, T4 and later: fast float16 matrix
units), float32 with XLA on older ones, mixed_bfloat16 on TPUs. A CPU gets
bfloat16 where it has native bfloat16 instructions (AVX-512 BF16 or AMX,
read from /proc/cpuinfo's flags, the ones oneDNN uses), else float32, and no
XLA: the CPU levers were measured without it (docs/latency_levers.md).
Explicit values always win. `kcv-sd env` prints what this module sees.
"""

import dataclasses
import functools
import platform
from pathlib import Path

AUTO = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The instructions that make each 16-bit type native on a CPU; without them TensorFlow emulates it.
NATIVE_16_BIT_CPU_FLAGS = {"bfloat16": BF16_CPU_FLAGS, "float16": ("avx512_fp16", "amx_fp16")}
# CPU flags worth a line in a bug report: what oneDNN's fast paths need.
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                      "amx_fp16")
FAST_FLOAT16_CAPABILITY = (7, 0)


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What "auto" means on one machine, and why."""

    device: str  # "cpu", "gpu" or "tpu": where the models run
    precision: str
    jit_compile: bool
    reason: str


def choose_defaults(device, cpu_flags=(), gpu_capability=None):
    """The defaults for a `device` kind with these CPU flags or GPU compute
    capability (a (major, minor) pair): pure, so tests force each device."""
    if device == "tpu":
        return Defaults("tpu", "mixed_bfloat16", True, "TPU: bfloat16 matrix units, XLA always")
    if device == "gpu":
        if gpu_capability is not None and tuple(gpu_capability) >= FAST_FLOAT16_CAPABILITY:
            return Defaults("gpu", "mixed_float16", True,
                            f"GPU with compute capability {gpu_capability[0]}.{gpu_capability[1]}: "
                            "float16 tensor cores, XLA")
        return Defaults("gpu", "float32", True,
                        f"GPU with compute capability {gpu_capability or 'unknown'}: no fast float16, XLA")
    native = [flag for flag in BF16_CPU_FLAGS if flag in set(cpu_flags)]
    if native:
        return Defaults("cpu", "bfloat16", False, f"CPU with native bfloat16 ({', '.join(native)})")
    return Defaults("cpu", "float32", False, "CPU without native bfloat16 (no avx512_bf16 or amx_bf16)")


def emulated_16_bit(precision, device, flags):
    """The 16-bit type that `precision` computes in, where it runs on a CPU
    with none of that type's instructions (`NATIVE_16_BIT_CPU_FLAGS`), else
    None: TensorFlow then converts every element (docs/latency_levers.md,
    section 17)."""
    kind = next((k for k in NATIVE_16_BIT_CPU_FLAGS if k in precision), None)
    if device != "cpu" or kind is None or set(NATIVE_16_BIT_CPU_FLAGS[kind]) & set(flags):
        return None
    return kind


def emulation_reason(kind):
    """Why a 16-bit `kind` is slow on this CPU, for the warning below and for kcv-bench's skipped rows."""
    return (f"this CPU emulates {kind} (it has no {' or '.join(NATIVE_16_BIT_CPU_FLAGS[kind])}), 2-3x slower than "
            "float32 where measured")


def emulation_warning(precision, kind):
    """One line for a user who asked for a `precision` this CPU emulates."""
    return f"precision={precision!r} computes in {kind}: {emulation_reason(kind)}. precision='auto' picks float32 here."


def cpu_flags():
    """The CPU's instruction-set flags (Linux's /proc/cpuinfo), empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_kind():
    """"tpu", "gpu" or "cpu": the accelerator TensorFlow sees, if any."""
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def gpu_capability():
    """The first GPU's compute capability, or None."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")


@functools.cache
def detected_defaults():
    """`choose_defaults` for this machine (asked once per process)."""
    device = device_kind()
    return choose_defaults(device, cpu_flags(), gpu_capability() if device == "gpu" else None)


def resolve(precision=AUTO, jit_compile=AUTO, defaults=None):
    """(precision, jit_compile) with each "auto" replaced by this machine's
    default (or `defaults`'); explicit values pass through unchanged."""
    if AUTO not in (precision, jit_compile):
        return precision, jit_compile
    defaults = defaults or detected_defaults()
    return (defaults.precision if precision == AUTO else precision,
            defaults.jit_compile if jit_compile == AUTO else jit_compile)


def report(kcv_sd_version):
    """What a bug report needs: versions, devices, CPU features, defaults and why."""
    import keras
    import tensorflow as tf

    flags = cpu_flags()
    shown = ", ".join(flag for flag in REPORTED_CPU_FLAGS if flag in flags) or "none of " + "/".join(
        REPORTED_CPU_FLAGS) if flags else "flags not readable here"
    defaults = detected_defaults()
    devices = [f"{d.device_type} {d.name}" for d in tf.config.list_logical_devices()]
    lines = [
        f"kcv-sd {kcv_sd_version}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"Python {platform.python_version()} on {platform.platform()}",
        f"devices: {', '.join(devices)}",
        f"CPU: {cpu_name()}; {shown}",
    ]
    if defaults.device == "gpu":
        lines.append(f"GPU compute capability: {gpu_capability()}")
    lines.append(f"defaults: precision={defaults.precision}, jit_compile={defaults.jit_compile} "
                 f"({defaults.reason})")
    return "\n".join(lines)
