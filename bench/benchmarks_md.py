"""A report's tables, shown in the terminal and in BENCHMARKS.md, which is written whole from one run's report so that
it never drifts by hand."""

from bench import table
from bench.records import field
from bench.targets import LOAD_LIMIT, target_rows

# Each table's title in the terminal and its heading in BENCHMARKS.md, in the order both show them.
TITLES = {
    "summary": ("", "## Results (measured here)"),
    "cold": ("Cold start parts:", "### Cold start, part by part (seconds)"),
    "stages": ("Warm stages:", "### Warm stages (seconds, medians)"),
    "controlnet": ("ControlNet step cost:", "### ControlNet step cost (seconds, medians)"),
    "interleaved": ("Interleaved with peers:", "### kcv-sd and its peers, interleaved (seconds)"),
    "targets": ("Targets:", "## Targets (issues 6 and 19), from this run's rows"),
    "ablation": ("Ablation:", "## Ablation: one lever at a time"),
    "published": ("Published (not measured here):", "## Published figures (not measured here)"),
}

DEFINITIONS = """\
- **Cold start**: wall time from spawning a fresh Python process to the first finished image(s), split into
  interpreter start-up, imports, build with weights, and the first call. The first call is split again into its
  first-call overhead (tracing and compilation: first image minus the warm median) and the image itself (the warm
  median). A kcv-sd row whose process wrote graphs to the graph cache starts once more with the cache filled; that
  process makes one more image, and its overhead is over that image.
- **Warm**: later images in the same process; the first image is the warm-up and is excluded. Median with min-max
  over the repeats.
- **Stages**: text encoding (prompt and empty negative prompt), one guided denoising step (UNet on both halves,
  guidance, update), VAE decoding, each synchronised; host overhead is the warm median minus text encoding, steps
  x step time and decoding (and, with a ControlNet, the control image's embedding) (tokenization, noise,
  scheduling, Python glue). It comes out slightly negative when the
  separately synchronised stages add up to more than a whole image: read small values as zero.
- **Step s**: one guided denoising step as the configuration runs it (with its ControlNet when ControlNet is on).
- **ControlNet**: one random ControlNet of the SD1.5 depth ControlNet's architecture on every step, fed a
  synthetic depth map; KerasCV and the OpenVINO peer have none. kcv-sd embeds the control image once per call (the
  hint encoder; diffusers runs it in every step) and times that apart. In the same stage passes the plain UNet step
  and the ControlNet alone (on the guided batch, from the embedding) are timed beside the ControlNet step; the step
  ratio is UNet+ControlNet step / UNet step, both medians from one process. The FLOP ratio is 1 + the ControlNet's
  analytic FLOPs per step / the UNet's (`bench/flops.py`): the step ratio of a ControlNet that runs at the UNet's
  FLOP rate.
- **UNet GFLOP/s**: an analytic count of the UNet's convolutions, dense layers and attention matmuls
  (`bench/flops.py`) for one guided step, divided by the median time of the plain UNet step, beside the matmul
  rate in the precision's compute dtype (float32; bfloat16 for bfloat16 and mixed_bfloat16; float16 likewise) on the
  same device.
- **Peak RSS, images**: the worker process's peak resident memory after building, the first image and the warm
  images, before the stage passes (which compile functions a user never runs, such as the plain UNet step beside the
  ControlNet step); the memory targets use it. **Peak RSS, all**: the peak at the end, stage passes included.
  **Peak GPU**: TensorFlow's or torch's peak allocation on the GPU, when there is one.
- **Other load, cores**: the CPU time that processes outside the benchmark used while a row's (or a pair's) processes
  ran, per wall second: the machine's busy time (`/proc/stat`) less the benchmark's own processes'. Above
  {load_limit} cores a target timed there is "unreliable (load)" rather than met or missed; "-" where there is no
  `/proc/stat`.
- All systems use **random weights** of the benchmarked architecture (SD1.5 unless the tiny test model is chosen):
  pretrained weights cannot be downloaded on this machine. Timings depend on the architecture, not on weight
  values; the images are noise.
- kcv-sd's processes (rows, interleaved pairs, ablation) run as `kcv-sd generate --weight-cache auto` does: oneDNN
  **weight caching** (`kcv_sd.weight_cache`) on a CPU with AMX where four more copies of the UNet's and ControlNets'
  weights are free (the ablation: four per variant), for one more copy of those weights per compiled step function,
  which the peak RSS includes. Each row's notes say which it was. KerasCV and diffusers run stock; **OpenVINO** runs diffusers' parts
  converted with `openvino.convert_model` at static shapes and compiled for the CPU (conversion counts as build)."""

TARGETS_NOTE = """\
kcv-sd's best configuration in each precision against the peer's best row in the same precision, all measured in this
run on this machine; against diffusers and OpenVINO, the interleaved medians where they exist. The equal-quality row extrapolates
whole images to 20 and 50 steps from each row's warm median and step median (the step's cost does not depend on the
step count or the sampler's elementwise update); every other row is measured directly. A limit (first-call overhead,
memory with a ControlNet) stands as the reference. Issue 19 sets its targets at 512x512 (`--preset sd512`)."""

