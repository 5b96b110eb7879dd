"""Bad input stops the workflow with a message naming the file and the fault, and leaves no partial output."""

import numpy as np
import pytest
from PIL import Image

from segbench.labels import voc_palette
from workflow_helpers import batch_files, decoded_labels, leftovers, make_workdir, read_config, snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(tmp_path / "wd", limit=4, batch_size=4, shard_size=4)


def fails(workdir, *needles):
    result = snakemake(workdir, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output[-5000:]}"
    assert not leftovers(workdir)
    assert not list(workdir.glob("results/*/summary.json"))
    return output


def test_rgb_ground_truth_with_colours_outside_the_palette(workdir):
    png = workdir / "VOC" / "SegmentationClass" / "demo_002.png"
    rgb = np.array(Image.open(png).convert("RGB"))
    rgb[5:9, 5:9] = (1, 2, 3)
    Image.fromarray(rgb).save(png)
    fails(workdir, "VOC/SegmentationClass/demo_002.png", "not in the VOC palette", "(1, 2, 3)")
    assert decoded_labels(workdir, "demo_002") is None


def test_rgb_ground_truth_with_palette_colours_is_accepted(workdir):
    png = workdir / "VOC" / "SegmentationClass" / "demo_002.png"
    indices = np.array(Image.open(png))
    Image.fromarray(voc_palette()[indices]).save(png)  # labels someone re-saved as colours
    snakemake(workdir)
    np.testing.assert_array_equal(decoded_labels(workdir, "demo_002"), indices)


def test_label_outside_the_classes(workdir):
    png = workdir / "VOC" / "SegmentationClass" / "demo_001.png"
    image = Image.open(png)
    labels = np.array(image)
    labels[0, :7] = 30
    bad = Image.fromarray(labels, mode="P")
    bad.putpalette(image.getpalette())
    bad.save(png)
    fails(workdir, "VOC/SegmentationClass/demo_001.png", "outside 0..20", "30 (7 px)")


def test_prediction_and_ground_truth_sizes_differ(workdir):
    jpg = workdir / "VOC" / "JPEGImages" / "demo_003.jpg"
    image = Image.open(jpg)
    image.resize((image.width + 6, image.height)).save(jpg)
    fails(workdir, "predictions/demo_003.png against VOC/SegmentationClass/demo_003.png",
          f"prediction is {image.height}x{image.width + 6} (HxW) but its ground truth is {image.height}x{image.width}")


def test_missing_image_listed_in_the_split(workdir):
    split = workdir / "VOC" / "ImageSets" / "Segmentation" / "demo.txt"
    split.write_text("ghost_17\n" + split.read_text())
    output = fails(workdir, "VOC/JPEGImages/ghost_17.jpg", "VOC/SegmentationClass/ghost_17.png", "missing")
    assert "Traceback" not in output
    assert not (workdir / "work").exists() and not (workdir / "results").exists()


def test_corrupt_jpeg(workdir):
    jpg = workdir / "VOC" / "JPEGImages" / "demo_000.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    fails(workdir, "VOC/JPEGImages/demo_000.jpg", "cannot decode image")
    for key in (workdir / "work" / "inputs").glob("*"):
        assert not any("demo_000" in ids for ids in batch_files(key).values())


def test_missing_model_file(workdir):
    config = read_config(workdir)
    config["models"]["fcn-tiny"]["weights"] = "model/nowhere.caffemodel"
    write_config(workdir, config)
    fails(workdir, "models.fcn-tiny.weights: model/nowhere.caffemodel", "not found")
    assert not (workdir / "work").exists()


def test_config_error_names_the_key(workdir):
    config = read_config(workdir)
    config["dataset"]["lmit"] = 3
    config["runs"]["fcn-tiny-caffe-cpu"]["device"] = "tpu"
    write_config(workdir, config)
    fails(workdir, "'lmit' was unexpected", "runs.fcn-tiny-caffe-cpu.device")
    assert not (workdir / "work").exists()


def test_gpu_device_on_cpu_only_caffe_fails_cleanly(workdir):
    config = read_config(workdir)
    config["runs"]["fcn-tiny-caffe-cpu"]["device"] = "gpu:0"
    write_config(workdir, config)
    output = fails(workdir, "runs.fcn-tiny-caffe-cpu: device gpu:0 asked for", "built CPU-only")
    assert "Aborted" not in output and "core dumped" not in output
    assert not (workdir / "work").exists()  # refused before any job started
