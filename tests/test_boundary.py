"""Boundary IoU and the BF score: hand-made masks worked out on paper, and an independent computation
from the definitions (scipy.ndimage) on the demo's real predictions."""

import csv
import json
import math
from fractions import Fraction as F

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segbench.metrics import (bf_scores, boundary_counts, boundary_iou, dataset_boundary_scores, dilation_pixels,
                              image_boundary_scores, tolerance_pixels)
from workflow_helpers import planned_jobs, read_config, write_config

VOID = 255


def per_class(truth, prediction, d, theta, num_classes=3):
    """(Boundary IoU per class, BF score per class) of one image."""
    c = boundary_counts(np.array(truth, np.uint8), np.array(prediction, np.uint8), num_classes, VOID, d, theta)
    return (boundary_iou(c["iou_intersection"], c["iou_union"]),
            bf_scores(c["bf_pred"], c["bf_pred_matched"], c["bf_truth"], c["bf_truth_matched"]), c)


def frame(height, width, fill=0):
    return np.full((height, width), fill, np.uint8)


# --- a 4x4 square shifted right by one pixel, in an 8x8 image --------------------------------------

SQUARE_T = frame(8, 8)
SQUARE_T[2:6, 2:6] = 1     # rows 2..5, cols 2..5
SQUARE_P = frame(8, 8)
SQUARE_P[2:6, 3:7] = 1     # rows 2..5, cols 3..6


def test_square_shifted_by_one_pixel():
    iou, bf, _ = per_class(SQUARE_T, SQUARE_P, d=1, theta=1)
    # Class 1, d = 1: each band is the square's outer ring, 16 - 4 (the inner 2x2) = 12 pixels.
    # Truth ring: rows 2 and 5 at cols 2..5, rows 3-4 at cols 2 and 5; prediction ring: rows 2 and 5 at
    # cols 3..6, rows 3-4 at cols 3 and 6. Common: rows 2 and 5 at cols 3..5 = 6. Union 12 + 12 - 6 = 18.
    assert iou[1] == pytest.approx(F(6, 18))
    # Background, d = 1: the image's border ring (8*4 - 4 = 28 pixels) plus the ring of pixels around the
    # square (rows 1..6 x cols 1..6 minus the square: 36 - 16 = 20; none on the border) -> 48.
    # Prediction: 28 + its ring (rows 1..6 x cols 2..7 minus the square = 20, of which col 7's 6 pixels
    # are on the border) -> 42. Common: the 28 of the border, and rows 1 and 6 at cols 2..6 (10) -> 38.
    # Union 48 + 42 - 38 = 52.
    assert iou[0] == pytest.approx(F(38, 52))
    assert math.isnan(iou[2])  # absent from both sides: undefined
    # BF, theta = 1: every predicted ring pixel is in the truth's ring or one pixel beside it, and the
    # reverse, so P = R = 1.
    assert bf[1] == pytest.approx(1)
    # theta = 0 (exact matches only): 6 of the 12 pixels on each side match, P = R = 1/2, BF = 1/2.
    _, bf, _ = per_class(SQUARE_T, SQUARE_P, d=1, theta=0)
    assert bf[1] == pytest.approx(F(1, 2))
    # Background, theta = 0: truth boundary = the border ring (28) + the 16 pixels 4-adjacent to the
    # square (4 on each side) = 44; prediction: 28 + 12 (its right-hand 4 are on the border) = 40.
    # Exact matches: 28 + rows 1 and 6 at cols 3..5 (6) = 34. With P = 34/40, R = 34/44,
    # BF = 2PR/(P+R) = 2*34/(40+44) = 68/84.
    assert bf[0] == pytest.approx(F(68, 84))


# --- a line one pixel thick, predicted one row lower ----------------------------------------------

def test_thin_line_one_row_off():
    truth, prediction = frame(8, 8), frame(8, 8)
    truth[3, 1:7] = 1
    prediction[4, 1:7] = 1
    iou, bf, counts = per_class(truth, prediction, d=1, theta=1)
    # A line one pixel thick erodes to nothing: each band is the whole line (6 pixels), and the two
    # lines share no pixel: 0 / (6 + 6) = 0.
    assert (counts["iou_intersection"][1], counts["iou_union"][1]) == (0, 12)
    assert iou[1] == 0
    # Every pixel of either line is one pixel from the other line: P = R = 1 at theta = 1 ...
    assert bf[1] == pytest.approx(1)
    # ... and P = R = 0 at theta = 0: BF 0 (both sides have a boundary, so it is defined).
    _, bf, _ = per_class(truth, prediction, d=1, theta=0)
    assert bf[1] == 0


