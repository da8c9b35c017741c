"""`kcv-sd study`: measurements across settings, written as images, a contact sheet, CSV and JSON.

Registered on `kcv_sd.cli.main`.
"""

import os
from pathlib import Path

import click

from controlnet.control_images import load_depth
from controlnet.depth_estimation import DEFAULT_DEPTH_MODEL, load_depth_estimator
from kcv_sd import __version__, samples
from kcv_sd import study as studies
from kcv_sd.arguments import check_number
from kcv_sd.cli_common import pipeline_options, user_errors
from kcv_sd.control import load_control_image
from kcv_sd.errors import InvalidArgumentError, OutputError
from kcv_sd.generation import check_generate, get_pipeline
from kcv_sd.png import check_destination, save_png

DEFAULT_SAMPLE = "room_wide"  # wide, so every ratio crops something different
DEFAULT_CONTROLNET = "lllyasviel/sd-controlnet-depth"
DEFAULT_RATIOS = "1:1,3:2,2:3,16:9,9:16,21:9"
TIMING_NOTE = ("latency_s: warm call (the second at each size); first_call_s: the first, "
               "including tracing and XLA compilation for the new shape")


@click.group()
def study():
    """Studies: quality and speed measured across settings."""


@study.command("aspect-ratio")
@click.option("--control", default=None,
              help=f"Depth map, near = bright [default: the shipped {DEFAULT_SAMPLE} sample].")
@click.option("--estimate-depth", is_flag=True,
              help="--control is an RGB photo: estimate its depth first (transformers, torch).")
@click.option("--prompt", default=None, help="Required with --control [default: the sample's prompt].")
@click.option("--negative-prompt", default=None)
@click.option("--ratios", default=DEFAULT_RATIOS, show_default=True, help="Comma-separated W:H, 1:4 to 4:1.")
@click.option("--controlnet", "controlnet_source", default=None,
              help=f"Depth ControlNet: .safetensors, repo id, or 'random' (random weights, for latency only) "
                   f"[default: {DEFAULT_CONTROLNET}; --model tiny needs one].")
