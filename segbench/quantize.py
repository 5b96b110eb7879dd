"""Post-training int8 quantization of an exported ONNX model (onnxruntime's quantize_static, QDQ format).

The result keeps the float graph and wraps it in QuantizeLinear/DequantizeLinear pairs (activations
uint8 with a zero point, weights int8 symmetric, one scale per output channel). Both onnxruntime and
OpenVINO fuse those pairs into int8 convolutions, so one file serves both backends.

What the file was calibrated on and how is stored in its metadata_props (keys under
METADATA_PREFIX), and quantization_metadata() reads it back for the backends' provenance.
"""

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import SegbenchError, cpu
from .provenance import sha256_file

METADATA_PREFIX = "segbench.int8."
METHODS = ("minmax", "entropy", "percentile")


class QuantizeError(SegbenchError):
    pass


def auto_reduce_range(flags=None):
    """(reduce_range, why) for the CPU this runs on.

    On x86 without VNNI, int8 convolutions multiply uint8 activations by int8 weights with
    vpmaddubsw, whose int16 sums of two products saturate when both are large; 7-bit weights keep
    them in range, at a small cost in precision. VNNI (and other architectures) accumulate in int32.
    """
    int8 = cpu.native_precisions(flags).get("int8")
    if not cpu.is_x86():
        return False, f"not an x86 CPU ({cpu.cpu_model_name()}): no vpmaddubsw saturation"
    if int8 == "vnni":
        return False, f"the CPU ({cpu.cpu_model_name()}) has VNNI: int8 products accumulate in int32"
    return True, (f"the CPU ({cpu.cpu_model_name()}) has no VNNI: 7-bit weights avoid the int16 "
                  f"saturation of vpmaddubsw")


class _BlobReader:
    """Feeds the calibration blobs, one image at a time, each at its own size."""

    def __init__(self, input_name, blobs):
        self.input_name, self.blobs = input_name, blobs
        self.position, self.end = 0, len(blobs)

    def get_next(self):
        if self.position >= self.end:
            return None
        blob = self.blobs[self.position][1]
        self.position += 1
        return {self.input_name: blob}

    def rewind(self):
        self.position, self.end = 0, len(self.blobs)

    def __len__(self):
        return len(self.blobs)

    def set_range(self, start_index, end_index):  # ORT's strided calibration: one round at a time
        self.position, self.end = start_index, min(end_index, len(self.blobs))


def _check_blobs(calibration_blobs, onnx_in):
    blobs = []
    for entry in calibration_blobs:
        try:
            image_id, blob = entry
        except (TypeError, ValueError):
            raise QuantizeError(f"calibration_blobs must be (image_id, blob) pairs; got {type(entry).__name__}") \
                from None
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if blob.ndim != 4 or blob.shape[:2] != (1, 3):
            raise QuantizeError(f"calibration blob of image {image_id!r} has shape {blob.shape}; "
                                f"expected (1, 3, height, width)")
        blobs.append((str(image_id), blob))
    if not blobs:
        raise QuantizeError(f"no calibration images to quantize {onnx_in} with: static int8 quantization "
                            f"needs the activation ranges of real images; give at least one (a few dozen "
                            f"images like the evaluated ones is typical)")
    return blobs


def _graph_input(model, onnx_in):
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QuantizeError(f"{onnx_in}: expected one image input, found {inputs}")
    return inputs[0]


# Operators whose output has as many channels as their first input.
_SAME_CHANNELS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "MaxPool", "AveragePool", "Pad", "Slice",
                  "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Dropout", "Identity", "LRN",
                  "BatchNormalization", "InstanceNormalization", "Softmax", "Cast", "Resize", "Upsample"}


