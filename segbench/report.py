"""Aggregating one run: dataset metrics from the summed confusion matrix, per-image means, timing."""

import csv
import logging

import numpy as np

from . import metrics, overlap, provenance
from .files import atomic_path, read_json, write_json
from .timing import forward_time_stats, reshape_stats

log = logging.getLogger("segbench")

PER_IMAGE_COLUMNS = ["image_id", "height", "width", "valid_pixels", "void_pixels", "pixel_accuracy",
                     "pixel_accuracy_void_as_error", "mean_iou", "boundary_iou", "bf_score", "forward_s", "reshape_s"]
PER_CLASS_COLUMNS = ["class_id", "class_name", "iou", "accuracy", "boundary_iou", "bf_score", "gt_pixels",
                     "pred_pixels"]


# The dataset metrics of a run, in the order and with the titles of the comparison table.
METRIC_TITLES = {"pixel_accuracy": "pixel acc.", "pixel_accuracy_void_as_error": "pixel acc. (void = error)",
                 "mean_accuracy": "mean acc.", "mean_iou": "mean IoU", "fw_iou": "fwIoU",
                 "boundary_iou": "boundary IoU", "mean_bf_score": "mean BF"}
DATASET_METRICS = tuple(METRIC_TITLES)


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _write_csv(path, columns, rows):
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                # An undefined value (NaN) is written as an empty cell.
                writer.writerow(["" if isinstance(v, float) and not np.isfinite(v) else v for v in row])


