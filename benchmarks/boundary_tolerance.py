#!/usr/bin/env python3
"""How Boundary IoU and the mean BF score move with their tolerances, on the bundled demo.

    .venv/bin/python benchmarks/boundary_tolerance.py [--run fcn-tiny-caffe-cpu] [--workdir DIR]

Runs the real workflow (Snakemake, the demo's model and all 24 demo images) once with each of three
settings of config `metrics` (half, once and twice the defaults: boundary_iou_dilation 0.02 and
bf_tolerance 0.0075 of each image's diagonal); after the first, only the per-image metrics and what
follows run again. Prints, per setting, the range of d and theta in pixels over the images, the
run's boundary_iou and mean_bf_score, and the same two numbers for a perfect outline, computed
here with segbench.metrics: the ground truth with each void pixel given the class of the nearest
non-void pixel, i.e. an outline along the middle of the void band (its IoU is 1 on every class).

A second table shows what the void convention does to one VOC-like object, without the workflow: a
200x200 object in a 375x500 image (default tolerances: d = 12, theta = 4.69 pixels) whose ground
truth has a void band 5 pixels wide on its contour (its own outer 3 pixels and the 2 background
pixels beyond, as VOC draws it), and predictions of the same square grown by k pixels on every side.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segbench import metrics  # noqa: E402

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
SETTINGS = [(0.01, 0.00375), (0.02, 0.0075), (0.04, 0.015)]  # (boundary_iou_dilation, bf_tolerance) fractions


def workflow(workdir, run, dilation, tolerance):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["root"] = str(REPO / "resources" / "demo" / "VOC")
    for model in config["models"].values():
        model["prototxt"], model["weights"] = (str(REPO / model[k]) for k in ("prototxt", "weights"))
    config["runs"] = {run: config["runs"][run]}
    config["metrics"] = {"boundary_iou_dilation": {"fraction_of_diagonal": dilation},
                         "bf_tolerance": {"fraction_of_diagonal": tolerance}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2"],
                            capture_output=True, text=True, cwd=workdir)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads((workdir / "results" / run / "summary.json").read_text()), config


def perfect_outline(config, dilation, tolerance):
    """boundary_iou and mean_bf_score of the truth with its void filled by the nearest class."""
    data = config["dataset"]
    root = Path(data["root"])
    ids = (root / "ImageSets" / "Segmentation" / f"{data['split']}.txt").read_text().split()
    counts, sizes = [], []
    for image_id in ids:
        truth = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        void = truth == data["ignore_label"]
        _, (iy, ix) = ndimage.distance_transform_edt(void, return_indices=True)
        h, w = truth.shape
        d = metrics.dilation_pixels({"fraction_of_diagonal": dilation}, h, w)
        theta = metrics.tolerance_pixels({"fraction_of_diagonal": tolerance}, h, w)
        sizes.append((d, theta))
        counts.append(metrics.boundary_counts(truth, truth[iy, ix], data["num_classes"], data["ignore_label"],
                                              d, theta))
    scores = metrics.dataset_boundary_scores(counts, data["num_classes"])
    return scores["boundary_iou"], scores["mean_bf_score"], sizes


def moved_outline(shifts=range(-4, 5)):
    """Rows of (k, object and background Boundary IoU and BF) for the object's outline moved by k pixels."""
    height, width, top, left, side, c = 375, 500, 90, 150, 200, 15
    truth = np.zeros((height, width), np.uint8)
    truth[top - 2:top + side + 2, left - 2:left + side + 2] = 255   # void: 2 pixels beyond the contour ...
    truth[top + 3:top + side - 3, left + 3:left + side - 3] = c     # ... and the object's outer 3 pixels
    d = metrics.dilation_pixels({"fraction_of_diagonal": 0.02}, height, width)
    theta = metrics.tolerance_pixels({"fraction_of_diagonal": 0.0075}, height, width)
    rows = []
    for k in shifts:
        prediction = np.zeros((height, width), np.uint8)
        prediction[top - k:top + side + k, left - k:left + side + k] = c
        counts = metrics.boundary_counts(truth, prediction, 21, 255, d, theta)
        iou = metrics.boundary_iou(counts["iou_intersection"], counts["iou_union"])
        bf = metrics.bf_scores(counts["bf_pred"], counts["bf_pred_matched"], counts["bf_truth"],
                               counts["bf_truth_matched"])
        rows.append([f"{k:+d}", f"{iou[c]:.3f}", f"{bf[c]:.3f}", f"{iou[0]:.3f}", f"{bf[0]:.3f}"])
    return rows


def print_table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="fcn-tiny-caffe-cpu")
    parser.add_argument("--workdir", type=Path, help="keep the workflow's files here (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="boundary-tolerance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for dilation, tolerance in SETTINGS:
            summary, config = workflow(workdir, args.run, dilation, tolerance)
            oracle_iou, oracle_bf, sizes = perfect_outline(config, dilation, tolerance)
            d = [s[0] for s in sizes]
            theta = [s[1] for s in sizes]
            rows.append([f"{dilation:g} / {tolerance:g}", f"{min(d)}-{max(d)}", f"{min(theta):.2f}-{max(theta):.2f}",
                         f"{summary['mean_iou']:.4f}", f"{summary['boundary_iou']:.4f}",
                         f"{summary['mean_bf_score']:.4f}", f"{oracle_iou:.4f}", f"{oracle_bf:.4f}"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    header = ["dilation / tolerance (x diagonal)", "d (px)", "theta (px)", "mean IoU", "boundary_iou",
              "mean_bf_score", "perfect outline: boundary_iou", "perfect outline: mean_bf_score"]
    print(f"run {args.run}, {summary['images']} demo images")
    print_table(header, rows)
    print("\none 200x200 object with a 5-pixel void band on its contour, predicted grown by k pixels (d = 12, "
          "theta = 4.69)")
    print_table(["k (px)", "object Boundary IoU", "object BF", "background Boundary IoU", "background BF"],
                moved_outline())


if __name__ == "__main__":
    main()
