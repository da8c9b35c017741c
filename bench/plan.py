"""The runs of one benchmark, in order: kcv-sd per configuration, then peers.

Peers run once per precision (and ControlNet setting) in the configuration
set: KerasCV with jit_compile on (as its tutorial runs it), diffusers with no
XLA switch. A peer that cannot run here is planned as skipped, with the
reason; KerasCV has no ControlNet.
"""

import dataclasses
import importlib.util

PEER_MODULES = {"kerascv": ("keras_cv",), "diffusers": ("torch", "diffusers", "transformers")}
PEER_XLA = {"kerascv": True, "diffusers": None}


@dataclasses.dataclass(frozen=True)
class Run:
    system: str
    xla: object  # True, False, or None where the system has no such switch
    precision: str
    controlnet: bool = False
    skip_reason: str = None

    @property
    def label(self):
        xla = {True: "xla=on", False: "xla=off", None: "xla=n/a"}[self.xla]
        return f"{self.system} {xla} {self.precision}" + (" +controlnet" if self.controlnet else "")


def peer_skip_reason(peer, workload, controlnet=False):
    if peer == "kerascv" and controlnet:
        return "KerasCV has no ControlNet"
    missing = [name for name in PEER_MODULES[peer] if importlib.util.find_spec(name) is None]
    if missing:
        return f"not installed ({', '.join(missing)})"
    if workload.model != "sd15":
        return "peers exist only in the SD1.5 architecture, not the tiny model"
    if peer == "kerascv" and (workload.width % 128 or workload.height % 128):
        return "KerasCV needs image sizes that are multiples of 128"
    return None


def plan_runs(configs, peers, workload):
    runs = [Run("kcv-sd", c.xla, c.precision, c.controlnet) for c in configs]
    settings = list(dict.fromkeys((c.precision, c.controlnet) for c in configs))
    for peer in peers:
        runs += [Run(peer, PEER_XLA[peer], precision, controlnet, peer_skip_reason(peer, workload, controlnet))
                 for precision, controlnet in settings]
    return runs
