"""kcv-sd's latency levers one at a time, in one fresh worker: the ablation table.

One set of random-weight models serves every variant, with oneDNN weight caching on an AMX CPU where memory allows a
copy per variant (`choose_weight_cache`, as `kcv-sd generate` decides for one); each variant is warmed up once, then
all run in interleaved rounds, so that drift in the machine's load falls on all alike. A variant is compared with its
`baseline`: the plain pipeline, or for the ControlNet levers the pipeline with a ControlNet.
"""

import dataclasses
import statistics
import time

from bench.launch import run_worker


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
    Lever("DeepCache, interval 3", "changes the image: the full UNet every 3rd step, its shallow pass between",
          {"deep_cache": 3}),
    Lever("token merging 0.5", "changes the image: half the first level's tokens merged before self-attention",
          {"token_merging": 0.5}),
    Lever("ControlNet, every step", "adds the ControlNet", {}, controlnet=True),
    Lever("ControlNet window end 0.5", "changes the image: no ControlNet in the second half",
          {"control_guidance_end": 0.5}, controlnet=True, baseline="ControlNet, every step"),
    Lever("ControlNet guess mode", "changes the image: ControlNet on the conditional half only",
          {"guess_mode": True}, controlnet=True, baseline="ControlNet, every step"),
)


def run_ablation(workload_spec, precision, log_path, echo, timeout_s):
    """The parent side: the table's record, with its precision and duration."""
    echo(f"[ablation] kcv-sd {precision}, one lever at a time (fresh process)")
    started = time.time()
    result = run_worker({"job": "ablation", "workload": workload_spec, "precision": precision},
                        log_path, lambda line: echo(f"    {line}"), timeout_s)
    return {"precision": precision, **result, "duration_s": time.time() - started}


def rows(times):
    """One row per lever: median seconds and the ratio to its baseline's median."""
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    return [{"lever": lever.name, "effect": lever.effect, "baseline": lever.baseline,
             "times_s": times[lever.name], "median_s": medians[lever.name],
             "ratio_to_baseline": medians[lever.name] / medians[lever.baseline]}
            for lever in LEVERS]


def job(spec, result):
    """The worker side: every lever's images, in rounds; fills `result["rows"]`."""
    import kcv_sd
    from bench.configs import depth_ramp
    from bench.measure import timed
    from bench.system_kcv_sd import call_options
    from bench.worker import progress
    from kcv_sd.study import resolve_controlnet
    from kcv_sd.components import family_by_name
    from kcv_sd.weight_cache import choose_weight_cache

    w = spec["workload"]
    progress(choose_weight_cache("auto", family_by_name(w["model"]), spec["precision"], controlnets=1,
                                 step_functions=len(LEVERS))[1])
    start = time.perf_counter()
    pipelines = {False: kcv_sd.Pipeline(model=w["model"], weights="random", precision=spec["precision"])}
    pipelines[True] = kcv_sd.Pipeline(components=pipelines[False].components, compiled_loop=True)
    control = {"image": depth_ramp(w["width"], w["height"]),
               "controlnet": resolve_controlnet(pipelines[False], "random")}
    progress(f"built in {time.perf_counter() - start:.1f} s")

    def image(lever, seed):
        return timed(pipelines[lever.compiled_loop], w["prompt"], seed=seed, **call_options(w), **lever.options,
                     **(control if lever.controlnet else {}))[1]

    times = {lever.name: [] for lever in LEVERS}
    for lever in LEVERS:
        image(lever, 0)  # warm-up: tracing and compilation
    progress("warmed up every variant")
    for round_index in range(w["repeats"]):
        for lever in LEVERS:
            times[lever.name].append(image(lever, round_index + 1))
        progress(f"round {round_index + 1}/{w['repeats']} done")
    result["rows"] = rows(times)
