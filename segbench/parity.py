"""Does an exported ONNX model compute what the Caffe net computes? pycaffe vs onnxruntime.

When the outputs disagree, the report names the first Caffe layer (in net order) whose
top differs, which is where an exporter bug or a corrupted file shows itself. Caffe's
in-place layers (ReLU, BatchNorm, Dropout, ...) overwrite their blob, so tops are read
right after their own layer runs, stepping the net one layer at a time.
"""

import json

import numpy as np

from . import SegbenchError


class ParityError(SegbenchError):
    """The ONNX model does not reproduce the Caffe net closely enough."""


def _beyond(reference, other, atol, rtol):
    """Max |a - b|, and whether it exceeds atol + rtol * max|a| (any shape mismatch does)."""
    if reference.shape != other.shape:
        return float("inf"), True
    if reference.size == 0:
        return 0.0, False
    diff = float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64))))
    return diff, not diff <= atol + rtol * float(np.max(np.abs(reference)))


def _argmax_agreement(reference, other):
    if reference.shape != other.shape:
        return 0.0, 0
    a, b = reference.argmax(axis=1), other.argmax(axis=1)
    return float(np.mean(a == b)), int(a.size)


class _Onnx:
    def __init__(self, onnx_path, output_blob):
        import onnx
        import onnxruntime

        self.onnx, self.ort = onnx, onnxruntime
        self.model = onnx.load(str(onnx_path))
        props = {p.key: p.value for p in self.model.metadata_props}
        self.layer_outputs = json.loads(props.get("segbench_layer_outputs", "{}"))
        self.output_blob = output_blob
        self.session = self._session(self.model)
        self._detail = None

    def _session(self, model):
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        return self.ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(self, input_blob, blob):
        return self.session.run([self.output_blob], {input_blob: blob})[0]

    def run_all(self, input_blob, blob):
        """Every layer's tensors: the model, in memory, with them all as extra graph outputs."""
        if self._detail is None:
            model = self.onnx.ModelProto()
            model.CopyFrom(self.model)
            present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
            names = []
            for tensors in self.layer_outputs.values():
                for name in tensors:
                    if name not in present and name not in names:
                        names.append(name)
            model.graph.output.extend(self.onnx.ValueInfoProto(name=name) for name in names)
            self._detail = (self._session(model), [o.name for o in model.graph.output])
        session, names = self._detail
        return dict(zip(names, session.run(names, {input_blob: blob})))


def _first_divergence(net, onnx_tensors, layer_outputs, input_blob, atol, rtol):
    """Step the Caffe net layer by layer; the first layer whose top differs, and by how much."""
    names = list(net._layer_names)
    for index, name in enumerate(names):
        net._forward(index, index)
        if name not in layer_outputs:
            continue  # layers Caffe inserts (Split) or that the exporter does not map
        for top, tensor in zip(net.top_names[name], layer_outputs[name]):
            if tensor not in onnx_tensors or top == input_blob:
                continue
            ours = onnx_tensors[tensor].astype(np.float32)
            diff, bad = _beyond(net.blobs[top].data, ours, atol, rtol)
            if bad:
                return name, diff
    return None, None


def compare_caffe_onnx(prototxt, weights, onnx_path, blobs, input_blob="data", output_blob="score",
                       atol=1e-4, rtol=1e-4):
    """Run both on each (image_id, (1, 3, H, W) float32 blob); a dict report.

    Per image and overall: the max absolute difference of `output_blob`, the fraction of
    pixels whose argmax over channels agrees, and, where the output differs by more than
    atol + rtol * max|caffe|, the first Caffe layer whose top differs that much.
    """
    from .backends.caffe_backend import import_caffe

    caffe = import_caffe()
    caffe.set_mode_cpu()
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    ours = _Onnx(onnx_path, output_blob)
    images = []
    agree_pixels = total_pixels = 0
    for image_id, blob in blobs:
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        net.blobs[input_blob].reshape(*blob.shape)
        net.reshape()
        net.blobs[input_blob].data[...] = blob
        reference = net.forward()[output_blob].copy()
        output = ours.run(input_blob, blob)
        diff, bad = _beyond(reference, output, atol, rtol)
        agreement, pixels = _argmax_agreement(reference, output)
        row = {"image_id": image_id, "shape": list(blob.shape), "max_abs_diff": diff,
               "max_abs_caffe": float(np.max(np.abs(reference))) if reference.size else 0.0,
               "argmax_agreement": agreement, "within_tolerance": not bad,
               "first_diverging_layer": None, "first_diverging_diff": None}
        if bad:
            net.blobs[input_blob].data[...] = blob
            tensors = ours.run_all(input_blob, blob)
            row["first_diverging_layer"], row["first_diverging_diff"] = _first_divergence(
                net, tensors, ours.layer_outputs, input_blob, atol, rtol)
        images.append(row)
        agree_pixels += agreement * pixels
        total_pixels += pixels
    diverging = next((r for r in images if r["first_diverging_layer"]), None)
    return {
        "prototxt": str(prototxt), "weights": str(weights), "onnx": str(onnx_path),
        "atol": atol, "rtol": rtol, "images": images,
        "max_abs_diff": max((r["max_abs_diff"] for r in images), default=0.0),
        "argmax_agreement": agree_pixels / total_pixels if total_pixels else 1.0,
        "min_argmax_agreement": min((r["argmax_agreement"] for r in images), default=1.0),
        "within_tolerance": all(r["within_tolerance"] for r in images),
        "first_diverging_layer": diverging["first_diverging_layer"] if diverging else None,
        "first_diverging_diff": diverging["first_diverging_diff"] if diverging else None,
    }


def require_parity(report, minimum_agreement=0.999):
    """Raise ParityError unless the report's overall argmax agreement reaches the minimum."""
    if report["argmax_agreement"] >= minimum_agreement:
        return report
    worst = min(report["images"], key=lambda r: r["argmax_agreement"])
    where = (f"; the first Caffe layer that differs is {report['first_diverging_layer']!r} "
             f"(max abs diff {report['first_diverging_diff']:.3g})" if report["first_diverging_layer"] else "")
    raise ParityError(
        f"{report['onnx']} does not reproduce Caffe's {report['prototxt']} + {report['weights']}: "
        f"argmax agreement {report['argmax_agreement']:.6f} < {minimum_agreement} over "
        f"{len(report['images'])} image(s) (worst {worst['image_id']}: {worst['argmax_agreement']:.6f}), "
        f"max abs score difference {report['max_abs_diff']:.3g}{where}")
