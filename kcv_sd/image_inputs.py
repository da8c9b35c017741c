"""Images users hand in: reading any of them, and fitting img2img's init
image and inpainting's mask to the output and latent sizes.

Conventions follow diffusers: init images and masks are stretched to the
output size with Lanczos resampling, masks are white (>= 0.5) where to
repaint and black where to keep, binarised after resizing.
"""


import numpy as np
from PIL import Image

from kcv_sd.errors import InvalidArgumentError
from kcv_sd.image_files import HIGH_DEPTH_MODES, eight_bit, read_image
from kcv_sd.vae import PIXELS_PER_LATENT


def load_image(image, what, mode="RGB"):
    """`image` (a path, a PIL image or an array) as a PIL image in `mode`.

    Arrays are uint8, uint16, bool, or floats in [0, 1], shaped (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4); 16-bit images keep their full range.
    `what` names the image in error messages.
    """
    image = read_image(image, what)
    if isinstance(image, Image.Image) and image.mode not in HIGH_DEPTH_MODES:
        return image.convert(mode)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidArgumentError(
            f"The {what} has shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."
        )
    return Image.fromarray(eight_bit(array, what)).convert(mode)


def load_init_inputs(init_image, mask_image, strength):
    """(init, mask, strength): the init image and mask as PIL images (None if
    not given) and the strength, checked or defaulted as diffusers' img2img
    (0.8) and inpainting (1.0) pipelines default it; 1 without an init image."""
    if init_image is None:
        if mask_image is not None or strength is not None:
            raise InvalidArgumentError("mask_image= and strength= need an init image: pass init_image= too.")
        return None, None, 1.0
    init = load_image(init_image, "init image")
    mask = None if mask_image is None else load_image(mask_image, "mask image", "L")
    if strength is None:
        strength = 0.8 if mask is None else 1.0
    if not isinstance(strength, (int, float, np.number)) or not 0 <= strength <= 1:
        raise InvalidArgumentError(
            f"strength={strength!r}: use a number from 0 (keep the init image) to 1 (repaint it all)."
        )
    return init, mask, float(strength)


def resized_pixels(image, width, height):
    """A PIL image stretched to width x height, as a uint8 array (unchanged if
    already that size, so pasted-back pixels are the input's own)."""
    return np.asarray(image.resize((width, height), Image.LANCZOS))


def repaint_mask(mask, width, height):
    """Where to repaint, bool (height, width), from a grayscale PIL mask."""
    return resized_pixels(mask, width, height) >= 128


def latent_repaint_mask(pixel_mask):
    """Latent pixels to repaint, float32 (1, h, w, 1): those whose pixel block
    holds any pixel to repaint, so every masked pixel is regenerated
    (diffusers samples one pixel per block, nearest-neighbour)."""
    height, width = pixel_mask.shape
    f = PIXELS_PER_LATENT
    blocks = pixel_mask.reshape(height // f, f, width // f, f).any(axis=(1, 3))
    return blocks[None, ..., None].astype(np.float32)
