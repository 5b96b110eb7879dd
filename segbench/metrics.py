"""Segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction).

Formulas as in FCN's score.py and the VOC devkit. Pixels whose ground truth is
the ignore label are left out of the matrix and only counted as `void_pixels`.
A class absent from both truth and prediction has IoU and accuracy NaN and
drops out of the means (nanmean); a class predicted but absent from the truth
has IoU 0 and counts.
"""

import warnings

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
