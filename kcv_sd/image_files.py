"""Reading the image files users hand in, without clipping or surprises.

TensorFlow-free, so `controlnet.control_images` (numpy only) shares it:
one reader refuses folders, truncated files and decompression bombs, and
one conversion to 8 bits keeps 16-bit images' full range.
"""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from kcv_sd.errors import InvalidArgumentError

# PIL modes holding more than 8 bits a pixel: 16/32-bit integers and floats.
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def open_image(path, what):
    """The image file at `path`, decoded whole, or one line saying why not:
    a folder, a missing, unreadable or truncated file, or more pixels than
    PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`)."""
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(f"The {what} {path} is a folder: give an image file.")
    if not path.exists():
        raise InvalidArgumentError(f"The {what} {path} does not exist: check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidArgumentError(
            f"The {what} {path} is too large to read safely ({error}): resize it first."
        ) from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is the file's
        raise InvalidArgumentError(f"Cannot read the {what} {path}: {error}.") from None


def is_high_depth(image):
    """Whether `image` (PIL or array) holds more than 8 bits a pixel:
    a 16/32-bit or float PIL mode, or integers beyond 255."""
    if isinstance(image, Image.Image):
        return image.mode in HIGH_DEPTH_MODES
    array = np.asarray(image)
    return array.dtype.kind in "ui" and array.dtype.itemsize > 1 and array.size > 0 and array.max() > 255


def eight_bit(image, what):
    """A PIL image or array as an 8-bit array, full range kept: 16-bit
    values are divided by 257, floats are read as 0..1, and anything that
    would clip (floats outside [0, 1], NaN, integers beyond 16 bits) is refused."""
    if isinstance(image, Image.Image):
        if image.mode not in HIGH_DEPTH_MODES:
            return np.asarray(image)
        image = np.asarray(image)
    array = np.asarray(image)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if array.size == 0:
        raise InvalidArgumentError(f"The {what} is empty (shape {array.shape}).")
    if array.dtype.kind in "ui":
        if array.min() < 0 or array.max() > 65535:
            raise InvalidArgumentError(
                f"The {what} has integer values from {array.min()} to {array.max()}: "
                "pass uint8 (0..255), uint16 (0..65535) or floats in [0, 1].")
        return np.round(array.astype(np.float64) / 257).astype(np.uint8)
    if array.dtype.kind != "f":
        raise InvalidArgumentError(f"The {what} has dtype {array.dtype}: pass uint8, uint16 or floats in [0, 1].")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InvalidArgumentError(
            f"The {what} has float values outside [0, 1] (from {np.nanmin(array):g} to {np.nanmax(array):g}, "
            "or NaN): scale it to [0, 1], or pass uint8 (0..255).")
    return np.round(array.astype(np.float64) * 255).astype(np.uint8)


def read_image(image, what):
    """`image` as given (a PIL image or an array), or decoded from its path."""
    if isinstance(image, (str, Path)):
        return open_image(image, what)
    if image is None or isinstance(image, (bytes, dict, set)):
        raise InvalidArgumentError(f"The {what} is a {type(image).__name__}: give a path, a PIL image or an array.")
    return image
