"""Result records as tables: plain text for the terminal, Markdown for BENCHMARKS.md."""

from bench.configs import XLA_TEXT


def seconds(value):
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _get(record, part, key):
    return (record.get(part) or {}).get(key)


KEY_HEADERS = ["system", "xla", "precision", "ControlNet"]
CONTROLNET_TARGET = 1.40  # issue 3: UNet+ControlNet step / UNet step


def _key(record):
    return [record["system"], XLA_TEXT[record["xla"]], record["precision"],
            "on" if record.get("controlnet") else "off"]


def gib(value):
    return "-" if value is None else f"{value / 2**30:.1f}"


def _status(record):
    if record["status"] == "ok":
        return "ok"
    return f"{record['status']}: {record['error']}"


def summary_rows(records):
    headers = KEY_HEADERS + ["cold start s", "warm median s", "warm min-max s", "step s", "UNet GFLOP/s",
                             "% of f32 matmul", "peak RSS GiB", "peak GPU GiB", "load avg at start",
                             "status / notes"]
    rows = []
    for r in records:
        warm = r["warm"] or {}
        unet = r["unet"] or {}
        fraction = unet.get("fraction_of_float32_matmul")
        notes = "; ".join([_status(r)] + r["notes"]) if r["notes"] or r["status"] != "ok" else "ok"
        rows.append(_key(r) + [
            seconds(_get(r, "cold", "total_s")),
            seconds(warm.get("median_s")),
            f"{seconds(warm.get('min_s'))}-{seconds(warm.get('max_s'))}" if warm else "-",
            seconds(_get(r, "stages", "step_s")),
            f"{unet['achieved_flops_per_s'] / 1e9:.1f}" if unet else "-",
            f"{100 * fraction:.1f}%" if fraction else "-",
            gib(_get(r, "memory", "peak_rss_bytes")), gib(_get(r, "memory", "peak_device_bytes")),
            f"{r['load_average_at_start'][0]:.1f}" if r.get("load_average_at_start") else "-",
            notes,
        ])
    return headers, rows


def cold_rows(records):
    headers = KEY_HEADERS + ["interpreter s", "import s", "build + weights s", "first-call overhead s",
                             "image s", "cold total s"]
    rows = [_key(r) + [seconds(_get(r, "cold", key)) for key in
               ("interpreter_s", "import_s", "build_s", "first_call_overhead_s", "generate_s", "total_s")]
            for r in records if r["cold"]]
    return headers, rows


def stage_rows(records):
    headers = KEY_HEADERS + ["text encoding s", "denoise step s", "decode s", "host overhead s",
                             "warm median s"]
    rows = [_key(r) + [seconds(_get(r, "stages", key)) for key in
               ("text_encoding_s", "step_s", "decode_s", "host_overhead_s")]
            + [seconds(_get(r, "warm", "median_s"))]
            for r in records if r["stages"]]
    return headers, rows


def controlnet_rows(records):
    """UNet step, ControlNet alone and the two together, timed in the same passes."""
    headers = KEY_HEADERS[:3] + ["UNet step s", "ControlNet alone s", "UNet+ControlNet step s",
                                 "step ratio", f"target <= {CONTROLNET_TARGET:.2f}x"]
    rows = []
    for r in records:
        ratio = _get(r, "stages", "controlnet_step_ratio")
        if ratio is None:
            continue
        rows.append(_key(r)[:3] + [seconds(_get(r, "stages", key))
                                   for key in ("unet_step_s", "controlnet_s", "step_s")]
                    + [f"{ratio:.2f}x", "met" if ratio <= CONTROLNET_TARGET else "missed"])
    return headers, rows


def published_rows(published):
    headers = ["GPU (published)", "KerasCV warm s", "diffusers warm s", "KerasCV cold s", "diffusers cold s"]
    rows = [[row["gpu"]] + [seconds(row[key]) for key in
                            ("kerascv_warm_s", "diffusers_warm_s", "kerascv_cold_s", "diffusers_cold_s")]
            for row in published["rows"]]
    return headers, rows


def as_text(headers, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def as_markdown(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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
    values = [_get(r, part, key) for r in _plain_rows(records, system, precision) if _get(r, part, key) is not None]
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
        ratio = _get(r, "stages", "controlnet_step_ratio")
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


def median_and_range(warm):
    """A warm summary as "median (min-max)" seconds."""
    return f"{seconds(warm['median_s'])} ({seconds(warm['min_s'])}-{seconds(warm['max_s'])})"


def ratio_range(ratios):
    """Round ratios as "min-max" with an x."""
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def interleaved_rows(interleaved):
    """Each interleaved pair: both systems' warm images and their ratios."""
    headers = ["precision", "kcv-sd", "peer", "kcv-sd warm median s (min-max)", "peer warm median s (min-max)",
               "ratio of medians", "round ratios min-max", "status"]
    rows = []
    for pair in interleaved:
        ours, peer = pair["systems"]
        cells = [pair["precision"], f"xla={XLA_TEXT[ours['config']['xla']]}", peer["system"]]
        if pair["status"] != "ok":
            rows.append(cells + ["-", "-", "-", "-", f"failed: {pair['error']}"])
            continue
        rows.append(cells + [median_and_range(w) for w in pair["warm"]]
                    + [f"{pair['ratio']:.2f}x", ratio_range(pair["round_ratios"]), "ok"])
    return headers, rows


def ablation_rows(ablation):
    headers = ["lever", "effect", "warm image s (median)", "vs", "ratio"]
    if ablation.get("status") != "ok":
        return headers, [["(ablation failed)", ablation.get("error", ""), "-", "-", "-"]]
    return headers, [[row["lever"], row["effect"], seconds(row["median_s"]),
                      row["baseline"] if row["baseline"] != row["lever"] else "-",
                      f"{row['ratio_to_baseline']:.2f}x"] for row in ablation["rows"]]


def report_tables(report):
    """Every table of a report by name, in the order the terminal and BENCHMARKS.md show them."""
    records, interleaved = report["results"], report.get("interleaved") or []
    tables = {"summary": summary_rows(records), "cold": cold_rows(records), "stages": stage_rows(records),
              "controlnet": controlnet_rows(records)}
    if interleaved:
        tables["interleaved"] = interleaved_rows(interleaved)
    tables["targets"] = target_rows(records, report["workload"]["steps"], best_matmul_flops_per_s(report["machine"]),
                                    interleaved)
    if report.get("ablation"):
        tables["ablation"] = ablation_rows(report["ablation"])
    tables["published"] = published_rows(report["published"])
    return tables
