"""The onnxruntime and OpenVINO backends, their precisions, and int8 quantization, on a tiny FCN-like
ONNX model built here, checked against a forward pass written independently in numpy."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segbench import cpu
from segbench.backends import BackendError
from segbench.backends.onnxruntime_backend import OnnxRuntimeBackend
from segbench.backends.openvino_backend import OpenVINOBackend
from segbench.quantize import QuantizeError, quantization_metadata, quantize_int8

CLASSES = 21
SIZES = [(37, 53), (64, 48)]  # two shapes in a row: the reshape path; odd sizes: the crop


# --------------------------------------------------------------------------- the model and its reference

def tiny_weights(seed=0):
    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "w1": he((8, 3, 3, 3), 27), "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": he((16, 8, 3, 3), 72), "b2": (rng.standard_normal(16) * 0.1).astype(np.float32),
        # Class biases far apart, as a trained net's class priors are: without them a random net's 21
        # scores are near ties almost everywhere, and any rounding flips the argmax.
        "w3": he((CLASSES, 16, 1, 1), 16), "b3": (rng.standard_normal(CLASSES) * 20).astype(np.float32),
        "wup": he((CLASSES, CLASSES, 4, 4), CLASSES * 4),
    }


def tiny_model(weights):
    """conv-relu-pool-conv-relu-score-deconv(x2)-crop, as a Caffe FCN exports: symbolic H and W, opset 17."""
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, "height", "width"])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, CLASSES, "height", "width"])
    constants = {"crop_starts": [1, 1], "hw_begin": [2], "hw_end": [4], "crop_axes": [2, 3], "crop_offset": [1, 1]}
    initializers = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    initializers += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()]
    node = helper.make_node
    nodes = [
        node("Conv", ["data", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
        node("ConvTranspose", ["c3", "wup"], ["up"], kernel_shape=[4, 4], strides=[2, 2]),
        # Caffe's Crop: the upsampled map cut to the input's H x W at offset 1, sizes taken at run time.
        node("Shape", ["data"], ["in_shape"]),
        node("Slice", ["in_shape", "hw_begin", "hw_end"], ["in_hw"]),
        node("Add", ["in_hw", "crop_offset"], ["crop_ends"]),
        node("Slice", ["up", "crop_starts", "crop_ends", "crop_axes"], ["score"]),
    ]
    for n in nodes:
        n.name = n.output[0]
    model = helper.make_model(helper.make_graph(nodes, "tiny-fcn", [data], [score], initializers),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="segbench-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv(x, w, b, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (C, H, W, k, k)
    return np.einsum("chwij,ocij->ohw", windows, w.astype(np.float64)) + b[:, None, None]


def reference_scores(weights, blob):
    """The same net in float64 numpy, written from the layer definitions, not from any backend."""
    x = blob[0].astype(np.float64)
    x = np.maximum(_conv(x, weights["w1"], weights["b1"], 1), 0)
    c, h, w = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
    x = np.maximum(_conv(x, weights["w2"], weights["b2"], 1), 0)
    x = _conv(x, weights["w3"], weights["b3"], 0)
    up_w = weights["wup"].astype(np.float64)  # (in, out, k, k); each input pixel scatters a k x k patch
    _, h, w = x.shape
    up = np.zeros((CLASSES, (h - 1) * 2 + 4, (w - 1) * 2 + 4))
    for i in range(4):
        for j in range(4):
            up[:, i:i + 2 * h:2, j:j + 2 * w:2] += np.einsum("chw,co->ohw", x, up_w[:, :, i, j])
    height, width = blob.shape[2:]
    return up[:, 1:1 + height, 1:1 + width]


def image_blob(rng, height, width):
    """A (1, 3, H, W) blob with an image's structure: smooth colour fields at mean-subtracted pixel scale."""
    coarse = rng.standard_normal((3, height // 16 + 2, width // 16 + 2))
    ys = np.linspace(0, coarse.shape[1] - 1.001, height)
    xs = np.linspace(0, coarse.shape[2] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], xs - x0
    top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x0 + 1] * fx
    bottom = coarse[:, y0 + 1][:, :, x0] * (1 - fx) + coarse[:, y0 + 1][:, :, x0 + 1] * fx
    fields = top * (1 - fy) + bottom * fy
    return (fields * 50 + rng.standard_normal((3, height, width)) * 5)[None].astype(np.float32)


@pytest.fixture(scope="module")
def weights():
    return tiny_weights()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, weights):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(tiny_model(weights), str(path))
    return path


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(1)
    return [image_blob(rng, h, w) for h, w in SIZES]


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(2)
    sizes = [(40, 56), (64, 48), (33, 71), (50, 50)] * 2
    return [(f"cal_{i:03d}", image_blob(rng, h, w)) for i, (h, w) in enumerate(sizes)]


