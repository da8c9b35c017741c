"""`kcv-bench`: cold start, warm images and per-stage time of kcv-sd and its peers."""

import dataclasses
import shlex
import sys
from pathlib import Path

import click

from bench.benchmark import run_benchmark
from bench.benchmarks_md import as_text, render
from bench.configs import PEERS, PRESETS, emulated_precisions, parse_configs, parse_peers, plan_runs
from bench.launch import device_kind_in_a_child
from bench.outputs import CSV_NAME, JSON_NAME, PNG_NAME, write_files
from kcv_sd.devices import cpu_flags
from kcv_sd.sizes import check_size


def command_line():
    program = "python -m bench" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()


def parsed(parse, text, option):
    try:
        return parse(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=option)


def checked_size(ctx, param, value):
    """--width/--height: kcv-sd's size rule, checked before any process starts."""
    if value is not None:
        parsed(lambda text: check_size(param.name, text), value, f"--{param.name}")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="sd512", show_default=True,
              help="sd512: SD1.5 at 512x512, kcv-sd in float32 and bfloat16 with and without a ControlNet beside "
                   "KerasCV, diffusers and OpenVINO, ~50 min on 2 CPU cores; "
                   "quick: SD1.5 at 128x128 for development, ~20 min; tiny: tiny model, seconds; "
                   "tutorial: the published workload (512x512, 50 steps, 3 images).")
@click.option("--quick", "preset", flag_value="quick", help="Same as --preset quick.")
@click.option("--tiny", "preset", flag_value="tiny", help="Same as --preset tiny (smoke test).")
@click.option("--width", type=int, callback=checked_size, help="Image width, a multiple of 8 (preset's by default).")
@click.option("--height", type=int, callback=checked_size,
              help="Image height, a multiple of 8 (preset's by default).")
@click.option("--steps", type=click.IntRange(1, 1000), help="Denoising steps (1..1000).")
@click.option("--batch", type=click.IntRange(min=1), help="Images per prompt (one prompt).")
@click.option("--repeats", type=click.IntRange(min=1), help="Warm runs after the excluded warm-up, and stage passes.")
@click.option("--configs", help='Configuration grid(s), e.g. "xla=off,on;precision=float32,mixed_bfloat16;'
                                'controlnet=off,on"; join grids with "+"; "all" is every combination.')
@click.option("--peers", help=f'Comma list of {", ".join(PEERS)}, or "none" (openvino: the openvino extra).')
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Folder for results.json, results.csv, cold_warm.png, workers.log.")
@click.option("--timeout", type=click.IntRange(min=1), default=3600, show_default=True,
              help="Seconds allowed per process.")
@click.option("--ablation", is_flag=True,
              help="Also time kcv-sd's latency levers one at a time (in the first configuration's precision).")
@click.option("--write-benchmarks-md", is_flag=True, help="Also write BENCHMARKS.md in the current folder.")
def main(preset, width, height, steps, batch, repeats, configs, peers, output, timeout, ablation,
         write_benchmarks_md):
    """Benchmark kcv-sd beside stock KerasCV, diffusers and OpenVINO, all with random weights.

    Every configuration (jit_compile x precision x ControlNet) and every peer runs in its own fresh Python process:
    the cold start is measured from spawning it to the first image, then warm images and per-stage times in that
    process. kcv-sd's fastest configuration per precision then takes turns with diffusers and OpenVINO, image by
    image, each in its own process.
    """
    given = {"width": width, "height": height, "steps": steps, "batch": batch, "repeats": repeats}
    workload = dataclasses.replace(PRESETS[preset].workload, **{k: v for k, v in given.items() if v is not None})
    config_list = parsed(parse_configs, configs or PRESETS[preset].configs, "--configs")
    # A preset's grid leaves out the 16-bit precisions this CPU emulates, as precision="auto" does.
    skipped = {} if configs else emulated_precisions(config_list, cpu_flags(), device_kind_in_a_child)
    runs = plan_runs(config_list, parsed(parse_peers, peers or PRESETS[preset].peers, "--peers"), workload, skipped)

    log_path = output / "workers.log"
    try:  # the output folder must take files before any process starts
        output.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    except OSError as error:
        raise click.BadParameter(f"cannot write to {output} ({error.strerror})", param_hint="--output") from None
    click.echo(f"kcv-bench: {len(runs)} runs of {workload}; worker logs in {log_path}")
    report = run_benchmark(workload, runs, log_path, click.echo, timeout, command_line(),
                           config_list[0].precision if ablation else None)
    report["files"] = {"json": JSON_NAME, "csv": CSV_NAME, "plot": PNG_NAME, "log": log_path.name}
    write_files(report, output, f"{workload.model} {workload.width}x{workload.height}, {workload.steps} steps, "
                                f"batch {workload.batch}, random weights")
    if write_benchmarks_md:
        Path("BENCHMARKS.md").write_text(render(report))
    click.echo("\n" + as_text(report))
    written = f"{output}/{JSON_NAME}, {CSV_NAME}, {PNG_NAME}" + (" and BENCHMARKS.md" if write_benchmarks_md else "")
    click.echo(f"\nWrote {written}")
