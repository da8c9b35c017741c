"""Issue 6's latency targets, checked against one run's own rows: kcv-sd's best configuration in each precision against
each peer's best row in the same precision, or against diffusers in their interleaved pair where there is one."""

from bench.configs import XLA_TEXT
from bench.records import field
from bench.table import CONTROLNET_TARGET, seconds

# Issue 6's latency targets: our / their ratio must be at most this.
WARM_TARGET, EQUAL_QUALITY_TARGET, DIFFUSERS_TARGET, COLD_TARGET = 0.80, 0.35, 0.75, 0.70
FLOPS_TARGET = 0.90  # UNet step FLOP/s as a fraction of the best matmul measured
EQUAL_QUALITY_STEPS = {"ours": 20, "kerascv": 50}  # DPM-Solver++ 2M vs KerasCV's DDIM


def _plain_rows(records, system, precision):
    """The ok rows of `system` in `precision` without a ControlNet: what targets compare."""
    return [r for r in records if r["system"] == system and r["precision"] == precision
            and not r.get("controlnet") and r["status"] == "ok"]


def _best(records, system, precision, part, key):
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


def _precision_targets(records, precision, workload_steps, best_matmul, interleaved):
    def best(system, part="warm", key="median_s"):
        return _best(records, system, precision, part, key)

    # Against diffusers, the ok interleaved pair where there is one: the fresh-process rows ran minutes apart.
    pair = next((pair for pair in interleaved if pair["status"] == "ok" and pair["precision"] == precision
                 and pair["systems"][1]["system"] == "diffusers"), None)
    what, ours, theirs = "warm image vs diffusers, equal steps", best("kcv-sd"), best("diffusers")
    if pair:
        what, ours, theirs = f"{what}, interleaved", pair["warm"][0]["median_s"], pair["warm"][1]["median_s"]
    steps = EQUAL_QUALITY_STEPS
    rows = [
        _target_row(f"warm image vs KerasCV, equal steps ({precision}; s)", best("kcv-sd"), best("kerascv"),
                    WARM_TARGET),
        _target_row(f"DPM++ 2M {steps['ours']} steps vs KerasCV DDIM {steps['kerascv']} ({precision}; s, "
                    "extrapolated from step medians)",
                    _at_steps(records, "kcv-sd", precision, steps["ours"], workload_steps),
                    _at_steps(records, "kerascv", precision, steps["kerascv"], workload_steps), EQUAL_QUALITY_TARGET),
        _target_row(f"{what} ({precision}; s)", ours, theirs, DIFFUSERS_TARGET),
        _target_row(f"cold start vs KerasCV ({precision}; s)", best("kcv-sd", "cold", "total_s"),
                    best("kerascv", "cold", "total_s"), COLD_TARGET),
    ]
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
    """Issue 6's targets from this run's rows, per precision kcv-sd ran in."""
    headers = ["target", "kcv-sd", "reference", "ratio", "target", "status"]
    precisions = dict.fromkeys(r["precision"] for r in records if r["system"] == "kcv-sd")
    return headers, [row for precision in precisions for row in
                     _precision_targets(records, precision, workload_steps, best_matmul_flops_per_s, interleaved)]
