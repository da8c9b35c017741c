"""Control images from the files people have: depth maps, normals from depth, Canny edges.

ControlNet's depth models were trained on MiDaS disparity: near = bright. Every
depth map here is float32 (H, W) in [0, 1] in that convention, and every
control image is uint8 (H, W, 3), the 3-channel form ControlNet expects.
"""

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_files import open_image

MIN_SIDE = 8
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" conversion


def load_depth(path_or_array, invert=None):
    """A depth map as float32 (H, W) in [0, 1], near = bright, min..max stretched to 0..1.

    `path_or_array`: a path (PNG, TIFF or anything PIL reads, or `.npy`), an
    array or a PIL image. 8/16/32-bit gray, RGB (one channel if all are equal,
    else luminance, with a warning), RGBA (alpha ignored) and palette images
    are read. Maps smaller than 8x8 are refused.

    Orientation, when `invert` is None: integer data (8/16-bit PNGs, integer
    arrays) is ControlNet-style disparity, near = bright, used as is; float data
    (32-bit TIFF, float `.npy`/arrays) is a distance, near = small, and is
    flipped. Pass `invert` to override: `invert=True` for 16-bit depth-camera
    PNGs in millimetres (Kinect, RealSense), `invert=False` for float
    disparity such as raw MiDaS output.

    NaN and inf mark missing depth (sky, no return): they become the far value
    0, with a warning.
    """
    values, is_distance = _read(path_or_array)
    return _normalise(values, is_distance if invert is None else invert)


