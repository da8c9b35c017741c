"""Each sizing mode gives the exact output size, with content where the mode says."""

import numpy as np
import pytest
from PIL import Image

from controlnet.sizing import SIZING_MODES, fit_control_image, output_size
from kcv_sd.errors import InvalidArgumentError

WIDE, TALL = (512, 1216), (768, 512)  # (height, width)


def columns(hw):
    """An RGB image whose red channel is the column index (mod 256), so crops can be located."""
    height, width = hw
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width) % 256
    image[..., 1] = 200
    return image


@pytest.mark.parametrize("mode", ["resize", "crop", "pad"])
@pytest.mark.parametrize("control_hw", [WIDE, TALL])
def test_requested_size_is_kept_exactly(mode, control_hw):
    assert output_size(control_hw, mode, width=512, height=512) == (512, 512)
    assert output_size(control_hw, mode, width=768, height=384) == (768, 384)
    fitted = fit_control_image(columns(control_hw), mode, 768, 384)
    assert fitted.shape == (384, 768, 3) and fitted.dtype == np.uint8


# WIDE is 2.375:1: 784x328 is 2.390 (784x336 would exceed the budget).
@pytest.mark.parametrize("control_hw, expected", [
    (WIDE, (784, 328)), (TALL, (416, 624)), ((512, 512), (512, 512)), ((300, 1200), (1024, 256)),
    ((480, 640), (584, 440)),
])
def test_native_follows_the_control_aspect_in_8s_within_budget(control_hw, expected):
    assert output_size(control_hw, "native") == expected


def test_native_rounding_under_other_budgets():
    assert output_size(WIDE, "native", pixel_budget=768 * 768) == (1176, 496)
    for control_hw in [(480, 640), (1080, 1920), (1000, 1370), (700, 333), (257, 1023)]:
        for budget in (512 * 512, 640 * 640, 768 * 768):
            width, height = output_size(control_hw, "native", pixel_budget=budget)
            assert width % 8 == 0 and height % 8 == 0
            assert 0.95 * budget <= width * height <= budget
            aspect = control_hw[1] / control_hw[0]
            assert abs(np.log(width / height / aspect)) < 0.02


def test_native_fit_stretches_to_the_snapped_size():
    width, height = output_size(WIDE, "native")
    assert fit_control_image(columns(WIDE), "native", width, height).shape == (height, width, 3)


def test_resize_is_pil_lanczos_like_diffusers():
    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(fit_control_image(image, "resize", 64, 64), expected)


def test_crop_keeps_the_center():
    wide = fit_control_image(columns(WIDE), "crop", 512, 512)
    np.testing.assert_array_equal(wide, columns(WIDE)[:, 352:864])
    tall = np.arange(768, dtype=np.float32)[:, None].repeat(512, 1)
    np.testing.assert_array_equal(fit_control_image(tall, "crop", 512, 512), tall[128:640])


def test_pad_letterboxes_with_black():
    white = np.full((*WIDE, 3), 255, np.uint8)
    padded = fit_control_image(white, "pad", 512, 512)
    assert (padded[:148] == 0).all() and (padded[364:] == 0).all()
    assert (padded[148:364] == 255).all()
    padded = fit_control_image(np.full(TALL, 255, np.uint8), "pad", 512, 512)
    assert padded.shape == (512, 512)
    assert (padded[:, :85] == 0).all() and (padded[:, 426:] == 0).all()
    assert (padded[:, 85:426] == 255).all()


def test_pil_images_and_float_maps_keep_their_type():
    image = Image.fromarray(columns(TALL))
    fitted = fit_control_image(image, "crop", 256, 256)
    assert isinstance(fitted, Image.Image) and fitted.size == (256, 256)
    depth = np.linspace(0, 1, 768 * 512, dtype=np.float32).reshape(TALL)
    fitted = fit_control_image(depth, "resize", 320, 320)
    assert fitted.dtype == np.float32 and fitted.shape == (320, 320)
    assert fitted.min() >= 0 and fitted.max() <= 1
    depth_16 = Image.fromarray(np.round(depth * 65535).astype(np.uint16))
    fitted = fit_control_image(depth_16, "pad", 320, 320)
    assert fitted.mode == "I;16" and np.asarray(fitted).max() > 65000


@pytest.mark.parametrize("call", [
    lambda: output_size((500, 2100), "resize", 512, 512),
    lambda: output_size((2100, 500), "native"),
    lambda: fit_control_image(np.zeros((100, 450), np.uint8), "crop", 512, 512),
])
def test_extreme_aspect_ratios_are_refused(call):
    with pytest.raises(InvalidArgumentError, match=r"aspect ratio 4\.\d\d:1, beyond the 4:1 limit"):
        call()


def test_extreme_output_is_refused():
    with pytest.raises(InvalidArgumentError, match="output is 2048x448, aspect ratio 4.57:1"):
        output_size(WIDE, "crop", 2048, 448)


def test_unknown_mode_lists_the_modes():
    listed = ", ".join(SIZING_MODES)
    with pytest.raises(InvalidArgumentError, match=f"unknown sizing mode 'fit'.*{listed}"):
        output_size(WIDE, "fit", 512, 512)
    with pytest.raises(InvalidArgumentError, match="resize, crop, pad, native"):
        fit_control_image(columns(WIDE), "stretch", 512, 512)


def test_size_arguments_are_checked():
    assert output_size((512, 1216, 3), "native") == (784, 328)
    assert output_size((64, 256), "native", pixel_budget=4 * 64 * 64) == (256, 64)
    with pytest.raises(InvalidArgumentError, match="pixel budget 1000 is below the 16384"):
        output_size(WIDE, "native", pixel_budget=1000)
    with pytest.raises(InvalidArgumentError, match="needs width and height"):
        output_size(WIDE, "crop", width=512)
    with pytest.raises(InvalidArgumentError, match="'native' takes its size from the control"):
        output_size(WIDE, "native", width=512, height=512)
    with pytest.raises(InvalidArgumentError, match="width=500 is not supported: .* the nearest are 496 and 504"):
        output_size(WIDE, "pad", width=500, height=512)
