"""EXIF orientation: photos that viewers show rotated or mirrored are refused, applied or ignored, as configured."""

import copy

import numpy as np
import pytest
from PIL import Image

from segbench import steps
from segbench.config import validate
from segbench.dataset import DatasetError
from segbench.images import ImageError, read_image, read_orientation
from segbench.plan import Plan

ORIENTATION = 0x0112
H, W = 24, 40  # not square, so that a swap of height and width shows


def photo_pixels(seed=0):
    """Pixels in which every position is told apart: smooth ramps plus noise."""
    rows, cols = np.indices((H, W))
    noise = np.random.default_rng(seed).integers(0, 60, size=(H, W, 3))
    return np.clip(np.stack([rows * 8, cols * 5, (rows + cols) * 3], axis=-1) + noise, 0, 255).astype(np.uint8)


def save_photo(path, orientation=None, pixels=None, **options):
    image = Image.fromarray(photo_pixels() if pixels is None else pixels)
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif
    image.save(path, **options)
    return path


def stored_pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def as_viewers_show(stored, orientation):
    """The EXIF definition, position by position: orientation n says on which side of the shown
    picture the stored 0th row and 0th column lie (e.g. 6: row 0 on the right, column 0 on top)."""
    h, w = stored.shape[:2]
    r, c = np.indices((h, w))
    where = {  # (shown row, shown column) of stored pixel (r, c)
        1: (r, c),                   # row 0 top, column 0 left
        2: (r, w - 1 - c),           # row 0 top, column 0 right
        3: (h - 1 - r, w - 1 - c),   # row 0 bottom, column 0 right
        4: (h - 1 - r, c),           # row 0 bottom, column 0 left
        5: (c, r),                   # row 0 left, column 0 top
        6: (c, h - 1 - r),           # row 0 right, column 0 top
        7: (w - 1 - c, h - 1 - r),   # row 0 right, column 0 bottom
        8: (w - 1 - c, r),           # row 0 left, column 0 bottom
    }[orientation]
    shown = np.zeros((h, w, 3) if orientation <= 4 else (w, h, 3), dtype=stored.dtype)
    shown[where] = stored[r, c]
    return shown


def test_the_expected_arrays_are_the_familiar_rotations():
    # A check of the test's own definition against numpy's rotations, as the EXIF tag is usually described.
    stored = photo_pixels()
    np.testing.assert_array_equal(as_viewers_show(stored, 3), np.rot90(stored, 2))
    np.testing.assert_array_equal(as_viewers_show(stored, 6), np.rot90(stored, -1))  # 90 degrees clockwise
    np.testing.assert_array_equal(as_viewers_show(stored, 8), np.rot90(stored, 1))   # 90 degrees anticlockwise
    np.testing.assert_array_equal(as_viewers_show(stored, 2), stored[:, ::-1])
    np.testing.assert_array_equal(as_viewers_show(stored, 4), stored[::-1])


# --- read_image ---------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_apply_shows_the_jpeg_as_its_orientation_says(tmp_path, orientation):
    path = save_photo(tmp_path / f"o{orientation}.jpg", orientation, quality=95)
    got = read_image(path, "apply")
    np.testing.assert_array_equal(got, as_viewers_show(stored_pixels(path), orientation))
    assert got.shape == ((H, W, 3) if orientation <= 4 else (W, H, 3))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_apply_on_a_lossless_png_gives_the_written_pixels_turned(tmp_path, orientation):
    pixels = photo_pixels(seed=orientation)
    path = save_photo(tmp_path / f"o{orientation}.png", orientation, pixels)
    assert read_orientation(path) == orientation  # Pillow writes the eXIf chunk before the pixels
    np.testing.assert_array_equal(read_image(path, "apply"), as_viewers_show(pixels, orientation))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_ignore_gives_the_stored_pixels(tmp_path, orientation):
    path = save_photo(tmp_path / "photo.jpg", orientation, quality=95)
    got = read_image(path, "ignore")
    assert got.shape == (H, W, 3)
    np.testing.assert_array_equal(got, stored_pixels(path))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_refuse_names_the_file_its_orientation_and_the_setting(tmp_path, orientation):
    path = save_photo(tmp_path / "turned.jpg", orientation)
    with pytest.raises(ImageError) as info:
        read_image(path, "refuse")
    message = str(info.value)
    assert str(path) in message and f"EXIF orientation {orientation}" in message
    assert "dataset.exif_orientation" in message and "'apply'" in message and "'ignore'" in message


