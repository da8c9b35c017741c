"""What one benchmark run measures: the workload and the configurations.

A configuration is one cell of the grid jit_compile x precision x
ControlNet. The grid syntax is
`xla=off,on;precision=float32,mixed_bfloat16;controlnet=off,on`; a key left
out takes its default (xla and precision: every value; controlnet: off),
several grids join with `+`, and `all` is the full grid. Precision names are
passed through unchecked, so that an unsupported one is measured (and fails)
like any other instead of being dropped before the run.
"""

import dataclasses
import itertools

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
XLA_VALUES = {"off": False, "on": True}
CONTROLNET_VALUES = {"off": False, "on": True}
PEERS = ("kerascv", "diffusers")


@dataclasses.dataclass(frozen=True)
class Config:
    xla: bool
    precision: str
    controlnet: bool = False  # one random SD1.5-family ControlNet on every step

    @property
    def label(self):
        return f"xla={'on' if self.xla else 'off'} {self.precision}" + (" +controlnet" if self.controlnet else "")


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


def _grid(text, everything=False):
    axes = {"xla": list(XLA_VALUES), "precision": list(PRECISIONS),
            "controlnet": list(CONTROLNET_VALUES) if everything else ["off"]}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in axes:
            raise ValueError(f"unknown configuration key {key!r} in {text!r}: use xla=, precision= "
                             "and controlnet=")
        axes[key] = [v.strip() for v in values.split(",") if v.strip()]
        if not axes[key]:
            raise ValueError(f"no values for {key!r} in {text!r}")
    for key, allowed in (("xla", XLA_VALUES), ("controlnet", CONTROLNET_VALUES)):
        for value in axes[key]:
            if value not in allowed:
                raise ValueError(f"{key}={value!r}: use off or on")
    return [Config(XLA_VALUES[x], p, CONTROLNET_VALUES[c])
            for c, x, p in itertools.product(axes["controlnet"], axes["xla"], axes["precision"])]


def parse_configs(spec):
    """Configurations named by `spec`, in order, without duplicates; `all`
    is every combination, with and without a ControlNet."""
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


@dataclasses.dataclass(frozen=True)
class Preset:
    workload: Workload
    configs: str
    peers: str


PRESETS = {
    # About twenty minutes on a 2-core CPU: the full SD1.5 architecture, small.
    "quick": Preset(Workload("sd15", 128, 128, steps=2, batch=1, repeats=3),
                    "xla=off,on;precision=float32 + xla=off;precision=mixed_bfloat16,bfloat16 "
                    "+ xla=off;precision=float32,mixed_bfloat16;controlnet=on",
                    "kerascv,diffusers"),
    # Seconds: the tiny model family, for tests and smoke runs.
    "tiny": Preset(Workload("tiny", 64, 64, steps=2, batch=1, repeats=2),
                   "xla=off;precision=float32;controlnet=off,on", "none"),
    # The published KerasCV-vs-diffusers workload: 3 images, 50 steps, 512x512.
    "tutorial": Preset(Workload("sd15", 512, 512, steps=50, batch=3, repeats=3),
                       "all", "kerascv,diffusers"),
}
