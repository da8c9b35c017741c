"""One result row per system and configuration, from its cold worker's raw timings.

The first image is split into first-call overhead (tracing, compilation) and the image itself, taken as the warm
median; `cold_filled` is a second fresh process of a kcv-sd row whose own process wrote graphs to the graph cache.
Host overhead is the warm median less the timed stages. With a ControlNet, its embedding of the control image (once
per call), the ControlNet step, the plain UNet step and the ControlNet alone come from the same passes; the UNet's
FLOP/s use the plain step, beside the matmul rate of the precision's compute dtype.
"""

import statistics

import numpy as np


def field(record, *keys):
    """`record[key1][key2]...`, None where a part is missing."""
    for key in keys:
        record = (record or {}).get(key)
    return record


def summarize(seconds):
    """Repeated timings as their median, min, max and quartiles; None if there are none."""
    if not seconds:
        return None
    q1, median, q3 = np.percentile(seconds, [25, 50, 75])
    return {"runs": len(seconds), "times_s": list(seconds), "median_s": float(median), "min_s": float(min(seconds)),
            "max_s": float(max(seconds)), "q1_s": float(q1), "q3_s": float(q3)}


def compute_dtype(precision):
    """The dtype a precision's matmuls run in: mixed_bfloat16 -> bfloat16."""
    return precision.removeprefix("mixed_")


def precision_note(precision, probe):
    """A label for a 16-bit precision whose matmuls are no faster than float32's here."""
    dtype, rates = compute_dtype(precision), field(probe, "matmul", "flops_per_s_by_dtype")
    if dtype in ("float16", "bfloat16") and rates and rates[dtype] < rates["float32"]:
        return f"no fast {dtype} on this device ({dtype} matmul at {rates[dtype] / rates['float32']:.2f}x float32)"
    return None


def graph_cache_state(sources):
    """What a kcv-sd process found in the graph cache: "empty" (it traced and wrote every graph it keeps), "filled"
    (it read every one), "partly filled", each noting graphs that cannot be kept; None where it kept no graphs (XLA,
    or a peer)."""
    kept = [source for source in sources or () if source != "uncached"]
    if not kept:
        return None
    read = kept.count("cache")
    state = "filled" if read == len(kept) else "empty" if not read else "partly filled"
    return state + (f" ({len(sources) - len(kept)} of {len(sources)} graphs not kept)" if len(kept) < len(sources)
                    else "")


def cold_starts(record):
    """(cold-start parts, what to judge its load by) for a row's own process and, where it ran, its second one with
    the graph cache filled (which records its own load)."""
    return [(cold, source) for cold, source in ((record["cold"], record), (record.get("cold_filled"),) * 2) if cold]


def cold_parts(raw, warm_median):
    """A cold worker's start split into parts (interpreter, import, build, first call; the first-call overhead over
    `warm_median`), with the graph cache's state."""
    cold = {"interpreter_s": raw["started_at"] - raw["spawned_at"], "import_s": raw["import_s"],
            "build_s": raw["build_s"], "first_call_s": raw["first_call_s"],
            "total_s": raw["first_image_at"] - raw["spawned_at"],
            "graph_cache": graph_cache_state(raw.get("graph_sources"))}
    if warm_median is not None:
        cold.update(first_call_overhead_s=raw["first_call_s"] - warm_median, generate_s=warm_median)
    return cold


def _stages(passes, steps, warm_median):
    if not passes:
        return None

    def over_steps(key):  # every step of every pass
        return statistics.median(s for p in passes for s in p[key])

    stages = {"text_encoding_s": statistics.median(p["text_encoding_s"] for p in passes),
              "step_s": over_steps("step_s"), "decode_s": statistics.median(p["decode_s"] for p in passes),
              "passes": len(passes)}
    if "unet_step_s" in passes[0]:  # with a ControlNet: its embedding of the control image once per call
        stages.update(control_embedding_s=statistics.median(p["control_embedding_s"] for p in passes),
                      unet_step_s=over_steps("unet_step_s"), controlnet_s=over_steps("controlnet_s"))
        stages["controlnet_step_ratio"] = stages["step_s"] / stages["unet_step_s"]
    timed = (stages["text_encoding_s"] + stages.get("control_embedding_s", 0) + steps * stages["step_s"]
             + stages["decode_s"])
    stages["host_overhead_s"] = warm_median - timed
    return stages


def _record(run, status, error, **measured):
    return {"system": run.system, "xla": run.xla, "precision": run.precision, "controlnet": run.controlnet,
            "status": status, "error": error, "failed_during": None, "traceback": None, "pid": None,
            "device": None, "notes": [], "cold": None, "cold_filled": None, "warm": None, "stages": None, "unet": None,
            "memory": None, "other_load_cores": None, "fresh_memory_gib_s": None, **measured}


def build_record(run, raw, workload, unet_step_flops, probe):
    """`run` is the planned `bench.configs.Run`; `raw` what its cold worker measured."""
    warm = summarize(raw.get("warm_s", []))
    if warm:
        warm["warmup_runs_excluded"] = 1
    median = warm["median_s"] if warm else None
    note = precision_note(run.precision, probe)
    memory = {key: raw.get(key) for key in ("peak_rss_bytes", "peak_rss_images_bytes", "peak_device_bytes")}
    record = _record(
        run, raw.get("status", "failed"), raw.get("error"),
        failed_during=raw.get("phase") if raw.get("status") != "ok" else None, traceback=raw.get("traceback"),
        pid=raw.get("pid"), device=raw.get("device"), notes=list(raw.get("notes", [])) + ([note] if note else []),
        cold=cold_parts(raw, median) if "first_image_at" in raw else None, warm=warm,
        stages=_stages(raw.get("stages"), workload.steps, median) if median is not None else None,
        memory=memory if "peak_rss_bytes" in raw else None, other_load_cores=raw.get("other_load_cores"),
        fresh_memory_gib_s=raw.get("fresh_memory_gib_s"))
    stages = record["stages"]
    if field(stages, "controlnet_step_ratio") and unet_step_flops and probe.get("controlnet_step_flops"):
        # The ratio a ControlNet running at the UNet's FLOP rate reaches (`bench.flops.controlnet_flops`).
        stages["controlnet_flop_ratio"] = 1 + probe["controlnet_step_flops"] / unet_step_flops
    if stages and unet_step_flops:
        achieved = unet_step_flops / stages.get("unet_step_s", stages["step_s"])
        matmul = field(probe, "matmul", "flops_per_s_by_dtype", compute_dtype(run.precision))
        record["unet"] = {"flops_per_step": unet_step_flops, "achieved_flops_per_s": achieved,
                          "fraction_of_same_dtype_matmul": achieved / matmul if matmul else None}
    return record


def skipped_record(run):
    return _record(run, "skipped", run.skip_reason)
