"""Summaries of repeated timings: median with min, max and quartiles."""

import numpy as np


def summarize(seconds):
    if not seconds:
        return None
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return {"runs": len(seconds), "times_s": list(seconds), "median_s": float(median),
            "min_s": float(min(seconds)), "max_s": float(max(seconds)),
            "q1_s": float(q1), "q3_s": float(q3)}
