"""The structure-fidelity score ranks synthetic images with known answers."""

import itertools

import cv2
import numpy as np
import pytest

from controlnet.control_images import canny_edges, depth_to_control
from controlnet.structure import structure_fidelity
from kcv_sd.errors import InvalidArgumentError

HEIGHT, WIDTH = 128, 160


def scene(box=(30, 20, 70, 60), disc=(110, 80, 22)):
    """Depth of a floor ramp with a box and a nearer disc on it."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    depth = (0.1 + 0.2 * y / (HEIGHT - 1)).astype(np.float32)
    left, top, right, bottom = box
    depth[top:bottom, left:right] = 0.7
    cx, cy, radius = disc
    depth[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = 0.9
    return depth


def render(depth, seed=0):
    """A colour image whose regions follow the depth, with mild sensor noise."""
    noise = np.random.default_rng(seed).normal(0, 3, (*depth.shape, 3))
    rgb = np.stack([depth * 200 + 30, depth * 150 + 50, 255 - depth * 200], axis=-1) + noise
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def shift(image, pixels):
    """Moved right and down, the uncovered border filled with the edge values."""
    padded = np.pad(image, ((pixels, 0), (pixels, 0), (0, 0)), mode="edge")
    return padded[:HEIGHT, :WIDTH]


def test_an_image_of_the_depths_own_structure_scores_top():
    depth = scene()
    for generated in (render(depth), canny_edges(depth)):
        score = structure_fidelity(generated, depth)
        assert set(score) == {"edge_f1", "edge_precision", "edge_recall", "chamfer_px"}
        assert score["edge_f1"] > 0.9 and score["chamfer_px"] < 1.5
    assert structure_fidelity(render(depth), depth_to_control(depth)) == structure_fidelity(
        render(depth), depth)


def test_unrelated_images_score_low():
    depth = scene()
    other_scene = render(scene(box=(90, 70, 140, 110), disc=(40, 40, 25)))
    noise = np.random.default_rng(1).uniform(0, 255, (HEIGHT, WIDTH)).astype(np.float32)
    noise = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2), None, 0, 255, cv2.NORM_MINMAX)
    blurred_noise = np.dstack([noise.astype(np.uint8)] * 3)
    for generated in (other_scene, blurred_noise):
        score = structure_fidelity(generated, depth)
        assert score["edge_f1"] < 0.3 and score["chamfer_px"] > 5


def test_shifting_lowers_the_score_monotonically():
    depth = scene()
    scores = [structure_fidelity(shift(render(depth), k), depth) for k in range(7)]
    f1 = [score["edge_f1"] for score in scores]
    chamfer = [score["chamfer_px"] for score in scores]
    assert all(a >= b for a, b in itertools.pairwise(f1))
    assert all(a < b for a, b in itertools.pairwise(chamfer))
    assert f1[0] > 0.9 and f1[-1] < 0.3


def test_tolerance_decides_what_counts_as_matched():
    depth = scene()
    shifted = shift(render(depth), 3)
    assert (structure_fidelity(shifted, depth, tolerance_px=1)["edge_f1"]
            < structure_fidelity(shifted, depth, tolerance_px=5)["edge_f1"])


def test_image_without_edges_scores_zero():
    flat = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    score = structure_fidelity(flat, scene())
    assert score["edge_f1"] == 0 and score["edge_recall"] == 0
    assert score["chamfer_px"] == float("inf")


def test_mismatched_sizes_and_edgeless_controls_are_refused():
    with pytest.raises(InvalidArgumentError, match="fit_control_image"):
        structure_fidelity(render(scene())[:64], scene())
    with pytest.raises(InvalidArgumentError, match="no Canny edges"):
        structure_fidelity(render(scene()), np.full((HEIGHT, WIDTH), 0.5, np.float32))
