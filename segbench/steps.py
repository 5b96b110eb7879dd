"""The workflow's steps as plain functions: one call handles one job's images.

The Snakemake scripts only unpack their job's files and settings and call these.
"""

import logging

import numpy as np

from . import images, labels, metrics
from .files import atomic_path, write_json

log = logging.getLogger("segbench")


def _save_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


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


def decode_labels(label_pngs, outputs, num_classes, ignore_label):
    """Ground-truth PNGs -> label index arrays (.npy), checked for values that are no class."""
    for png, out in zip(label_pngs, outputs, strict=True):
        truth = labels.read_label_png(png)
        _check_label_values(truth, num_classes, ignore_label, png)
        _save_npy(out, truth)
    log.info("decoded %d label maps", len(outputs))


def prepare_inputs(image_paths, outputs, resize):
    """Photos -> network inputs (.npz with the RGB image and its original size)."""
    for path, out in zip(image_paths, outputs, strict=True):
        rgb = images.read_image(path)
        source_hw = np.array(rgb.shape[:2], dtype=np.int64)
        if resize is not None:
            rgb = images.resize_image(rgb, resize)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, image=rgb, source_hw=source_hw)
    log.info("prepared %d network inputs (%s)", len(outputs), "native size" if resize is None else resize)


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


def run_inference(image_ids, input_npzs, prediction_pngs, shard_out, model, backend, device, warmup,
                  threads=None):
    """Load the model once, then predict every image of the shard and time each forward pass."""
    # Imported here, so that the jobs of the cheap steps, which import this module too, start faster.
    from . import provenance
    from .backends import load_backend

    net = load_backend(backend, prototxt=model["prototxt"], weights=model["weights"], device=device,
                       input_blob=model["input_blob"], output_blob=model["output_blob"], threads=threads)
    log.info("loaded %s on %s in %.3f s", model["weights"], device, net.load_seconds)
    # Every input is read before the first pass, and once: an NpzFile reads (and CRC-checks) an
    # array again at each access.
    loaded = []
    for path in input_npzs:
        with np.load(path) as data:
            loaded.append((data["image"], tuple(data["source_hw"])))
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


def score_images(image_ids, label_npys, prediction_pngs, label_pngs, outputs, num_classes, ignore_label):
    """Per-image confusion matrix (ignore label excluded) and per-image metrics, as JSON."""
    for image_id, npy, pred_png, gt_png, out in zip(image_ids, label_npys, prediction_pngs, label_pngs,
                                                    outputs, strict=True):
        truth = np.load(npy)
        _check_label_values(truth, num_classes, ignore_label, gt_png)
        prediction = labels.read_label_png(pred_png)
        try:
            hist = metrics.confusion_matrix(truth, prediction, num_classes, ignore_label)
        except metrics.MetricError as error:
            raise metrics.MetricError(f"{pred_png} against {gt_png}: {error}") from None
        void = int((truth == ignore_label).sum())
        values = metrics.scores(hist, void_pixels=void)
        write_json(out, {
            "id": image_id, "height": int(truth.shape[0]), "width": int(truth.shape[1]),
            "valid_pixels": int(hist.sum()), "void_pixels": void,
            "pixel_accuracy": values["pixel_accuracy"],
            "pixel_accuracy_void_as_error": values["pixel_accuracy_void_as_error"],
            "mean_iou": values["mean_iou"],
            "confusion": hist.tolist(),
        })
    log.info("scored %d images", len(outputs))