INTERLEAVED_NOTE = """\
kcv-sd's fastest configuration in each precision (by the rows above) and each peer (diffusers, OpenVINO), each built
in its own fresh process, warmed up with one image, then asked for images in turn: {rounds} rounds, the order flipping
every round, so that drift in the machine's load falls on both alike (the rows above ran minutes apart). The
whole-image targets against these peers use these medians. Under the mixed precisions kcv-sd (and the OpenVINO peer)
keep the text encoder and VAE in float32, while diffusers, which has no mixed precision, runs its whole pipeline in
16 bits; the 16-bit precisions (`bfloat16`, `float16`) compare like with like."""

ABLATION_NOTE = """\
kcv-sd's levers one at a time, in one fresh process with one set of models (xla off, precision {precision}, the
workload above); each variant is warmed up once, then all variants run in interleaved rounds ({rounds} rounds; the
ablation took {minutes:.1f} of the run's minutes, beside {load} cores of other load). The ratio compares a variant's
median with its baseline's. Levers that change the images are options, off by default."""


def report_tables(report):
    """Every table of a report by name, in the order of `TITLES`."""
    records, interleaved = report["results"], report.get("interleaved") or []
    tables = {"summary": table.summary_rows(records), "cold": table.cold_rows(records),
              "stages": table.stage_rows(records), "controlnet": table.controlnet_rows(records)}
    if interleaved:
        tables["interleaved"] = table.interleaved_rows(interleaved)
    tables["targets"] = target_rows(records, report["workload"]["steps"],
                                    field(report["machine"], "matmul", "flops_per_s_by_dtype"), interleaved)
    if report.get("ablation"):
        tables["ablation"] = table.ablation_rows(report["ablation"])
    tables["published"] = table.published_rows(report["published"])
    return tables


def as_text(report):
    """The report's tables as the terminal shows them."""
    return "\n\n".join((f"{TITLES[name][0]}\n" if TITLES[name][0] else "") + table.as_text(*rows)
                       for name, rows in report_tables(report).items())


def _machine(report):
    env, matmul = report["environment"], report["machine"]["matmul"] or {}
    load = env["load_average_1_5_15_min"]
    devices = ", ".join(d["model"] or d["name"] for d in env.get("devices") or []) or "unknown"
    lines = [
        f"- CPU: {env['cpu_model']}, {env['cpu_count']} logical cores, {env['memory_gib']} GiB memory",
        f"- Devices seen by TensorFlow: {devices}",
        f"- Python {env['python']} on {env['platform']}",
        (f"- Load average (1, 5, 15 min) at start {load['start']}, at end {load['end']} "
         "(anything well above 0 means other work shared the machine)"),
        "- " + ", ".join(f"{name} {version}" for name, version in env["versions"].items() if version),
    ]
    if matmul:
        rates = ", ".join(f"{dtype} {rate / 1e9:.0f}" for dtype, rate in matmul["flops_per_s_by_dtype"].items())
        lines.append(f"- Matmul yardstick, best of {' and '.join(f'{n}^2' for n in matmul['compare_sizes'])} "
                     f"by dtype (GFLOP/s): {rates}")
    return "\n".join(lines)


def _workload(report):
    w, flops = report["workload"], report["unet_step_flops"]
    return (f"model {w['model']}, {w['width']}x{w['height']}, {w['steps']} steps, batch {w['batch']} "
            f"(images per prompt), guidance {w['guidance_scale']}, {w['repeats']} warm repeats, weights: {w['weights']}"
            + (f"; one guided UNet step = {flops / 1e9:.3g} GFLOP (analytic)" if flops else ""))


def _notes(report):
    """The text between some tables' headings and the tables."""
    published, ablation = report["published"], report.get("ablation")
    notes = {"targets": TARGETS_NOTE,
             "published": f"{published['source']}: {published['workload']['images']} images, "
                          f"{published['workload']['steps']} steps, 512x512, pretrained weights. "
                          "`kcv-bench --preset tutorial` runs this workload."}
    if report.get("interleaved"):
        notes["interleaved"] = INTERLEAVED_NOTE.format(rounds=report["interleaved"][0]["rounds"])
    if ablation:
        notes["ablation"] = ABLATION_NOTE.format(precision=ablation["precision"], rounds=report["workload"]["repeats"],
                                                 minutes=ablation["duration_s"] / 60,
                                                 load=table.cores(ablation.get("other_load_cores")))
    return notes


def render(report):
    """BENCHMARKS.md."""
    notes = _notes(report)
    sections = ["# Benchmarks",
                ("Written by `kcv-bench --write-benchmarks-md`; do not edit by hand, rerun instead. This run: "
                 f"`{report['command']}` on {report['started_at']}, {report['duration_s'] / 60:.1f} minutes."),
                "## Machine", _machine(report), "## Workload", _workload(report)]
    for name, rows in report_tables(report).items():
        sections += [TITLES[name][1], *([notes[name]] if name in notes else []), table.as_markdown(*rows)]
    sections += ["## Definitions", DEFINITIONS.format(load_limit=LOAD_LIMIT),
                 "Raw figures: `results.json` and `results.csv`; chart: `cold_warm.png`, in the output folder."]
    return "\n\n".join(sections) + "\n"
