"""Ground-truth label maps: palette, reading indices (not colours), value checks, writing."""

import imgviz
import numpy as np
import pytest
from PIL import Image

from png_bytes import GRAY, PALETTE, png_bytes
from segbench.labels import LabelError, check_label_values, read_label_png, voc_palette, write_label_png


@pytest.fixture(scope="module")
def voc_labels():
    """A real VOC photo's label map (classes {0, 5, 9, 11, 15}) with a void band of 255 added."""
    labels = imgviz.data.voc()["class_label"].astype(np.uint8)
    labels[100:104, :] = 255
    return labels


# --- the palette --------------------------------------------------------------------------------

def test_voc_palette_equals_imgviz_label_colormap_for_all_256_entries():
    palette = voc_palette()
    assert palette.shape == (256, 3)
    assert palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, imgviz.label_colormap())


def test_voc_palette_known_entries():
    palette = voc_palette()
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[1]) == (128, 0, 0)      # aeroplane
    assert tuple(palette[15]) == (192, 128, 128)  # person
    assert tuple(palette[255]) == (224, 224, 192)  # void


# --- reading ------------------------------------------------------------------------------------

def test_palette_png_with_scrambled_palette_reads_back_as_indices(tmp_path, voc_labels):
    # A palette that is NOT the VOC one: any colour lookup would give wrong numbers.
    rng = np.random.default_rng(1)
    scrambled = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    image = Image.fromarray(voc_labels, mode="P")
    image.putpalette(scrambled.tobytes())
    path = tmp_path / "scrambled.png"
    image.save(path)
    assert Image.open(path).mode == "P"

    got = read_label_png(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, voc_labels)


def test_grayscale_png_reads_as_indices(tmp_path, voc_labels):
    path = tmp_path / "gray.png"
    Image.fromarray(voc_labels, mode="L").save(path)
    assert Image.open(path).mode == "L"
    np.testing.assert_array_equal(read_label_png(path), voc_labels)


def test_rgb_rendering_through_voc_palette_maps_back_to_exact_indices(tmp_path, voc_labels):
    rgb = imgviz.label_colormap()[voc_labels]  # independent rendering with imgviz's colour map
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    assert Image.open(path).mode == "RGB"

    got = read_label_png(path)
    np.testing.assert_array_equal(got, voc_labels)
    assert set(np.unique(got).tolist()) == {0, 5, 9, 11, 15, 255}


def test_rgb_png_with_colour_outside_palette_raises_naming_path_and_colour(tmp_path, voc_labels):
    rgb = imgviz.label_colormap()[voc_labels]
    rgb[0, 0] = (1, 2, 3)  # not a VOC palette colour
    path = tmp_path / "bad_colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    with pytest.raises(LabelError) as info:
        read_label_png(path)
    message = str(info.value)
    assert str(path) in message
    assert "(1, 2, 3)" in message


def test_missing_label_file_raises_naming_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(LabelError, match="nope.png"):
        read_label_png(path)


def test_corrupt_label_file_raises_naming_path(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(LabelError) as info:
        read_label_png(path)
    assert str(path) in str(info.value)


def test_truncated_label_png_raises_naming_path(tmp_path, voc_labels):
    good = tmp_path / "good.png"
    Image.fromarray(voc_labels, mode="L").save(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LabelError) as info:
        read_label_png(cut)
    assert str(cut) in str(info.value)


def test_one_bit_png_reads_as_indices_0_and_1(tmp_path):
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 1:4] = True
    path = tmp_path / "binary.png"
    Image.fromarray(mask).save(path)  # Pillow writes a 1-bit grayscale PNG
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_label_png(path), mask.astype(np.uint8))


# Rows 5 and 3 samples wide, so that the last byte of each scanline is padded.
LOW_BIT_ROWS = {
    2: [[0, 1, 2, 3, 1], [3, 2, 1, 0, 0], [1, 1, 3, 3, 2]],
    4: [[0, 1, 2, 15, 3], [14, 0, 7, 8, 15], [5, 6, 9, 10, 11]],
}


