"""The workflow's steps as plain functions: one call handles one job's images.

The Snakemake scripts only unpack their job's files and settings and call these.
"""

import contextlib
import logging

import numpy as np

from . import SegbenchError, images, labels, metrics
from .files import DamagedFileError, read_batch, write_batch, write_json

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


def prepare_inputs(image_ids, image_paths, output, resize, exif_orientation="refuse"):
    """Photos -> one batch file of network inputs: each RGB image and its original size.

    `exif_orientation` is dataset.exif_orientation; 'refuse' is checked here again because jobs on a
    cluster do not run the plan-time check."""
    rgbs, source_hws = [], []
    for path in image_paths:
        rgb = images.read_image(path, exif_orientation)
        source_hws.append(np.array(rgb.shape[:2], dtype=np.int64))
        rgbs.append(rgb if resize is None else images.resize_image(rgb, resize))
    write_batch(output, image_ids, image=rgbs, source_hw=source_hws)
    log.info("prepared %d network inputs (%s)", len(rgbs), "native size" if resize is None else resize)


class ModelOutputError(SegbenchError):
    pass


def check_scores(scores, num_classes, model, image_id):
    """Refuse class scores that cannot be scored against `num_classes` classes, or that are not numbers.

    A model with other classes than the dataset would otherwise be scored without a word (more
    than 256 channels would even wrap around in the uint8 label map), and a NaN score would
    silently become a class.
    """
    # A sum is far cheaper than isfinite() over every score, and any NaN or infinity makes it
    # non-finite; only then is every score looked at (a sum of huge finite scores can overflow).
    non_finite = 0
    if not np.isfinite(scores.sum(dtype=np.float32)) and not np.isfinite(scores).all():
        non_finite = int((~np.isfinite(scores)).sum())
    check_output(scores.shape[0], non_finite, num_classes, model, image_id)


def check_output(channels, non_finite, num_classes, model, image_id):
    if num_classes is not None and channels != num_classes:
        raise ModelOutputError(
            f"{model['prototxt']} ({model['weights']}): output blob {model['output_blob']!r} has "
            f"{channels} channels (classes) but dataset.num_classes is {num_classes}; "
            f"use a model trained for this dataset's classes, or correct dataset.num_classes")
    if non_finite:
        raise ModelOutputError(
            f"{image_id}: the model ({model['prototxt']}) gave {non_finite} NaN or infinite "
            f"score(s) (output blob {model['output_blob']!r}); its weights or its input are broken")


def predict(backend, blob, source_hw, model, num_classes=None, image_id="image"):
    """Class labels at `source_hw` for one network input blob, and the forward time in seconds.

    A backend whose scores live on a GPU (classes_on_device) resizes them and takes the argmax
    there, the same computation, and sends back only the class map."""
    if getattr(backend, "classes_on_device", False):
        classes, seconds, channels, non_finite = backend.forward_classes(blob, tuple(source_hw))
        check_output(channels, non_finite, num_classes, model, image_id)
        return classes, seconds
    scores, seconds = backend.forward(blob)
    check_scores(scores, num_classes, model, image_id)
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
                  threads=None, num_classes=None, onnx=None, precision="fp32", provider=None):
    """Load the model once, then predict every image of the shard and time each forward pass.

    Every backend is timed over the same span: a forward pass on a net already shaped for the
    image. At each new input shape the net is re-shaped and one pass runs untimed (OpenCV
    re-allocates its whole net inside that pass, Caffe touches its new buffers for the first
    time); what that costs beyond a timed pass is recorded per image as `reshape_s`. Images are
    taken in order of their input shape, so that a net is re-shaped once per shape and job.
    """
    # Imported here, so that the jobs of the cheap steps, which import this module too, start faster.
    from . import provenance
    from .backends import load_backend

    net = load_backend(backend, prototxt=model["prototxt"], weights=model["weights"], onnx=onnx, device=device,
                       input_blob=model["input_blob"], output_blob=model["output_blob"], threads=threads,
                       precision=precision, provider=provider)
    log.info("loaded %s on %s (%s) in %.3f s", onnx or model["weights"], device, precision, net.load_seconds)
    # Every input is read before the first pass, so that no pass waits for the disk.
    inputs = read_batch(input_batches, image_ids, "image", "source_hw")
    loaded = [(inputs[i][0], tuple(inputs[i][1])) for i in image_ids]
    order = sorted(range(len(image_ids)), key=lambda k: loaded[k][0].shape)
    shaped_for = None
    if order and warmup:
        first = images.to_network_input(loaded[order[0]][0], model["mean"], model["scale"], model["channel_order"])
        net.reshape(first.shape)
        shaped_for = first.shape
        for _ in range(warmup):
            scores, _ = net.forward(first)
        check_scores(scores, num_classes, model, image_ids[order[0]])
    records = [None] * len(image_ids)
    with _prediction_writer(getattr(net, "classes_on_device", False)) as write_png:
        _predict_shard(net, image_ids, loaded, prediction_pngs, order, shaped_for, model, num_classes, records,
                       write_png)
    write_json(shard_out, {"provenance": {**net.provenance(), **provenance.machine(device)},
                           "model_load_s": net.load_seconds,
                           "warmup": warmup, "images": records})