def _channels(model):
    """{tensor: channels} for the 4-D tensors, propagated from the weights through the graph.

    Not from shape inference: an export with symbolic H and W and crops computed at run time may
    leave the output's shape unknown, while channel counts follow from the weights alone.
    """
    weights = {i.name: i.dims for i in model.graph.initializer}
    channels = {}
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[graph_input.name] = dims[1].dim_value
    for node in model.graph.node:
        if not node.output:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        if node.op_type == "Conv" and node.input[1] in weights:
            channels[node.output[0]] = weights[node.input[1]][0]
        elif node.op_type == "ConvTranspose" and node.input[1] in weights:
            channels[node.output[0]] = weights[node.input[1]][1] * group
        elif node.op_type in _SAME_CHANNELS:
            known = [channels[i] for i in node.input if i in channels]
            if known:
                channels[node.output[0]] = known[0]
    return channels


def class_score_nodes(model):
    """Names of the nodes whose outputs carry the class scores (as many channels as the graph output).

    In an FCN these are the score layers, their upsampling, crops and fusing sums: the head, a
    fraction of a percent of the work. Kept in float, the scores are not rounded to 256 levels
    before the argmax, where int8 would cost most accuracy for the least speed.
    """
    channels = _channels(model)
    classes = channels.get(model.graph.output[0].name)
    if not classes:
        return []
    return [node.name for node in model.graph.node if node.output and channels.get(node.output[0]) == classes]


def infinite_fill_pads(model):
    """{padded tensor: tensor it pads} for the Pad nodes whose fill value is infinite (or huge).

    An export emulates Caffe's rounded-up pooling by padding with -inf before MaxPool; calibrated as
    is, the padded tensor's range is [-inf, max], an infinite scale, and all after it garbage.
    """
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
    pads = {}
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2] in constants:
            fill = np.asarray(constants[node.input[2]], dtype=np.float64)
            if fill.size and not (np.all(np.isfinite(fill)) and np.abs(fill).max() < 1e30):
                pads[node.output[0]] = node.input[0]
    return pads


def _finite_ranges(cache, pads):
    """Give each padded tensor the range of what it pads (its fill then quantizes to the range's
    minimum, which max pooling treats as the -inf it was); refuse any other non-finite range."""
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    ranges = load_tensors_data(cache)
    changed = False
    for name in list(ranges):
        low, high = (np.asarray(v, dtype=np.float64) for v in ranges[name].range_value)
        if np.all(np.isfinite(low)) and np.all(np.isfinite(high)):
            continue
        source = pads.get(name)
        if source is None or source not in ranges:
            raise QuantizeError(f"calibration found a non-finite range for tensor {name!r} "
                                f"({low}, {high}); the model cannot be quantized as is")
        source_low, source_high = ranges[source].range_value
        ranges[name] = TensorData(lowest=source_low, highest=source_high)
        changed = True
    if changed:
        save_tensors_data(ranges, cache)
    return changed


def _name_nodes(model):
    # nodes_to_exclude works by node name; unnamed nodes get their first output's name.
    for node in model.graph.node:
        if not node.name and node.output:
            node.name = node.output[0]


