"""segbench's Caffe -> ONNX exporter, checked against the real pycaffe as the reference.

Each layer case writes a tiny prototxt, gives it random weights through pycaffe itself
(so the caffemodel is exactly what Caffe writes), exports it without pycaffe, and
compares onnxruntime's output with Caffe's forward pass at several input sizes, odd
ones included (that is where Caffe's pooling and cropping arithmetic differs from
ONNX conventions). Interp is not in this Caffe: it is checked against a numpy
align-corners bilinear written from the definition.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segbench.caffe_model import CaffeModelError, load_net
from segbench.caffe_proto import message_class
from segbench.caffe_layers import interp_output_size
from segbench.onnx_export import ExportError, export_onnx
from segbench.parity import ParityError, compare_caffe_onnx, require_parity

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
DEMO_PROTOTXT = DEMO / "fcn-tiny" / "deploy.prototxt"
DEMO_WEIGHTS = DEMO / "fcn-tiny" / "fcn-tiny.caffemodel"
MEAN = (104.00698793, 116.66876762, 122.67891434)
SIZES = [(7, 9), (8, 11), (13, 6)]


@pytest.fixture(scope="module")
def caffe():
    from segbench.backends.caffe_backend import import_caffe
    caffe = import_caffe()
    caffe.set_mode_cpu()
    return caffe


def _net_text(body, channels=3):
    return (f'name: "t"\nlayer {{ name: "input" type: "Input" top: "data"\n'
            f'  input_param {{ shape {{ dim: 1 dim: {channels} dim: 8 dim: 8 }} }} }}\n{body}')


def _randomise(net, seed=0, bn_factor=2.5):
    """Random weights where the prototxt's fillers left zeros; sensible BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layers[list(net._layer_names).index(name)].type
        if kind == "BatchNorm":
            channels = blobs[0].data.shape[0]
            blobs[0].data[...] = rng.normal(0, 1, channels) * bn_factor
            blobs[1].data[...] = rng.uniform(0.5, 2, channels) * bn_factor
            blobs[2].data[...] = bn_factor
            continue
        for blob in blobs:
            if not np.any(blob.data):
                blob.data[...] = rng.normal(0, 0.5, blob.data.shape)


def _make_model(caffe, tmp_path, body, channels=3, bn_factor=2.5, name="net"):
    prototxt = tmp_path / f"{name}.prototxt"
    prototxt.write_text(_net_text(body, channels) if "Input" not in body else body)
    weights = tmp_path / f"{name}.caffemodel"
    net = caffe.Net(str(prototxt), caffe.TEST)
    _randomise(net, bn_factor=bn_factor)
    net.save(str(weights))
    return prototxt, weights, net


def _caffe_forward(net, x, blob):
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    return net.blobs[blob].data.copy()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _close(reference, ours, tolerance=1e-4):
    assert ours.shape == reference.shape
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert float(np.max(np.abs(ours - reference))) <= tolerance * scale


def _check_against_caffe(caffe, tmp_path, body, output, channels=3, sizes=SIZES, bn_factor=2.5):
    prototxt, weights, net = _make_model(caffe, tmp_path, body, channels, bn_factor)
    path = tmp_path / "net.onnx"
    summary = export_onnx(prototxt, weights, path, "data", output)
    session = _session(path)
    rng = np.random.default_rng(1)
    for h, w in sizes:
        x = rng.normal(0, 1, (1, channels, h, w)).astype(np.float32)
        _close(_caffe_forward(net, x, output), session.run([output], {"data": x})[0])
    return summary, path


def _pool(pool, params, top="out"):
    return (f'layer {{ name: "{top}" type: "Pooling" bottom: "data" top: "{top}"\n'
            f'  pooling_param {{ pool: {pool} {params} }} }}\n')


