"""The workflow's steps as plain functions: one call handles one job's images.

The Snakemake scripts only unpack their job's files and settings and call these.
"""

import logging

import numpy as np

from . import images, labels, metrics
from .files import read_batch, write_batch, write_json

log = logging.getLogger("segbench")


def _check_label_values(truth, num_classes, ignore_label, path):
    """labels.check_label_values, with a fast pass first: a histogram of a uint8 map costs far less
    than its np.unique (a sort); only a map with a value out of range goes on to the full check,
    which raises the error that names them."""
    if truth.dtype == np.uint8:
        counts = np.bincount(truth.ravel(), minlength=256)
        counts[:num_classes] = 0
        if 0 <= ignore_label < 256:
            counts[ignore_label] = 0
        if not counts.any():
            return
    labels.check_label_values(truth, num_classes, ignore_label, path)


def decode_labels(image_ids, label_pngs, output, num_classes, ignore_label):
    """Ground-truth PNGs -> one batch file of label index arrays, checked for values that are no class."""
    truths = []
    for png in label_pngs:
        truth = labels.read_label_png(png)
        _check_label_values(truth, num_classes, ignore_label, png)
        truths.append(truth)
    write_batch(output, image_ids, label=truths)
    log.info("decoded %d label maps", len(truths))


def prepare_inputs(image_ids, image_paths, output, resize):
    """Photos -> one batch file of network inputs: each RGB image and its original size."""
    rgbs, source_hws = [], []
    for path in image_paths:
        rgb = images.read_image(path)
        source_hws.append(np.array(rgb.shape[:2], dtype=np.int64))
        rgbs.append(rgb if resize is None else images.resize_image(rgb, resize))
    write_batch(output, image_ids, image=rgbs, source_hw=source_hws)
    log.info("prepared %d network inputs (%s)", len(rgbs), "native size" if resize is None else resize)


def predict(backend, rgb, source_hw, model):
    """Class labels at `source_hw` for one image, and the forward time in seconds."""
    blob = images.to_network_input(rgb, model["mean"], model["scale"], model["channel_order"])
    scores, seconds = backend.forward(blob)
    # Scores, not labels, are brought back to the image's own size (bilinear), then the argmax.
    scores = images.resize_scores(scores, source_hw)
    return _argmax_classes(scores), seconds


def _argmax_classes(scores):
    """scores.argmax(axis=0) as uint8, about twice as fast: numpy's argmax over the first axis of a
    (C, H, W) array strides through memory, while a max over it and one comparison per class do not.
    The lowest class among equal maxima wins, as in argmax; a NaN column takes numpy's own path."""
    best = scores.max(axis=0)
    if scores.shape[0] > 256 or np.isnan(best).any():
        return scores.argmax(axis=0).astype(np.uint8)
    classes = np.full(best.shape, scores.shape[0] - 1, dtype=np.uint8)
    for c in range(scores.shape[0] - 2, -1, -1):
        np.copyto(classes, np.uint8(c), where=scores[c] == best)
    return classes


def run_inference(image_ids, input_batches, prediction_pngs, shard_out, model, backend, device, warmup,
                  threads=None):
    """Load the model once, then predict every image of the shard and time each forward pass."""
    # Imported here, so that the jobs of the cheap steps, which import this module too, start faster.
    from . import provenance
    from .backends import load_backend

    net = load_backend(backend, prototxt=model["prototxt"], weights=model["weights"], device=device,
                       input_blob=model["input_blob"], output_blob=model["output_blob"], threads=threads)
    log.info("loaded %s on %s in %.3f s", model["weights"], device, net.load_seconds)
    # Every input is read before the first pass, so that no pass waits for the disk.
    inputs = read_batch(input_batches, image_ids, "image", "source_hw")
    loaded = [(inputs[i][0], tuple(inputs[i][1])) for i in image_ids]
    if loaded and warmup:
        first = images.to_network_input(loaded[0][0], model["mean"], model["scale"], model["channel_order"])
        for _ in range(warmup):
            net.forward(first)
    records = []
    for image_id, (image, source_hw), png in zip(image_ids, loaded, prediction_pngs, strict=True):
        prediction, seconds = predict(net, image, source_hw, model)
        labels.write_label_png(png, prediction)
        records.append({"id": image_id, "forward_s": seconds,
                        "input_height": int(image.shape[0]), "input_width": int(image.shape[1])})
        log.info("%s: forward %.4f s", image_id, seconds)
    write_json(shard_out, {"provenance": {**net.provenance(), **provenance.machine(device)},
                           "model_load_s": net.load_seconds,
                           "warmup": warmup, "images": records})


def score_images(image_ids, label_batches, prediction_pngs, label_pngs, output, num_classes, ignore_label):
    """Per-image confusion matrix (ignore label excluded) and per-image metrics of a batch, as one JSON."""
    truths = read_batch(label_batches, image_ids, "label")
    records = []
    for image_id, pred_png, gt_png in zip(image_ids, prediction_pngs, label_pngs, strict=True):
        (truth,) = truths[image_id]
        _check_label_values(truth, num_classes, ignore_label, gt_png)
        prediction = labels.read_label_png(pred_png)
        try:
            hist = metrics.confusion_matrix(truth, prediction, num_classes, ignore_label)
        except metrics.MetricError as error:
            raise metrics.MetricError(f"{pred_png} against {gt_png}: {error}") from None
        void = int((truth == ignore_label).sum())
        values = metrics.scores(hist, void_pixels=void)
        records.append({
            "id": image_id, "height": int(truth.shape[0]), "width": int(truth.shape[1]),
            "valid_pixels": int(hist.sum()), "void_pixels": void,
            "pixel_accuracy": values["pixel_accuracy"],
            "pixel_accuracy_void_as_error": values["pixel_accuracy_void_as_error"],
            "mean_iou": values["mean_iou"],
            "confusion": hist,
        })
    write_json(output, {"images": records}, indent=None)  # compact: a confusion matrix per image
    log.info("scored %d images", len(records))
