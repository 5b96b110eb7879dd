"""Segmentation metrics: hand-computed cases, scikit-learn cross-checks, NaN convention, errors."""

import math

import imgviz
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from segbench.metrics import MetricError, confusion_matrix, scores

VOID = 255


# --- a hand-made 3-class case with void ---------------------------------------------------------

HAND_TRUTH = np.array([[0, 0, 1, 1],
                       [0, 2, 2, 1],
                       [VOID, 2, 2, VOID]], dtype=np.uint8)
HAND_PRED = np.array([[0, 1, 1, 1],
                      [0, 2, 0, 1],
                      [1, 2, 2, 0]], dtype=np.uint8)
# Non-void (truth, prediction) pairs, row by row:
#   (0,0) (0,1) (1,1) (1,1) | (0,0) (2,2) (2,0) (1,1) | (2,2) (2,2)       -> 10 pixels, 2 void
# Rows = truth, columns = prediction:
#   truth 0: pred 0 twice, pred 1 once         -> [2, 1, 0]
#   truth 1: pred 1 three times                -> [0, 3, 0]
#   truth 2: pred 2 three times, pred 0 once   -> [1, 0, 3]
HAND_HIST = np.array([[2, 1, 0],
                      [0, 3, 0],
                      [1, 0, 3]])


def test_hand_case_confusion_matrix():
    hist = confusion_matrix(HAND_TRUTH, HAND_PRED, num_classes=3, ignore_label=VOID)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, HAND_HIST)


def test_hand_case_metrics():
    s = scores(HAND_HIST, void_pixels=2)
    # diag = [2, 3, 3] (sum 8); truth pixels per class = [3, 3, 4]; predicted = [3, 4, 3]; total 10.
    assert s["pixel_accuracy"] == pytest.approx(8 / 10)
    assert s["pixel_accuracy_void_as_error"] == pytest.approx(8 / 12)        # 2 void pixels are errors
    np.testing.assert_allclose(s["class_accuracy"], [2 / 3, 3 / 3, 3 / 4])   # diag / truth pixels
    assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)       # = 29/36
    # IoU = diag / (truth + pred - diag): 2/(3+3-2), 3/(3+4-3), 3/(4+3-3)
    np.testing.assert_allclose(s["class_iou"], [2 / 4, 3 / 4, 3 / 4])
    assert s["mean_iou"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)            # = 2/3
    # freq = [3, 3, 4] / 10: 0.3*0.5 + 0.3*0.75 + 0.4*0.75 = 0.15 + 0.225 + 0.3
    assert s["fw_iou"] == pytest.approx(0.675)
    np.testing.assert_array_equal(s["gt_pixels"], [3, 3, 4])
    np.testing.assert_array_equal(s["pred_pixels"], [3, 4, 3])


# --- random cases against scikit-learn ----------------------------------------------------------

def _random_case(seed, num_classes, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_classes, size=shape).astype(np.uint8)
    truth[rng.random(shape) < 0.1] = VOID
    # A prediction that is right most of the time, wrong at random elsewhere.
    prediction = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, num_classes, size=shape))
    prediction = np.where(prediction == VOID, 0, prediction).astype(np.uint8)
    return truth, prediction


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_classes", [2, 5, 21])
def test_random_confusion_matrix_matches_sklearn(seed, num_classes):
    truth, prediction = _random_case(seed, num_classes)
    valid = truth != VOID
    expected = sk_confusion_matrix(truth[valid], prediction[valid], labels=range(num_classes))
    got = confusion_matrix(truth, prediction, num_classes, VOID)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == valid.sum()