def summarize(image_records, shard_records, class_names, metric_settings=None):
    """The summary dict of a run from its per-image metric records and its inference shard records.

    `metric_settings` (config metrics: the boundary metrics' tolerances) is recorded as it is."""
    num_classes = len(class_names)
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    void = 0
    for record in image_records:
        hist += np.asarray(record["confusion"], dtype=np.int64)
        void += record["void_pixels"]
    dataset = metrics.scores(hist, void_pixels=void)
    boundary = metrics.dataset_boundary_scores([r["boundary_counts"] for r in image_records], num_classes)
    forward = [image["forward_s"] for shard in shard_records for image in shard["images"]]
    loads = [shard["model_load_s"] for shard in shard_records]
    timing = forward_time_stats(forward)
    timing.update(reshape_stats([image["reshape_s"] for shard in shard_records for image in shard["images"]
                                 if image.get("reshape_s") is not None]))
    timing.update({
        "warmup": shard_records[0]["warmup"] if shard_records else 0,
        "model_load_s": float(np.median(loads)) if loads else float("nan"),
        "model_loads": len(loads),
    })

    def per_image_mean(key):
        values = np.array([r[key] if r[key] is not None else np.nan for r in image_records], dtype=float)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {
        "images": len(image_records),
        "pixel_accuracy": dataset["pixel_accuracy"],
        "pixel_accuracy_void_as_error": dataset["pixel_accuracy_void_as_error"],
        "mean_accuracy": dataset["mean_accuracy"],
        "mean_iou": dataset["mean_iou"],
        "fw_iou": dataset["fw_iou"],
        "boundary_iou": boundary["boundary_iou"],
        "mean_bf_score": boundary["mean_bf_score"],
        "per_class": {
            name: {"iou": _finite_or_none(dataset["class_iou"][c]),
                   "accuracy": _finite_or_none(dataset["class_accuracy"][c]),
                   "boundary_iou": _finite_or_none(boundary["class_boundary_iou"][c]),
                   "bf_score": _finite_or_none(boundary["class_bf_score"][c]),
                   "gt_pixels": int(dataset["gt_pixels"][c]), "pred_pixels": int(dataset["pred_pixels"][c])}
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": hist.tolist(),
        "per_image_means": {key: per_image_mean(key) for key in ("pixel_accuracy", "pixel_accuracy_void_as_error",
                                                                  "mean_iou", "boundary_iou", "bf_score")},
        "metric_settings": metric_settings,
        "timing": timing,
        "conventions": {
            "dataset_metrics": "computed from the confusion matrix summed over all images",
            "per_image_means": "mean over images of each image's own value (images where it is undefined skipped)",
            "nan": "a class absent from both ground truth and prediction has IoU and accuracy null and is "
                   "left out of the means; a class predicted but absent from the ground truth has IoU 0",
            "void": "pixels with the ignore label are excluded from the confusion matrix; "
                    "pixel_accuracy_void_as_error counts them as wrong",
            "pred_pixels": "predicted pixels of each class among non-void pixels",
            "boundary_iou": "Boundary IoU (Cheng et al. 2021) of class c, with G = (truth == c) and "
                            "P = (prediction == c): the band B(M) of a mask is M minus its erosion by d "
                            "iterations of a 3x3 square (outside the image counts as outside M), d from "
                            "metric_settings.boundary_iou_dilation (a fraction F of the diagonal gives "
                            "d = max(1, round(F x diagonal)) per image, rounded half to even); "
                            "per class |B(G) & B(P)| / |B(G) | B(P)| with both counts summed over all images, null "
                            "when the union is 0; boundary_iou is the mean over classes where defined; per image, "
                            "the mean over that image's classes where defined",
            "bf_score": "BF score (Csurka et al. 2013; MATLAB bfscore) of one image and class: the boundary of a "
                        "mask is its pixels with a 4-neighbour outside it (outside the image counts as outside); "
                        "precision = share of predicted boundary pixels within Euclidean distance theta "
                        "(inclusive) of a ground-truth boundary pixel, recall = the reverse, BF = 2PR/(P+R): 0 when "
                        "P+R = 0 but one side has a boundary, null when neither has; theta from "
                        "metric_settings.bf_tolerance. Per class: the mean over the images where it is defined; "
                        "mean_bf_score: the mean over images of each image's mean over its defined classes "
                        "(MATLAB's MeanBFScore); per image: that image's mean",
            "boundary_void": "ground-truth void pixels are neither boundary nor scored: they are removed from "
                             "both sides' bands and boundaries (predicted boundary pixels in void are left out), "
                             "and a ground-truth mask ends where void begins. On VOC, whose void band covers the "
                             "object contours, the ground-truth boundaries scored run just inside and outside "
                             "that band, and a predicted outline that lies inside the band is not scored there: "
                             "a perfect outline scores below 1, the BF score far below",
            "variance_s2": "population variance (ddof=0) of the per-image forward times",
            "forward_s": "one forward pass on a net already shaped for the image, on every backend; "
                         "warm-up passes and the first pass at each new input shape are not timed",
            "reshape_s": "re-shaping the net for a new input shape plus the first pass at that shape, "
                         "minus the timed pass that followed; only images that needed it (images are "
                         "taken in order of input shape within each inference job, whose first shape is "
                         "set during warm-up)",
        },
    }


def aggregate_run(run_name, run, model, class_names, ignore_label, metric_jsons, shard_jsons,
                  summary_out, per_image_out, per_class_out, run_config=None, overlap_ids_out=None):
    batches = [read_json(p) for p in metric_jsons]
    images = [image for batch in batches for image in batch["images"]]
    shards = [read_json(p) for p in shard_jsons]
    summary = summarize(images, shards, class_names, batches[0].get("settings") if batches else None)
    timing_by_id = {i["id"]: (i["forward_s"], _nan_if_none(i.get("reshape_s"))) for s in shards for i in s["images"]}
    backend = shards[0]["provenance"] if shards else {}
    summary["provenance"] = {
        "run": run_name,
        "model_name": run["model"],
        **backend,
        "resize": run["resize"],
        "precision": run.get("precision", "fp32"),
        "ignore_label": ignore_label,
        # The settings that determine this run's numbers, and their hash.
        "run_config": run_config,
        "run_config_sha256": provenance.sha256_json(run_config) if run_config is not None else None,
        "model": {
            "prototxt": model["prototxt"], "prototxt_sha256": provenance.sha256_file(model["prototxt"]),
            "weights": model["weights"], "weights_sha256": provenance.sha256_file(model["weights"]),
            "mean": model["mean"], "scale": model["scale"], "channel_order": model["channel_order"],
            "output_blob": model["output_blob"],
        },
        **provenance.segbench_source(),
    }
    lists = overlap.training_lists(model.get("trained_on"))
    summary["overlap"] = training_overlap(images, class_names, lists) if lists else None
    if overlap_ids_out:
        with atomic_path(overlap_ids_out) as tmp:
            tmp.write_text("".join(f"{i}\n" for i in summary["overlap"]["ids"]) if lists else
                           f"# model {run['model']} names no training set (models.{run['model']}.trained_on)\n")
    write_json(summary_out, summary)
    _write_csv(per_image_out, PER_IMAGE_COLUMNS, (
        [r["id"], r["height"], r["width"], r["valid_pixels"], r["void_pixels"],
         _nan_if_none(r["pixel_accuracy"]), _nan_if_none(r["pixel_accuracy_void_as_error"]),
         _nan_if_none(r["mean_iou"]), _nan_if_none(r["boundary_iou"]), _nan_if_none(r["bf_score"]),
         *timing_by_id[r["id"]]] for r in images))
    per_class = summary["per_class"]
    _write_csv(per_class_out, PER_CLASS_COLUMNS, (
        [c, name, *(_nan_if_none(per_class[name][key]) for key in ("iou", "accuracy", "boundary_iou", "bf_score")),
         per_class[name]["gt_pixels"], per_class[name]["pred_pixels"]]
        for c, name in enumerate(class_names)))
    log.info("%s: %d images, pixel accuracy %.4f, mean IoU %.4f", run_name, summary["images"],
             summary["pixel_accuracy"], summary["mean_iou"])
    return summary


def training_overlap(image_records, class_names, lists):
    """Which evaluated images are in the model's training lists, and every dataset metric without them."""
    trained = overlap.read_training_ids(lists)
    outside = [r for r in image_records if r["id"] not in trained]
    without = summarize(outside, [], class_names)
    return {
        "training_lists": lists,
        "training_ids_listed": len(trained),
        "images": len(image_records) - len(outside),
        "images_outside": len(outside),
        "ids": [r["id"] for r in image_records if r["id"] in trained],
        "metrics_without_training_images": {key: without[key] for key in DATASET_METRICS},
    }


def _nan_if_none(value):
    return float("nan") if value is None else value


COMPARISON_COLUMNS = [
    ("run", "run"), ("model", "model"), ("backend", "backend"), ("backend_version", "version"),
    ("device", "device"), ("precision", "precision"), ("threads", "threads"), ("images", "images"),
    *METRIC_TITLES.items(),
    # What a run's speed-up costs: its predictions against its reference run's (runs.<run>.reference,
    # by default the model's fp32 Caffe run), pixel by pixel, and its mean IoU minus the reference's.
    ("reference", "compared with"), ("pixel_agreement", "pixel agreement"), ("mean_iou_diff", "mean IoU diff"),
    ("mean_forward_s", "mean fwd (s)"), ("median_forward_s", "median fwd (s)"), ("p90_forward_s", "p90 fwd (s)"),
    ("model_load_s", "load (s)"), ("images_per_s", "images/s"),
    ("reshapes", "reshapes"), ("reshape_mean_s", "mean reshape (s)"),
    # The model's training images among those scored, and every dataset metric without them
    # (empty when the model names no training set: models.<name>.trained_on).
    ("training_images", "training images"),
    *((f"{key}_without_training_images", f"{title} w/o training images") for key, title in METRIC_TITLES.items()),
]


def comparison_row(summary):
    prov, timing, training = summary["provenance"], summary["timing"], summary.get("overlap")
    return {
        "run": prov["run"], "model": prov["model_name"], "backend": prov["backend"],
        "backend_version": prov["backend_version"], "device": prov["device"],
        "precision": prov.get("precision", "fp32"), "threads": prov.get("threads"),
        "images": summary["images"], "reference": None, "pixel_agreement": None, "mean_iou_diff": None,
        **{key: summary[key] for key in DATASET_METRICS},
        "mean_forward_s": timing["mean_s"], "median_forward_s": timing["median_s"], "p90_forward_s": timing["p90_s"],
        "model_load_s": timing["model_load_s"],
        # Forward passes only: the throughput the model allows, not the workflow's.
        "images_per_s": 1.0 / timing["mean_s"] if timing["mean_s"] else None,
        "reshapes": timing.get("reshapes"), "reshape_mean_s": timing.get("reshape_mean_s"),
        "training_images": training["images"] if training else None,
        **{f"{key}_without_training_images": training["metrics_without_training_images"][key] if training else None
           for key in DATASET_METRICS},
    }


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def compare_runs(summary_jsons, csv_out, md_out, agreement_jsons=()):
    """One row per run: accuracy, timing and what ran, as CSV and as a Markdown table; a run with a
    reference run (agreement_jsons, from segbench.steps.pixel_agreement) also gets its pixel agreement
    with that run and the difference of their mean IoU."""
    rows = [comparison_row(read_json(p)) for p in summary_jsons]
    by_run = {row["run"]: row for row in rows}
    for agreement in map(read_json, agreement_jsons):
        row, reference = by_run[agreement["run"]], by_run[agreement["reference"]]
        row.update(reference=agreement["reference"], pixel_agreement=agreement["pixel_agreement"],
                   mean_iou_diff=(row["mean_iou"] - reference["mean_iou"]
                                  if row["mean_iou"] is not None and reference["mean_iou"] is not None else None))
    keys = [k for k, _ in COMPARISON_COLUMNS]
    _write_csv(csv_out, keys, ([row[k] if row[k] is not None else "" for k in keys] for row in rows))
    lines = ["| " + " | ".join(title for _, title in COMPARISON_COLUMNS) + " |",
             "|" + "---|" * len(COMPARISON_COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in keys) + " |" for row in rows]
    with atomic_path(md_out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return rows


def terminal_summary(comparison_csv):
    """A short table of the headline numbers per run, and where to find the rest."""
    with open(comparison_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [("run", "run", str), ("backend", "backend", str), ("device", "device", str),
               ("precision", "precision", str), ("pixel_accuracy", "pixel acc.", float), ("mean_iou", "mean IoU", float),
               ("fw_iou", "fwIoU", float), ("boundary_iou", "boundary IoU", float),
               ("mean_bf_score", "mean BF", float),
               ("median_forward_s", "median fwd (ms)", lambda v: float(v) * 1000), ("images_per_s", "images/s", float),
               ("pixel_agreement", "agreement", float)]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        # An empty cell is a value that is undefined (e.g. every ground-truth pixel is void).
        cells.append(["-" if row[key] == "" else row[key] if convert is str else f"{convert(row[key]):.3f}"
                      for key, _, convert in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ("\nsegbench results\n" + "\n".join(lines) + "\n\n"
            "per run: results/<run>/summary.json, per_image.csv, per_class.csv, predictions/, plots/\n"
            "all runs: results/comparison.csv, results/comparison.md\n"
            "report: snakemake --report report.html  (then open report.html)\n")