@pytest.mark.parametrize("orientation", [None, 1, 0, 9])
def test_orientation_1_none_or_out_of_range_is_read_as_stored_under_every_setting(tmp_path, orientation):
    # Viewers, like PIL.ImageOps.exif_transpose, treat a value outside 1..8 as 1.
    path = save_photo(tmp_path / "upright.jpg", orientation, quality=95)
    assert read_orientation(path) == 1
    for setting in ("refuse", "apply", "ignore"):
        np.testing.assert_array_equal(read_image(path, setting), stored_pixels(path))


def test_read_orientation_of_an_unreadable_file_is_left_to_the_decoding_step(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    assert read_orientation(path) is None
    assert read_orientation(tmp_path / "missing.jpg") is None


def test_read_image_rejects_an_unknown_setting(tmp_path):
    with pytest.raises(ValueError, match="exif_orientation"):
        read_image(save_photo(tmp_path / "p.jpg"), "rotate")


# --- the plan: refused before any job -----------------------------------------------------------

def voc_tree(root, orientations):
    """A VOC-layout dataset of one photo per entry of `orientations` (None: no EXIF), and model files."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    ids = [f"img_{n:02d}" for n in range(len(orientations))]
    for image_id, orientation in zip(ids, orientations):
        save_photo(root / "JPEGImages" / f"{image_id}.jpg", orientation)
        Image.fromarray(np.zeros((H, W), dtype=np.uint8), mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    for name in ("deploy.prototxt", "net.caffemodel"):
        (root / name).write_text("")
    return ids


def plan_config(root, **dataset):
    return validate(copy.deepcopy({
        "dataset": {"root": str(root), **dataset},
        "models": {"m": {"prototxt": str(root / "deploy.prototxt"), "weights": str(root / "net.caffemodel")}},
        "runs": {"r": {"model": "m"}},
    }))


def test_config_default_is_refuse():
    assert validate({"dataset": {"root": "x"}, "models": {"m": {"prototxt": "p", "weights": "w"}},
                     "runs": {"r": {"model": "m"}}})["dataset"]["exif_orientation"] == "refuse"


def test_plan_refuses_turned_photos_in_one_message_naming_each_file_and_value(tmp_path):
    ids = voc_tree(tmp_path, [None, 3, 1, 6, None, 8])
    with pytest.raises(DatasetError) as info:
        Plan.from_config(plan_config(tmp_path))
    message = str(info.value)
    assert message.startswith("3 photo(s) have an EXIF orientation other than 1")
    for image_id, orientation in ((ids[1], 3), (ids[3], 6), (ids[5], 8)):
        assert f"{tmp_path}/JPEGImages/{image_id}.jpg: orientation {orientation}" in message
    for upright in (ids[0], ids[2], ids[4]):
        assert f"{upright}.jpg" not in message
    assert "set dataset.exif_orientation to 'apply'" in message and "'ignore'" in message


def test_plan_lists_the_first_ten_turned_photos_and_counts_the_rest(tmp_path):
    ids = voc_tree(tmp_path, [6] * 13)
    with pytest.raises(DatasetError) as info:
        Plan.from_config(plan_config(tmp_path))
    message = str(info.value)
    assert message.startswith("13 photo(s)") and "(and 3 more)" in message
    assert f"{ids[9]}.jpg" in message and f"{ids[10]}.jpg" not in message


@pytest.mark.parametrize("setting", ["apply", "ignore"])
def test_plan_accepts_turned_photos_when_told_what_to_do(tmp_path, setting):
    ids = voc_tree(tmp_path, [6, 3])
    assert Plan.from_config(plan_config(tmp_path, exif_orientation=setting)).ids == ids


def test_plan_without_file_checks_does_not_read_photos(tmp_path):
    # Jobs parse the workflow with check_files=False: they must not pay for the check, nor fail on it.
    ids = voc_tree(tmp_path, [6])
    assert Plan.from_config(plan_config(tmp_path), check_files=False).ids == ids


def test_prepare_inputs_refuses_a_turned_photo_that_skipped_the_plan_check(tmp_path):
    photo = save_photo(tmp_path / "turned.jpg", 6)
    out = tmp_path / "inputs.npz"
    with pytest.raises(ImageError, match="turned.jpg: EXIF orientation 6"):
        steps.prepare_inputs(["turned"], [str(photo)], str(out), None, "refuse")
    assert not out.exists()


def test_prepare_inputs_applies_the_orientation_before_resizing(tmp_path):
    from segbench.files import read_batch

    photo = save_photo(tmp_path / "turned.jpg", 6, quality=95)
    out = tmp_path / "inputs.npz"
    steps.prepare_inputs(["turned"], [str(photo)], str(out), None, "apply")
    ((image, source_hw),) = read_batch([str(out)], ["turned"], "image", "source_hw").values()
    np.testing.assert_array_equal(image, as_viewers_show(stored_pixels(photo), 6))
    assert tuple(source_hw) == (W, H)


# --- the report gallery -------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["apply", "ignore"])
def test_gallery_shows_the_photo_as_the_network_got_it(tmp_path, monkeypatch, setting):
    import matplotlib.axes

    from segbench import plots
    from segbench.labels import write_label_png

    photo = save_photo(tmp_path / "turned.jpg", 6, quality=95)
    shown = as_viewers_show(stored_pixels(photo), 6) if setting == "apply" else stored_pixels(photo)
    truth = tmp_path / "truth.png"
    write_label_png(truth, np.zeros(shown.shape[:2], dtype=np.uint8))
    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, panel, **kw: drawn.append(np.asarray(panel)))
    plots.worst_images([{"image_id": "turned", "mean_iou": 0.5}], {"turned": (photo, truth, truth)}, 1,
                       tmp_path / "gallery.png", setting)
    np.testing.assert_array_equal(drawn[0], shown)


def test_gallery_refuses_a_turned_photo_under_refuse(tmp_path):
    from segbench import plots

    photo = save_photo(tmp_path / "turned.jpg", 6)
    with pytest.raises(ImageError, match="turned.jpg: EXIF orientation 6"):
        plots.worst_images([{"image_id": "t", "mean_iou": 0.5}], {"t": (photo, photo, photo)}, 1,
                           tmp_path / "gallery.png", "refuse")


# --- the workflow -------------------------------------------------------------------------------

@pytest.mark.slow
def test_workflow_scores_a_turned_photo_against_labels_drawn_on_it_as_shown(tmp_path):
    from segbench.files import read_batch
    from workflow_helpers import batch_files, make_workdir, planned_jobs, read_config, snakemake, write_config

    workdir = make_workdir(tmp_path / "wd", limit=2, batch_size=2, shard_size=2)
    voc = workdir / "VOC"
    upright = stored_pixels(voc / "JPEGImages" / "demo_000.jpg")
    # demo_000 as stored, and demo_turned: the same picture stored a quarter turn anticlockwise with
    # orientation 6 (shown a quarter turn clockwise, i.e. upright), and demo_000's label drawn upright.
    save_photo(voc / "JPEGImages" / "demo_000.jpg", pixels=upright, quality=95)
    turned = save_photo(voc / "JPEGImages" / "demo_turned.jpg", 6, np.ascontiguousarray(np.rot90(upright, 1)),
                        quality=95)
    label = voc / "SegmentationClass" / "demo_turned.png"
    label.write_bytes((voc / "SegmentationClass" / "demo_000.png").read_bytes())
    (voc / "ImageSets" / "Segmentation" / "demo.txt").write_text("demo_000\ndemo_turned\n")
    config = read_config(workdir)
    config["runs"] = {"fcn-tiny-caffe-cpu": config["runs"]["fcn-tiny-caffe-cpu"]}
    write_config(workdir, config)

    refused = snakemake(workdir, check=False)
    assert refused.returncode != 0
    assert "VOC/JPEGImages/demo_turned.jpg: orientation 6" in refused.stderr + refused.stdout
    assert not (workdir / "work").exists()

    config["dataset"]["exif_orientation"] = "apply"
    write_config(workdir, config)
    snakemake(workdir)
    (inputs,) = batch_files(workdir / "work" / "inputs" / "native")
    ((network_input, source_hw),) = [read_batch([inputs], ["demo_turned"], "image", "source_hw")["demo_turned"]]
    np.testing.assert_array_equal(network_input, np.rot90(stored_pixels(turned), -1))
    label_hw = np.asarray(Image.open(label)).shape
    assert tuple(source_hw) == label_hw == upright.shape[:2]
    prediction = workdir / "results" / "fcn-tiny-caffe-cpu" / "predictions" / "demo_turned.png"
    assert np.asarray(Image.open(prediction)).shape == label_hw
    from segbench.plots import read_per_image
    rows = {r["image_id"]: r for r in read_per_image(workdir / "results" / "fcn-tiny-caffe-cpu" / "per_image.csv")}
    assert (rows["demo_turned"]["height"], rows["demo_turned"]["width"]) == label_hw
    # The same picture, once stored upright and once turned: the same score but for JPEG's losses.
    assert abs(rows["demo_turned"]["pixel_accuracy"] - rows["demo_000"]["pixel_accuracy"]) < 0.01
    assert (workdir / "results" / "fcn-tiny-caffe-cpu" / "plots" / "worst_images.png").is_file()

    # Another setting redoes the network inputs and what depends on them, but not the labels.
    config["dataset"]["exif_orientation"] = "ignore"
    write_config(workdir, config)
    jobs = planned_jobs(workdir)
    assert jobs["decode"] == 0 and jobs["resize"] == 1 and jobs["inference"] == 1 and jobs["metrics"] == 1
