"""Structure fidelity without a model: do a generated image's edges follow the control map's?

Canny edges of both images are compared with a distance tolerance, so edges
that land a pixel or two off still count. Precision: the share of generated
edges near a control edge (does the image add structure the control lacks?).
Recall: the share of control edges the image reproduces. The chamfer
distance averages how far, in pixels, each edge set lies from the other.
"""

import cv2
import numpy as np

from controlnet.control_images import canny_edges
from kcv_sd.errors import InvalidArgumentError


def structure_fidelity(generated, control, tolerance_px=2.0, low=100, high=200):
    """{"edge_f1", "edge_precision", "edge_recall", "chamfer_px"} for two same-size images.

    `generated`: uint8 RGB (H, W, 3); `control`: the control map as fed to the
    model (a depth map in [0, 1], or a uint8 control image), after
    `fit_control_image`. `low`/`high`: Canny thresholds for both. Edges within
    `tolerance_px` (Euclidean) match. A generated image without edges scores 0
    with an infinite chamfer distance.
    """
    generated_edges = _edge_mask(generated, low, high)
    control_edges = _edge_mask(control, low, high)
    if generated_edges.shape != control_edges.shape:
        raise InvalidArgumentError(
            f"generated image is {generated_edges.shape[1]}x{generated_edges.shape[0]} but the "
            f"control map is {control_edges.shape[1]}x{control_edges.shape[0]}; compare with "
            "the control map as fitted to the output (fit_control_image)")
    if not control_edges.any():
        raise InvalidArgumentError(
            f"control map has no Canny edges at thresholds {low}/{high}; lower them")
    if not generated_edges.any():
        return {"edge_f1": 0.0, "edge_precision": 0.0, "edge_recall": 0.0,
                "chamfer_px": float("inf")}
    generated_to_control = _distance_to(control_edges)[generated_edges]
    control_to_generated = _distance_to(generated_edges)[control_edges]
    precision = float(np.mean(generated_to_control <= tolerance_px))
    recall = float(np.mean(control_to_generated <= tolerance_px))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    chamfer = (generated_to_control.mean() + control_to_generated.mean()) / 2
    return {"edge_f1": f1, "edge_precision": precision, "edge_recall": recall,
            "chamfer_px": float(chamfer)}


def _edge_mask(image, low, high):
    return canny_edges(image, low, high)[..., 0] > 0


def _distance_to(edges):
    """Per pixel, the Euclidean distance to the nearest edge pixel."""
    not_edges = np.where(edges, 0, 255).astype(np.uint8)
    return cv2.distanceTransform(not_edges, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