@contextlib.contextmanager
def _prediction_writer(in_background):
    """write_png(path, classes). With the passes on a GPU, a thread writes the PNGs (zlib lets go of
    the GIL) while the next pass runs, so that the host keeps up with passes of a millisecond or two;
    on a CPU the passes use every core and a writer beside them would disturb their timing. Every
    write has finished, and its error (a full disk) has been raised, when the block ends."""
    if not in_background:
        yield labels.write_label_png
        return
    from concurrent.futures import ThreadPoolExecutor

    pending = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png") as pool:
        yield lambda path, classes: pending.append(pool.submit(labels.write_label_png, path, classes))
    for future in pending:
        future.result()


def _predict_shard(net, image_ids, loaded, prediction_pngs, order, shaped_for, model, num_classes, records,
                   write_png):
    for k in order:
        image_id, (image, source_hw), png = image_ids[k], loaded[k], prediction_pngs[k]
        blob = images.to_network_input(image, model["mean"], model["scale"], model["channel_order"])
        first_pass_s = None
        if blob.shape != shaped_for:
            first_pass_s = net.reshape(blob.shape) + net.forward(blob)[1]
            shaped_for = blob.shape
        prediction, seconds = predict(net, blob, source_hw, model, num_classes, image_id)
        # What a new shape costs: re-shaping and the first pass at it, beyond a pass on a shaped net.
        reshape_s = None if first_pass_s is None else first_pass_s - seconds
        write_png(png, prediction)
        records[k] = {"id": image_id, "forward_s": seconds, "reshape_s": reshape_s,
                      "input_height": int(image.shape[0]), "input_width": int(image.shape[1])}
        log.info("%s: forward %.4f s", image_id, seconds)


def score_images(image_ids, label_batches, prediction_pngs, label_pngs, output, num_classes, ignore_label,
                 boundary_iou_dilation, bf_tolerance):
    """Per-image confusion matrix (ignore label excluded) and per-image metrics of a batch, as one JSON.

    Each record also holds the image's per-class boundary counts (metrics.boundary_counts), so that
    the dataset's Boundary IoU and BF scores are exact sums and means of them; the two tolerances
    are config metrics.boundary_iou_dilation and metrics.bf_tolerance, resolved per image size."""
    truths = read_batch(label_batches, image_ids, "label")
    records = []
    for image_id, pred_png, gt_png in zip(image_ids, prediction_pngs, label_pngs, strict=True):
        (truth,) = truths[image_id]
        _check_label_values(truth, num_classes, ignore_label, gt_png)
        try:
            prediction = labels.read_label_png(pred_png)
        except labels.LabelError as error:
            # The inference step wrote it as a palette PNG: unreadable now means damaged since.
            reason = error.__context__ or error
            raise DamagedFileError(pred_png, f"a prediction that no longer reads as a PNG: {reason}") from None
        try:
            hist = metrics.confusion_matrix(truth, prediction, num_classes, ignore_label)
        except metrics.MetricError as error:
            raise metrics.MetricError(f"{pred_png} against {gt_png}: {error}") from None
        void = int((truth == ignore_label).sum())
        values = metrics.scores(hist, void_pixels=void)
        height, width = truth.shape
        dilation = metrics.dilation_pixels(boundary_iou_dilation, height, width)
        tolerance = metrics.tolerance_pixels(bf_tolerance, height, width)
        counts = metrics.boundary_counts(truth, prediction, num_classes, ignore_label, dilation, tolerance)
        boundary_iou, bf_score = metrics.image_boundary_scores(counts)
        records.append({
            "id": image_id, "height": int(truth.shape[0]), "width": int(truth.shape[1]),
            "valid_pixels": int(hist.sum()), "void_pixels": void,
            "pixel_accuracy": values["pixel_accuracy"],
            "pixel_accuracy_void_as_error": values["pixel_accuracy_void_as_error"],
            "mean_iou": values["mean_iou"],
            "boundary_iou": boundary_iou, "bf_score": bf_score,
            "boundary_iou_dilation_px": dilation, "bf_tolerance_px": tolerance,
            "confusion": hist,
            "boundary_counts": counts,
        })
    settings = {"boundary_iou_dilation": boundary_iou_dilation, "bf_tolerance": bf_tolerance}
    write_json(output, {"settings": settings, "images": records}, indent=None)  # compact: a confusion matrix per image
    log.info("scored %d images", len(records))


def pixel_agreement(image_ids, prediction_pngs, reference_pngs, output, run, reference):
    """How many pixels of a run's predictions have the class of its reference run's (e.g. an int8 run
    against the fp32 Caffe run): what a speed-up costs, pixel by pixel, over every scored image."""
    agreeing = pixels = 0
    worst = (None, 2.0)
    for image_id, png, reference_png in zip(image_ids, prediction_pngs, reference_pngs):
        ours, theirs = labels.read_label_png(png), labels.read_label_png(reference_png)
        if ours.shape != theirs.shape:
            raise SegbenchError(f"{png} is {ours.shape[1]}x{ours.shape[0]} but {reference_png} is "
                                f"{theirs.shape[1]}x{theirs.shape[0]}; delete both and run the same command again")
        same = int(np.count_nonzero(ours == theirs))
        agreeing, pixels = agreeing + same, pixels + ours.size
        if same / ours.size < worst[1]:
            worst = (image_id, same / ours.size)
    write_json(output, {"run": run, "reference": reference, "images": len(image_ids), "pixels": pixels,
                        "agreeing_pixels": agreeing, "pixel_agreement": agreeing / pixels if pixels else None,
                        "lowest_image": worst[0], "lowest_image_agreement": worst[1] if worst[0] else None})
    log.info("%s agrees with %s on %d of %d pixels", run, reference, agreeing, pixels)