POOLING = {
    "max_k3_s2_p1": _pool("MAX", "kernel_size: 3 stride: 2 pad: 1"),
    "max_k2_s2": _pool("MAX", "kernel_size: 2 stride: 2"),
    "max_k3_s3_p2_edge_rule": _pool("MAX", "kernel_size: 3 stride: 3 pad: 2"),
    "max_hw_forms": _pool("MAX", "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
    "max_floor_mode": _pool("MAX", "kernel_size: 3 stride: 2 pad: 1 ceil_mode: false"),
    "ave_k3_s2_p1": _pool("AVE", "kernel_size: 3 stride: 2 pad: 1"),
    "ave_k2_s2": _pool("AVE", "kernel_size: 2 stride: 2"),
    "ave_k3_s3_p2_edge_rule": _pool("AVE", "kernel_size: 3 stride: 3 pad: 2"),
    "ave_k5_s3_p2": _pool("AVE", "kernel_size: 5 stride: 3 pad: 2"),
    "ave_floor_mode": _pool("AVE", "kernel_size: 3 stride: 2 pad: 1 ceil_mode: false"),
    "global_max": _pool("MAX", "global_pooling: true"),
    "global_ave": _pool("AVE", "global_pooling: true"),
}


@pytest.mark.parametrize("case", sorted(POOLING))
def test_pooling_matches_caffe_at_odd_sizes(caffe, tmp_path, case):
    _check_against_caffe(caffe, tmp_path, POOLING[case], "out", sizes=SIZES + [(5, 5), (10, 12)])


CONV = 'layer { name: "%s" type: "%s" bottom: "%s" top: "%s" convolution_param { %s } }\n'
LAYERS = {
    "conv_group_dilation_stride_pad_nobias": (
        CONV % ("c", "Convolution", "data", "out",
                "num_output: 6 group: 2 kernel_size: 3 dilation: 2 stride: 2 pad: 1 bias_term: false"), 4),
    "conv_hw_forms": (
        CONV % ("c", "Convolution", "data", "out",
                "num_output: 5 kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 0"), 3),
    "deconv_stride_pad_bias": (
        CONV % ("d", "Deconvolution", "data", "out", "num_output: 4 kernel_size: 4 stride: 2 pad: 1"), 3),
    "deconv_grouped_dilated": (
        CONV % ("d", "Deconvolution", "data", "out",
                "num_output: 4 group: 2 kernel_size: 3 stride: 3 dilation: 2 bias_term: false"), 4),
    "deconv_grouped_bilinear_fcn32s": (
        CONV % ("up", "Deconvolution", "data", "out",
                "num_output: 3 group: 3 kernel_size: 64 stride: 32 bias_term: false "
                "weight_filler { type: 'bilinear' }"), 3),
    "crop_offsets_per_axis": (
        _pool("MAX", "kernel_size: 2 stride: 2", top="small")
        + 'layer { name: "out" type: "Crop" bottom: "data" bottom: "small" top: "out" '
          'crop_param { axis: 2 offset: 1 offset: 2 } }\n', 3),
    "crop_axis1_single_offset": (
        CONV % ("c", "Convolution", "data", "ref", "num_output: 2 kernel_size: 3")
        + 'layer { name: "out" type: "Crop" bottom: "data" bottom: "ref" top: "out" '
          'crop_param { axis: 1 offset: 1 } }\n', 3),
    "eltwise_sum_coeff_prod_max": (
        CONV % ("a", "Convolution", "data", "a", "num_output: 3 kernel_size: 1")
        + CONV % ("b", "Convolution", "data", "b", "num_output: 3 kernel_size: 3 pad: 1")
        + 'layer { name: "s" type: "Eltwise" bottom: "data" bottom: "a" bottom: "b" top: "s" '
          'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 } }\n'
          'layer { name: "p" type: "Eltwise" bottom: "s" bottom: "b" top: "p" eltwise_param { operation: PROD } }\n'
          'layer { name: "m" type: "Eltwise" bottom: "p" bottom: "a" bottom: "data" top: "m" '
          'eltwise_param { operation: MAX } }\n'
          'layer { name: "out" type: "Eltwise" bottom: "m" bottom: "a" top: "out" }\n', 3),
    "batchnorm_scale_inplace": (
        CONV % ("c", "Convolution", "data", "c", "num_output: 4 kernel_size: 3 pad: 1")
        + 'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: 0.001 } }\n'
          'layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }\n'
          'layer { name: "sc2" type: "Scale" bottom: "c" top: "out" }\n', 3),
    "prelu_shared_and_per_channel": (
        'layer { name: "p1" type: "PReLU" bottom: "data" top: "p1" prelu_param { channel_shared: true } }\n'
        'layer { name: "out" type: "PReLU" bottom: "p1" top: "out" }\n', 3),
    "power_sigmoid_tanh_leaky": (
        'layer { name: "pw" type: "Power" bottom: "data" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }\n'
        'layer { name: "pw2" type: "Power" bottom: "pw" top: "pw2" power_param { power: 0.5 shift: 0.25 } }\n'
        'layer { name: "sg" type: "Sigmoid" bottom: "data" top: "sg" }\n'
        'layer { name: "th" type: "TanH" bottom: "data" top: "th" }\n'
        'layer { name: "lr" type: "ReLU" bottom: "data" top: "lr" relu_param { negative_slope: 0.1 } }\n'
        'layer { name: "out" type: "Concat" bottom: "pw2" bottom: "sg" bottom: "th" bottom: "lr" top: "out" }\n', 3),
    "power_constant": (
        'layer { name: "out" type: "Power" bottom: "data" top: "out" power_param { power: 3 scale: 0 shift: 2 } }\n', 3),
    "softmax_axis1": (
        CONV % ("c", "Convolution", "data", "c", "num_output: 5 kernel_size: 1")
        + 'layer { name: "out" type: "Softmax" bottom: "c" top: "out" }\n', 3),
    "flatten_reshape": (
        CONV % ("c", "Convolution", "data", "c", "num_output: 4 kernel_size: 1")
        + 'layer { name: "r" type: "Reshape" bottom: "c" top: "r" '
          'reshape_param { shape { dim: 0 dim: 2 dim: -1 dim: 0 } } }\n'
          'layer { name: "r2" type: "Reshape" bottom: "r" top: "r2" '
          'reshape_param { axis: 1 num_axes: 1 shape { dim: 1 dim: 2 } } }\n'
          'layer { name: "f" type: "Flatten" bottom: "r2" top: "f" flatten_param { axis: 2 end_axis: 3 } }\n'
          'layer { name: "out" type: "Softmax" bottom: "f" top: "out" softmax_param { axis: 2 } }\n', 4),
    "concat_axis_and_concat_dim": (
        CONV % ("a", "Convolution", "data", "a", "num_output: 2 kernel_size: 1")
        + CONV % ("b", "Convolution", "data", "b", "num_output: 3 kernel_size: 1")
        + 'layer { name: "c1" type: "Concat" bottom: "a" bottom: "b" bottom: "data" top: "c1" }\n'
          'layer { name: "c2" type: "Concat" bottom: "c1" bottom: "c1" top: "c2" concat_param { concat_dim: 1 } }\n'
          'layer { name: "out" type: "Concat" bottom: "c2" bottom: "c2" top: "out" concat_param { axis: -1 } }\n', 3),
    "inplace_relu_dropout_chain": (
        CONV % ("c1", "Convolution", "data", "x", "num_output: 4 kernel_size: 3 pad: 1")
        + 'layer { name: "r1" type: "ReLU" bottom: "x" top: "x" }\n'
          'layer { name: "d1" type: "Dropout" bottom: "x" top: "x" }\n'
        + CONV % ("c2", "Convolution", "x", "y", "num_output: 4 kernel_size: 1")
        + 'layer { name: "r2" type: "ReLU" bottom: "y" top: "y" }\n'
        + CONV % ("c3", "Convolution", "y", "z", "num_output: 4 kernel_size: 1")
        + 'layer { name: "r3" type: "ReLU" bottom: "z" top: "z" relu_param { negative_slope: 0.2 } }\n'
          'layer { name: "out" type: "Eltwise" bottom: "x" bottom: "y" bottom: "z" top: "out" }\n', 3),
    "inner_product": (
        _pool("MAX", "global_pooling: true", top="g")
        + 'layer { name: "out" type: "InnerProduct" bottom: "g" top: "out" inner_product_param { num_output: 5 } }\n', 3),
}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_matches_caffe(caffe, tmp_path, case):
    body, channels = LAYERS[case]
    _check_against_caffe(caffe, tmp_path, body, "out", channels=channels)


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batchnorm_moving_average_factor(caffe, tmp_path, factor):
    body = ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "out" }\n')
    _check_against_caffe(caffe, tmp_path, body, "out", bn_factor=factor)