@pytest.mark.parametrize("seed", range(5))
def test_random_iou_matches_sklearn_jaccard_including_absent_classes(seed):
    num_classes = 21
    # Only classes 0..5 occur in truth and prediction, so 6..20 are absent from both.
    truth, prediction = _random_case(seed, 6)
    valid = truth != VOID
    s = scores(confusion_matrix(truth, prediction, num_classes, VOID))

    present = np.union1d(np.unique(truth[valid]), np.unique(prediction[valid]))
    absent = np.setdiff1d(np.arange(num_classes), present)
    assert len(present) == 6 and len(absent) == 15
    expected = jaccard_score(truth[valid], prediction[valid], labels=present, average=None)
    np.testing.assert_allclose(s["class_iou"][present], expected, rtol=1e-12)
    # For a class absent from both, scikit-learn's jaccard is 0/0 and it returns its `zero_division`
    # placeholder (0 or 1, whichever is asked for: it accepts no NaN here). The value is undefined,
    # and our convention makes it NaN so that it drops out of the mean.
    for placeholder in (0, 1):
        sk_absent = jaccard_score(truth[valid], prediction[valid], labels=absent, average=None,
                                  zero_division=placeholder)
        np.testing.assert_array_equal(sk_absent, placeholder)
    assert np.isnan(s["class_iou"][absent]).all()
    assert s["mean_iou"] == pytest.approx(expected.mean())


# --- NaN convention -----------------------------------------------------------------------------

