"""The aspect-ratio study: does a depth ControlNet keep its structure away from square, and at what cost?

One control depth map and one seed are generated at several aspect ratios of
about the same pixel count. Each output is scored against the control map as
the pipeline fitted it (same size, same sizing mode): Canny-edge fidelity and,
given a depth estimator, the Pearson correlation of the output's estimated
depth with the input depth.

Timing: each size is generated twice with the same seed (same image).
`first_call_s` includes tracing and, with XLA, compiling for the new shape;
`latency_s` is the second, warm call, the cost of every later image. Both are
the wall time of the whole pipeline call (text encoding, denoising, decoding).
"""

import csv
import dataclasses
import json
import math
import re
import time

import numpy as np
from PIL import Image

from controlnet.control_images import depth_to_control, load_depth
from controlnet.sizing import MAX_ASPECT_RATIO, fit_control_image, output_size
from controlnet.structure import structure_fidelity
from kcv_sd.errors import InvalidArgumentError

STUDY_SIZING_MODES = ("crop", "pad", "resize")  # "native" would ignore the ratio
RANDOM_CONTROLNET = "random"
_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass
class RatioRecord:
    """One ratio's output, size, timings and scores; `image` is not serialised."""

    ratio: str
    width: int
    height: int
    first_call_s: float
    latency_s: float
    edge_f1: float
    edge_precision: float
    edge_recall: float
    chamfer_px: float
    depth_correlation: float | None
    image: Image.Image = dataclasses.field(repr=False)

    def row(self):
        return {key: getattr(self, key) for key in RECORD_KEYS}


RECORD_KEYS = tuple(field.name for field in dataclasses.fields(RatioRecord) if field.name != "image")


def parse_ratio(text):
    """(width, height) from "W:H"; positive integers within the pipeline's aspect limit."""
    match = _RATIO.match(str(text))
    if not match:
        raise InvalidArgumentError(f"ratio {text!r} is not W:H in whole numbers; write it like 3:2")
    width, height = int(match[1]), int(match[2])
    if width == 0 or height == 0:
        raise InvalidArgumentError(f"ratio {text!r} has a zero side; both sides must be positive, like 3:2")
    if max(width / height, height / width) > MAX_ASPECT_RATIO:
        raise InvalidArgumentError(
            f"ratio {text!r} is {max(width / height, height / width):.2f}:1, beyond the "
            f"{MAX_ASPECT_RATIO:g}:1 limit; use ratios from 1:{MAX_ASPECT_RATIO:g} to {MAX_ASPECT_RATIO:g}:1")
    return width, height


def parse_ratios(ratios):
    """(width, height) pairs from "1:1,3:2" or a list of "W:H" strings; each once."""
    items = ratios.split(",") if isinstance(ratios, str) else list(ratios)
    if not items:
        raise InvalidArgumentError("no ratios given; pass some, like 1:1,3:2")
    parsed = [parse_ratio(item) for item in items]
    repeated = sorted({f"{w}:{h}" for w, h in parsed if parsed.count((w, h)) > 1})
    if repeated:
        raise InvalidArgumentError(f"ratio {', '.join(repeated)} given twice; list each ratio once")
    return parsed


def ratio_size(ratio, pixel_budget=512 * 512):
    """(width, height) for a (W, H) ratio: `native` sizing of a W x H image."""
    width, height = ratio
    return output_size((height, width), "native", pixel_budget=pixel_budget)


def resolve_controlnet(pipeline, source, seed=0):
    """A ControlNet loaded once for every ratio (a new object would recompile the step).

    `source`: a `kcv_sd.controlnet.ControlNet`, checkpoint path, repo id, or "random":
    random weights of the pipeline family's ControlNet config, drawn from
    `seed`, for latency-only studies (their structure scores mean nothing).
    """
    # TensorFlow-side modules, imported on use: the study's CLI starts without them.
    from kcv_sd.components import randomize
    from kcv_sd.control import load_controlnet
    from kcv_sd.controlnet import ControlNet
    from kcv_sd.precision import dtype_policy_scope

    config = pipeline.components.family.controlnet
    precision = pipeline.components.precision
    if not (isinstance(source, str) and source == RANDOM_CONTROLNET):
        return load_controlnet(source, config, precision)

    with dtype_policy_scope(precision):
        model = ControlNet(config, initializer="zeros")
        randomize([layer for layer in model.model().layers if layer.weights], seed)
    return model