def test_layer_outputs_map_inplace_tops_to_distinct_tensors(caffe, tmp_path):
    body, channels = LAYERS["inplace_relu_dropout_chain"]
    _, path = _check_against_caffe(caffe, tmp_path, body, "out", channels=channels, sizes=[(6, 7)])
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    layers = json.loads(props["segbench_layer_outputs"])
    assert list(layers) == ["input", "c1", "r1", "d1", "c2", "r2", "c3", "r3", "out"]
    assert layers["c1"] != layers["r1"] and layers["r1"] == layers["d1"]  # Dropout is the identity
    assert layers["r1"] != layers["r3"] and layers["out"] == ["out"]
    produced = [name for node in model.graph.node for name in node.output]
    assert len(produced) == len(set(produced))
    assert props["segbench_exporter"].startswith("segbench-onnx-export")
    assert props["source_prototxt_sha256"] and props["source_weights_sha256"]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3, "height", "width"]
    assert model.opset_import[0].version == 17


# --------------------------------------------------------------------------- Interp

def _align_corners_bilinear(x, out_h, out_w):
    """Bilinear resize with corners aligned, from the definition: output pixel i samples the
    input at i * (in - 1) / (out - 1) (at 0 when out is 1), linear between the two neighbours."""
    def weights(n_in, n_out):
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            position = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            low = int(np.floor(position))
            high = min(low + 1, n_in - 1)
            matrix[i, low] += 1 - (position - low)
            matrix[i, high] += position - low
        return matrix
    rows, cols = weights(x.shape[2], out_h), weights(x.shape[3], out_w)
    return np.einsum("ih,nchw,jw->ncij", rows, x.astype(np.float64), cols)


