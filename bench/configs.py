"""What one benchmark measures: the workload, the configurations and the runs.

A configuration is one cell of the grid jit_compile x precision x ControlNet, written
`xla=off,on;precision=float32,mixed_bfloat16;controlnet=off,on`: a key left out takes every value (controlnet: off),
grids join with `+`, and `all` is the full grid. Every value is checked before any process starts (precisions are
kcv-sd's). Peers run once per precision and ControlNet setting; one that cannot run here is planned as skipped.
"""

import dataclasses
import importlib.util
import itertools

import numpy as np

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SWITCH = {"off": False, "on": True}
XLA_TEXT = {True: "on", False: "off", None: "n/a"}  # None: the system has no such switch
PEER_MODULES = {"kerascv": ("keras_cv",), "diffusers": ("torch", "diffusers", "transformers"),
                "openvino": ("openvino", "torch", "diffusers", "transformers")}  # converts diffusers' torch parts
PEER_XLA = {"kerascv": True, "diffusers": None, "openvino": None}  # KerasCV as its tutorial runs it; no switch else
NO_CONTROLNET = {"kerascv": "KerasCV has no ControlNet", "openvino": "the OpenVINO peer converts no ControlNet"}
PEERS = tuple(PEER_XLA)


@dataclasses.dataclass(frozen=True)
class Config:
    xla: bool
    precision: str
    controlnet: bool = False  # one random SD1.5-family ControlNet on every step


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str  # kcv-sd model family: "sd15" or "tiny"
    width: int
    height: int
    steps: int
    batch: int
    repeats: int
    guidance_scale: float = 7.5
    prompt: str = "a photograph of an astronaut riding a horse"


@dataclasses.dataclass(frozen=True)
class Run:
    system: str
    xla: object  # True, False, or None where the system has no such switch
    precision: str
    controlnet: bool = False
    skip_reason: str = None

    @property
    def label(self):
        return f"{self.system} xla={XLA_TEXT[self.xla]} {self.precision}" + (" +controlnet" if self.controlnet else "")

    def spec(self, workload_spec, token_ids):
        """The cold worker's spec for this run (`bench.interleaved` serves the same spec)."""
        return {"job": "cold", "system": self.system, "workload": workload_spec, "token_ids": token_ids,
                "config": {"xla": self.xla, "precision": self.precision, "controlnet": self.controlnet}}


def depth_ramp(width, height):
    """Every system's control image: a synthetic depth map (near at the bottom), RGB uint8 (H, W, 3)."""
    ramp = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)


def _grid(text, everything=False):
    axes = {"xla": list(SWITCH), "precision": list(PRECISIONS), "controlnet": list(SWITCH) if everything else ["off"]}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = (side.strip() for side in part.partition("="))
        if key not in axes:
            raise ValueError(f"unknown configuration key {key!r} in {text!r}: use xla=, precision= and controlnet=")
        axes[key] = [v.strip() for v in values.split(",") if v.strip()]
        if not axes[key]:
            raise ValueError(f"no values for {key!r} in {text!r}")
        allowed = _precisions() if key == "precision" else tuple(SWITCH)
        wrong = [v for v in axes[key] if v not in allowed]
        if wrong:
            raise ValueError(f"{key}={wrong[0]!r}: use {' or '.join(allowed)}")
    return [Config(SWITCH[x], p, SWITCH[c]) for c, x, p in
            itertools.product(axes["controlnet"], axes["xla"], axes["precision"])]


def _precisions():
    from kcv_sd.precision import PRECISIONS as KCV_SD_PRECISIONS  # imports Keras: only when a grid names one

    return KCV_SD_PRECISIONS


def parse_configs(spec):
    """Configurations named by `spec`, in order, without duplicates."""
    grids = [_grid("", everything=True) if g.strip() == "all" else _grid(g) for g in spec.split("+")]
    return list(dict.fromkeys(c for g in grids for c in g))


def parse_peers(spec):
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if names == ["none"]:
        return []
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown peers {unknown}: use {', '.join(PEERS)} or none")
    return list(dict.fromkeys(names))


def peer_skip_reason(peer, workload, controlnet=False):
    if controlnet and peer in NO_CONTROLNET:
        return NO_CONTROLNET[peer]
    missing = [name for name in PEER_MODULES[peer] if importlib.util.find_spec(name) is None]
    if missing:
        return f"not installed ({', '.join(missing)})"
    if workload.model != "sd15":
        return "peers exist only in the SD1.5 architecture, not the tiny model"
    if peer == "kerascv" and (workload.width % 128 or workload.height % 128):
        return "KerasCV needs image sizes that are multiples of 128"
    return None


def plan_runs(configs, peers, workload, skipped_precisions=None):
    """kcv-sd per configuration, then each peer per precision and ControlNet setting; every run in a precision of
    `skipped_precisions` ({precision: why}) is planned as skipped."""
    skipped = skipped_precisions or {}
    runs = [Run("kcv-sd", c.xla, c.precision, c.controlnet, skipped.get(c.precision)) for c in configs]
    settings = dict.fromkeys((c.precision, c.controlnet) for c in configs)
    return runs + [Run(peer, PEER_XLA[peer], precision, controlnet,
                       skipped.get(precision) or peer_skip_reason(peer, workload, controlnet))
                   for peer in peers for precision, controlnet in settings]


def emulated_precisions(configs, flags, device_kind):
    """{precision: why it is not run} for the configurations' 16-bit precisions that this machine's CPU emulates
    (`kcv_sd.devices.emulated_16_bit`): a preset's grid leaves them out, as `precision="auto"` does. `device_kind`
    is called only if the CPU lacks a type, so machines with the instructions never pay for asking."""
    from kcv_sd.devices import emulated_16_bit, emulation_reason

    found = {c.precision: emulated_16_bit(c.precision, "cpu", flags) for c in configs}
    if not any(found.values()) or device_kind() != "cpu":
        return {}
    return {precision: f"{emulation_reason(kind)}; --configs runs it anyway" for precision, kind in found.items()
            if kind}


@dataclasses.dataclass(frozen=True)
class Preset:
    workload: Workload
    configs: str
    peers: str


PRESETS = {
    # The default: issue 19's targets, at the size people use (its run time on 2 cores: BENCHMARKS.md). 2 repeats keep
    # each figure a median of two and each interleaved pair at 4 rounds.
    "sd512": Preset(Workload("sd15", 512, 512, steps=2, batch=1, repeats=2),
                    "xla=off;precision=float32,bfloat16;controlnet=off,on", "kerascv,diffusers,openvino"),
    # The same architecture at 128x128, for development (~20 min; fixed overheads weigh more at this size).
    "quick": Preset(Workload("sd15", 128, 128, steps=2, batch=1, repeats=3),
                    "xla=off,on;precision=float32 + xla=off;precision=mixed_bfloat16,bfloat16 "
                    "+ xla=off;precision=float32,mixed_bfloat16;controlnet=on",
                    "kerascv,diffusers"),
    # The tiny model family, for tests and smoke runs.
    "tiny": Preset(Workload("tiny", 64, 64, steps=2, batch=1, repeats=2),
                   "xla=off;precision=float32;controlnet=off,on", "none"),
    # The published KerasCV-vs-diffusers workload: 3 images, 50 steps, 512x512.
    "tutorial": Preset(Workload("sd15", 512, 512, steps=50, batch=3, repeats=3), "all", "kerascv,diffusers"),
}
