"""The files a benchmark writes into its output folder: every figure as JSON, one row per record as CSV, and cold start
beside warm image as a bar chart."""

import csv
import json

import matplotlib

matplotlib.use("Agg")  # files only: no display on benchmark machines
import matplotlib.pyplot as plt
import numpy as np

from bench.configs import XLA_TEXT
from bench.records import field

JSON_NAME, CSV_NAME, PNG_NAME = "results.json", "results.csv", "cold_warm.png"
CSV_FIELDS = [
    ("system",), ("xla",), ("precision",), ("controlnet",), ("status",), ("error",), ("device",), ("pid",),
    ("cold", "interpreter_s"), ("cold", "import_s"), ("cold", "build_s"), ("cold", "first_call_s"),
    ("cold", "first_call_overhead_s"), ("cold", "generate_s"), ("cold", "total_s"), ("cold", "graph_cache"),
    ("cold_filled", "first_call_overhead_s"), ("cold_filled", "total_s"),
    ("warm", "runs"), ("warm", "median_s"), ("warm", "min_s"), ("warm", "max_s"), ("warm", "q1_s"), ("warm", "q3_s"),
    ("stages", "text_encoding_s"), ("stages", "step_s"), ("stages", "decode_s"), ("stages", "host_overhead_s"),
    ("stages", "control_embedding_s"), ("stages", "unet_step_s"), ("stages", "controlnet_s"),
    ("stages", "controlnet_step_ratio"),
    ("memory", "peak_rss_images_bytes"), ("memory", "peak_rss_bytes"), ("memory", "peak_device_bytes"),
    ("unet", "flops_per_step"), ("unet", "achieved_flops_per_s"), ("unet", "fraction_of_same_dtype_matmul"),
    ("other_load_cores",), ("fresh_memory_gib_s",),
]


def write_files(report, folder, title):
    records = report["results"]
    (folder / JSON_NAME).write_text(json.dumps(report, indent=2))
    write_csv(records, folder / CSV_NAME)
    plot_cold_warm(records, title, folder / PNG_NAME)


def write_csv(records, path):
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["_".join(keys) for keys in CSV_FIELDS] + ["notes"])
        writer.writerows([field(record, *keys) for keys in CSV_FIELDS] + ["; ".join(record["notes"])]
                         for record in records)


def _label(record):
    controlnet = "\n+ControlNet" if record.get("controlnet") else ""
    return f"{record['system']}\nxla={XLA_TEXT[record['xla']]}\n{record['precision']}{controlnet}"


def plot_cold_warm(records, title, path):
    x = np.arange(len(records))
    cold = [(r["cold"] or {}).get("total_s", np.nan) for r in records]
    warm = [(r["warm"] or {}).get("median_s", np.nan) for r in records]
    spread = np.array([[w - (r["warm"] or {}).get("min_s", w), (r["warm"] or {}).get("max_s", w) - w]
                       for w, r in zip(warm, records)]).T
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(records) + 2), 5))
    ax.bar(x - 0.2, cold, 0.4, label="cold start (fresh process to first image)")
    ax.bar(x + 0.2, warm, 0.4, yerr=spread, capsize=3, label="warm image (median, min-max)")
    for i, r in enumerate(records):
        if r["status"] != "ok":
            ax.text(i, 0.5, r["status"], ha="center", va="bottom", rotation=90, transform=ax.get_xaxis_transform())
    ax.set_xticks(x, [_label(r) for r in records], fontsize=8)
    ax.set_xlim(-0.6, len(records) - 0.4)
    if np.nanmax([0, *cold, *warm]) > 0:  # a log axis needs data: every row may have failed
        ax.set_ylabel("seconds (log scale)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel("seconds (no row ran)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
