"""The workflow's steps of moving a Caffe model to ONNX: export, int8 calibration, the parity check.

Like segbench.steps, each function is one job: the Snakemake scripts only unpack files and settings.
"""

import logging
from pathlib import Path

from . import images
from .files import read_batch, write_json

log = logging.getLogger("segbench")


def network_inputs(image_ids, rgbs, model):
    """(id, (1, 3, H, W) float32 blob) per image, preprocessed as inference preprocesses it."""
    return [(i, images.to_network_input(rgb, model["mean"], model["scale"], model["channel_order"]))
            for i, rgb in zip(image_ids, rgbs)]


def export_model(prototxt, weights, output, input_blob, output_blob, dtype="float32"):
    """The model's ONNX file (written whole or not at all), without pycaffe."""
    from .onnx_export import export_onnx

    summary = export_onnx(prototxt, weights, output, input_blob=input_blob, output_blob=output_blob, dtype=dtype)
    log.info("exported %s + %s to %s (%s): %s", prototxt, weights, output, dtype, summary)
    return summary


def quantize_model(onnx_in, calibration_batches, calibration_ids, output, model, method):
    """The int8 (QDQ) model, calibrated on the inputs of `calibration_ids` (never scored images)."""
    from .quantize import quantize_int8

    batch = read_batch(calibration_batches, calibration_ids, "image")
    blobs = network_inputs(calibration_ids, [batch[i][0] for i in calibration_ids], model)
    quantize_int8(onnx_in, output, blobs, method=method)
    log.info("quantized %s to int8 (%s, %d calibration images): %s", onnx_in, method, len(blobs), output)


def check_parity(prototxt, weights, onnx_path, image_ids, image_paths, model, resize, exif_orientation,
                 min_agreement, output, failed_output):
    """Caffe and the fp32 ONNX export on the same images: the report goes to `output` when the
    classes agree on at least `min_agreement` of the pixels; else to `failed_output`, and the job stops."""
    from .parity import ParityError, compare_caffe_onnx, require_parity

    rgbs = []
    for path in image_paths:
        rgb = images.read_image(path, exif_orientation)
        rgbs.append(rgb if resize is None else images.resize_image(rgb, resize))
    report = compare_caffe_onnx(prototxt, weights, onnx_path, network_inputs(image_ids, rgbs, model),
                                model["input_blob"], model["output_blob"])
    report.update({"min_agreement": min_agreement, "resize": resize})
    report["passed"] = report["argmax_agreement"] >= min_agreement
    log.info("parity of %s with Caffe: argmax agreement %.6f, max |difference| %.3g", onnx_path,
             report["argmax_agreement"], report["max_abs_diff"])
    if report["passed"]:
        Path(failed_output).unlink(missing_ok=True)
        write_json(output, report)
        return report
    write_json(failed_output, report)
    try:
        require_parity(report, min_agreement)
    except ParityError as error:
        raise ParityError(f"{error}. The workflow stops here, before any run of this export; report: "
                          f"{failed_output}") from None
