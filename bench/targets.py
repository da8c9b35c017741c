"""Issue 6's latency targets, checked against one run's own rows.

kcv-sd's best configuration in each precision is compared with each peer's
best row in the same precision, or with diffusers in their interleaved pair
where there is one; the equal-quality row extrapolates from step medians.
"""

from bench.configs import XLA_TEXT
from bench.table import CONTROLNET_TARGET, field, seconds

# Issue 6's latency targets: (what, our / their ratio must be at most this).
WARM_TARGET, EQUAL_QUALITY_TARGET, DIFFUSERS_TARGET, COLD_TARGET = 0.80, 0.35, 0.75, 0.70
FLOPS_TARGET = 0.90  # UNet step FLOP/s as a fraction of the best matmul measured
EQUAL_QUALITY_STEPS = {"ours": 20, "kerascv": 50}  # DPM-Solver++ 2M vs KerasCV's DDIM


def _plain_rows(records, system, precision):
    """The ok rows of `system` in `precision` without a ControlNet: what targets compare."""
    return [r for r in records if r["system"] == system and r["precision"] == precision
            and not r.get("controlnet") and r["status"] == "ok"]


def _best(records, system, precision, part, key):
    """The best (lowest) `part.key` among `_plain_rows`."""
    values = [field(r, part, key) for r in _plain_rows(records, system, precision) if field(r, part, key) is not None]
    return min(values) if values else None


def _at_steps(records, system, precision, steps, workload_steps):
    """A warm image's seconds at `steps` steps, from the best row's warm median
    and step median: extrapolated, as the per-step cost does not depend on
    the step count or the sampler's elementwise update."""
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


def _vs_diffusers(records, precision, interleaved):
    """From the ok interleaved pair where there is one: the fresh-process rows ran minutes apart."""
    pair = next((pair for pair in interleaved if pair["status"] == "ok" and pair["precision"] == precision
                 and pair["systems"][1]["system"] == "diffusers"), None)
    if pair:
        ours, theirs = (warm["median_s"] for warm in pair["warm"])
        return _target_row(f"warm image vs diffusers, equal steps, interleaved ({precision}; s)", ours, theirs,
                           DIFFUSERS_TARGET)
    return _target_row(f"warm image vs diffusers, equal steps ({precision}; s)",
                       _best(records, "kcv-sd", precision, "warm", "median_s"),
                       _best(records, "diffusers", precision, "warm", "median_s"), DIFFUSERS_TARGET)


def _precision_targets(records, precision, workload_steps, best_matmul_flops_per_s, interleaved):
    def best(system, part, key):
        return _best(records, system, precision, part, key)

    rows = [
        _target_row(f"warm image vs KerasCV, equal steps ({precision}; s)", best("kcv-sd", "warm", "median_s"),
                    best("kerascv", "warm", "median_s"), WARM_TARGET),
        _target_row(f"DPM++ 2M {EQUAL_QUALITY_STEPS['ours']} steps vs KerasCV DDIM "
                    f"{EQUAL_QUALITY_STEPS['kerascv']} ({precision}; s, extrapolated from step medians)",
                    _at_steps(records, "kcv-sd", precision, EQUAL_QUALITY_STEPS["ours"], workload_steps),
                    _at_steps(records, "kerascv", precision, EQUAL_QUALITY_STEPS["kerascv"], workload_steps),
                    EQUAL_QUALITY_TARGET),
        _vs_diffusers(records, precision, interleaved),
        _target_row(f"cold start vs KerasCV ({precision}; s)", best("kcv-sd", "cold", "total_s"),
                    best("kerascv", "cold", "total_s"), COLD_TARGET),
    ]
    for r in records:
        ratio = field(r, "stages", "controlnet_step_ratio")
        if r["system"] == "kcv-sd" and r["precision"] == precision and ratio is not None:
            rows.append(_target_row(f"UNet+ControlNet step / UNet step (xla={XLA_TEXT[r['xla']]}, {precision}; s)",
                                    r["stages"]["step_s"], r["stages"]["unet_step_s"], CONTROLNET_TARGET))
    unet_step_s = best("kcv-sd", "stages", "step_s")
    unet = next((r["unet"] for r in records if r["unet"]), None)
    if unet_step_s and unet and best_matmul_flops_per_s:
        achieved = unet["flops_per_step"] / unet_step_s
        fraction = achieved / best_matmul_flops_per_s
        rows.append([f"UNet step FLOP/s / best matmul FLOP/s ({precision})", f"{achieved / 1e9:.1f} GFLOP/s",
                     f"{best_matmul_flops_per_s / 1e9:.1f} GFLOP/s", f"{100 * fraction:.0f}%",
                     f">= {100 * FLOPS_TARGET:.0f}%", "met" if fraction >= FLOPS_TARGET else "missed"])
    return [row for row in rows if row is not None]


def best_matmul_flops_per_s(machine):
    """The fastest matmul the probe measured, in any dtype; None without a probe."""
    matmul = (machine or {}).get("matmul")
    if not matmul:
        return None
    return max([matmul["float32_flops_per_s"], *matmul["flops_per_s_by_dtype"].values()])


def target_rows(records, workload_steps, best_matmul_flops_per_s=None, interleaved=()):
    """Issue 6's targets from this run's rows: kcv-sd's best configuration per
    precision against each peer's best row in the same precision, or against
    diffusers in their `interleaved` pair where there is one."""
    headers = ["target", "kcv-sd", "reference", "ratio", "target", "status"]
    precisions = dict.fromkeys(r["precision"] for r in records if r["system"] == "kcv-sd")
    return headers, [row for precision in precisions
                     for row in _precision_targets(records, precision, workload_steps, best_matmul_flops_per_s,
                                                   interleaved)]
