"""Images: label and score resizing, reading photos, and building the network input blob."""

from fractions import Fraction

import imgviz
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import map_coordinates

from png_bytes import GRAY, png_bytes
from segbench.images import ImageError, read_image, resize_labels, resize_scores, to_network_input

# (input size, output size) per axis: up and down, integer and non-integer factors.
SIZE_PAIRS = [(7, 3), (3, 7), (13, 5), (5, 13), (10, 4), (375, 500), (37, 100), (31, 64), (500, 512), (12, 12)]


def _has_tie(n_in, n_out):
    """True when some output pixel centre falls exactly on an input pixel edge (exact rationals)."""
    return any(Fraction((2 * i + 1) * n_in, 2 * n_out).denominator == 1 for i in range(n_out))


def _exact_nearest_index(n_in, n_out):
    """Source index of each output pixel: floor of its centre mapped into the input, in exact arithmetic."""
    return np.array([min(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1) for i in range(n_out)])


# --- resize_labels ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size_hw", [(1, 1), (5, 9), (16, 16), (23, 7), (40, 61), (97, 50)])
def test_resize_labels_never_creates_new_values(seed, size_hw):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(17, 29))
    out = resize_labels(labels, size_hw)
    assert out.shape == size_hw
    assert set(np.unique(out).tolist()) <= set(np.unique(labels).tolist())


@pytest.mark.parametrize("n_in,n_out", SIZE_PAIRS + [(500, 375), (4, 6), (2, 7)])
def test_resize_labels_samples_pixel_centres_exactly(n_in, n_out):
    # Rows and columns are independent: encode the source row and column in each value.
    labels = (np.arange(n_in)[:, None] * 1000 + np.arange(n_in)[None, :]).astype(np.int32)
    out = resize_labels(labels, (n_out, n_out))
    index = _exact_nearest_index(n_in, n_out)
    np.testing.assert_array_equal(out, labels[index[:, None], index[None, :]])


@pytest.mark.parametrize("h_pair,w_pair", list(zip(SIZE_PAIRS, reversed(SIZE_PAIRS))))
def test_resize_labels_matches_pillow_nearest_on_L_image(h_pair, w_pair):
    (h_in, h_out), (w_in, w_out) = h_pair, w_pair
    assert not _has_tie(h_in, h_out) and not _has_tie(w_in, w_out)  # see the tie test below
    rng = np.random.default_rng(h_in * 7 + w_in)
    labels = rng.integers(0, 256, size=(h_in, w_in), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(labels, mode="L").resize((w_out, h_out), Image.NEAREST))
    np.testing.assert_array_equal(resize_labels(labels, (h_out, w_out)), pillow)


def test_resize_labels_ties_go_to_the_higher_index():
    # 4 -> 6: output centres map to (i + 0.5) * 4 / 6 = 0.33, 1.0, 1.67, 2.33, 3.0, 3.67;
    # the pixel containing each point is its floor, and a centre on an edge (1.0, 3.0)
    # belongs to the pixel to its right. (Pillow's floating-point step is not consistent on ties.)
    labels = np.arange(4, dtype=np.int32)[None, :]
    np.testing.assert_array_equal(resize_labels(labels, (1, 6)), [[0, 1, 1, 2, 3, 3]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_resize_labels_keeps_dtype(dtype):
    labels = np.array([[0, 1], [2, 3]], dtype=dtype)
    assert resize_labels(labels, (5, 3)).dtype == dtype


def test_resize_labels_keeps_values_above_255_in_int32():
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[:, 3:6] = 300
    labels[4:, :] = 1000
    out = resize_labels(labels, (13, 11))
    assert out.dtype == np.int32
    assert set(np.unique(out).tolist()) == {0, 300, 1000}


def test_resize_labels_returns_same_size_input_unchanged():
    labels = np.array([[1, 2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, (1, 3)), labels)


def test_resize_labels_rejects_non_positive_size():
    with pytest.raises(ValueError):
        resize_labels(np.zeros((2, 2), np.uint8), (0, 3))


def test_default_pillow_resize_of_label_image_invents_values():
    # Why resize_labels exists: Image.resize on an "L" image defaults to BICUBIC and smooths labels.
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[5:15, 5:15] = 15
    labels[8:12, 8:12] = 9
    naive = np.asarray(Image.fromarray(labels).resize((33, 27)))
    assert not set(np.unique(naive).tolist()) <= {0, 9, 15}
    assert set(np.unique(resize_labels(labels, (27, 33))).tolist()) == {0, 9, 15}


# --- resize_scores ------------------------------------------------------------------------------

def test_resize_scores_upsampled_ramp_is_the_bilinear_answer_in_the_interior():
    h_in, w_in, h_out, w_out = 6, 8, 17, 21
    y, x = np.mgrid[0:h_in, 0:w_in].astype(np.float64)
    # Bilinear interpolation reproduces a + b*y + c*x + d*x*y exactly.
    ramps = np.stack([2.0 * y + 0.5 * x + 1.0, -3.0 * x + 0.25 * x * y])
    out = resize_scores(ramps.astype(np.float32), (h_out, w_out))
    assert out.shape == (2, h_out, w_out) and out.dtype == np.float32

    # Pillow's pixel-centre convention: output pixel i samples input coordinate (i + 0.5) * in/out - 0.5.
    ys = (np.arange(h_out) + 0.5) * h_in / h_out - 0.5
    xs = (np.arange(w_out) + 0.5) * w_in / w_out - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    expected = np.stack([2.0 * yy + 0.5 * xx + 1.0, -3.0 * xx + 0.25 * xx * yy])
    interior = (yy >= 0) & (yy <= h_in - 1) & (xx >= 0) & (xx <= w_in - 1)
    assert interior.sum() > 0.7 * interior.size
    for c in range(2):
        np.testing.assert_allclose(out[c][interior], expected[c][interior], atol=1e-5, rtol=0)


def test_resize_scores_upsampled_random_scores_match_scipy_bilinear():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 7, 9)).astype(np.float32)
    h_out, w_out = 19, 23
    out = resize_scores(scores, (h_out, w_out))
    ys = (np.arange(h_out) + 0.5) * 7 / h_out - 0.5
    xs = (np.arange(w_out) + 0.5) * 9 / w_out - 0.5
    coords = np.meshgrid(ys, xs, indexing="ij")
    for c in range(3):
        # mode="nearest" clamps at the border, as Pillow's renormalised edge weights do.
        expected = map_coordinates(scores[c].astype(np.float64), coords, order=1, mode="nearest")
        np.testing.assert_allclose(out[c], expected, atol=1e-5, rtol=0)


def test_resize_scores_same_size_returns_input_unchanged():
    scores = np.random.default_rng(3).normal(size=(2, 4, 5)).astype(np.float32)
    out = resize_scores(scores, (4, 5))
    np.testing.assert_array_equal(out, scores)
    assert out.dtype == np.float32


# --- read_image ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_rgb():
    return imgviz.data.voc()["rgb"]


def test_read_image_good_jpeg_is_hw3_uint8(tmp_path, voc_rgb):
    path = tmp_path / "photo.jpg"
    Image.fromarray(voc_rgb).save(path, quality=95)
    image = read_image(path)
    assert image.shape == (375, 500, 3)
    assert image.dtype == np.uint8
    # JPEG is lossy; it should still be close to the original photo.
    assert np.abs(image.astype(int) - voc_rgb.astype(int)).mean() < 5


def test_read_image_truncated_jpeg_raises_naming_path(tmp_path, voc_rgb):
    good = tmp_path / "good.jpg"
    Image.fromarray(voc_rgb).save(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        read_image(cut)
    assert str(cut) in str(info.value)


def test_read_image_missing_file_raises_naming_path(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_read_image_not_an_image_raises(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match="text.jpg"):
        read_image(path)


def test_read_image_grayscale_jpeg_has_three_equal_channels(tmp_path):
    gray = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray, mode="L").save(path, quality=95)
    assert Image.open(path).mode == "L"
    image = read_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 0].astype(int) - gray.astype(int)).max() <= 4


