"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction).

Formulas as in FCN's score.py and the VOC devkit. Pixels whose ground truth is
the ignore label are left out of the matrix and only counted as `void_pixels`.
A class absent from both truth and prediction has IoU and accuracy NaN and
drops out of the means (nanmean); a class predicted but absent from the truth
has IoU 0 and counts.

Boundary metrics (Boundary IoU, Cheng et al. 2021; the BF score, Csurka et al. 2013) are counted
per image and class by `boundary_counts`, for all classes at once from the label maps; void is
neither boundary nor scored.
"""

import math
import warnings

import cv2
import numpy as np

from . import SegbenchError


class MetricError(SegbenchError):
    pass


def confusion_matrix(truth, prediction, num_classes, ignore_label):
    """Return the (C, C) int64 confusion matrix of one image, ignore-label pixels excluded."""
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise MetricError(f"prediction is {prediction.shape[0]}x{prediction.shape[1]} (HxW) but its "
                          f"ground truth is {truth.shape[0]}x{truth.shape[1]}")
    valid = truth != ignore_label
    t = truth[valid].astype(np.int64)
    p = prediction[valid].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise MetricError(f"ground-truth labels outside 0..{num_classes - 1}: "
                          f"{np.unique(t[(t < 0) | (t >= num_classes)])[:8].tolist()}")
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise MetricError(f"predicted labels outside 0..{num_classes - 1}: "
                          f"{np.unique(prediction[(prediction < 0) | (prediction >= num_classes)])[:8].tolist()}")
    return np.bincount(num_classes * t + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _nanmean(values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN gives NaN, which is the answer
        return float(np.nanmean(values)) if len(values) else float("nan")


def scores(hist, void_pixels=0):
    """Metrics of a confusion matrix; `void_pixels` counts the ignore-label pixels it left out."""
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    gt_pixels = hist.sum(1)
    pred_pixels = hist.sum(0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = diag / gt_pixels
        class_iou = diag / (gt_pixels + pred_pixels - diag)
        pixel_accuracy = diag.sum() / total
        pixel_accuracy_void_as_error = diag.sum() / (total + void_pixels)
        freq = gt_pixels / total
    present = gt_pixels > 0
    return {
        "pixel_accuracy": float(pixel_accuracy),
        "pixel_accuracy_void_as_error": float(pixel_accuracy_void_as_error),
        "mean_accuracy": _nanmean(class_accuracy),
        "mean_iou": _nanmean(class_iou),
        "fw_iou": float((freq[present] * class_iou[present]).sum()) if total else float("nan"),
        "class_accuracy": class_accuracy,
        "class_iou": class_iou,
        "gt_pixels": gt_pixels.astype(np.int64),
        "pred_pixels": pred_pixels.astype(np.int64),
    }


# --- boundary metrics ---------------------------------------------------------------------------

NO_CLASS = 255  # the value outside the image: never a class (num_classes <= 255)


def tolerance_pixels(setting, height, width):
    """A tolerance setting, {'pixels': N} or {'fraction_of_diagonal': F}, in pixels for an HxW image."""
    if "pixels" in setting:
        return float(setting["pixels"])
    return setting["fraction_of_diagonal"] * math.hypot(height, width)


def dilation_pixels(setting, height, width):
    """Boundary IoU's band width d: max(1, round(tolerance)), rounded as Python (and the reference code) does."""
    return max(1, int(round(tolerance_pixels(setting, height, width))))


def disk(radius):
    """The integer offsets (dx, dy) with dx^2 + dy^2 <= radius^2, as a uint8 kernel."""
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return (dx ** 2 + dy ** 2 <= radius ** 2).astype(np.uint8)


def _other_label_within(labels, kernel):
    """True where the window `kernel` around a pixel holds another label or reaches outside the image:
    the pixel is then in the boundary (band) of its own label's mask."""
    border = {"borderType": cv2.BORDER_CONSTANT, "borderValue": NO_CLASS}
    # The window holds the pixel itself, so it holds another label exactly when its min and max differ.
    return cv2.erode(labels, kernel, **border) != cv2.dilate(labels, kernel, **border)