# --- an object cut by the image's edge ------------------------------------------------------------

def test_object_touching_the_image_border():
    truth, prediction = frame(6, 6), frame(6, 6)
    truth[0:3] = 1        # rows 0..2, the whole width
    prediction[0:2] = 1   # one row short
    iou, bf, _ = per_class(truth, prediction, d=1, theta=0)
    # The image's edge bounds the mask. Truth band (d = 1): row 0 (its window leaves the image), row 2
    # (reaches row 3, background), and rows 1 at cols 0 and 5 (leave the image sideways): 6 + 6 + 2 = 14.
    # Prediction band: rows 0 and 1 (all 12 pixels). Common: row 0 (6) + row 1 at cols 0 and 5 (2) = 8.
    # Union: 14 + 12 - 8 = 18.
    assert iou[1] == pytest.approx(F(8, 18))
    # BF, theta = 0: the same sets for 4-neighbours (truth 14, prediction 12, 8 common):
    # BF = 2*8 / (14 + 12) = 16/26.
    assert bf[1] == pytest.approx(F(16, 26))
    # theta = 1: row 1's middle pixels are one pixel from rows 0 and 2 of the truth boundary, and row 2
    # is one pixel from row 1: P = R = 1.
    _, bf, _ = per_class(truth, prediction, d=1, theta=1)
    assert bf[1] == pytest.approx(1)


# --- a class on one side only ---------------------------------------------------------------------

def test_a_class_absent_from_one_side():
    truth, prediction = frame(5, 5), frame(5, 5)
    truth[1:3, 1:3] = 1        # a 2x2 object of class 1 ...
    prediction[1:3, 1:3] = 2   # ... predicted as class 2
    iou, bf, counts = per_class(truth, prediction, d=1, theta=0, num_classes=4)
    # Class 1: its 4 pixels are all band in the truth, none in the prediction: 0 / 4 = 0 (defined).
    # Class 2: the reverse, 0 / 4. Class 3: on neither side, undefined.
    assert (counts["iou_intersection"][1:3].tolist(), counts["iou_union"][1:3].tolist()) == ([0, 0], [4, 4])
    assert iou[1] == 0 and iou[2] == 0 and math.isnan(iou[3])
    # Background: every one of its 21 pixels is on the image's border or next to the 2x2 object, on
    # both sides alike: 21/21.
    assert iou[0] == 1
    # BF: a boundary on one side only gives P + R = 0, so BF 0; class 3 undefined; background 1.
    assert bf[1] == 0 and bf[2] == 0 and math.isnan(bf[3]) and bf[0] == 1
    image_iou, image_bf = image_boundary_scores(counts)
    assert image_iou == pytest.approx(F(1, 3)) and image_bf == pytest.approx(F(1, 3))  # (1 + 0 + 0) / 3


# --- void between two classes ---------------------------------------------------------------------

# 4 rows x 8 columns: class 1 on cols 0..2, void on col 3, background on cols 4..7. The prediction puts
# the contour on the void's right-hand side: class 1 on cols 0..3.
VOID_T = np.array([[1, 1, 1, VOID, 0, 0, 0, 0]] * 4, np.uint8)
VOID_P = np.array([[1, 1, 1, 1, 0, 0, 0, 0]] * 4, np.uint8)