def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_means():
    truth = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 0, 1, 0]])
    s = scores(confusion_matrix(truth, prediction, num_classes=3, ignore_label=VOID))
    # Class 2 never occurs. class 0: 2/(2+3-2) = 2/3, class 1: 1/(2+1-1) = 1/2.
    assert math.isnan(s["class_iou"][2]) and math.isnan(s["class_accuracy"][2])
    assert s["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["mean_accuracy"] == pytest.approx((2 / 2 + 1 / 2) / 2)


def test_class_predicted_but_absent_from_truth_has_iou_zero_and_counts():
    truth = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 2, 1, 1]])
    s = scores(confusion_matrix(truth, prediction, num_classes=3, ignore_label=VOID))
    # class 0: 1/(2+1-1) = 1/2, class 1: 2/(2+2-2) = 1, class 2: 0/(0+1-0) = 0.
    np.testing.assert_allclose(s["class_iou"], [0.5, 1.0, 0.0])
    assert s["mean_iou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # Its accuracy is 0/0 (no truth pixels), so NaN and out of the mean accuracy: (1/2 + 2/2) / 2.
    assert math.isnan(s["class_accuracy"][2])
    assert s["mean_accuracy"] == pytest.approx(0.75)
    # fwIoU weighs by truth frequency, so class 2 has weight 0: 0.5*0.5 + 0.5*1.0.
    assert s["fw_iou"] == pytest.approx(0.75)


def test_all_void_image_gives_nan_metrics_and_zero_void_accuracy():
    truth = np.full((2, 2), VOID, dtype=np.uint8)
    prediction = np.zeros((2, 2), dtype=np.uint8)
    hist = confusion_matrix(truth, prediction, 3, VOID)
    assert hist.sum() == 0
    s = scores(hist, void_pixels=4)
    assert math.isnan(s["pixel_accuracy"]) and math.isnan(s["mean_iou"]) and math.isnan(s["fw_iou"])
    assert s["pixel_accuracy_void_as_error"] == 0.0


# --- dataset metrics: summed matrix vs mean of per-image values ---------------------------------

def test_summed_matrix_metrics_differ_from_mean_of_per_image_metrics():
    # Image A (10x10): truth all class 0, predicted all 0 -> perfect.
    truth_a, pred_a = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    # Image B (2x2): truth all class 1, predicted all 0 -> all wrong.
    truth_b, pred_b = np.ones((2, 2), np.uint8), np.zeros((2, 2), np.uint8)
    hist_a = confusion_matrix(truth_a, pred_a, 2, VOID)   # [[100, 0], [0, 0]]
    hist_b = confusion_matrix(truth_b, pred_b, 2, VOID)   # [[0, 0], [4, 0]]
    a, b = scores(hist_a), scores(hist_b)
    # Per image: A has accuracy 1, IoU [1, NaN] -> mIoU 1; B has accuracy 0, IoU [0/4, 0/4] -> mIoU 0.
    assert (a["pixel_accuracy"], a["mean_iou"]) == (1.0, 1.0)
    assert (b["pixel_accuracy"], b["mean_iou"]) == (0.0, 0.0)
    mean_of_images_accuracy = (1.0 + 0.0) / 2
    mean_of_images_miou = (1.0 + 0.0) / 2

    dataset = scores(hist_a + hist_b)  # [[100, 0], [4, 0]]
    # accuracy 100/104; IoU class 0 = 100/(100+104-100), class 1 = 0/(4+0-0) -> mIoU (100/104)/2
    assert dataset["pixel_accuracy"] == pytest.approx(100 / 104)
    assert dataset["mean_iou"] == pytest.approx(50 / 104)
    assert mean_of_images_accuracy == 0.5 and mean_of_images_miou == 0.5
    assert dataset["pixel_accuracy"] != pytest.approx(mean_of_images_accuracy)
    assert dataset["mean_iou"] != pytest.approx(mean_of_images_miou)


# --- errors -------------------------------------------------------------------------------------

def test_size_mismatch_raises_metric_error():
    with pytest.raises(MetricError, match="3x4"):
        confusion_matrix(np.zeros((3, 4), np.uint8), np.zeros((4, 3), np.uint8), 21, VOID)


def test_predicted_label_out_of_range_raises_metric_error():
    prediction = np.array([[0, 21]], dtype=np.uint8)
    with pytest.raises(MetricError, match="21"):
        confusion_matrix(np.zeros((1, 2), np.uint8), prediction, 21, VOID)


def test_predicted_void_label_raises_metric_error():
    # A prediction is 0..C-1; 255 in a prediction is an error even where the truth is void.
    truth = np.array([[0, VOID]], dtype=np.uint8)
    prediction = np.array([[0, VOID]], dtype=np.uint8)
    with pytest.raises(MetricError):
        confusion_matrix(truth, prediction, 21, VOID)


def test_ground_truth_label_out_of_range_raises_metric_error():
    truth = np.array([[0, 30]], dtype=np.uint8)
    with pytest.raises(MetricError, match="30"):
        confusion_matrix(truth, np.zeros((1, 2), np.uint8), 21, VOID)


def test_ignore_label_in_truth_is_not_an_error():
    truth = np.array([[0, VOID]], dtype=np.uint8)
    hist = confusion_matrix(truth, np.zeros((1, 2), np.uint8), 21, VOID)
    assert hist.sum() == 1 and hist[0, 0] == 1


# --- a real VOC label map -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_truth():
    return imgviz.data.voc()["class_label"].astype(np.uint8)


def test_voc_labels_perfect_prediction(voc_truth):
    s = scores(confusion_matrix(voc_truth, voc_truth.copy(), 21, VOID))
    assert s["pixel_accuracy"] == 1.0
    assert s["mean_iou"] == 1.0
    assert s["mean_accuracy"] == 1.0
    present = np.flatnonzero(~np.isnan(s["class_iou"]))
    assert present.tolist() == [0, 5, 9, 11, 15]


@pytest.mark.parametrize("shift", [(3, 0), (0, -5), (4, 7)])
def test_voc_labels_shifted_prediction_matches_sklearn(voc_truth, shift):
    truth = voc_truth.copy()
    truth[:6, :] = VOID  # a void band
    prediction = np.roll(voc_truth, shift, axis=(0, 1))
    valid = truth != VOID
    t, p = truth[valid], prediction[valid]

    s = scores(confusion_matrix(truth, prediction, 21, VOID), void_pixels=int((~valid).sum()))
    labels = np.union1d(np.unique(t), np.unique(p))
    sk_hist = sk_confusion_matrix(t, p, labels=range(21))
    sk_iou = jaccard_score(t, p, labels=labels, average=None)
    assert s["pixel_accuracy"] == pytest.approx(np.mean(t == p))
    assert s["pixel_accuracy_void_as_error"] == pytest.approx((t == p).sum() / truth.size)
    np.testing.assert_allclose(s["class_iou"][labels], sk_iou, rtol=1e-12)
    assert s["mean_iou"] == pytest.approx(sk_iou.mean())
    assert 0.5 < s["mean_iou"] < 1.0
    np.testing.assert_allclose(s["class_accuracy"][labels], np.diag(sk_hist)[labels] / sk_hist.sum(1)[labels])