def boundary_counts(truth, prediction, num_classes, ignore_label, dilation, tolerance):
    """Per-class counts of one image for Boundary IoU and the BF score (int64 arrays of num_classes).

    Boundary IoU: the band of a class's mask M is M minus M eroded `dilation` times by a 3x3 square
    (outside the image is outside M), i.e. the pixels of M whose (2d+1)x(2d+1) window leaves M.
    iou_intersection = |B(G) & B(P)|, iou_union = |B(G) | B(P)|, ground-truth void removed from both.
    BF: the boundary of M is its pixels with a 4-neighbour outside M (or the image); void removed. bf_pred:
    predicted boundary pixels, bf_pred_matched: those within Euclidean distance `tolerance`
    (inclusive) of a ground-truth boundary pixel of the class; bf_truth, bf_truth_matched: the reverse.
    """
    truth, prediction = np.asarray(truth).astype(np.uint8), np.asarray(prediction).astype(np.uint8)
    valid = truth != ignore_label
    square = np.ones((2 * dilation + 1, 2 * dilation + 1), np.uint8)
    band_t = _other_label_within(truth, square) & valid        # B(G_c) at pixels of class c = truth
    band_p = _other_label_within(prediction, square) & valid   # B(P_c) at pixels of class c = prediction
    count = lambda labels: np.bincount(labels, minlength=num_classes).astype(np.int64)  # noqa: E731
    intersection = count(truth[band_t & band_p & (truth == prediction)])
    union = count(truth[band_t]) + count(prediction[band_p]) - intersection

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    edge_t = np.flatnonzero(_other_label_within(truth, cross) & valid)     # flat indices of the boundary
    edge_p = np.flatnonzero(_other_label_within(prediction, cross) & valid)  # pixels, of any class
    class_t, class_p = truth.ravel()[edge_t], prediction.ravel()[edge_p]
    bf_truth, bf_pred = count(class_t), count(class_p)
    truth_matched, pred_matched = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    reach = disk(tolerance)
    border = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    for c in np.flatnonzero((bf_truth > 0) & (bf_pred > 0)):
        yt, xt = np.divmod(edge_t[class_t == c], truth.shape[1])
        yp, xp = np.divmod(edge_p[class_p == c], truth.shape[1])
        # Both boundaries of class c drawn in the box that holds them: nothing outside it is counted.
        y0, x0 = min(yt.min(), yp.min()), min(xt.min(), xp.min())
        box = (max(yt.max(), yp.max()) - y0 + 1, max(xt.max(), xp.max()) - x0 + 1)
        yt, xt, yp, xp = yt - y0, xt - x0, yp - y0, xp - x0
        gt_c, pred_c = np.zeros(box, np.uint8), np.zeros(box, np.uint8)
        gt_c[yt, xt] = 1
        pred_c[yp, xp] = 1
        # Dilating by the disk marks every pixel within distance `tolerance` of a boundary pixel.
        pred_matched[c] = np.count_nonzero(cv2.dilate(gt_c, reach, **border)[yp, xp])
        truth_matched[c] = np.count_nonzero(cv2.dilate(pred_c, reach, **border)[yt, xt])
    return {"iou_intersection": intersection, "iou_union": union,
            "bf_pred": bf_pred, "bf_pred_matched": pred_matched,
            "bf_truth": bf_truth, "bf_truth_matched": truth_matched}


def boundary_iou(intersection, union):
    """Per-class Boundary IoU from band counts (summed over images for the dataset); NaN where the union is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(intersection, np.float64) / np.asarray(union, np.float64)


def bf_scores(pred, pred_matched, truth, truth_matched):
    """Per-class BF score of one image: 2PR/(P+R); 0 where P + R = 0 (a boundary on one side only
    counts as precision or recall 0); NaN where neither side has a boundary."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, np.asarray(pred_matched) / pred, 0.0)
        recall = np.where(truth > 0, np.asarray(truth_matched) / truth, 0.0)
        bf = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return np.where(pred + truth > 0, bf, np.nan)


def image_boundary_scores(counts):
    """An image's Boundary IoU (nanmean over its classes) and BF score (mean over its defined classes)."""
    return (_nanmean(boundary_iou(counts["iou_intersection"], counts["iou_union"])),
            _nanmean(bf_scores(counts["bf_pred"], counts["bf_pred_matched"],
                               counts["bf_truth"], counts["bf_truth_matched"])))


def dataset_boundary_scores(image_counts, num_classes):
    """A dataset's boundary metrics from its images' boundary_counts.

    Per-class Boundary IoU from the counts summed over images (NaN where the union is 0), and
    `boundary_iou` its nanmean; per-class BF the mean over the images where it is defined, and
    `mean_bf_score` the mean over images of each image's mean over its defined classes (MATLAB's
    MeanBFScore of evaluateSemanticSegmentation)."""
    total = {key: np.zeros(num_classes, np.int64) for key in ("iou_intersection", "iou_union")}
    bf = np.full((len(image_counts), num_classes), np.nan)
    for i, counts in enumerate(image_counts):
        for key in total:
            total[key] += np.asarray(counts[key], np.int64)
        bf[i] = bf_scores(counts["bf_pred"], counts["bf_pred_matched"], counts["bf_truth"], counts["bf_truth_matched"])
    class_boundary_iou = boundary_iou(total["iou_intersection"], total["iou_union"])
    class_bf = np.array([_nanmean(bf[:, c]) for c in range(num_classes)])
    return {"boundary_iou": _nanmean(class_boundary_iou), "mean_bf_score": _nanmean([_nanmean(row) for row in bf]),
            "class_boundary_iou": class_boundary_iou, "class_bf_score": class_bf}