def depth_correlation(reference, estimated):
    """Pearson correlation of two depth maps, the estimate resized to the reference; NaN if one is flat."""
    estimated = np.asarray(estimated, np.float32)
    if estimated.ndim != 2:
        raise InvalidArgumentError(
            f"depth estimator returned shape {estimated.shape}; it must return depth (H, W)")
    height, width = reference.shape
    if estimated.shape != reference.shape:
        estimated = fit_control_image(estimated, "resize", width, height)
    a = reference.ravel() - reference.mean()
    b = estimated.ravel() - estimated.mean()
    scale = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / scale if scale else float("nan")


def aspect_ratio_study(pipeline, control, prompt, ratios, controlnet, seed=0, steps=20,
                       pixel_budget=512 * 512, sizing="crop", negative_prompt=None,
                       depth_estimator=None, on_record=None, **generate_options):
    """One `RatioRecord` per ratio, in order.

    Args:
        pipeline: a `kcv_sd.pipeline.Pipeline`.
        control: a depth map as `load_depth` reads it (path, array, PIL), or
            float (H, W) depth in [0, 1], near = bright (as `load_depth` returns).
        ratios: "1:1,3:2" or a list of "W:H".
        controlnet: as `resolve_controlnet` takes it (resolve it first to
            reuse it across studies).
        pixel_budget: pixels per output; sides are multiples of 8.
        sizing: how the control map meets each shape: crop, pad or resize.
        depth_estimator: optional callable, RGB image -> depth (H, W), for
            `depth_correlation`; None leaves it None.
        on_record: called with each record as it is done (progress).
        generate_options: more `Pipeline.__call__` arguments (guidance_scale, ...).
    """
    if sizing not in STUDY_SIZING_MODES:
        raise InvalidArgumentError(
            f"sizing {sizing!r} cannot follow a ratio; use one of {', '.join(STUDY_SIZING_MODES)}")
    sizes = [(f"{w}:{h}", ratio_size((w, h), pixel_budget)) for w, h in parse_ratios(ratios)]
    depth = control if isinstance(control, np.ndarray) and control.dtype.kind == "f" else load_depth(control)
    control_image = depth_to_control(depth)
    controlnet = resolve_controlnet(pipeline, controlnet, seed)
    records = []
    for label, (width, height) in sizes:
        arguments = dict(negative_prompt=negative_prompt, width=width, height=height,
                         num_inference_steps=steps, seed=seed, output_type="np", image=control_image,
                         controlnet=controlnet, control_sizing=sizing, **generate_options)
        first_call_s, _ = _timed(pipeline, prompt, arguments)
        latency_s, pixels = _timed(pipeline, prompt, arguments)
        fitted = fit_control_image(control_image, sizing, width, height)
        correlation = None
        if depth_estimator is not None:
            correlation = depth_correlation(fitted[..., 0] / np.float32(255), depth_estimator(pixels[0]))
        record = RatioRecord(label, width, height, first_call_s, latency_s,
                             **structure_fidelity(pixels[0], fitted),
                             depth_correlation=correlation, image=Image.fromarray(pixels[0]))
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def _timed(pipeline, prompt, arguments):
    start = time.perf_counter()
    pixels = pipeline(prompt, **arguments)
    return time.perf_counter() - start, pixels


def panel_title(record):
    """'3:2 768x512 | 1.23 s | F1 0.41' (warm latency), plus the depth correlation if scored."""
    title = f"{record.ratio} {record.width}x{record.height} | {record.latency_s:.2f} s | F1 {record.edge_f1:.2f}"
    if record.depth_correlation is not None:
        title += f" | depth r {record.depth_correlation:.2f}"
    return title


def write_contact_sheet(records, path, columns=3):
    """One titled panel per ratio (each keeps its aspect ratio), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, len(records))
    rows = math.ceil(len(records) / columns)
    figure = Figure(figsize=(4.5 * columns, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes:
        axis.set_axis_off()
    for axis, record in zip(axes, records):
        axis.imshow(record.image)
        axis.set_title(panel_title(record), fontsize=9)
    figure.savefig(path, dpi=100)


def write_records(records, csv_path, json_path, parameters=None):
    """The records as CSV (one row each) and JSON ({"parameters", "records"}).

    Undefined numbers (an edgeless image's infinite chamfer distance, a flat
    depth's correlation) are written as "inf"/"nan" in CSV and null in JSON.
    """
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, RECORD_KEYS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in record.row().items()} for record in records)
    rows = [{k: _json_number(v) for k, v in record.row().items()} for record in records]
    with open(json_path, "w") as file:
        json.dump({"parameters": parameters or {}, "records": rows}, file, indent=2, allow_nan=False)


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
