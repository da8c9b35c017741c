"""Sizing modes: how a control image meets an output whose aspect ratio differs from its own.

- `resize`: stretch to the output size (diffusers' default).
- `crop`: center-crop to the output's aspect ratio, then resize.
- `pad`: letterbox: fit inside the output, pad with black.
- `native`: no crop and no stretch: the output size follows the control
  image's aspect ratio, in multiples of 8 within a pixel budget.

Resizing is Lanczos, as diffusers' `VaeImageProcessor` (its default
`resample="lanczos"`) resizes PIL control images for the ControlNet pipeline.
(diffusers resizes numpy/torch inputs with nearest neighbour instead.)
"""

import math

import numpy as np
from PIL import Image

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.sizes import MIN_SIZE, SIZE_MULTIPLE, check_size

SIZING_MODES = ("resize", "crop", "pad", "native")
MAX_ASPECT_RATIO = 4.0  # at the default budget, 1024x256: a 32-row latent


def output_size(control_hw, mode, width=None, height=None, pixel_budget=512 * 512):
    """The (width, height) to generate for a control image of `control_hw` in `mode`.

    `control_hw`: (height, width), or an array's shape (H, W, C).

    `native` takes no width/height: it scales the control image to the pixel
    budget, then snaps each side down or up to a multiple of 8,
    keeping the in-budget snap whose aspect ratio is closest (then largest).
    The other modes return the requested width and height, checked.
    """
    _check_mode(mode)
    control_height, control_width = control_hw[:2]
    _check_aspect(control_width, control_height, "control image")
    if mode == "native":
        if width is not None or height is not None:
            raise InvalidArgumentError(
                "sizing mode 'native' takes its size from the control image; drop "
                "width/height (set pixel_budget instead) or use resize, crop or pad")
        return _native_size(control_width / control_height, pixel_budget)
    if width is None or height is None:
        raise InvalidArgumentError(
            f"sizing mode {mode!r} needs width and height; give both, or use 'native' "
            "to take the size from the control image")
    check_size("width", width)
    check_size("height", height)
    _check_aspect(width, height, "output")
    return width, height


def fit_control_image(image, mode, width, height):
    """The control image at exactly (height, width), fitted as `mode` says.

    `image`: a PIL image (returned as one) or an array (H, W) / (H, W, C), any
    dtype (returned with the same dtype). `native` stretches: its size from
    `output_size` differs from the image's aspect ratio by the snap only.
    """
    _check_mode(mode)
    if width <= 0 or height <= 0:
        raise InvalidArgumentError(f"output size {width}x{height} must be positive")
    is_pil = isinstance(image, Image.Image)
    array = _pil_array(image) if is_pil else np.asarray(image)
    source_height, source_width = array.shape[:2]
    _check_aspect(source_width, source_height, "control image")
    if mode == "crop":
        fitted = _resize(_center_crop(array, width / height), width, height)
    elif mode == "pad":
        fitted = _letterbox(array, width, height)
    else:
        fitted = _resize(array, width, height)
    return Image.fromarray(fitted) if is_pil else fitted


def _check_mode(mode):
    if mode not in SIZING_MODES:
        raise InvalidArgumentError(
            f"unknown sizing mode {mode!r}; choose one of {', '.join(SIZING_MODES)}")


def _check_aspect(width, height, what):
    ratio = max(width / height, height / width)
    if ratio > MAX_ASPECT_RATIO:
        raise InvalidArgumentError(
            f"{what} is {width}x{height}, aspect ratio {ratio:.2f}:1, beyond the "
            f"{MAX_ASPECT_RATIO:g}:1 limit; crop it closer to square")


def _native_size(aspect, pixel_budget):
    # Enough that both sides reach the smallest size at the largest aspect ratio.
    smallest = round(MAX_ASPECT_RATIO * MIN_SIZE**2)
    if pixel_budget < smallest:
        raise InvalidArgumentError(
            f"pixel budget {pixel_budget} is below the {smallest} that 'native' needs; "
            "raise it (the default is 512*512)")
    ideal_height = math.sqrt(pixel_budget / aspect)
    snaps = [(w, h) for w in _snap(ideal_height * aspect)
             for h in _snap(ideal_height) if w * h <= pixel_budget]
    return min(snaps, key=lambda size: (abs(math.log(size[0] / size[1] / aspect)),
                                        -size[0] * size[1]))


def _snap(length):
    """The multiples of 8 just below and above `length`, never zero."""
    below = max(1, math.floor(length / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    return {below, max(1, math.ceil(length / SIZE_MULTIPLE)) * SIZE_MULTIPLE}


def _pil_array(image):
    """Pixels at full depth: 16-bit and float modes are kept, palette and the rest become RGB."""
    kept = ("L", "LA", "RGB", "RGBA", "F", "I", "I;16")
    return np.asarray(image if image.mode in kept else image.convert("RGB"))


def _center_crop(array, aspect):
    height, width = array.shape[:2]
    if width / height > aspect:
        crop_width = round(height * aspect)
        left = (width - crop_width) // 2
        return array[:, left:left + crop_width]
    crop_height = round(width / aspect)
    top = (height - crop_height) // 2
    return array[top:top + crop_height]


def _letterbox(array, width, height):
    source_height, source_width = array.shape[:2]
    scale = min(width / source_width, height / source_height)
    inner_width = max(1, round(source_width * scale))
    inner_height = max(1, round(source_height * scale))
    canvas = np.zeros((height, width, *array.shape[2:]), array.dtype)
    top, left = (height - inner_height) // 2, (width - inner_width) // 2
    canvas[top:top + inner_height, left:left + inner_width] = _resize(
        array, inner_width, inner_height)
    return canvas


def _resize(array, width, height):
    """Lanczos via PIL; other dtypes per channel in float, clipped to the input's range."""
    if array.shape[:2] == (height, width):
        return array.copy()
    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[-1] in (3, 4)):
        return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.LANCZOS))
    planes = array[..., None] if array.ndim == 2 else array
    resized = np.stack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], np.float32))
                    .resize((width, height), Image.Resampling.LANCZOS))
         for c in range(planes.shape[-1])], axis=-1)
    resized = resized.clip(array.min(), array.max())
    if array.dtype.kind in "ui":
        resized = np.round(resized)
    resized = resized.astype(array.dtype)
    return resized[..., 0] if array.ndim == 2 else resized