def test_void_is_neither_boundary_nor_scored():
    iou, bf, counts = per_class(VOID_T, VOID_P, d=1, theta=0)
    # Class 1, d = 1. The truth's mask ends where the void begins. Its band: rows 0 and 3 at cols 0..2
    # (6, the image's edge), rows 1-2 at col 0 (the edge) and at col 2 (beside the void): 10; col 1 of
    # rows 1-2 is inside. Prediction band: rows 0 and 3 at cols 0..3 (8), rows 1-2 at cols 0 and 3 (4) =
    # 12, less the 4 void pixels of col 3 = 8, all of them in the truth's band. 8 / (10 + 8 - 8) = 4/5.
    assert (counts["iou_intersection"][1], counts["iou_union"][1]) == (8, 10)
    assert iou[1] == pytest.approx(F(4, 5))
    # Background: both bands are rows 0 and 3 (8) and rows 1-2 at cols 4 and 7 (4): 12/12.
    assert iou[0] == 1
    # BF, theta = 0. Truth boundary of class 1: the same 10 pixels; prediction: 12, less the void column
    # = 8, all in the truth's boundary. P = 8/8, R = 8/10, BF = 2 * 1 * 4/5 / (1 + 4/5) = 8/9.
    # (Had the void column been kept, P would be 8/12.)
    assert (counts["bf_pred"][1], counts["bf_pred_matched"][1]) == (8, 8)
    assert (counts["bf_truth"][1], counts["bf_truth_matched"][1]) == (10, 8)
    assert bf[1] == pytest.approx(F(8, 9))
    assert bf[0] == 1  # both: rows 0 and 3, and cols 4 and 7 of rows 1-2
    image_iou, image_bf = image_boundary_scores(counts)
    assert image_iou == pytest.approx(F(9, 10))   # (4/5 + 1) / 2
    assert image_bf == pytest.approx(F(17, 18))   # (8/9 + 1) / 2
    # theta = 1: the two missed truth pixels (col 2 of rows 1-2) are one pixel from rows 0 and 3.
    _, bf, _ = per_class(VOID_T, VOID_P, d=1, theta=1)
    assert bf[1] == 1


def test_all_void_ground_truth_is_undefined():
    truth = frame(6, 7, VOID)
    prediction = frame(6, 7)
    prediction[2:4, 2:5] = 1
    iou, bf, counts = per_class(truth, prediction, d=2, theta=2)
    assert all(int(v.sum()) == 0 for v in counts.values())  # every boundary pixel is void
    assert np.isnan(iou).all() and np.isnan(bf).all()
    assert all(math.isnan(v) for v in image_boundary_scores(counts))


def test_dataset_values_sum_counts_and_average_bf_over_images():
    _, _, void_case = per_class(VOID_T, VOID_P, d=1, theta=0, num_classes=4)
    truth, prediction = frame(5, 5), frame(5, 5)
    truth[1:3, 1:3], prediction[1:3, 1:3] = 1, 2
    _, _, absent_case = per_class(truth, prediction, d=1, theta=0, num_classes=4)
    got = dataset_boundary_scores([void_case, absent_case], 4)
    # Boundary IoU from summed counts: background (12 + 21) / (12 + 21) = 1; class 1 (8 + 0) / (10 + 4)
    # = 4/7; class 2 0 / 4 = 0; class 3 undefined. Mean (1 + 4/7 + 0) / 3 = 11/21.
    np.testing.assert_allclose(got["class_boundary_iou"][:3], [1, 4 / 7, 0])
    assert math.isnan(got["class_boundary_iou"][3])
    assert got["boundary_iou"] == pytest.approx(F(11, 21))
    # BF per class, mean over the images where defined: background (1 + 1) / 2, class 1 (8/9 + 0) / 2,
    # class 2 0 (one image). mean_bf_score: mean of the images' own means, (17/18 + 1/3) / 2 = 23/36.
    np.testing.assert_allclose(got["class_bf_score"][:3], [1, 4 / 9, 0])
    assert got["mean_bf_score"] == pytest.approx(F(23, 36))
    empty = dataset_boundary_scores([], 4)
    assert math.isnan(empty["boundary_iou"]) and math.isnan(empty["mean_bf_score"])


def test_tolerances_from_the_settings():
    # A 300x400 image has a diagonal of 500 pixels.
    assert dilation_pixels({"fraction_of_diagonal": 0.02}, 300, 400) == 10
    assert tolerance_pixels({"fraction_of_diagonal": 0.0075}, 300, 400) == pytest.approx(3.75)
    assert dilation_pixels({"pixels": 3}, 300, 400) == 3 and tolerance_pixels({"pixels": 2}, 300, 400) == 2
    assert dilation_pixels({"fraction_of_diagonal": 0.001}, 30, 40) == 1  # at least 1
    # VOC's 375x500: 0.02 x 625 = 12.5, rounded half to even as the reference code's round() does.
    assert dilation_pixels({"fraction_of_diagonal": 0.02}, 375, 500) == 12