@pytest.fixture(scope="module")
def int8_path(tmp_path_factory, model_path, calibration):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    quantize_int8(model_path, out, calibration)
    return out


def _run(backend, blob):
    backend.reshape(blob.shape)
    backend.forward(blob)  # the first pass at a shape, untimed by the caller
    scores, seconds = backend.forward(blob)
    assert scores.shape == (CLASSES, *blob.shape[2:]) and scores.dtype == np.float32 and seconds > 0
    return scores.copy()  # the backend's buffer may be reused by the next pass


# --------------------------------------------------------------------------- fp32 and bf16

@pytest.mark.parametrize("cls", [OnnxRuntimeBackend, OpenVINOBackend])
def test_fp32_matches_the_numpy_reference_at_two_sizes(cls, model_path, weights, blobs):
    backend = cls(onnx=str(model_path), threads=2, prototxt="ignored", weights="ignored")
    assert backend.load_seconds > 0
    for blob in blobs:
        scores = _run(backend, blob)
        expected = reference_scores(weights, blob)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_openvino_reshape_compiles_the_new_shape(model_path, blobs):
    backend = OpenVINOBackend(onnx=str(model_path), threads=1)
    assert backend.reshape(blobs[0].shape) > 0
    assert list(backend.compiled.input("data").get_shape()) == list(blobs[0].shape)
    backend.reshape(blobs[1].shape)
    assert list(backend.compiled.input("data").get_shape()) == list(blobs[1].shape)


@pytest.mark.skipif("bf16" not in cpu.native_precisions(), reason="this CPU has no bf16 instructions")
def test_openvino_bf16_reads_back_bf16_and_agrees_with_fp32(model_path, blobs):
    fp32 = OpenVINOBackend(onnx=str(model_path), threads=2)
    bf16 = OpenVINOBackend(onnx=str(model_path), threads=2, precision="bf16")
    assert bf16.provenance()["inference_precision"] == "bf16"
    assert "bf16" in bf16.provenance()["runtime_precisions"]["Convolution"]
    for blob in blobs:
        agree = (_run(bf16, blob).argmax(0) == _run(fp32, blob).argmax(0)).mean()
        assert agree >= 0.98


# --------------------------------------------------------------------------- int8

def test_quantized_model_runs_in_both_backends_and_agrees_with_fp32(int8_path, weights):
    rng = np.random.default_rng(3)  # new images from the calibration images' distribution
    tests = [image_blob(rng, h, w) for h, w in [(37, 53), (64, 48), (80, 80)]]
    expected = [reference_scores(weights, blob).argmax(0) for blob in tests]
    for cls in (OnnxRuntimeBackend, OpenVINOBackend):
        backend = cls(onnx=str(int8_path), threads=2, precision="int8")
        agree = np.concatenate([(_run(backend, b).argmax(0) == e).ravel() for b, e in zip(tests, expected)])
        assert agree.mean() >= 0.98, cls.name
        prov = backend.provenance()
        assert prov["precision"] == "int8" and prov["quantization"]["calibration_images"] == 8
    runtime = OpenVINOBackend(onnx=str(int8_path), threads=2, precision="int8").runtime_precisions
    assert runtime["Convolution"].get("u8", 0) + runtime["Convolution"].get("i8", 0) >= 2  # int8 kernels ran


