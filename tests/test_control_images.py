"""Depth files in the forms people have load to near = bright [0, 1]; normals and edges."""

import numpy as np
import pytest
from PIL import Image

from controlnet.control_images import (
    canny_edges,
    control_to_float,
    depth_to_control,
    load_depth,
    normals_from_depth,
)
from kcv_sd.errors import InvalidArgumentError

HEIGHT, WIDTH = 24, 32


def ramp():
    """Disparity rising left to right (near = bright on the right), exactly 0..1."""
    return np.tile(np.linspace(0, 1, WIDTH), (HEIGHT, 1))


def assert_ramp(depth, flipped=False):
    assert depth.dtype == np.float32 and depth.shape == (HEIGHT, WIDTH)
    expected = ramp()[:, ::-1] if flipped else ramp()
    np.testing.assert_allclose(depth, expected, atol=1 / 255)
    assert depth.min() == 0 and depth.max() == 1


def save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_16_bit_png_round_trips_exactly(tmp_path):
    pixels = np.round(ramp() * 65535).astype(np.uint16)
    path = save(tmp_path, "depth.png", Image.fromarray(pixels))
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(load_depth(path), (pixels / 65535).astype(np.float32))


def test_32_bit_integer_tiff(tmp_path):
    pixels = np.round(ramp() * 100000).astype(np.int32)
    path = save(tmp_path, "depth.tif", Image.fromarray(pixels))
    assert Image.open(path).mode == "I"
    assert_ramp(load_depth(path))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_8_bit_images_of_every_mode(tmp_path, mode):
    gray = Image.fromarray(np.round(ramp() * 255).astype(np.uint8))
    palette = {"palette": Image.Palette.ADAPTIVE} if mode == "P" else {}
    image = gray.convert(mode, **palette)
    path = save(tmp_path, f"depth_{mode}.png", image)
    assert Image.open(path).mode == mode
    assert_ramp(load_depth(path))


def test_alpha_is_ignored(tmp_path):
    rgba = np.dstack([np.round(ramp() * 255).astype(np.uint8)] * 3
                     + [np.full((HEIGHT, WIDTH), 7, np.uint8)])
    assert_ramp(load_depth(save(tmp_path, "depth.png", Image.fromarray(rgba))))


def test_coloured_rgb_uses_luminance_with_a_warning(tmp_path):
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[..., 0] = np.round(ramp() * 255)
    with pytest.warns(UserWarning, match="luminance"):
        assert_ramp(load_depth(save(tmp_path, "depth.png", Image.fromarray(red))))


def test_float_tiff_is_a_distance_and_is_inverted(tmp_path):
    metres = (1 + 9 * ramp()).astype(np.float32)  # far on the right
    path = save(tmp_path, "depth.tif", Image.fromarray(metres))
    assert Image.open(path).mode == "F"
    assert_ramp(load_depth(path), flipped=True)
    assert_ramp(load_depth(path, invert=False))


def test_npy_float_is_inverted_and_integer_is_not(tmp_path):
    np.save(tmp_path / "metres.npy", 2 + 3 * ramp())
    np.save(tmp_path / "disparity.npy", np.round(ramp() * 1000).astype(np.uint16))
    assert_ramp(load_depth(tmp_path / "metres.npy"), flipped=True)
    assert_ramp(load_depth(tmp_path / "disparity.npy"))


def test_arrays_and_pil_images_load_like_files():
    assert_ramp(load_depth(ramp()), flipped=True)
    assert_ramp(load_depth(ramp(), invert=False))
    assert_ramp(load_depth(np.round(ramp() * 255).astype(np.uint8)[..., None]))
    assert_ramp(load_depth(Image.fromarray(np.round(ramp() * 255).astype(np.uint8))))


def test_invert_flips_integer_images(tmp_path):
    pixels = np.round(ramp() * 65535).astype(np.uint16)
    assert_ramp(load_depth(save(tmp_path, "mm.png", Image.fromarray(pixels)), invert=True),
                flipped=True)


def test_nan_and_inf_become_far_with_a_warning():
    metres = 1 + 9 * ramp()
    metres[0, 0], metres[1, 1] = np.nan, np.inf
    with pytest.warns(UserWarning, match="2 NaN/inf"):
        depth = load_depth(metres)
    assert depth[0, 0] == 0 and depth[1, 1] == 0
    assert depth[0, 1] > 0.9