def test_read_image_sixteen_bit_grayscale_png_is_scaled_not_clamped(tmp_path):
    stored = [[0, 128, 129, 257, 32767], [32896, 65406, 65407, 65535, 1000]]
    # round(v * 255 / 65535) = round(v / 257), by hand: 128/257 = 0.498, 129/257 = 0.502,
    # 32767/257 = 127.498, 32896/257 = 128, 65406/257 = 254.498, 65407/257 = 254.502, 1000/257 = 3.89.
    expected = np.array([[0, 0, 1, 1, 127], [128, 254, 255, 255, 4]], dtype=np.uint8)
    path = tmp_path / "gray16.png"
    path.write_bytes(png_bytes(stored, 16, GRAY))
    with Image.open(path) as image:  # why this matters: convert("RGB") clamps at 255
        assert image.mode in ("I;16", "I")
        assert np.asarray(image.convert("RGB"))[1, 0, 0] == 255
    got = read_image(path)
    assert got.shape == (2, 5, 3) and got.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], expected)


def test_read_image_floating_point_image_is_refused_naming_path(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((3, 4), 0.5, dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    with pytest.raises(ImageError, match=r"depth\.tif: a floating-point image \(mode 'F'\) cannot be a photo"):
        read_image(path)


def test_read_image_32_bit_integer_image_beyond_16_bits_is_refused(tmp_path):
    path = tmp_path / "counts.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    with pytest.raises(ImageError, match=r"counts\.tif: integer image with values outside 0\.\.65535"):
        read_image(path)


# --- to_network_input ---------------------------------------------------------------------------

def test_to_network_input_bgr_hand_computed_pixel():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 20, 30)
    blob = to_network_input(rgb, mean=(1, 2, 3), scale=0.5, channel_order="BGR")
    assert blob.shape == (1, 3, 2, 3)
    assert blob.dtype == np.float32
    assert blob.flags["C_CONTIGUOUS"]
    # B, G, R minus the mean given in BGR order, then scaled.
    np.testing.assert_array_equal(blob[0, :, 0, 0], [(30 - 1) * 0.5, (20 - 2) * 0.5, (10 - 3) * 0.5])
    # A black pixel: -mean * scale.
    np.testing.assert_array_equal(blob[0, :, 1, 2], [-0.5, -1.0, -1.5])


def test_to_network_input_rgb_order_keeps_channels():
    rgb = np.array([[[10, 20, 30]]], dtype=np.uint8)
    blob = to_network_input(rgb, mean=(1, 2, 3), scale=2.0, channel_order="RGB")
    np.testing.assert_array_equal(blob[0, :, 0, 0], [(10 - 1) * 2, (20 - 2) * 2, (30 - 3) * 2])


def test_to_network_input_rejects_unknown_channel_order():
    with pytest.raises(ValueError, match="channel_order"):
        to_network_input(np.zeros((1, 1, 3), np.uint8), mean=(0, 0, 0), channel_order="GBR")