def test_quantization_metadata_and_no_leftovers(int8_path, model_path, calibration):
    meta = quantization_metadata(int8_path)
    assert meta["method"] == "minmax" and meta["per_channel"] is True and meta["format"] == "QDQ"
    assert meta["calibration_images"] == 8
    assert meta["calibration_image_ids"] == [image_id for image_id, _ in calibration]
    assert isinstance(meta["reduce_range"], bool) and meta["reduce_range_reason"].startswith("auto:")
    assert meta["onnxruntime_version"]
    assert meta["float_nodes"] == ["c3", "up", "score"]  # the class-score head stays float
    assert sorted(p.name for p in int8_path.parent.iterdir()) == [int8_path.name]
    assert sorted(p.name for p in model_path.parent.iterdir()) == [model_path.name]
    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_handle_images_of_varied_sizes(tmp_path, model_path, calibration, method):
    out = tmp_path / f"{method}.onnx"
    meta = quantize_int8(model_path, out, calibration[:4], method=method, reduce_range=True)
    assert meta["method"] == method and meta["reduce_range"] is True
    assert meta["reduce_range_reason"] == "set by the caller"
    assert json.loads(json.dumps(quantization_metadata(out))) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_quantize_refuses_an_empty_calibration_set(tmp_path, model_path):
    with pytest.raises(QuantizeError, match="no calibration images"):
        quantize_int8(model_path, tmp_path / "q.onnx", [])
    assert list(tmp_path.iterdir()) == []


def test_reduce_range_follows_the_cpu(monkeypatch):
    from segbench import quantize

    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    assert quantize.auto_reduce_range({"avx2", "avx512_vnni"})[0] is False
    assert quantize.auto_reduce_range({"avx2"})[0] is True
    assert "vpmaddubsw" in quantize.saturation_risk({"reduce_range": False}, {"avx2"})
    assert quantize.saturation_risk({"reduce_range": True}, {"avx2"}) is None


def test_precision_and_file_mismatches_are_refused(model_path, int8_path):
    with pytest.raises(BackendError, match="not a model made by segbench.quantize.quantize_int8"):
        OnnxRuntimeBackend(onnx=str(model_path), precision="int8")
    with pytest.raises(BackendError, match="not a model made by segbench.quantize.quantize_int8"):
        OpenVINOBackend(onnx=str(model_path), precision="int8")
    for cls in (OnnxRuntimeBackend, OpenVINOBackend):
        with pytest.raises(BackendError, match="is an int8 \\(QDQ\\) model but precision fp32"):
            cls(onnx=str(int8_path), precision="fp32")


# --------------------------------------------------------------------------- refusals

def test_cpu_native_precisions():
    assert cpu.native_precisions({"avx2", "avx512_vnni", "avx512_bf16"}) == {"bf16": "avx512_bf16", "int8": "vnni"}
    assert cpu.native_precisions({"avx2", "fma"}) == {"int8": "avx2 (vpmaddubsw)"}
    assert cpu.native_precisions({"amx_bf16", "amx_fp16", "amx_int8"})["fp16"] == "amx_fp16"
    assert isinstance(cpu.cpu_flags(), set) and cpu.cpu_model_name()


def test_onnxruntime_refusals():
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider.*install onnxruntime-gpu"):
            OnnxRuntimeBackend.check_device("gpu:0")
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="TensorrtExecutionProvider.*onnxruntime-gpu"):
            OnnxRuntimeBackend.check_device("gpu:0", "int8", "tensorrt")
    with pytest.raises(BackendError, match="no fp16 convolution kernels on x86"):
        OnnxRuntimeBackend.check_device("cpu", "fp16")
    with pytest.raises(BackendError, match="no bf16 convolution kernels"):
        OnnxRuntimeBackend.check_device("cpu", "bf16")
    with pytest.raises(BackendError, match="use provider: tensorrt for int8"):
        OnnxRuntimeBackend.check_device("gpu:0", "int8", "cuda")
    with pytest.raises(BackendError, match="provider 'cuda' runs on a GPU, but device is cpu"):
        OnnxRuntimeBackend.check_device("cpu", provider="cuda")
    with pytest.raises(BackendError, match="provider 'cpu' asked for with device gpu:0"):
        OnnxRuntimeBackend.check_device("gpu:0", provider="cpu")
    with pytest.raises(BackendError, match="unknown onnxruntime provider 'rocm'"):
        OnnxRuntimeBackend.check_device("gpu:0", provider="rocm")
    assert OnnxRuntimeBackend.check_device("cpu", "int8", "cpu") == "cpu"