def _interp_param(**fields):
    return message_class("InterpParameter")(**fields)


def test_interp_output_size_hand_worked():
    assert interp_output_size(33, 21, _interp_param(zoom_factor=8)) == (257, 161)
    assert interp_output_size(33, 21, _interp_param(shrink_factor=8)) == (5, 3)
    assert interp_output_size(33, 21, _interp_param(shrink_factor=2, zoom_factor=3)) == (49, 31)
    assert interp_output_size(33, 21, _interp_param(zoom_factor=2, pad_beg=-1, pad_end=-1)) == (61, 37)
    assert interp_output_size(33, 21, _interp_param(height=65, width=7)) == (65, 7)
    assert interp_output_size(33, 21, _interp_param(), like_hw=(10, 11)) == (10, 11)
    with pytest.raises(ValueError):
        interp_output_size(33, 21, _interp_param())
    with pytest.raises(ValueError):
        interp_output_size(33, 21, _interp_param(zoom_factor=2, pad_beg=1))


INTERP = {
    "zoom": ("zoom_factor: 3", None),
    "shrink": ("shrink_factor: 2", None),
    "shrink_zoom": ("shrink_factor: 2 zoom_factor: 3", None),
    "fixed": ("height: 17 width: 5", None),
    "single_row": ("height: 1 width: 6", None),
    "crop_then_zoom": ("zoom_factor: 2 pad_beg: -1 pad_end: -2", None),
    "like_second_bottom": ("", "small"),
}


@pytest.mark.parametrize("case", sorted(INTERP))
def test_interp_matches_align_corners_bilinear(tmp_path, case):
    params, like = INTERP[case]
    body = _pool("MAX", "kernel_size: 3 stride: 3", top="small") if like else ""
    bottoms = 'bottom: "data"' + (f' bottom: "{like}"' if like else "")
    body += f'layer {{ name: "out" type: "Interp" {bottoms} top: "out" interp_param {{ {params} }} }}\n'
    prototxt = tmp_path / "interp.prototxt"
    prototxt.write_text(_net_text(body))
    export_onnx(prototxt, None, tmp_path / "interp.onnx", "data", "out")
    session = _session(tmp_path / "interp.onnx")
    p = load_net(prototxt).layers[-1].param.interp_param
    rng = np.random.default_rng(2)
    for h, w in [(7, 9), (12, 5)]:
        x = rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)
        like_hw = ((h - 3) // 3 + 1 + ((h - 3) % 3 > 0), (w - 3) // 3 + 1 + ((w - 3) % 3 > 0)) if like else None
        out_h, out_w = interp_output_size(h, w, p, like_hw)
        cropped = x[:, :, -p.pad_beg:h + p.pad_end, -p.pad_beg:w + p.pad_end]
        expected = _align_corners_bilinear(cropped, out_h, out_w)
        got = session.run(["out"], {"data": x})[0]
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) < 1e-5