@pytest.mark.parametrize("values, message", [
    (np.full((HEIGHT, WIDTH), 3.0), "constant"),
    (np.full((HEIGHT, WIDTH), np.nan), "no finite"),
    (np.ones((1, 1)), "1x1 pixels"),
    (np.ones((4, 64)), "64x4 pixels"),
    (np.ones((HEIGHT, WIDTH, 2)), "shape"),
    (np.ones((HEIGHT, WIDTH), bool), "dtype bool"),
])
def test_unusable_depth_is_refused(values, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_depth(values)


def test_tiny_image_file_is_refused(tmp_path):
    path = save(tmp_path, "dot.png", Image.new("L", (1, 1)))
    with pytest.raises(InvalidArgumentError, match="at least 8x8"):
        load_depth(path)


@pytest.mark.parametrize("name, content", [
    ("garbage.png", b"not an image at all"),
    ("garbage.npy", b"\x93NUMPY garbage"),
])
def test_unreadable_files_are_refused(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidArgumentError, match="(?i)cannot read (the )?depth map"):
        load_depth(tmp_path / name)


def test_truncated_png_is_refused(tmp_path):
    path = save(tmp_path, "depth.png", Image.fromarray(np.round(ramp() * 255).astype(np.uint8)))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InvalidArgumentError, match="(?i)cannot read (the )?depth map"):
        load_depth(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_depth(tmp_path / "nowhere.png")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        load_depth(tmp_path)


@pytest.mark.parametrize("empty", [np.zeros((0, 0), np.float32), np.zeros((0, 5), np.float32)])
def test_empty_depth_is_refused(empty):
    with pytest.raises(InvalidArgumentError, match="expected depth as float"):
        depth_to_control(empty)


def test_depth_to_control_and_back():
    control = depth_to_control(ramp())
    assert control.dtype == np.uint8 and control.shape == (HEIGHT, WIDTH, 3)
    assert (control[..., 0] == control[..., 2]).all()
    model_input = control_to_float(control)
    assert model_input.dtype == np.float32 and model_input.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(model_input[..., 1], ramp(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(control_to_float(control[..., 0]), model_input)
    np.testing.assert_array_equal(control_to_float(Image.fromarray(control)), model_input)


def test_depth_to_control_refuses_unnormalised_depth():
    with pytest.raises(InvalidArgumentError, match=r"in \[0, 1\].*load_depth"):
        depth_to_control(ramp() * 10)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        control_to_float(ramp())


def decode(normals):
    """(left, up, towards viewer) components from the annotator's RGB."""
    return normals.astype(np.float64) / 127.5 - 1


def test_normals_of_a_plane_are_constant():
    height, width = 40, 60
    x = np.arange(width)[None, :].repeat(height, 0)
    depth = (0.2 + 0.8 * x / (width - 1)).astype(np.float32)  # nearer to the right
    normals = normals_from_depth(depth, strength=0.5)
    inner = normals[1:-1, 1:-1].reshape(-1, 3)
    assert (inner == inner[0]).all()
    left, up, towards = decode(inner[0])
    slope = 0.8 * 0.5 * width / (width - 1)  # depth pixels per pixel
    # Nearer to the right: the surface faces left, by the slope's angle.
    assert left == pytest.approx(slope / np.hypot(slope, 1), abs=0.01)
    assert up == pytest.approx(0, abs=0.01) and towards > 0


def test_flat_background_faces_the_viewer():
    normals = normals_from_depth(np.zeros((16, 16), np.float32) + np.eye(16) * 0.05)
    assert (normals == (127, 127, 255)).all()


def test_sphere_normals_point_outwards():
    size, radius = 96, 40
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    inside = x**2 + y**2 < radius**2
    height = np.sqrt(np.clip(radius**2 - x**2 - y**2, 0, None))
    normals = normals_from_depth((height / radius).astype(np.float32),
                                 strength=radius / size, background_threshold=0.01)
    left, up, towards = np.moveaxis(decode(normals), -1, 0)
    core = x**2 + y**2 < (0.8 * radius) ** 2
    assert (left[core & (x < -2)] > 0).all() and (left[core & (x > 2)] < 0).all()
    assert (up[core & (y < -2)] > 0).all() and (up[core & (y > 2)] < 0).all()
    assert (towards[inside] > 0).all()
    np.testing.assert_allclose(left[core], -x[core] / radius, atol=0.05)
    np.testing.assert_allclose(up[core], -y[core] / radius, atol=0.05)


def test_canny_finds_a_squares_border():
    image = np.zeros((64, 64), np.uint8)
    image[16:48, 16:48] = 255
    edges = canny_edges(image)
    assert edges.dtype == np.uint8 and edges.shape == (64, 64, 3)
    on = edges[..., 0] > 0
    assert (edges[..., 0] == edges[..., 2]).all() and set(np.unique(edges)) == {0, 255}
    border = np.zeros_like(on)
    border[15:49, 15:49] = True
    border[17:47, 17:47] = False
    assert on.any() and not (on & ~border).any()
    for row in (20, 32, 44):
        assert on[row, 15:18].any() and on[row, 46:49].any()
    np.testing.assert_array_equal(canny_edges(np.dstack([image] * 3)), edges)
    np.testing.assert_array_equal(canny_edges(image.astype(np.float32) / 255), edges)
