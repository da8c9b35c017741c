"""Result records as tables (rows of formatted cells), shown as plain text in the terminal or as Markdown in
BENCHMARKS.md; the targets are in `bench.targets`."""

from bench.configs import XLA_TEXT
from bench.records import cold_starts, field

KEY_HEADERS = ["system", "xla", "precision", "ControlNet"]


def seconds(value):
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def cores(value):
    return "-" if value is None else f"{value:.2f}"


def times(ratio):
    return "-" if ratio is None else f"{ratio:.2f}x"


def gib(value):
    return "-" if value is None else f"{value / 2**30:.1f}"


def median_and_range(warm):
    """A warm summary as "median (min-max)" seconds."""
    return f"{seconds(warm['median_s'])} ({seconds(warm['min_s'])}-{seconds(warm['max_s'])})"


def ratio_range(ratios):
    """Round ratios as "min-max" with an x."""
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def as_text(headers, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [headers, ["-" * w for w in widths], *rows])


def as_markdown(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows])


def _key(record):
    return [record["system"], XLA_TEXT[record["xla"]], record["precision"], "on" if record.get("controlnet") else "off"]


def summary_rows(records):
    headers = KEY_HEADERS + ["cold start s", "warm median s", "warm min-max s", "step s", "UNet GFLOP/s",
                             "% of same-dtype matmul", "peak RSS, images GiB", "peak RSS, all GiB", "peak GPU GiB",
                             "other load, cores", "status / notes"]
    rows = []
    for r in records:
        warm, unet = r["warm"] or {}, r["unet"] or {}
        fraction = unet.get("fraction_of_same_dtype_matmul")
        status = "ok" if r["status"] == "ok" else f"{r['status']}: {r['error']}"
        rows.append(_key(r) + [
            seconds(field(r, "cold", "total_s")), seconds(warm.get("median_s")),
            f"{seconds(warm.get('min_s'))}-{seconds(warm.get('max_s'))}" if warm else "-",
            seconds(field(r, "stages", "step_s")),
            f"{unet['achieved_flops_per_s'] / 1e9:.1f}" if unet else "-", f"{100 * fraction:.1f}%" if fraction else "-",
            *(gib(field(r, "memory", key)) for key in ("peak_rss_images_bytes", "peak_rss_bytes", "peak_device_bytes")),
            cores(r.get("other_load_cores")),
            "; ".join([status, *r["notes"]])])
    return headers, rows


def cold_rows(records):
    """A row per cold start: each row's own process, then, for kcv-sd, the next one with the graph cache filled."""
    headers = KEY_HEADERS + ["graph cache", "interpreter s", "import s", "build + weights s", "first-call overhead s",
                             "image s", "cold total s", "fresh memory GiB/s"]
    keys = ("interpreter_s", "import_s", "build_s", "first_call_overhead_s", "generate_s", "total_s")
    return headers, [_key(r) + [cold.get("graph_cache") or "-"] + [seconds(cold.get(key)) for key in keys]
                     + [_rate(source.get("fresh_memory_gib_s"))] for r in records for cold, source in cold_starts(r)]


def _rate(gib_s):
    return "-" if gib_s is None else f"{gib_s:.2f}"


def stage_rows(records):
    headers = KEY_HEADERS + ["text encoding s", "denoise step s", "decode s", "host overhead s", "warm median s"]
    keys = ("text_encoding_s", "step_s", "decode_s", "host_overhead_s")
    return headers, [_key(r) + [seconds(r["stages"].get(key)) for key in keys] + [seconds(field(r, "warm", "median_s"))]
                     for r in records if r["stages"]]


def controlnet_rows(records):
    """The control image's embedding (once per call), UNet step, ControlNet alone and the two together, timed in the
    same passes; beside the step ratio, the ratio of their FLOPs (what the step ratio is at the UNet's FLOP rate)."""
    headers = KEY_HEADERS[:3] + ["embedding per call s", "UNet step s", "ControlNet alone s", "UNet+ControlNet step s",
                                 "step ratio", "FLOP ratio"]
    keys = ("control_embedding_s", "unet_step_s", "controlnet_s", "step_s")
    return headers, [_key(r)[:3] + [seconds(r["stages"].get(key)) for key in keys]
                     + [times(r["stages"]["controlnet_step_ratio"]), times(r["stages"].get("controlnet_flop_ratio"))]
                     for r in records if field(r, "stages", "controlnet_step_ratio") is not None]


def interleaved_rows(interleaved):
    """Each interleaved pair: both systems' warm images and their ratios."""
    headers = ["precision", "kcv-sd", "peer", "kcv-sd warm median s (min-max)", "peer warm median s (min-max)",
               "ratio of medians", "round ratios min-max", "other load, cores", "status"]
    rows = []
    for pair in interleaved:
        ours, peer = pair["systems"]
        measured, status = ["-"] * 4, f"failed: {pair.get('error')}"
        if pair["status"] == "ok":
            measured = [*map(median_and_range, pair["warm"]), f"{pair['ratio']:.2f}x",
                        ratio_range(pair["round_ratios"])]
            status = "ok"
        rows.append([pair["precision"], f"xla={XLA_TEXT[ours['config']['xla']]}", peer["system"], *measured,
                     cores(pair.get("other_load_cores")), status])
    return headers, rows


def ablation_rows(ablation):
    headers = ["lever", "effect", "warm image s (median)", "vs", "ratio"]
    if ablation.get("status") != "ok":
        return headers, [["(ablation failed)", ablation.get("error", ""), "-", "-", "-"]]
    return headers, [[row["lever"], row["effect"], seconds(row["median_s"]),
                      row["baseline"] if row["baseline"] != row["lever"] else "-",
                      f"{row['ratio_to_baseline']:.2f}x"] for row in ablation["rows"]]


def published_rows(published):
    headers = ["GPU (published)", "KerasCV warm s", "diffusers warm s", "KerasCV cold s", "diffusers cold s"]
    keys = ("kerascv_warm_s", "diffusers_warm_s", "kerascv_cold_s", "diffusers_cold_s")
    return headers, [[row["gpu"]] + [seconds(row[key]) for key in keys] for row in published["rows"]]