def test_matches_the_definitions_on_random_label_maps():
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, w = rng.integers(5, 40, 2)
        truth = ndimage.zoom(rng.integers(0, 4, (h // 4 + 1, w // 4 + 1)), 4, order=0)[:h, :w].astype(np.uint8)
        prediction = ndimage.zoom(rng.integers(0, 4, (h // 3 + 1, w // 3 + 1)), 3, order=0)[:h, :w].astype(np.uint8)
        truth[rng.random((h, w)) < 0.1] = VOID
        d, theta = int(rng.integers(1, 6)), float(rng.uniform(0, 5))
        got = boundary_counts(truth, prediction, 4, VOID, d, theta)
        expected = reference_counts(truth, prediction, 4, d, theta)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# --- an independent computation, from the definitions, with scipy.ndimage -------------------------

def reference_counts(truth, prediction, num_classes, d, theta):
    """Per-class counts straight from the definitions: binary masks, iterated erosion with the image's
    outside as outside (border_value=0), void removed, distances by the Euclidean distance transform."""
    valid = truth != VOID
    square, cross = np.ones((3, 3), bool), ndimage.generate_binary_structure(2, 1)
    counts = {key: np.zeros(num_classes, np.int64) for key in
              ("iou_intersection", "iou_union", "bf_pred", "bf_pred_matched", "bf_truth", "bf_truth_matched")}
    for c in range(num_classes):
        g, p = truth == c, prediction == c
        band_g = g & ~ndimage.binary_erosion(g, square, iterations=d, border_value=0) & valid
        band_p = p & ~ndimage.binary_erosion(p, square, iterations=d, border_value=0) & valid
        counts["iou_intersection"][c] = (band_g & band_p).sum()
        counts["iou_union"][c] = (band_g | band_p).sum()
        edge_g = g & ~ndimage.binary_erosion(g, cross, border_value=0) & valid
        edge_p = p & ~ndimage.binary_erosion(p, cross, border_value=0) & valid
        counts["bf_truth"][c], counts["bf_pred"][c] = edge_g.sum(), edge_p.sum()
        if edge_g.any() and edge_p.any():
            counts["bf_pred_matched"][c] = (ndimage.distance_transform_edt(~edge_g)[edge_p] <= theta).sum()
            counts["bf_truth_matched"][c] = (ndimage.distance_transform_edt(~edge_p)[edge_g] <= theta).sum()
    return counts


def reference_scores(counts_per_image, num_classes):
    """Dataset values from the definitions: Boundary IoU from counts summed over images; BF per image
    and class 2PR/(P+R), per class the mean over images where defined, mean_bf_score the mean over
    images of each image's mean over its defined classes."""
    inter = sum(c["iou_intersection"] for c in counts_per_image)
    union = sum(c["iou_union"] for c in counts_per_image)
    class_iou = [inter[k] / union[k] if union[k] else None for k in range(num_classes)]
    bf_rows = []
    for c in counts_per_image:
        row = []
        for k in range(num_classes):
            if c["bf_pred"][k] + c["bf_truth"][k] == 0:
                row.append(None)
                continue
            p = c["bf_pred_matched"][k] / c["bf_pred"][k] if c["bf_pred"][k] else 0.0
            r = c["bf_truth_matched"][k] / c["bf_truth"][k] if c["bf_truth"][k] else 0.0
            row.append(2 * p * r / (p + r) if p + r else 0.0)
        bf_rows.append(row)
    class_bf = []
    for k in range(num_classes):
        values = [row[k] for row in bf_rows if row[k] is not None]
        class_bf.append(sum(values) / len(values) if values else None)
    image_bf = [sum(v for v in row if v is not None) / sum(v is not None for v in row)
                for row in bf_rows if any(v is not None for v in row)]
    defined = [v for v in class_iou if v is not None]
    return {"class_iou": class_iou, "class_bf": class_bf, "image_bf": bf_rows,
            "boundary_iou": sum(defined) / len(defined), "mean_bf_score": sum(image_bf) / len(image_bf)}


RUNS = ["fcn-tiny-caffe-cpu", "fcn-tiny-opencv-cpu", "fcn-tiny-caffe-cpu-160"]
IDS = [f"demo_{i:03d}" for i in range(12)]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def close(got, expected):
    if expected is None:
        return got in (None, "")
    return got not in (None, "") and float(got) == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_the_workflow_matches_an_independent_computation_on_the_demo(finished, run):
    names = read_config(finished)["dataset"]["class_names"]
    counts, per_image = [], {}
    for image_id in IDS:
        truth = np.array(Image.open(finished / "VOC" / "SegmentationClass" / f"{image_id}.png"))
        prediction = np.array(Image.open(finished / "results" / run / "predictions" / f"{image_id}.png"))
        diagonal = math.sqrt(truth.shape[0] ** 2 + truth.shape[1] ** 2)
        d, theta = max(1, int(round(0.02 * diagonal))), 0.0075 * diagonal  # the defaults
        counts.append(reference_counts(truth, prediction, len(names), d, theta))
        per_image[image_id] = reference_scores(counts[-1:], len(names))
    expected = reference_scores(counts, len(names))
    summary = json.loads((finished / "results" / run / "summary.json").read_text())
    assert summary["boundary_iou"] == pytest.approx(expected["boundary_iou"], abs=1e-12)
    assert summary["mean_bf_score"] == pytest.approx(expected["mean_bf_score"], abs=1e-12)
    assert 0 < summary["boundary_iou"] < summary["mean_iou"]  # bands are harder than whole regions
    classes = {r["class_name"]: r for r in read_csv(finished / "results" / run / "per_class.csv")}
    for k, name in enumerate(names):
        assert close(summary["per_class"][name]["boundary_iou"], expected["class_iou"][k]), name
        assert close(summary["per_class"][name]["bf_score"], expected["class_bf"][k]), name
        assert close(classes[name]["boundary_iou"], expected["class_iou"][k]), name
        assert close(classes[name]["bf_score"], expected["class_bf"][k]), name
    for row in read_csv(finished / "results" / run / "per_image.csv"):
        # Per image: Boundary IoU from that image's counts alone, BF its mean over defined classes.
        assert close(row["boundary_iou"], per_image[row["image_id"]]["boundary_iou"]), row["image_id"]
        assert close(row["bf_score"], per_image[row["image_id"]]["mean_bf_score"]), row["image_id"]
    assert summary["metric_settings"] == {"boundary_iou_dilation": {"fraction_of_diagonal": 0.02},
                                          "bf_tolerance": {"fraction_of_diagonal": 0.0075}}
    assert {"boundary_iou", "bf_score", "boundary_void"} <= set(summary["conventions"])
    comparison = {r["run"]: r for r in read_csv(finished / "results" / "comparison.csv")}[run]
    assert float(comparison["boundary_iou"]) == pytest.approx(summary["boundary_iou"], abs=1e-12)
    assert float(comparison["mean_bf_score"]) == pytest.approx(summary["mean_bf_score"], abs=1e-12)


@pytest.mark.slow
def test_changing_a_tolerance_reruns_only_the_metrics_and_what_follows(copy_of_finished):
    config = read_config(copy_of_finished)
    config["metrics"] = {"bf_tolerance": {"pixels": 2}}
    write_config(copy_of_finished, config)
    jobs = planned_jobs(copy_of_finished)
    assert jobs | {"all": 0} == {"decode": 0, "resize": 0, "inference": 0, "metrics": 3 * len(RUNS),
                                 "aggregate": len(RUNS), "compare": 1, "plots": len(RUNS) + 1, "all": 0,
                                 "export": 0, "parity": 0, "quantize": 0, "agreement": 0}
    # The default written out is the same setting: nothing to do.
    config["metrics"] = {"bf_tolerance": {"fraction_of_diagonal": 0.0075},
                         "boundary_iou_dilation": {"fraction_of_diagonal": 0.02}}
    write_config(copy_of_finished, config)
    assert sum(planned_jobs(copy_of_finished).values()) == 0
