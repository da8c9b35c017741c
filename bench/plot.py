"""Cold start and warm image time per configuration and peer, as one bar chart."""

import matplotlib

matplotlib.use("Agg")  # files only: no display on benchmark machines
import matplotlib.pyplot as plt
import numpy as np

from bench.table import XLA_TEXT


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
    ax.set_ylabel("seconds (log scale)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