# --------------------------------------------------------------------------- real models

def _demo_blobs(count=3):
    from segbench.images import read_image, to_network_input
    paths = sorted((DEMO / "VOC" / "JPEGImages").glob("*.jpg"))[:count]
    return [(p.stem, to_network_input(read_image(p, "refuse"), MEAN, 1.0, "BGR")) for p in paths]


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "fcn-tiny.onnx"
    summary = export_onnx(DEMO_PROTOTXT, DEMO_WEIGHTS, path)
    return path, summary


def test_demo_model_exports_and_agrees_with_caffe(demo_onnx, caffe):
    path, summary = demo_onnx
    assert summary["input"] == "data" and summary["output"] == "score" and summary["opset"] == 17
    assert summary["ops"]["ConvTranspose"] == 1 and summary["layers"] == 8
    report = compare_caffe_onnx(DEMO_PROTOTXT, DEMO_WEIGHTS, path, _demo_blobs(), "data", "score")
    assert report["argmax_agreement"] == 1.0
    assert report["within_tolerance"] and report["first_diverging_layer"] is None
    assert report["max_abs_diff"] < 1e-3
    assert {tuple(r["shape"][2:]) for r in report["images"]}  # real sizes, whatever they are
    require_parity(report)


def test_demo_model_float16_export(demo_onnx, tmp_path):
    path16 = tmp_path / "fcn-tiny-fp16.onnx"
    summary = export_onnx(DEMO_PROTOTXT, DEMO_WEIGHTS, path16, dtype="float16")
    model = onnx.load(str(path16))
    float_inits = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)
    assert summary["dtype"] == "float16"
    _, blob = _demo_blobs(1)[0]
    ours = _session(path16).run(["score"], {"data": blob})[0]
    reference = _session(demo_onnx[0]).run(["score"], {"data": blob})[0]
    assert ours.dtype == np.float32
    assert np.mean(ours.argmax(1) == reference.argmax(1)) > 0.99
    assert np.max(np.abs(ours - reference)) < 0.05 * np.max(np.abs(reference))


