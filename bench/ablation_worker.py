"""Latency levers one at a time, in one fresh process: the ablation table.

Run by `bench.subprocess_run` with the workload and `precision`. One set of
random-weight models serves every variant, with oneDNN weight caching on
as in the rows; each variant gets its own pipeline options, is warmed up
once (tracing excluded), and then the variants run in interleaved rounds
so that drift in machine load spreads over all of them alike. A variant is
compared with its `baseline` row: the plain pipeline, or the pipeline with
a ControlNet on every step for the ControlNet levers. Levers that change the
maths say so in their row.
"""

import dataclasses
import json
import statistics
import sys
import time

PROGRESS_PREFIX = "[bench] "


@dataclasses.dataclass(frozen=True)
class Lever:
    name: str
    effect: str  # what it changes, in a few words: "same maths" or the change
    options: dict  # `Pipeline.__call__` options
    compiled_loop: bool = False
    controlnet: bool = False
    baseline: str = "baseline"


LEVERS = (
    Lever("baseline", "step-by-step loop, DDIM, guidance on every step", {}),
    Lever("compiled loop", "same maths: all steps in one tf.while_loop", {}, compiled_loop=True),
    Lever("CFG cutoff 0", "changes the image: unguided (conditional-only) after the first step",
          {"cfg_cutoff_step_ratio": 0.0}),
    Lever("ControlNet, every step", "adds the ControlNet", {}, controlnet=True),
    Lever("ControlNet window end 0.5", "changes the image: no ControlNet in the second half",
          {"control_guidance_end": 0.5}, controlnet=True, baseline="ControlNet, every step"),
    Lever("ControlNet guess mode", "changes the image: ControlNet on the conditional half only",
          {"guess_mode": True}, controlnet=True, baseline="ControlNet, every step"),
)


def progress(message):
    print(PROGRESS_PREFIX + message, flush=True)


def measure(spec):
    import kcv_sd
    from bench.control_input import depth_ramp
    from kcv_sd.study import resolve_controlnet
    from kcv_sd.weight_cache import cache_weights_for_inference

    cache_weights_for_inference()
    w = spec["workload"]
    start = time.perf_counter()
    pipelines = {False: kcv_sd.Pipeline(model=w["model"], weights="random", precision=spec["precision"])}
    pipelines[True] = kcv_sd.Pipeline(components=pipelines[False].components, compiled_loop=True)
    controlnet = resolve_controlnet(pipelines[False], "random")
    progress(f"built in {time.perf_counter() - start:.1f} s")
    control = {"image": depth_ramp(w["width"], w["height"]), "controlnet": controlnet}

    def image(lever, seed):
        options = {**lever.options, **(control if lever.controlnet else {})}
        start = time.perf_counter()
        pipelines[lever.compiled_loop](w["prompt"], width=w["width"], height=w["height"],
                                       num_inference_steps=w["steps"], guidance_scale=w["guidance_scale"],
                                       seed=seed, num_images_per_prompt=w["batch"], output_type="np",
                                       **options)
        return time.perf_counter() - start

    times = {lever.name: [] for lever in LEVERS}
    for lever in LEVERS:
        image(lever, 0)  # warm-up: tracing and compilation
    progress("warmed up every variant")
    for round_index in range(w["repeats"]):
        for lever in LEVERS:
            times[lever.name].append(image(lever, round_index + 1))
        progress(f"round {round_index + 1}/{w['repeats']} done")
    return rows(times)


def rows(times):
    """One row per lever: median seconds and the ratio to its baseline's median."""
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    return [{"lever": lever.name, "effect": lever.effect, "baseline": lever.baseline,
             "times_s": times[lever.name], "median_s": medians[lever.name],
             "ratio_to_baseline": medians[lever.name] / medians[lever.baseline]}
            for lever in LEVERS]


def main(spec_path, result_path):
    import traceback

    with open(spec_path) as source:
        spec = json.load(source)
    result = {"status": "failed", "precision": spec["precision"]}
    try:
        result["rows"] = measure(spec)
        result["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - recorded in the report, the benchmark goes on
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=-8)
        progress(f"ablation failed: {result['error']}")
    with open(result_path, "w") as out:
        json.dump(result, out)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
