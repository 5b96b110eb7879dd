"""Figures for the report: where a model fails and how its time is spread.

Each function writes one PNG (atomically) from the files a run already wrote.
"""

import csv

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402
from .images import read_image  # noqa: E402
from .labels import read_label_png, voc_palette  # noqa: E402

VOID_RGB = (255, 0, 255)  # void drawn in magenta, a colour no VOC class has


def _save(fig, out, tight=True):
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight" if tight else None)
    plt.close(fig)


def read_per_image(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key != "image_id":
                row[key] = float(value) if value != "" else float("nan")
    return rows


def class_scores(summary, out):
    """Per-class IoU and accuracy, sorted by IoU, with the mean IoU marked."""
    classes = [(name, v["iou"], v["accuracy"]) for name, v in summary["per_class"].items() if v["iou"] is not None]
    classes.sort(key=lambda c: c[1])
    names = [c[0] for c in classes]
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(classes) + 1.5))
    ax.barh(y - 0.2, [c[1] for c in classes], height=0.4, label="IoU", color="tab:blue")
    ax.barh(y + 0.2, [c[2] if c[2] is not None else 0 for c in classes], height=0.4, label="accuracy",
            color="tab:orange")
    if summary["mean_iou"] is not None:  # null when the ground truth is all void
        ax.axvline(summary["mean_iou"], color="black", linestyle="--", label=f"mean IoU {summary['mean_iou']:.3f}")
    else:
        ax.text(0.5, 0.5, "no scored pixels: the ground truth is all void", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (dataset: summed confusion matrix)")
    if classes or summary["mean_iou"] is not None:
        ax.legend(loc="lower right")
    ax.set_title(f"{summary['provenance']['run']}: per-class IoU and accuracy")
    _save(fig, out)


def boundary_scores(summary, out):
    """Per-class IoU beside Boundary IoU and the BF score, sorted by IoU, with the means marked: where a
    class's boundary scores fall well below its IoU, its regions are found but their outlines are not."""
    keys = (("iou", "IoU", "tab:blue"), ("boundary_iou", "Boundary IoU", "tab:green"),
            ("bf_score", "BF score", "tab:red"))
    classes = [(name, v) for name, v in summary["per_class"].items() if any(v[k] is not None for k, _, _ in keys)]
    classes.sort(key=lambda c: -1 if c[1]["iou"] is None else c[1]["iou"])
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(classes) + 1.5))
    for offset, (key, label, colour) in zip((-0.27, 0, 0.27), keys):
        ax.barh(y + offset, [0 if v[key] is None else v[key] for _, v in classes], height=0.27, label=label,
                color=colour)
    for key, label, style in (("mean_iou", "mean IoU", "--"), ("boundary_iou", "Boundary IoU", ":"),
                              ("mean_bf_score", "mean BF", "-.")):
        if summary.get(key) is not None:
            ax.axvline(summary[key], color="black", linestyle=style, label=f"{label} {summary[key]:.3f}")
    if summary.get("mean_iou") is None and summary.get("boundary_iou") is None:
        ax.text(0.5, 0.5, "no scored pixels: the ground truth is all void", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_yticks(y, [name for name, _ in classes])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (IoU, Boundary IoU: summed over images; BF: mean over images)")
    if classes or summary.get("mean_iou") is not None:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{summary['provenance']['run']}: per-class IoU, Boundary IoU and BF score")
    _save(fig, out)


def confusion(summary, out):
    """The confusion matrix normalised by ground-truth class (rows sum to 1)."""
    hist = np.asarray(summary["confusion_matrix"], dtype=float)
    names = list(summary["per_class"])
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = hist / hist.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(np.nan_to_num(normalised), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, label="fraction of the ground-truth class")
    ax.set_title(f"{summary['provenance']['run']}: confusion matrix (void excluded)")
    _save(fig, out)


def forward_times(summary, rows, out):
    """Distribution of per-image forward times (warm-up passes are never recorded), median and p90 marked."""
    times = np.array([r["forward_s"] for r in rows]) * 1000
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(times, bins=min(40, max(5, len(times) // 3)), color="tab:gray")
    for key, style in (("median_s", "-"), ("p90_s", "--")):
        ms = summary["timing"][key] * 1000
        ax.axvline(ms, color="tab:red", linestyle=style, label=f"{key[:-2]} {ms:.2f} ms")
    ax.set_xlabel("forward pass per image (ms)")
    ax.set_ylabel("images")
    ax.legend()
    ax.set_title(f"{summary['provenance']['run']}: forward time ({summary['timing']['warmup']} warm-up passes "
                 f"per job not counted)")
    _save(fig, out)


def accuracy_by_size(summary, rows, out):
    """Per-image pixel accuracy against image size."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter([r["height"] * r["width"] / 1e3 for r in rows], [r["pixel_accuracy"] for r in rows], s=14)
    ax.set_xlabel("image size (thousands of pixels)")
    ax.set_ylabel("pixel accuracy (void excluded)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{summary['provenance']['run']}: per-image pixel accuracy by size")
    _save(fig, out)


def colourise(labels, void_label=None):
    """Label indices as RGB in the VOC palette; `void_label` (the dataset's ignore label) drawn in magenta."""
    rgb = voc_palette()[labels]
    if void_label is not None:
        rgb[labels == void_label] = VOID_RGB
    return rgb


def worst_images(rows, paths, count, out, exif_orientation="refuse", ignore_label=255):
    """The `count` images with the lowest per-image mean IoU: photo, ground truth and prediction side by side.

    `paths` maps an image id to (photo, ground-truth PNG, prediction PNG). Photos are read as the
    network got them (dataset.exif_orientation), so that they line up with their label maps.
    """
    ranked = sorted((r for r in rows if np.isfinite(r["mean_iou"])), key=lambda r: r["mean_iou"])[:count]
    fig, axes = plt.subplots(max(1, len(ranked)), 3, figsize=(9, 2.6 * max(1, len(ranked))), squeeze=False)
    for row_axes, row in zip(axes, ranked):
        photo, truth, prediction = paths[row["image_id"]]
        panels = [read_image(photo, exif_orientation),
                  colourise(read_label_png(truth), ignore_label), colourise(read_label_png(prediction))]
        bf = f"{row['bf_score']:.3f}" if np.isfinite(row.get("bf_score", np.nan)) else "-"
        titles = [f"{row['image_id']}: mean IoU {row['mean_iou']:.3f}, BF {bf}", "ground truth (void: magenta)",
                  "prediction"]
        for ax, panel, title, interpolation in zip(row_axes, panels, titles, ("antialiased", "nearest", "nearest")):
            # Label maps are drawn without smoothing, which would blend class colours at edges.
            ax.imshow(panel, interpolation=interpolation)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    for ax in axes.ravel()[len(ranked) * 3:]:
        ax.axis("off")
    # Fixed margins rather than a tight bounding box, which draws the 18 panels twice.
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / fig.get_figheight(), bottom=0.01, hspace=0.25, wspace=0.03)
    _save(fig, out, tight=False)


def runs_overview(summaries, out):
    """Forward time (median, p10-p90) and mean IoU per run, side by side: the speed/accuracy trade-off."""
    names = [s["provenance"]["run"] for s in summaries]
    y = np.arange(len(names))
    median = np.array([s["timing"]["median_s"] for s in summaries]) * 1000
    low = median - np.array([s["timing"]["p10_s"] for s in summaries]) * 1000
    high = np.array([s["timing"]["p90_s"] for s in summaries]) * 1000 - median
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2), sharey=True)
    left.barh(y, median, xerr=[low, high], color="tab:blue", capsize=4)
    left.set_yticks(y, names)
    left.set_xlabel("forward time per image (ms): median, p10-p90")
    mean_iou = [s["mean_iou"] for s in summaries]
    right.barh(y, [0 if v is None else v for v in mean_iou], color="tab:green")
    for row, value in zip(y, mean_iou):
        if value is None:  # the ground truth is all void: nothing was scored
            right.text(0.01, row, "undefined (all void)", va="center", fontsize=8)
    right.set_xlim(0, 1)
    right.set_xlabel("mean IoU")
    fig.suptitle("speed and accuracy per run")
    _save(fig, out)
