"""Issues 6 and 19's latency targets, checked against one run's own rows: kcv-sd's best configuration in each precision
against each peer's best row in the same precision, or against an interleaved peer in their pair where there is one."""

import dataclasses
import functools

from bench.configs import XLA_TEXT
from bench.records import field
from bench.table import CONTROLNET_TARGET, seconds

# Issue 6's latency targets: our / their ratio must be at most this.
WARM_TARGET, EQUAL_QUALITY_TARGET, COLD_TARGET = 0.80, 0.35, 0.70
FLOPS_TARGET = 0.90  # UNet step FLOP/s as a fraction of the best matmul measured
EQUAL_QUALITY_STEPS = {"ours": 20, "kerascv": 50}  # DPM-Solver++ 2M vs KerasCV's DDIM


@dataclasses.dataclass(frozen=True)
class PeerTarget:
    """Against a peer of `bench.interleaved`: our / their warm image (interleaved where run so) at most `image`, and
    guided UNet step (fresh-process stage medians) at most `step`, in `precisions` (None: every precision)."""
    image: float
    step: float = None
    precisions: tuple = None


PEER_TARGETS = {"diffusers": PeerTarget(image=0.75),  # issue 6
                "openvino": PeerTarget(image=1.00, step=1.00, precisions=("float32", "bfloat16"))}  # issue 19


def _plain_rows(records, system, precision):
    """The ok rows of `system` in `precision` without a ControlNet: what targets compare."""
    return [r for r in records if r["system"] == system and r["precision"] == precision
            and not r.get("controlnet") and r["status"] == "ok"]


def _best(records, precision, system, part="warm", key="median_s"):
    """The best (lowest) `part.key` among `_plain_rows`."""
    return min((v for r in _plain_rows(records, system, precision) if (v := field(r, part, key)) is not None),
               default=None)


def _at_steps(records, system, precision, steps, workload_steps):
    """A warm image's seconds at `steps` steps, from the fastest row's warm and step medians: extrapolated, as the
    per-step cost does not depend on the step count or the sampler's elementwise update."""
    rows = [r for r in _plain_rows(records, system, precision) if r["stages"]]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["warm"]["median_s"])
    return best["warm"]["median_s"] + (steps - workload_steps) * best["stages"]["step_s"]


def _target_row(what, ours, theirs, target):
    if ours is None or theirs is None:
        return None
    ratio = ours / theirs
    return [what, seconds(ours), seconds(theirs), f"{ratio:.2f}x", f"<= {target:.2f}x",
            "met" if ratio <= target else "missed"]


def _peer_rows(records, precision, interleaved, peer, target):
    """`target`'s rows against `peer`: the warm image from the ok interleaved pair where there is one (the
    fresh-process rows ran minutes apart), else from the best rows; the guided step from the best stage rows."""
    best = functools.partial(_best, records, precision)
    pair = next((pair for pair in interleaved if pair["status"] == "ok" and pair["precision"] == precision
                 and pair["systems"][1]["system"] == peer), None)
    what, ours, theirs = f"warm image vs {peer}, equal steps", best("kcv-sd"), best(peer)
    if pair:
        what, ours, theirs = f"{what}, interleaved", pair["warm"][0]["median_s"], pair["warm"][1]["median_s"]
    rows = [_target_row(f"{what} ({precision}; s)", ours, theirs, target.image)]
    if target.step is not None:
        rows.append(_target_row(f"guided UNet step vs {peer} ({precision}; s)", best("kcv-sd", "stages", "step_s"),
                                best(peer, "stages", "step_s"), target.step))
    return rows


def _precision_targets(records, precision, workload_steps, best_matmul, interleaved):
    best = functools.partial(_best, records, precision)
    steps = EQUAL_QUALITY_STEPS
    rows = [
        _target_row(f"warm image vs KerasCV, equal steps ({precision}; s)", best("kcv-sd"), best("kerascv"),
                    WARM_TARGET),
        _target_row(f"DPM++ 2M {steps['ours']} steps vs KerasCV DDIM {steps['kerascv']} ({precision}; s, "
                    "extrapolated from step medians)",
                    _at_steps(records, "kcv-sd", precision, steps["ours"], workload_steps),
                    _at_steps(records, "kerascv", precision, steps["kerascv"], workload_steps), EQUAL_QUALITY_TARGET),
        _target_row(f"cold start vs KerasCV ({precision}; s)", best("kcv-sd", "cold", "total_s"),
                    best("kerascv", "cold", "total_s"), COLD_TARGET),
    ]
    rows += [row for peer, target in PEER_TARGETS.items() if precision in (target.precisions or [precision])
             for row in _peer_rows(records, precision, interleaved, peer, target)]
    rows += [_target_row(f"UNet+ControlNet step / UNet step (xla={XLA_TEXT[r['xla']]}, {precision}; s)",
                         r["stages"]["step_s"], r["stages"]["unet_step_s"], CONTROLNET_TARGET)
             for r in records if r["system"] == "kcv-sd" and r["precision"] == precision
             and field(r, "stages", "controlnet_step_ratio") is not None]
    step_s = best("kcv-sd", "stages", "step_s")
    unet = next((r["unet"] for r in records if r["unet"]), None)
    if step_s and unet and best_matmul:
        achieved = unet["flops_per_step"] / step_s
        fraction = achieved / best_matmul
        rows.append([f"UNet step FLOP/s / best matmul FLOP/s ({precision})", f"{achieved / 1e9:.1f} GFLOP/s",
                     f"{best_matmul / 1e9:.1f} GFLOP/s", f"{100 * fraction:.0f}%", f">= {100 * FLOPS_TARGET:.0f}%",
                     "met" if fraction >= FLOPS_TARGET else "missed"])
    return [row for row in rows if row is not None]


def best_matmul_flops_per_s(machine):
    """The fastest matmul the probe measured, in any dtype; None without a probe."""
    matmul = field(machine, "matmul")
    return max([matmul["float32_flops_per_s"], *matmul["flops_per_s_by_dtype"].values()]) if matmul else None


def target_rows(records, workload_steps, best_matmul_flops_per_s=None, interleaved=()):
    """Issues 6 and 19's targets from this run's rows, per precision kcv-sd ran in."""
    headers = ["target", "kcv-sd", "reference", "ratio", "target", "status"]
    precisions = dict.fromkeys(r["precision"] for r in records if r["system"] == "kcv-sd")
    return headers, [row for precision in precisions for row in
                     _precision_targets(records, precision, workload_steps, best_matmul_flops_per_s, interleaved)]
