"""Render the sample depth maps shipped in kcv_sd/samples_data: simple scenes ray-cast in numpy.

    python samples/render_scenes.py [--out DIR]

Three scenes (a room, a street, a bust) at three aspect ratios each, saved as
16-bit grayscale PNGs of disparity (1 / depth, near = bright, as ControlNet's
MiDaS-trained depth models expect), plus prompts.json pairing each with a prompt.

Reruns give identical pixels on any machine: only IEEE-exact elementwise
operations (+, -, *, /, sqrt, min, max) are used, no trigonometry, sums or BLAS.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "kcv_sd" / "samples_data"
ASPECTS = {"square": (512, 512), "wide": (1216, 512), "tall": (512, 768)}
FOCAL = 1.2  # focal length in units of the image's shorter side


def _sub(a, b):
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a):
    length = math.sqrt(_dot(a, a))
    return (a[0] / length, a[1] / length, a[2] / length)


def plane(point, normal):
    def hit(eye, direction):
        t = _dot(_sub(point, eye), normal) / _dot(direction, normal)
        return np.where(t > 0, t, np.inf)
    return hit


def ellipsoid(center, radii):
    """Also the sphere, with equal radii: a unit sphere in coordinates scaled by the radii."""
    def hit(eye, direction):
        origin = tuple((e - c) / r for e, c, r in zip(eye, center, radii))
        scaled = tuple(d / r for d, r in zip(direction, radii))
        a, b = _dot(scaled, scaled), _dot(scaled, origin)
        discriminant = b * b - a * (_dot(origin, origin) - 1)
        t = (-b - np.sqrt(np.maximum(discriminant, 0))) / a
        return np.where((discriminant >= 0) & (t > 0), t, np.inf)
    return hit


def box(low, high):
    """An axis-aligned box, by the slab method."""
    def hit(eye, direction):
        t_near, t_far = -np.inf, np.inf
        for axis in range(3):
            t_low = (low[axis] - eye[axis]) / direction[axis]
            t_high = (high[axis] - eye[axis]) / direction[axis]
            t_near = np.maximum(t_near, np.minimum(t_low, t_high))
            t_far = np.minimum(t_far, np.maximum(t_low, t_high))
        return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    return hit


def _room():
    shapes = [plane((0, 0, 0), (0, 1, 0)), plane((0, 2.8, 0), (0, -1, 0)),
              plane((0, 0, -4), (0, 0, 1)), plane((-3, 0, 0), (1, 0, 0)),
              plane((3, 0, 0), (-1, 0, 0)),
              box((-1.3, 0, -2.2), (-0.3, 0.9, -1.2)), box((-1.0, 0.9, -1.9), (-0.6, 1.3, -1.5)),
              ellipsoid((0.75, 0.45, -1.3), (0.45, 0.45, 0.45)),
              box((1.6, 0, -4), (2.8, 2.0, -3.5))]
    return (0, 1.4, 2.2), (0, 0.8, -1.5), shapes


def _street():
    shapes = [plane((0, 0, 0), (0, 1, 0)),
              box((-9, 0, -200), (-5, 0.15, 5)), box((5, 0, -200), (9, 0.15, 5)),
              box((1.2, 0, -14), (3.0, 1.4, -9.5))]
    left_heights, right_heights = (12, 18, 9, 22, 14, 10, 16, 20), (15, 8, 20, 11, 24, 13, 9, 17)
    for i, (left, right) in enumerate(zip(left_heights, right_heights)):
        start = -6 - 14 * i
        shapes.append(box((-16, 0, start - 11), (-9, left, start)))
        shapes.append(box((9, 0, start - 17), (16, right, start - 6)))
    return (0, 1.7, 0), (0, 1.6, -30), shapes


def _bust():
    shapes = [plane((0, 0, 0), (0, 1, 0)), plane((0, 0, -1.2), (0, 0, 1)),
              ellipsoid((0, 1.68, 0), (0.11, 0.11, 0.11)),
              ellipsoid((0, 1.5, 0), (0.055, 0.09, 0.055)),
              ellipsoid((0, 1.2, 0), (0.3, 0.22, 0.14)),
              box((-0.18, 0, -0.15), (0.18, 0.98, 0.15))]
    return (0, 1.45, 1.6), (0, 1.35, 0), shapes


SCENES = {
    "room": (_room, "a cozy living room with a wooden table, a large ball on the floor and a "
                    "bookshelf, warm afternoon light, photograph"),
    "street": (_street, "a city street at dusk lined with buildings, wet asphalt, a parked car, "
                        "street lights, photograph"),
    "bust": (_bust, "a marble bust of a person on a pedestal in a museum gallery, soft light, "
                    "photograph"),
}


def render_depth(scene, width, height):
    """Planar depth (distance along the view axis) per pixel; inf where rays miss (sky)."""
    eye, target, shapes = SCENES[scene][0]()
    forward = _unit(_sub(target, eye))
    right = _unit(_cross(forward, (0, 1, 0)))
    up = _cross(right, forward)
    focal = FOCAL * min(width, height)
    across = ((np.arange(width) + 0.5 - width / 2) / focal)[None, :]
    down = ((np.arange(height) + 0.5 - height / 2) / focal)[:, None]
    # The forward component is 1, so a ray's parameter is its planar depth.
    direction = tuple(f + across * r - down * u for f, r, u in zip(forward, right, up))
    depth = np.full((height, width), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for hit in shapes:
            depth = np.minimum(depth, hit(eye, direction))
    return depth


def render_disparity_png(scene, width, height):
    """uint16 (H, W): 1 / depth stretched to 0..65535, near = bright, sky black."""
    disparity = 1 / render_depth(scene, width, height)
    low, high = disparity.min(), disparity.max()
    return np.round((disparity - low) / (high - low) * 65535).astype(np.uint16)


def sample_index():
    """What prompts.json holds: per sample, its depth file, prompt, aspect and size."""
    return {f"{scene}_{aspect}": {"depth": f"depth/{scene}_{aspect}.png", "prompt": prompt,
                                  "aspect": aspect, "width": width, "height": height}
            for scene, (_, prompt) in SCENES.items()
            for aspect, (width, height) in ASPECTS.items()}


def write_samples(out_dir):
    out_dir = Path(out_dir)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    index = sample_index()
    for name, entry in index.items():
        scene = name.rsplit("_", 1)[0]
        pixels = render_disparity_png(scene, entry["width"], entry["height"])
        Image.fromarray(pixels).save(out_dir / entry["depth"], optimize=True)
    (out_dir / "prompts.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write into")
    write_samples(parser.parse_args().out)
