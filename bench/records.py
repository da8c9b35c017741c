"""One result row per system and configuration, from its cold worker's raw timings.

The first image is split into first-call overhead (tracing, compilation) and
the image itself, taken as the warm median. Host overhead is the warm median
less the timed stages (tokenization, noise, scheduling, Python glue). With a
ControlNet, the ControlNet step, the plain UNet step and the ControlNet alone
come from the same passes; the UNet's FLOP/s use the plain step.
"""

import statistics

import numpy as np

# The compute dtype of each 16-bit precision (kcv_sd.precision's policies).
# Written out here because this module runs in the bench's parent process,
# which imports no framework.
HALF_DTYPES = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float16": "float16", "bfloat16": "bfloat16"}


def summarize(seconds):
    """Repeated timings as their median, min, max and quartiles; None if there are none."""
    if not seconds:
        return None
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return {"runs": len(seconds), "times_s": list(seconds), "median_s": float(median),
            "min_s": float(min(seconds)), "max_s": float(max(seconds)),
            "q1_s": float(q1), "q3_s": float(q3)}


def precision_note(precision, probe):
    """A label for a 16-bit precision whose matmuls are no faster than float32's here."""
    dtype = HALF_DTYPES.get(precision)
    rates = (probe or {}).get("matmul", {}).get("flops_per_s_by_dtype")
    if dtype is None or not rates:
        return None
    ratio = rates[dtype] / rates["float32"]
    if ratio < 1:
        return f"no fast {dtype} on this device ({dtype} matmul at {ratio:.2f}x float32)"
    return None


def _cold(raw, warm_median):
    cold = {"interpreter_s": raw["started_at"] - raw["spawned_at"], "import_s": raw["import_s"],
            "build_s": raw["build_s"], "first_call_s": raw["first_call_s"],
            "total_s": raw["first_image_at"] - raw["spawned_at"]}
    if warm_median is not None:
        cold["first_call_overhead_s"] = raw["first_call_s"] - warm_median
        cold["generate_s"] = warm_median
    return cold


def _median_over_passes(passes, key):
    return statistics.median(s for p in passes for s in p[key])


def _stages(passes, steps, warm_median):
    if not passes:
        return None
    stages = {"text_encoding_s": statistics.median(p["text_encoding_s"] for p in passes),
              "step_s": _median_over_passes(passes, "step_s"),
              "decode_s": statistics.median(p["decode_s"] for p in passes), "passes": len(passes)}
    timed = stages["text_encoding_s"] + steps * stages["step_s"] + stages["decode_s"]
    stages["host_overhead_s"] = warm_median - timed
    if "unet_step_s" in passes[0]:
        stages["unet_step_s"] = _median_over_passes(passes, "unet_step_s")
        stages["controlnet_s"] = _median_over_passes(passes, "controlnet_s")
        stages["controlnet_step_ratio"] = stages["step_s"] / stages["unet_step_s"]
    return stages


def _memory(raw):
    if "peak_rss_bytes" not in raw:
        return None
    return {"peak_rss_bytes": raw["peak_rss_bytes"], "peak_device_bytes": raw.get("peak_device_bytes")}


def _record(run, status, error):
    return {"system": run.system, "xla": run.xla, "precision": run.precision, "controlnet": run.controlnet,
            "status": status, "error": error, "failed_during": None, "traceback": None, "pid": None,
            "device": None, "notes": [], "cold": None, "warm": None, "stages": None, "unet": None,
            "memory": None}


def build_record(run, raw, workload, unet_step_flops, probe):
    """`run` is the planned `bench.configs.Run`; `raw` what its cold worker measured."""
    record = _record(run, raw.get("status", "failed"), raw.get("error"))
    record.update({
        "failed_during": raw.get("phase") if raw.get("status") != "ok" else None,
        "traceback": raw.get("traceback"), "pid": raw.get("pid"), "device": raw.get("device"),
        "notes": list(raw.get("notes", [])), "memory": _memory(raw),
    })
    note = precision_note(run.precision, probe)
    if note:
        record["notes"].append(note)
    warm = summarize(raw.get("warm_s", []))
    if warm:
        warm["warmup_runs_excluded"] = 1
        record["warm"] = warm
    warm_median = warm["median_s"] if warm else None
    if "first_image_at" in raw:
        record["cold"] = _cold(raw, warm_median)
    if warm_median is not None:
        record["stages"] = _stages(raw.get("stages"), workload.steps, warm_median)
    if record["stages"] and unet_step_flops:
        stages = record["stages"]
        achieved = unet_step_flops / stages.get("unet_step_s", stages["step_s"])
        matmul = (probe or {}).get("matmul", {}).get("float32_flops_per_s")
        record["unet"] = {"flops_per_step": unet_step_flops, "achieved_flops_per_s": achieved,
                          "fraction_of_float32_matmul": achieved / matmul if matmul else None}
    return record


def skipped_record(run):
    return _record(run, "skipped", run.skip_reason)