@pytest.mark.parametrize("bit_depth", [2, 4])
def test_low_bit_grayscale_png_reads_as_stored_values(tmp_path, bit_depth):
    rows = LOW_BIT_ROWS[bit_depth]
    path = tmp_path / f"gray{bit_depth}.png"
    path.write_bytes(png_bytes(rows, bit_depth, GRAY))
    with Image.open(path) as image:  # why this matters: Pillow stretches the samples to 0..255
        assert image.mode == "L"
        assert np.asarray(image).max() == 255
    got = read_label_png(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.array(rows))


def test_four_bit_grayscale_1_and_15_are_not_read_as_17_and_void(tmp_path):
    path = tmp_path / "gray4.png"
    path.write_bytes(png_bytes([[0, 1, 2, 15]], 4, GRAY))
    np.testing.assert_array_equal(read_label_png(path), [[0, 1, 2, 15]])


@pytest.mark.parametrize("bit_depth", [2, 4])
def test_low_bit_palette_png_reads_as_indices(tmp_path, bit_depth):
    rows = LOW_BIT_ROWS[bit_depth]
    palette = [(17 * i, 255 - 17 * i, 3 * i) for i in range(2 ** bit_depth)]
    path = tmp_path / f"palette{bit_depth}.png"
    path.write_bytes(png_bytes(rows, bit_depth, PALETTE, palette))
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_label_png(path), np.array(rows))


def test_eight_bit_grayscale_written_by_hand_reads_unchanged(tmp_path):
    rows = [[0, 1, 17, 85], [254, 255, 3, 15]]
    path = tmp_path / "gray8.png"
    path.write_bytes(png_bytes(rows, 8, GRAY))
    np.testing.assert_array_equal(read_label_png(path), np.array(rows))


# --- value checks -------------------------------------------------------------------------------

def test_check_label_values_accepts_classes_and_ignore_label():
    labels = np.array([[0, 1, 20], [255, 7, 0]], dtype=np.uint8)
    check_label_values(labels, num_classes=21, ignore_label=255, path="x.png")  # no exception


def test_check_label_values_rejects_value_outside_classes_naming_path_and_value():
    labels = np.array([[0, 30], [30, 255]], dtype=np.uint8)
    with pytest.raises(LabelError) as info:
        check_label_values(labels, num_classes=21, ignore_label=255, path="gt/2007_000033.png")
    message = str(info.value)
    assert "gt/2007_000033.png" in message
    assert "30 (2 px)" in message  # the offending value and its pixel count


def test_check_label_values_rejects_255_when_ignore_label_is_0():
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    with pytest.raises(LabelError) as info:
        check_label_values(labels, num_classes=21, ignore_label=0, path="a.png")
    assert "a.png" in str(info.value)
    assert "255" in str(info.value)


def test_check_label_values_accepts_largest_class_and_rejects_num_classes():
    check_label_values(np.array([[20]], dtype=np.uint8), 21, 255, "p.png")
    with pytest.raises(LabelError, match="21"):
        check_label_values(np.array([[21]], dtype=np.uint8), 21, 255, "p.png")


# --- writing ------------------------------------------------------------------------------------

def test_write_label_png_round_trip_palette_mode_indices_and_no_temp_files(tmp_path, voc_labels):
    folder = tmp_path / "out"
    path = folder / "pred.png"
    write_label_png(path, voc_labels.astype(np.int64))

    assert sorted(p.name for p in folder.iterdir()) == ["pred.png"]  # no leftover .part file
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "P"
        palette = np.frombuffer(bytes(image.getpalette()), dtype=np.uint8).reshape(-1, 3)
        indices = np.array(image)
    np.testing.assert_array_equal(palette, imgviz.label_colormap()[: len(palette)])
    assert len(palette) == 256
    np.testing.assert_array_equal(indices, voc_labels)
    np.testing.assert_array_equal(read_label_png(path), voc_labels)


def test_write_label_png_rejects_values_above_255_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_label_png(tmp_path / "x.png", np.array([[0, 256]]))
    assert list(tmp_path.iterdir()) == []