def quantize_int8(onnx_in, onnx_out, calibration_blobs, method="minmax", per_channel=True, reduce_range=None,
                  float_head=True):
    """Quantize `onnx_in` to int8 (QDQ) into `onnx_out`, calibrated on `calibration_blobs`.

    calibration_blobs: a list of (image_id, (1, 3, H, W) float32 blob), any sizes.
    method: minmax, entropy or percentile (ORT's calibrators). reduce_range: None decides from
    this CPU (auto_reduce_range). float_head: keep the class-score layers in float (class_score_nodes).
    Returns the metadata stored in the file (quantization_metadata()).
    The file appears whole or not at all; the quantizer's own temporary files are removed.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not onnx_in.is_file() or onnx_in.stat().st_size == 0:
        raise QuantizeError(f"{onnx_in}: ONNX model {'is empty' if onnx_in.is_file() else 'not found'}; export it "
                            f"first (segbench.onnx_export.export_onnx)")
    blobs = _check_blobs(calibration_blobs, onnx_in)
    if reduce_range is None:
        reduce_range, why = auto_reduce_range()
        why = f"auto: {why}"
    else:
        reduce_range, why = bool(reduce_range), "set by the caller"
    model = onnx.load(str(onnx_in))
    input_name = _graph_input(model, onnx_in)
    _name_nodes(model)
    float_nodes = class_score_nodes(model) if float_head else []
    pads = infinite_fill_pads(model)

    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    # Everything the quantizer writes goes into a private folder beside the output: ORT writes a
    # shape-inferred copy next to its input file ("<name>-inferred.onnx"), which would collide between
    # two jobs quantizing the same model, and the rename into place must stay on one file system.
    work = Path(tempfile.mkdtemp(prefix=f".{onnx_out.name}.", dir=onnx_out.parent))
    try:
        # A named copy in the private folder (ORT quantizes a file, and names nodes to exclude).
        source = work / "model.onnx"
        onnx.save(model, str(source))
        del model
        quantized = work / "quantized.onnx"
        cache = work / "ranges.json"
        quantize = functools.partial(
            quantize_static,
            str(source), str(quantized), _BlobReader(input_name, blobs),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            nodes_to_exclude=float_nodes,
            # One image per collection round: the histogram calibrators stack each round's tensors into
            # one array and fail on images of different sizes; ranges and histograms merge across rounds.
            # (Not CalibMaxIntermediateOutputs: ORT 1.32 drops, not merges, the ranges it flushes.)
            extra_options={"CalibStridedMinMax": 1},
            calibration_cache_path=str(cache),
        )
        # With -inf padding the first pass meets infinite ranges; its result is thrown away.
        with np.errstate(invalid="ignore", divide="ignore") if pads else contextlib.nullcontext():
            quantize()
        if _finite_ranges(cache, pads):
            quantize()  # again, from the corrected ranges in the cache: no second calibration
        metadata = {
            "format": "QDQ",
            "activation_type": "uint8",
            "weight_type": "int8",
            "method": method,
            "per_channel": bool(per_channel),
            "float_nodes": float_nodes,
            "reduce_range": reduce_range,
            "reduce_range_reason": why,
            "calibration_images": len(blobs),
            "calibration_image_ids": [image_id for image_id, _ in blobs],
            "onnxruntime_version": onnxruntime.__version__,
            "quantized_on_cpu": cpu.cpu_model_name(),
            "source_onnx": str(onnx_in),
            "source_onnx_sha256": sha256_file(onnx_in),
        }
        model = onnx.load(str(quantized))
        kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        for key, value in metadata.items():
            model.metadata_props.add(key=METADATA_PREFIX + key, value=json.dumps(value))
        final = work / onnx_out.name
        onnx.save(model, str(final))
        del model
        _check_runs(final, input_name, min(blobs, key=lambda b: b[1].size)[1])
        os.replace(final, onnx_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return metadata


def _check_runs(path, input_name, blob):
    """Run the quantized model once before it replaces anything: a broken file must not look done."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        output = session.run(None, {input_name: blob})[0]
    except Exception as error:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise QuantizeError(f"the int8 model quantized into {path} does not run in onnxruntime: {error}") from None
    if not np.isfinite(output).all():
        raise QuantizeError(f"the int8 model quantized into {path} gives non-finite scores")


def quantization_metadata(path):
    """What quantize_int8 stored in the ONNX file `path` ({} for a file it did not make)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value)
            for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def metadata_from_map(custom_metadata):
    """The same, from a {key: value} map such as onnxruntime's ModelMetadata.custom_metadata_map."""
    return {key[len(METADATA_PREFIX):]: json.loads(value)
            for key, value in custom_metadata.items() if key.startswith(METADATA_PREFIX)}


def saturation_risk(metadata, flags=None):
    """A warning when an int8 file made with 8-bit weights runs on an x86 CPU without VNNI, else None.

    The file may be quantized on one machine (with VNNI) and run on another (without).
    """
    if not metadata or metadata.get("reduce_range") or not cpu.is_x86():
        return None
    if cpu.native_precisions(flags).get("int8") == "vnni":
        return None
    return ("quantized with 8-bit weights (reduce_range false) but this CPU has no VNNI: its int8 "
            "convolutions (vpmaddubsw) can saturate; quantize again on this machine, or with reduce_range=True")
