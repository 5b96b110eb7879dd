"""Ground truth that is all void, for one image or for every image (a timing-only run with placeholder
labels): undefined metrics are null, and every step, the plots, the terminal table and the report, completes."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from segbench.labels import voc_palette
from workflow_helpers import make_workdir, read_config, snakemake, write_config

pytestmark = pytest.mark.slow

IDS = ["demo_000", "demo_001", "demo_002", "demo_003"]
METRICS = ("pixel_accuracy", "pixel_accuracy_void_as_error", "mean_accuracy", "mean_iou", "fw_iou", "boundary_iou",
           "mean_bf_score")


def make_void(workdir, image_id):
    png = workdir / "VOC" / "SegmentationClass" / f"{image_id}.png"
    size = Image.open(png).size
    void = Image.fromarray(np.full(size[::-1], 255, dtype=np.uint8), mode="P")
    void.putpalette(voc_palette().tobytes())
    void.save(png)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def workdir(tmp_path):
    workdir = make_workdir(tmp_path / "wd", limit=4, batch_size=4, shard_size=4)
    config = read_config(workdir)
    config["runs"] = {name: config["runs"][name] for name in ("fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu")}
    write_config(workdir, config)
    return workdir


def run_everything(workdir):
    result = snakemake(workdir)
    snakemake(workdir, "--report", "report.html")
    assert (workdir / "report.html").stat().st_size > 0
    for run in ("fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu"):
        for plot in ("class_scores", "boundary_scores", "confusion", "forward_times", "accuracy_by_size",
                     "worst_images"):
            assert (workdir / "results" / run / "plots" / f"{plot}.png").stat().st_size > 0
    assert (workdir / "results" / "plots" / "speed_accuracy.png").stat().st_size > 0
    return result.stdout + result.stderr


def test_a_dataset_whose_ground_truth_is_all_void(workdir):
    for image_id in IDS:
        make_void(workdir, image_id)
    out = run_everything(workdir)
    assert "segbench results" in out  # the terminal table, with "-" for what is undefined
    table = out[out.index("segbench results"):].splitlines()
    caffe_row = next(line for line in table if line.startswith("fcn-tiny-caffe-cpu"))
    assert caffe_row.split()[4:7] == ["-", "-", "-"]  # pixel acc., mean IoU, fwIoU (after the precision)
    summary = json.loads((workdir / "results" / "fcn-tiny-caffe-cpu" / "summary.json").read_text())
    assert all(summary[key] is None for key in METRICS if key != "pixel_accuracy_void_as_error")
    assert summary["pixel_accuracy_void_as_error"] == 0.0  # every pixel void, so every pixel counted as wrong
    assert all(v["iou"] is None and v["gt_pixels"] == 0 for v in summary["per_class"].values())
    assert summary["timing"]["images"] == 4 and summary["timing"]["median_s"] > 0  # timing still counts
    rows = read_csv(workdir / "results" / "fcn-tiny-caffe-cpu" / "per_image.csv")
    assert [(r["valid_pixels"], r["pixel_accuracy"], r["mean_iou"]) for r in rows] == [("0", "", "")] * 4
    assert [(r["boundary_iou"], r["bf_score"]) for r in rows] == [("", "")] * 4  # void is never boundary
    assert all(v["boundary_iou"] is None and v["bf_score"] is None for v in summary["per_class"].values())
    comparison = read_csv(workdir / "results" / "comparison.csv")
    assert [r["mean_iou"] for r in comparison] == ["", ""] and all(float(r["median_forward_s"]) > 0 for r in comparison)


def test_one_image_whose_ground_truth_is_all_void(workdir):
    make_void(workdir, "demo_001")
    run_everything(workdir)
    summary = json.loads((workdir / "results" / "fcn-tiny-caffe-cpu" / "summary.json").read_text())
    rows = {r["image_id"]: r for r in read_csv(workdir / "results" / "fcn-tiny-caffe-cpu" / "per_image.csv")}
    assert rows["demo_001"]["pixel_accuracy"] == "" and rows["demo_001"]["valid_pixels"] == "0"
    assert all(rows[i]["pixel_accuracy"] != "" for i in IDS if i != "demo_001")
    # The dataset's pixel accuracy is that of the other three images, computed here from the files.
    correct = scored = 0
    for image_id in IDS:
        truth = np.array(Image.open(workdir / "VOC" / "SegmentationClass" / f"{image_id}.png"))
        prediction = np.array(Image.open(workdir / "results" / "fcn-tiny-caffe-cpu" / "predictions" / f"{image_id}.png"))
        valid = truth != 255
        correct += int((truth[valid] == prediction[valid]).sum())
        scored += int(valid.sum())
    assert summary["pixel_accuracy"] == pytest.approx(correct / scored, abs=1e-12)
    assert summary["per_image_means"]["pixel_accuracy"] == pytest.approx(
        np.mean([float(rows[i]["pixel_accuracy"]) for i in IDS if i != "demo_001"]), abs=1e-12)