@click.option("--output-dir", required=True, help="Folder for the images, contact sheet, CSV and JSON.")
@click.option("--steps", default=20, show_default=True, help="Sampler steps.")
@click.option("--seed", default=0, show_default=True, help="Noise seed, the same for every ratio.")
@click.option("--guidance", default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--control-scale", default=1.0, show_default=True, help="controlnet_conditioning_scale.")
@click.option("--sizing", type=click.Choice(studies.STUDY_SIZING_MODES), default="crop", show_default=True,
              help="How the control map meets each shape.")
@click.option("--pixel-budget", default=512 * 512, show_default=True,
              help="Pixels per image; sides are multiples of 8.")
@pipeline_options
@click.option("--depth-estimator/--no-depth-estimator", default=False, show_default=True,
              help="Also correlate each image's estimated depth with the input (DPT-MiDaS; downloads once).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@user_errors
def aspect_ratio(control, estimate_depth, prompt, negative_prompt, ratios, controlnet_source, output_dir,
                 steps, seed, guidance, control_scale, sizing, pixel_budget, model, weights, precision,
                 xla, depth_estimator, overwrite):
    """Generate one control map and seed at several aspect ratios; time and score each."""
    pairs = studies.parse_ratios(ratios)
    sizes = [studies.ratio_size(pair, pixel_budget) for pair in pairs]  # checks the budget early
    labels = [f"{w}:{h}" for w, h in pairs]
    if control is None:
        if estimate_depth:
            raise InvalidArgumentError("--estimate-depth needs --control PHOTO: the RGB photo to read depth from")
        control, prompt = samples.sample_depth_path(DEFAULT_SAMPLE), prompt or samples.sample_prompt(DEFAULT_SAMPLE)
    elif prompt is None:
        raise InvalidArgumentError("--prompt is required with --control: describe the scene of the control map")
    if controlnet_source is None:
        if model != "sd15":
            raise InvalidArgumentError(
                f"--model {model} needs --controlnet: a checkpoint of its ControlNet config, or 'random'")
        controlnet_source = DEFAULT_CONTROLNET
    for width, height in sizes:  # every size's call, checked before any model is built
        check_generate(prompt, negative_prompt, model=model, precision=precision, width=width, height=height,
                       num_inference_steps=steps, guidance_scale=guidance, seed=seed)
    check_number("--control-scale", control_scale, fix="use a finite number (1.0 is usual)")
    folder = Path(output_dir)
    image_paths = [folder / f"ratio_{label.replace(':', '-')}.png" for label in labels]
    sheet, csv_path, json_path = folder / "contact_sheet.png", folder / "study.csv", folder / "study.json"
    _check_outputs(folder, [*image_paths, sheet, csv_path, json_path], overwrite)

    estimator = None
    if depth_estimator or estimate_depth:
        estimator = load_depth_estimator(DEFAULT_DEPTH_MODEL)
    # Read before the models load, so a bad file fails fast.
    control_depth = estimator(load_control_image(control)) if estimate_depth else load_depth(control)
    _make_folder(folder)
    pipeline = get_pipeline(model, weights, precision, "auto" if xla is None else xla)
    precision, xla = pipeline.components.precision, pipeline.jit_compile  # what "auto" chose
    records = studies.aspect_ratio_study(
        pipeline, control_depth, prompt, ratios, controlnet_source,
        seed=seed, steps=steps, pixel_budget=pixel_budget, sizing=sizing, negative_prompt=negative_prompt,
        depth_estimator=estimator if depth_estimator else None, on_record=_echo_progress,
        guidance_scale=guidance, controlnet_conditioning_scale=control_scale)
    parameters = dict(
        study="aspect-ratio", prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
        guidance=guidance, control_scale=control_scale, sizing=sizing, pixel_budget=pixel_budget,
        ratios=labels, sizes=[f"{w}x{h}" for w, h in sizes], control=str(control),
        estimate_depth=estimate_depth, controlnet=controlnet_source,
        controlnet_weights="random" if controlnet_source == studies.RANDOM_CONTROLNET else "checkpoint",
        model=model, weights=weights, precision=precision, xla=xla,
        depth_model=DEFAULT_DEPTH_MODEL if depth_estimator or estimate_depth else None,
        timing=TIMING_NOTE, kcv_sd_version=__version__)
    for record, path in zip(records, image_paths):
        save_png(record.image, path, {**parameters, "ratio": record.ratio,
                                      "width": record.width, "height": record.height}, overwrite=overwrite)
    studies.write_contact_sheet(records, sheet)
    studies.write_records(records, csv_path, json_path, parameters)
    click.echo(f"wrote {len(records)} images, {sheet.name}, {csv_path.name} and {json_path.name} to {folder}")


def _check_outputs(folder, paths, overwrite):
    """Every output checked before anything is read or generated."""
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(f"--output-dir {folder} is a file; choose a folder")
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InvalidArgumentError(
            f"{existing[0]}{more} already exists: pass --overwrite or choose another --output-dir")
    if folder.is_dir():
        check_destination(paths[0], overwrite, "--output-dir")
        return
    existing = next(parent for parent in folder.absolute().parents if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"Cannot make --output-dir {folder}: {existing} takes no new folders.")


def _make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"Cannot make --output-dir {folder} ({error.strerror}).") from None


def _echo_progress(record):
    line = (f"{record.ratio:>5} {record.width}x{record.height}: {record.latency_s:.2f} s "
            f"(first call {record.first_call_s:.2f} s), edge F1 {record.edge_f1:.2f}")
    if record.depth_correlation is not None:
        line += f", depth r {record.depth_correlation:.2f}"
    click.echo(line)