def test_openvino_refusals(monkeypatch):
    with pytest.raises(BackendError, match="GPU plugin runs on Intel GPUs only"):
        OpenVINOBackend.check_device("gpu:0")
    with pytest.raises(BackendError, match="provider 'cuda' is an onnxruntime setting"):
        OpenVINOBackend.check_device("cpu", provider="cuda")
    if "fp16" not in cpu.native_precisions():
        with pytest.raises(BackendError, match="no fp16 arithmetic .*avx512_fp16"):
            OpenVINOBackend.check_device("cpu", "fp16")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma", "avx512_vnni"})
    with pytest.raises(BackendError, match="no bf16 instructions .*avx512_bf16"):
        OpenVINOBackend.check_device("cpu", "bf16")
    assert OpenVINOBackend.check_device("cpu", "int8") == "cpu"


@pytest.mark.parametrize("cls", [OnnxRuntimeBackend, OpenVINOBackend])
def test_missing_empty_and_broken_onnx_files_are_named(cls, tmp_path, model_path):
    with pytest.raises(BackendError, match="nowhere.onnx: ONNX model not found"):
        cls(onnx=str(tmp_path / "nowhere.onnx"))
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(BackendError, match="empty.onnx: ONNX model is empty"):
        cls(onnx=str(tmp_path / "empty.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="junk.onnx: .*cannot (load|read) this model"):
        cls(onnx=str(tmp_path / "junk.onnx"))
    with pytest.raises(BackendError, match="has no output 'prob' \\(outputs: score\\)"):
        cls(onnx=str(model_path), output_blob="prob")


def test_quantize_names_a_missing_model(tmp_path):
    with pytest.raises(QuantizeError, match="nowhere.onnx: ONNX model not found"):
        quantize_int8(tmp_path / "nowhere.onnx", tmp_path / "q.onnx", [("a", np.zeros((1, 3, 8, 8), np.float32))])


# --------------------------------------------------------------------------- provenance

def test_provenance_keys(model_path):
    ort_prov = OnnxRuntimeBackend(onnx=str(model_path), threads=2).provenance()
    assert ort_prov["providers"] == ["CPUExecutionProvider"]
    assert (ort_prov["intra_op_num_threads"], ort_prov["inter_op_num_threads"]) == (2, 1)
    assert ort_prov["graph_optimization_level"] == "ORT_ENABLE_ALL"
    ov_prov = OpenVINOBackend(onnx=str(model_path), threads=2).provenance()
    assert (ov_prov["threads"], ov_prov["streams"], ov_prov["inference_precision"]) == (2, "1", "f32")
    assert ov_prov["ov_properties"]["PERFORMANCE_HINT"] == "LATENCY" and ov_prov["ov_device_name"]
    for prov, name in ((ort_prov, "onnxruntime"), (ov_prov, "openvino")):
        assert prov["backend"] == name and prov["device"] == "cpu" and prov["precision"] == "fp32"
        assert prov["backend_version"] and prov["backend_module"]
        assert prov["onnx"] == str(model_path) and len(prov["onnx_sha256"]) == 64
        json.dumps(prov)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_quantizes_the_exported_demo_model(tmp_path, method):
    """The exporter's padded pooling (Caffe's ceil rounding at odd sizes) keeps every tensor finite, so
    the histogram calibrators work on a real export too; calibrated on the demo's calibration images,
    the int8 model agrees with fp32 on the demo images."""
    from pathlib import Path

    from segbench import images
    from segbench.onnx_export import export_onnx

    demo = Path(__file__).resolve().parents[1] / "resources" / "demo"
    mean = [104.00698793, 116.66876762, 122.67891434]

    def blobs_of(split, n):
        ids = (demo / "VOC" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
        return [(i, images.to_network_input(images.read_image(demo / "VOC" / "JPEGImages" / f"{i}.jpg"), mean))
                for i in ids]

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(demo / "fcn-tiny" / "deploy.prototxt", demo / "fcn-tiny" / "fcn-tiny.caffemodel", fp32)
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in onnx.load(fp32).graph.initializer)
    quantize_int8(fp32, int8, blobs_of("calibration", 8), method=method)
    reference = OnnxRuntimeBackend(onnx=str(fp32))
    quantized = OnnxRuntimeBackend(onnx=str(int8), precision="int8")
    same = total = 0
    for _, blob in blobs_of("demo", 6):
        a, b = _run(reference, blob).argmax(0), _run(quantized, blob).argmax(0)
        same, total = same + int((a == b).sum()), total + a.size
    assert same / total >= 0.98, (method, same / total)
