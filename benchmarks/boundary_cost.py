#!/usr/bin/env python3
"""What the boundary metrics add to the per-image metrics step, on 500x500 images.

    .venv/bin/python benchmarks/boundary_cost.py [--images 40] [--repeats 5] [--threads 1]

Synthetic VOC-like scenes (background and 1-4 elliptical objects of random classes, a void band
5 pixels wide on every class contour, as VOC draws it) and predictions that miss their contours
by a few pixels and add a spurious blob, all 500x500. For each image, timed apart and the median
of --repeats calls kept:

- existing step: what segbench/steps.py score_images did per image before the boundary metrics:
  reading the prediction PNG, checking the label values, the confusion matrix and its metrics;
- existing metrics: the confusion matrix and its metrics alone (metrics.confusion_matrix, scores);
- boundary metrics: metrics.boundary_counts (Boundary IoU bands and BF boundaries of every class,
  default tolerances: d = round(0.02 x diagonal) = 14, theta = 0.0075 x diagonal = 5.3 pixels)
  and the image's two values (metrics.image_boundary_scores).

OpenCV runs with --threads threads (default 1: a metrics job is one of several jobs that Snakemake
runs side by side, one core each). Prints the mean over images of each figure, in milliseconds.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbench import labels, metrics, steps  # noqa: E402

SIZE = 500
VOID = 255
DILATION = {"fraction_of_diagonal": 0.02}
TOLERANCE = {"fraction_of_diagonal": 0.0075}


def _draw(labels_, c, cy, cx, ay, ax, angle):
    cv2.ellipse(labels_, (int(cx), int(cy)), (int(ax), int(ay)), angle, 0, 360, int(c), -1)
    return labels_


def case(rng):
    """A ground truth with a void band and a prediction that misses its contours by a few pixels."""
    shapes = [(int(rng.integers(1, 21)), rng.uniform(60, SIZE - 60), rng.uniform(60, SIZE - 60),
               rng.uniform(30, 160), rng.uniform(30, 160), rng.uniform(0, 180)) for _ in range(rng.integers(1, 5))]
    truth, prediction = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
    for c, cy, cx, ay, ax, angle in shapes:
        _draw(truth, c, cy, cx, ay, ax, angle)
        moved = (cy + rng.normal(0, 4), cx + rng.normal(0, 4), ay * rng.uniform(0.9, 1.1), ax * rng.uniform(0.9, 1.1))
        _draw(prediction, c if rng.random() < 0.8 else int(rng.integers(1, 21)), *moved, angle + rng.normal(0, 5))
    _draw(prediction, int(rng.integers(1, 21)), *rng.uniform(40, SIZE - 40, 2), *rng.uniform(5, 40, 2), 0)
    # A void band like VOC's: 5 pixels wide along every contour between classes.
    edge = cv2.dilate(truth, np.ones((3, 3), np.uint8)) != cv2.erode(truth, np.ones((3, 3), np.uint8))
    truth[cv2.dilate(edge.view(np.uint8), np.ones((4, 4), np.uint8)) > 0] = VOID
    return truth, prediction


def median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(20240611)
    figures = {"existing step": [], "existing metrics": [], "boundary metrics": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            truth, prediction = case(rng)
            png = Path(tmp) / f"{i}.png"
            labels.write_label_png(png, prediction)
            d = metrics.dilation_pixels(DILATION, SIZE, SIZE)
            theta = metrics.tolerance_pixels(TOLERANCE, SIZE, SIZE)

            def existing_metrics():
                hist = metrics.confusion_matrix(truth, prediction, 21, VOID)
                metrics.scores(hist, void_pixels=int((truth == VOID).sum()))

            def existing_step():
                steps._check_label_values(truth, 21, VOID, png)
                predicted = labels.read_label_png(png)
                hist = metrics.confusion_matrix(truth, predicted, 21, VOID)
                metrics.scores(hist, void_pixels=int((truth == VOID).sum()))

            def boundary():
                metrics.image_boundary_scores(metrics.boundary_counts(truth, prediction, 21, VOID, d, theta))

            figures["existing step"].append(median_ms(existing_step, args.repeats))
            figures["existing metrics"].append(median_ms(existing_metrics, args.repeats))
            figures["boundary metrics"].append(median_ms(boundary, args.repeats))
    print(f"{args.images} images of {SIZE}x{SIZE}, OpenCV threads {args.threads}; "
          f"d = {d} px, theta = {theta:.2f} px; ms per image (mean over images of the median of {args.repeats})")
    for name, values in figures.items():
        print(f"  {name:17s} {statistics.mean(values):7.2f} ms")


if __name__ == "__main__":
    main()