def test_broken_onnx_is_reported_at_the_right_layer(demo_onnx, tmp_path):
    model = onnx.load(str(demo_onnx[0]))
    (weights,) = [i for i in model.graph.initializer if i.name == "score_fr_W"]
    values = onnx.numpy_helper.to_array(weights)
    weights.CopyFrom(onnx.numpy_helper.from_array(-values, weights.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = compare_caffe_onnx(DEMO_PROTOTXT, DEMO_WEIGHTS, broken, _demo_blobs(1), "data", "score")
    assert not report["within_tolerance"]
    assert report["first_diverging_layer"] == "score_fr"
    assert report["first_diverging_diff"] > 1e-3
    assert report["argmax_agreement"] < 0.5
    with pytest.raises(ParityError, match=r"score_fr.*") as error:
        require_parity(report)
    assert str(DEMO_PROTOTXT) in str(error.value) and "broken.onnx" in str(error.value)


def _small_fcn8s_prototxt():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import fcn8s
    finally:
        sys.path.pop(0)
    text = fcn8s.prototxt()
    # Same layout (pad 100, crop offsets 5/9/31, bias-free deconvolutions), narrow layers so that
    # pycaffe writes the weights in a blink.
    for wide, narrow in (("4096", "16"), ("512", "8"), ("256", "8"), ("128", "4"), ("64", "4")):
        text = text.replace(f"num_output: {wide} ", f"num_output: {narrow} ")
    return text.replace("dim: 500 dim: 500", "dim: 64 dim: 80")


def test_fcn8s_layout_exports_and_matches_caffe(caffe, tmp_path):
    text = _small_fcn8s_prototxt()
    assert "offset: 31" in text and "pad: 100" in text and "num_output: 16 " in text
    prototxt, weights, net = _make_model(caffe, tmp_path, text, name="fcn8s")
    path = tmp_path / "fcn8s.onnx"
    export_onnx(prototxt, weights, path)
    session = _session(path)
    rng = np.random.default_rng(3)
    for h, w in [(64, 80), (45, 71)]:
        x = rng.normal(0, 50, (1, 3, h, w)).astype(np.float32)
        reference = _caffe_forward(net, x, "score")
        _close(reference, session.run(["score"], {"data": x})[0])
        assert reference.shape == (1, 21, h, w)


def test_export_works_where_caffe_cannot_be_imported(tmp_path):
    out = tmp_path / "nocaffe.onnx"
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "caffe" or name.startswith("caffe."):
            raise ImportError("caffe is blocked for this test")
sys.meta_path.insert(0, Block())
try:
    import caffe
    raise SystemExit("caffe imported")
except ImportError:
    pass
from segbench.onnx_export import export_onnx
export_onnx({str(DEMO_PROTOTXT)!r}, {str(DEMO_WEIGHTS)!r}, {str(out)!r})
assert not any(m == "caffe" or m.startswith("caffe.") for m in sys.modules), sorted(sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok" and out.stat().st_size > 1000


# --------------------------------------------------------------------------- errors

def test_unknown_layer_type_names_layer_type_and_prototxt(tmp_path):
    prototxt = tmp_path / "odd.prototxt"
    prototxt.write_text(_net_text('layer { name: "weird" type: "FancyOp" bottom: "data" top: "out" }\n'))
    out = tmp_path / "odd.onnx"
    with pytest.raises(ExportError) as error:
        export_onnx(prototxt, None, out, "data", "out")
    message = str(error.value)
    assert "weird" in message and "FancyOp" in message and str(prototxt) in message
    assert not out.exists() and list(tmp_path.iterdir()) == [prototxt]


@pytest.mark.parametrize("body, words", [
    (_pool("STOCHASTIC", "kernel_size: 2 stride: 2"), "STOCHASTIC"),
    ('layer { name: "out" type: "Eltwise" bottom: "data" bottom: "data" top: "out" '
     'eltwise_param { operation: PROD coeff: 1 coeff: 2 } }\n', "SUM"),
    ('layer { name: "out" type: "Interp" bottom: "data" top: "out" interp_param { zoom_factor: 2 pad_beg: 1 } }\n',
     "pad_beg"),
])
def test_unsupported_parameters_are_refused(tmp_path, body, words):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(_net_text(body))
    with pytest.raises(ExportError, match=words) as error:
        export_onnx(prototxt, None, tmp_path / "net.onnx", "data", "out")
    assert "'out'" in str(error.value) and str(prototxt) in str(error.value)
    assert not (tmp_path / "net.onnx").exists()


def test_missing_blobs_are_named(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(_net_text('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'))
    with pytest.raises(ExportError, match=r"'score'.*\['data', 'r'\]"):
        export_onnx(prototxt, None, tmp_path / "net.onnx")
    with pytest.raises(ExportError, match=r"'image'.*\['data'\]"):
        export_onnx(prototxt, None, tmp_path / "net.onnx", input_blob="image", output_blob="r")


def test_v1_nets_are_refused(tmp_path):
    prototxt = tmp_path / "v1.prototxt"
    prototxt.write_text('name: "old"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                        'layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" '
                        'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    with pytest.raises(CaffeModelError, match="upgrade_net_proto_text") as error:
        export_onnx(prototxt, None, tmp_path / "v1.onnx", "data", "c")
    assert str(prototxt) in str(error.value)

    good = tmp_path / "good.prototxt"
    good.write_text(_net_text(""))
    old = message_class("NetParameter")()
    old.layers.add(name="c")
    weights = tmp_path / "v1.caffemodel"
    weights.write_bytes(old.SerializeToString())
    with pytest.raises(CaffeModelError, match="upgrade_net_proto_binary") as error:
        load_net(good, weights)
    assert str(weights) in str(error.value)


def test_weights_that_do_not_fit_are_refused(caffe, tmp_path):
    body = CONV % ("conv", "Convolution", "data", "out", "num_output: 4 kernel_size: 3")
    prototxt, weights, _ = _make_model(caffe, tmp_path, body)
    other = tmp_path / "other.prototxt"
    other.write_text(_net_text(body.replace("num_output: 4", "num_output: 5")))
    with pytest.raises(CaffeModelError) as error:
        export_onnx(other, weights, tmp_path / "x.onnx", "data", "out")
    assert "'conv'" in str(error.value) and str(weights) in str(error.value) and "[4, 3, 3, 3]" in str(error.value)
    no_bias = tmp_path / "nobias.prototxt"
    no_bias.write_text(_net_text(body.replace("kernel_size: 3", "kernel_size: 3 bias_term: false")))
    with pytest.raises(CaffeModelError, match="has 2 weight blob"):
        export_onnx(no_bias, weights, tmp_path / "x.onnx", "data", "out")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(CaffeModelError, match="nothere.prototxt: prototxt not found"):
        load_net(tmp_path / "nothere.prototxt")
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(_net_text(""))
    with pytest.raises(CaffeModelError, match="nothere.caffemodel: caffemodel not found"):
        load_net(prototxt, tmp_path / "nothere.caffemodel")
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer { name: "a" type: "ReLU" bottom: "data" top: "a" \n  oops: 3 }\n')
    with pytest.raises(CaffeModelError, match=r"bad.prototxt: not a valid Caffe prototxt: .*3:\d+") as error:
        load_net(bad)
    assert "oops" in str(error.value)


def test_phase_rules_and_net_level_inputs(tmp_path):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
                        'layer { name: "train_only" type: "Dropout" bottom: "data" top: "data" include { phase: TRAIN } }\n'
                        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" exclude { phase: TRAIN } }\n'
                        'layer { name: "s" type: "Sigmoid" bottom: "r" top: "s" exclude { phase: TEST } }\n')
    net = load_net(prototxt)
    assert net.inputs == {"data": [1, 3, 5, 5]} and [l.name for l in net.layers] == ["r"]
    export_onnx(prototxt, None, tmp_path / "net.onnx", "data", "r")
    x = np.random.default_rng(0).normal(size=(1, 3, 9, 4)).astype(np.float32)
    np.testing.assert_array_equal(_session(tmp_path / "net.onnx").run(["r"], {"data": x})[0], np.maximum(x, 0))


def test_legacy_4d_and_double_blobs_load_as_caffe_loads_them(caffe, tmp_path):
    body = CONV % ("conv", "Convolution", "data", "out", "num_output: 4 kernel_size: 3 pad: 1")
    prototxt, _, _ = _make_model(caffe, tmp_path, body)
    rng = np.random.default_rng(4)
    weight, bias = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    model = message_class("NetParameter")()
    layer = model.layer.add(name="conv", type="Convolution")
    legacy = layer.blobs.add(num=4, channels=3, height=3, width=3)
    legacy.data.extend(weight.astype(np.float32).ravel().tolist())
    doubles = layer.blobs.add(num=1, channels=1, height=1, width=4)  # Caffe's old 4-D bias shape
    doubles.double_data.extend(bias.ravel().tolist())
    weights = tmp_path / "legacy.caffemodel"
    weights.write_bytes(model.SerializeToString())
    export_onnx(prototxt, weights, tmp_path / "legacy.onnx", "data", "out")
    net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    x = rng.normal(size=(1, 3, 9, 7)).astype(np.float32)
    _close(_caffe_forward(net, x, "out"), _session(tmp_path / "legacy.onnx").run(["out"], {"data": x})[0])


def test_openvino_reads_and_compiles_dynamic_and_reshaped(demo_onnx, tmp_path):
    ov = pytest.importorskip("openvino")
    body = (_pool("AVE", "kernel_size: 3 stride: 2 pad: 1", top="pool")
            + 'layer { name: "out" type: "Interp" bottom: "pool" bottom: "data" top: "out" interp_param { } }\n')
    prototxt = tmp_path / "pool_interp.prototxt"
    prototxt.write_text(_net_text(body))
    export_onnx(prototxt, None, tmp_path / "pool_interp.onnx", "data", "out")
    core = ov.Core()
    # f32: OpenVINO's CPU plugin otherwise computes in bf16 where the CPU has it.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    x = np.random.default_rng(5).normal(0, 50, (1, 3, 13, 9)).astype(np.float32)
    for path, output in ((demo_onnx[0], "score"), (tmp_path / "pool_interp.onnx", "out")):
        reference = _session(path).run([output], {"data": x})[0]
        model = core.read_model(str(path))
        dynamic = core.compile_model(model, "CPU", config)
        _close(reference, dynamic({"data": x})[0])
        model.reshape({"data": [1, 3, 13, 9]})
        static = core.compile_model(model, "CPU", config)
        _close(reference, static({"data": x})[0])