def depth_to_control(depth):
    """Depth in [0, 1] as the gray uint8 (H, W, 3) image that ControlNet depth models take."""
    gray = np.round(_unit_depth(depth) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def control_to_float(image):
    """A uint8 control image (gray, RGB, RGBA or PIL) as the model's float32 (H, W, 3) in [0, 1].

    [0, 1] rather than [-1, 1]: diffusers' control image processor runs with
    `do_normalize=False`, and lllyasviel's code divides by 255.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidArgumentError(
            f"control image has dtype {image.dtype}; expected uint8 (0..255), "
            "e.g. from depth_to_control or canny_edges")
    return _three_channels(image).astype(np.float32) / 255


def normals_from_depth(depth, strength=1.0, background_threshold=0.1):
    """A uint8 (H, W, 3) normal map from depth, as ControlNet 1.0's normal-from-MiDaS annotator.

    x/y Sobel slopes of the depth and a constant z, normalised, mapped from
    [-1, 1] to [0, 255] and truncated as the annotator does. Slopes are zeroed
    where depth < `background_threshold` so the far background faces the camera.

    Convention, the annotator's (slopes of near = bright depth): R = facing
    left, G = facing up, B = facing the viewer; a flat wall is (127, 127, 255).
    lllyasviel's demo fed `control_sd15_normal` the channels reversed (BGR):
    pass `normals[..., ::-1]` to reproduce that model's training input.

    `strength` sets the relief: depth 0..1 spans `strength` times the image's
    longer side in pixels. (The annotator fixes z at 2*pi against raw MiDaS
    values instead; depth normalised to [0, 1] needs an explicit scale.)
    """
    depth = _unit_depth(depth)
    relief = (depth * (strength * max(depth.shape))).astype(np.float32)
    # A 3x3 Sobel weighs a unit slope 8 times.
    slope_x = cv2.Sobel(relief, cv2.CV_32F, 1, 0, ksize=3) / 8
    slope_y = cv2.Sobel(relief, cv2.CV_32F, 0, 1, ksize=3) / 8
    background = depth < background_threshold
    slope_x[background] = 0
    slope_y[background] = 0
    normal = np.stack([slope_x, slope_y, np.ones_like(slope_x)], axis=-1)
    normal /= np.sqrt(np.sum(normal**2, axis=-1, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


def canny_edges(image_or_depth, low=100, high=200):
    """Canny edges as uint8 (H, W, 3), 255 on edges: ControlNet's canny annotator.

    Takes a uint8 image (gray, RGB, RGBA or PIL; OpenCV takes the strongest
    channel's gradient) or a float depth map in [0, 1], quantised to 8 bits first.
    """
    image = image_or_depth
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    image = np.asarray(image)
    if image.dtype.kind == "f":
        image = np.round(_unit_depth(image) * 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InvalidArgumentError(
            f"image has dtype {image.dtype}; pass uint8 (0..255) or depth as float in [0, 1]")
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    edges = cv2.Canny(np.ascontiguousarray(image), low, high)
    return np.repeat(edges[..., None], 3, axis=-1)


def _read(source):
    """(float64 (H, W) values, whether they are a distance rather than disparity)."""
    if isinstance(source, np.ndarray):
        return _plane(source, "depth array")
    if isinstance(source, Image.Image):
        return _plane(_pil_array(source), "depth image")
    path = Path(source)
    if path.suffix.lower() != ".npy":
        return _plane(_pil_array(open_image(path, "depth map")), f"depth map {path}")
    if not path.is_file():
        raise InvalidArgumentError(f"depth map {path} is not a file; check the path")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InvalidArgumentError(f"cannot read depth map {path} ({error}); save it as a PNG, "
                                   "a 32-bit float TIFF or a .npy array") from None
    return _plane(array, f"depth map {path}")


def _pil_array(image):
    """Pixels with their depth resolution kept: 16/32-bit and float modes are read as is."""
    if image.mode == "F" or image.mode.startswith("I"):
        return np.asarray(image)
    if image.mode in ("1", "L", "LA", "La"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK...; alpha is dropped


def _plane(array, what):
    array = np.asarray(array)
    if array.dtype.kind not in "uif":
        raise InvalidArgumentError(
            f"{what} has dtype {array.dtype}; expected integer or float depth values")
    is_float = array.dtype.kind == "f"
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = _gray(array[..., :3], what)
    if array.ndim != 2:
        raise InvalidArgumentError(
            f"{what} has shape {array.shape}; expected (H, W), or (H, W, 1|3|4) "
            "with depth in the channels")
    if min(array.shape) < MIN_SIDE:
        height, width = array.shape
        raise InvalidArgumentError(
            f"{what} is {width}x{height} pixels; a depth map needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}")
    return array.astype(np.float64), is_float


def _gray(rgb, what):
    """The depth in an RGB image: exact when gray was saved as RGB, luminance otherwise."""
    if (rgb == rgb[..., :1]).all():
        return rgb[..., 0]
    warnings.warn(
        f"{what} has differing colour channels; using its luminance as depth "
        "(colour-mapped depth cannot be read back: save depth as grayscale)", stacklevel=5)
    return rgb.astype(np.float64) @ np.asarray(LUMINANCE)


def _normalise(values, invert):
    finite = np.isfinite(values)
    if not finite.any():
        raise InvalidArgumentError("depth map has no finite values (all NaN or inf)")
    low, high = values[finite].min(), values[finite].max()
    if low == high:
        raise InvalidArgumentError(
            f"depth map is constant ({low:g} everywhere) and carries no depth; "
            "check that the right file or channel was saved")
    depth = (values - low) / (high - low)
    if invert:
        depth = 1 - depth
    if not finite.all():
        warnings.warn(
            f"depth map has {np.count_nonzero(~finite)} NaN/inf values; "
            "they are set to the far value 0", stacklevel=3)
        depth[~finite] = 0
    return depth.astype(np.float32)


def _unit_depth(depth):
    depth = np.asarray(depth)
    if (depth.ndim != 2 or depth.size == 0 or depth.dtype.kind != "f" or not np.isfinite(depth).all()
            or depth.min() < 0 or depth.max() > 1):
        raise InvalidArgumentError(
            f"expected depth as float (H, W) in [0, 1], got shape {depth.shape} "
            f"dtype {depth.dtype}; read depth files with load_depth")
    return depth


def _three_channels(image):
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3]
    raise InvalidArgumentError(
        f"control image has shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
