"""Result records as tables (rows of formatted cells), shown as plain text in
the terminal or as Markdown in BENCHMARKS.md; issue 6's targets are in `bench.targets`."""

from bench.configs import XLA_TEXT


def seconds(value):
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def field(record, *keys):
    """`record[key1][key2]...`, None where a part is missing."""
    value = record
    for key in keys:
        value = (value or {}).get(key)
    return value


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
            seconds(field(r, "cold", "total_s")),
            seconds(warm.get("median_s")),
            f"{seconds(warm.get('min_s'))}-{seconds(warm.get('max_s'))}" if warm else "-",
            seconds(field(r, "stages", "step_s")),
            f"{unet['achieved_flops_per_s'] / 1e9:.1f}" if unet else "-",
            f"{100 * fraction:.1f}%" if fraction else "-",
            gib(field(r, "memory", "peak_rss_bytes")), gib(field(r, "memory", "peak_device_bytes")),
            f"{r['load_average_at_start'][0]:.1f}" if r.get("load_average_at_start") else "-",
            notes,
        ])
    return headers, rows


def cold_rows(records):
    headers = KEY_HEADERS + ["interpreter s", "import s", "build + weights s", "first-call overhead s",
                             "image s", "cold total s"]
    rows = [_key(r) + [seconds(field(r, "cold", key)) for key in
               ("interpreter_s", "import_s", "build_s", "first_call_overhead_s", "generate_s", "total_s")]
            for r in records if r["cold"]]
    return headers, rows


def stage_rows(records):
    headers = KEY_HEADERS + ["text encoding s", "denoise step s", "decode s", "host overhead s",
                             "warm median s"]
    rows = [_key(r) + [seconds(field(r, "stages", key)) for key in
               ("text_encoding_s", "step_s", "decode_s", "host_overhead_s")]
            + [seconds(field(r, "warm", "median_s"))]
            for r in records if r["stages"]]
    return headers, rows


def controlnet_rows(records):
    """UNet step, ControlNet alone and the two together, timed in the same passes."""
    headers = KEY_HEADERS[:3] + ["UNet step s", "ControlNet alone s", "UNet+ControlNet step s",
                                 "step ratio", f"target <= {CONTROLNET_TARGET:.2f}x"]
    rows = []
    for r in records:
        ratio = field(r, "stages", "controlnet_step_ratio")
        if ratio is None:
            continue
        rows.append(_key(r)[:3] + [seconds(field(r, "stages", key))
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
