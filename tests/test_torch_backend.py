"""The PyTorch backend and segbench.torch_model, checked against the real pycaffe.

The layer cases are those of test_onnx_export (tiny nets given random weights by pycaffe
itself), computed by the torch module instead of an ONNX export and compared with Caffe's
forward at the same odd sizes. The GPU tests run only where torch sees a CUDA GPU.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segbench import cpu, cuda  # noqa: E402
from segbench.backends import BackendError  # noqa: E402
from segbench.backends import torch_backend  # noqa: E402
from segbench.backends.torch_backend import TorchBackend  # noqa: E402
from segbench.caffe_model import load_net  # noqa: E402
from segbench.caffe_layers import interp_output_size  # noqa: E402
from segbench.torch_model import TorchModelError, build_module  # noqa: E402
from test_onnx_export import (  # noqa: E402
    CONV, DEMO_PROTOTXT, DEMO_WEIGHTS, INTERP, LAYERS, POOLING, REPO, SIZES, _align_corners_bilinear, _caffe_forward,
    _close, _demo_blobs, _make_model, _net_text, _pool, _small_fcn8s_prototxt, caffe)

BF16_NATIVE = "bf16" in cpu.native_precisions()
GPU = torch.version.cuda is not None and torch.cuda.device_count() > 0


def _run(module, x, **to):
    with torch.inference_mode():
        tensor = torch.from_numpy(x)
        if to.get("memory_format") is not None:
            tensor = tensor.contiguous(memory_format=to["memory_format"])
        return module(tensor).float().contiguous().numpy()


def _check_module_against_caffe(caffe, tmp_path, body, output, channels=3, sizes=SIZES, bn_factor=2.5):
    prototxt, weights, net = _make_model(caffe, tmp_path, body, channels, bn_factor)
    module = build_module(prototxt, weights, "data", output)
    rng = np.random.default_rng(1)
    for h, w in sizes:
        x = rng.normal(0, 1, (1, channels, h, w)).astype(np.float32)
        before = x.copy()
        _close(_caffe_forward(net, x, output), _run(module, x))
        np.testing.assert_array_equal(x, before)  # the caller's input is never written to
    return module


@pytest.mark.parametrize("case", sorted(POOLING))
def test_pooling_matches_caffe_at_odd_sizes(caffe, tmp_path, case):
    _check_module_against_caffe(caffe, tmp_path, POOLING[case], "out", sizes=SIZES + [(5, 5), (10, 12)])


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_matches_caffe(caffe, tmp_path, case):
    body, channels = LAYERS[case]
    _check_module_against_caffe(caffe, tmp_path, body, "out", channels=channels)


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batchnorm_moving_average_factor(caffe, tmp_path, factor):
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "out" }\n'
    _check_module_against_caffe(caffe, tmp_path, body, "out", bn_factor=factor)


def test_inplace_relu_only_where_nothing_else_reads_the_tensor(caffe, tmp_path):
    # y is Dropout's alias of the input and c a Crop view of a: in Caffe both are blobs of
    # their own, so their in-place ReLUs must not reach data or a, which are read afterwards.
    body = ('layer { name: "d" type: "Dropout" bottom: "data" top: "y" }\n'
            'layer { name: "ry" type: "ReLU" bottom: "y" top: "y" }\n'
            + CONV % ("a", "Convolution", "data", "a", "num_output: 3 kernel_size: 1")
            + 'layer { name: "db" type: "Dropout" bottom: "a" top: "b" }\n'
              'layer { name: "rb" type: "ReLU" bottom: "b" top: "b" }\n'
              'layer { name: "c" type: "Crop" bottom: "a" bottom: "data" top: "c" crop_param { axis: 2 } }\n'
              'layer { name: "rc" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: 0.5 } }\n'
              'layer { name: "out" type: "Eltwise" bottom: "data" bottom: "y" bottom: "a" bottom: "b" bottom: "c" '
              'top: "out" }\n')
    module = _check_module_against_caffe(caffe, tmp_path, body, "out")
    assert {n: s.inplace for n, s in zip(module.layer_names, module.steps) if hasattr(s, "inplace")} == \
        {"ry": False, "rb": False, "rc": False}

    chain, channels = LAYERS["inplace_relu_dropout_chain"]
    module = build_module(*_make_model(caffe, tmp_path, chain, channels, name="chain")[:2], "data", "out")
    assert [s.inplace for s in module.steps if hasattr(s, "inplace")] == [True, True, True]


@pytest.mark.parametrize("case", sorted(INTERP))
def test_interp_matches_align_corners_bilinear(tmp_path, case):
    params, like = INTERP[case]
    body = _pool("MAX", "kernel_size: 3 stride: 3", top="small") if like else ""
    bottoms = 'bottom: "data"' + (f' bottom: "{like}"' if like else "")
    body += f'layer {{ name: "out" type: "Interp" {bottoms} top: "out" interp_param {{ {params} }} }}\n'
    prototxt = tmp_path / "interp.prototxt"
    prototxt.write_text(_net_text(body))
    module = build_module(prototxt, None, "data", "out")
    p = load_net(prototxt).layers[-1].param.interp_param
    rng = np.random.default_rng(2)
    for h, w in [(7, 9), (12, 5)]:
        x = rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)
        like_hw = (-(-(h - 3) // 3) + 1, -(-(w - 3) // 3) + 1) if like else None
        out_h, out_w = interp_output_size(h, w, p, like_hw)
        cropped = x[:, :, -p.pad_beg:h + p.pad_end, -p.pad_beg:w + p.pad_end]
        expected = _align_corners_bilinear(cropped, out_h, out_w)
        got = _run(module, x)
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) < 1e-5


def test_fcn8s_layout_matches_caffe_in_both_memory_formats(caffe, tmp_path):
    prototxt, weights, net = _make_model(caffe, tmp_path, _small_fcn8s_prototxt(), name="fcn8s")
    module = build_module(prototxt, weights)
    channels_last = build_module(prototxt, weights).to(memory_format=torch.channels_last)
    assert channels_last.steps[0].weight.is_contiguous(memory_format=torch.channels_last)
    rng = np.random.default_rng(3)
    for h, w in [(64, 80), (45, 71)]:
        x = rng.normal(0, 50, (1, 3, h, w)).astype(np.float32)
        reference = _caffe_forward(net, x, "score")
        assert reference.shape == (1, 21, h, w)
        _close(reference, _run(module, x))
        _close(reference, _run(channels_last, x, memory_format=torch.channels_last))


# --------------------------------------------------------------------------- the backend

@pytest.fixture(scope="module")
def demo_caffe_scores(caffe):
    net = caffe.Net(str(DEMO_PROTOTXT), caffe.TEST, weights=str(DEMO_WEIGHTS))
    return [(blob, _caffe_forward(net, blob, "score")[0]) for _, blob in _demo_blobs()]


def _argmax_agreement(a, b):
    return float(np.mean(a.argmax(0) == b.argmax(0)))


@pytest.mark.parametrize("memory_format", [None, "contiguous", "channels_last"])
def test_demo_model_through_the_backend_agrees_with_caffe(demo_caffe_scores, memory_format):
    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, threads=1, memory_format=memory_format)
    assert backend.load_seconds > 0
    for blob, reference in demo_caffe_scores:
        assert backend.reshape(blob.shape) == 0.0
        scores, seconds = backend.forward(blob)
        assert scores.dtype == np.float32 and scores.shape == reference.shape and seconds > 0
        _close(reference, scores)
        assert _argmax_agreement(reference, scores) >= 0.999


@pytest.mark.skipif(not BF16_NATIVE, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_on_cpu_runs_in_bf16_and_agrees_with_fp32(demo_caffe_scores):
    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, precision="bf16")
    buffers = [b for b in backend.module.buffers() if b.is_floating_point()]
    assert buffers and all(b.dtype == torch.bfloat16 for b in buffers)
    seen = []
    hooks = [step.register_forward_hook(lambda m, i, out: seen.extend(t.dtype for t in out))
             for step in backend.module.steps]
    try:
        for blob, reference in demo_caffe_scores:
            scores, _ = backend.forward(blob)
            assert scores.dtype == np.float32
            assert _argmax_agreement(reference, scores) >= 0.98
            assert np.max(np.abs(scores - reference)) > 0  # not quietly fp32
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    prov = backend.provenance()
    assert prov["dtype"] == "bfloat16" and prov["precision"] == "bf16" and prov["mkldnn_bf16_supported"]


def test_provenance_names_what_ran():
    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, threads=1)
    prov = backend.provenance()
    assert prov["backend"] == "torch" and prov["backend_version"] == torch.__version__
    assert prov["device"] == "cpu" and prov["precision"] == "fp32" and prov["dtype"] == "float32"
    assert prov["memory_format"] == torch_backend.MEMORY_FORMATS["cpu", "fp32"]
    assert prov["threads"] == 1 and prov["cudnn_benchmark"] is False
    assert prov["cudnn_allow_tf32"] is False and prov["cuda_matmul_allow_tf32"] is False
    assert prov["float32_matmul_precision"] == "highest"
    assert prov["tf32_flags"] == {"cuda_matmul": "ieee", "cudnn_conv": "none"}  # torch's newer API: TF32 off
    assert prov["prototxt"] == str(DEMO_PROTOTXT) and prov["weights"] == str(DEMO_WEIGHTS)
    assert "torch" in prov["backend_module"] and "torch_cuda_version" in prov


def test_tf32_is_switched_on_only_for_tf32_runs():
    """The math switches are global to the process: a tf32 run turns TF32 on for cuBLAS and cuDNN (as torch's
    newer API reports it too), and the next fp32 run turns it off again."""
    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, threads=1)
    try:
        backend.precision = "tf32"  # refused on a CPU by the constructor; the switches themselves are device-free
        backend._set_math_flags()
        prov = backend.provenance()
        assert prov["cudnn_allow_tf32"] and prov["cuda_matmul_allow_tf32"]
        assert prov["float32_matmul_precision"] == "high"
        assert prov["tf32_flags"] == {"cuda_matmul": "tf32", "cudnn_conv": "tf32"}
    finally:
        backend.precision = "fp32"
        backend._set_math_flags()
    assert backend.provenance()["tf32_flags"] == {"cuda_matmul": "ieee", "cudnn_conv": "none"}


# --------------------------------------------------------------------------- refusals

def test_gpu_is_refused_by_a_cpu_build_of_torch(monkeypatch):
    if torch.version.cuda is None:
        with pytest.raises(BackendError, match=r"CPU build.*install a CUDA build of torch"):
            TorchBackend.check_device("gpu:0")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(BackendError, match="sees no CUDA GPU"):
        TorchBackend.check_device("gpu:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BackendError, match=r"sees 1 CUDA GPU.*gpu:0 to gpu:0"):
        TorchBackend.check_device("gpu:1")
    monkeypatch.setattr(cuda, "compute_capability", lambda index: (7, 5))
    for precision in ("tf32", "bf16"):
        with pytest.raises(BackendError, match="compute capability 8.0.*7.5"):
            TorchBackend.check_device("gpu:0", precision)
    assert TorchBackend.check_device("gpu:0", "fp16") == "gpu"


@pytest.mark.parametrize("precision, words", [("tf32", "GPU tensor-core"), ("fp16", "emulated"),
                                              ("int8", "unknown precision")])
def test_cpu_precisions_refused(precision, words):
    with pytest.raises(BackendError, match=words):
        TorchBackend.check_device("cpu", precision)


def test_bf16_refused_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(BackendError, match="no bf16 instructions"):
        TorchBackend.check_device("cpu", "bf16")


def test_provider_refused():
    with pytest.raises(BackendError, match="onnxruntime setting"):
        TorchBackend.check_device("cpu", provider="cuda")


def test_unknown_layer_type_is_refused_at_build_time(tmp_path):
    prototxt = tmp_path / "odd.prototxt"
    prototxt.write_text(_net_text('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
                                  'layer { name: "weird" type: "FancyOp" bottom: "r" top: "out" }\n'))
    with pytest.raises(TorchModelError) as error:
        build_module(prototxt, None, "data", "out")
    message = str(error.value)
    assert "'weird'" in message and "FancyOp" in message and str(prototxt) in message


@pytest.mark.parametrize("body, words", [
    (_pool("STOCHASTIC", "kernel_size: 2 stride: 2"), "STOCHASTIC"),
    ('layer { name: "out" type: "Eltwise" bottom: "data" bottom: "data" top: "out" '
     'eltwise_param { operation: PROD coeff: 1 coeff: 2 } }\n', "SUM"),
    ('layer { name: "out" type: "Interp" bottom: "data" top: "out" interp_param { zoom_factor: 2 pad_beg: 1 } }\n',
     "pad_beg"),
    ('layer { name: "out" type: "BatchNorm" bottom: "data" top: "out" '
     'batch_norm_param { use_global_stats: false } }\n', "use_global_stats"),
])
def test_unsupported_parameters_are_refused_at_build_time(tmp_path, body, words):
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(_net_text(body))
    with pytest.raises(TorchModelError, match=words) as error:
        build_module(prototxt, None, "data", "out")
    assert "'out'" in str(error.value) and str(prototxt) in str(error.value)


def test_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "nothere.caffemodel"
    with pytest.raises(BackendError, match=f"{missing}: model file not found"):
        TorchBackend(prototxt=DEMO_PROTOTXT, weights=missing)


def test_works_where_caffe_cannot_be_imported():
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "caffe" or name.startswith("caffe."):
            raise ImportError("caffe is blocked for this test")
sys.meta_path.insert(0, Block())
import numpy as np
from segbench.backends.torch_backend import TorchBackend
backend = TorchBackend(prototxt={str(DEMO_PROTOTXT)!r}, weights={str(DEMO_WEIGHTS)!r}, threads=1)
scores, _ = backend.forward(np.zeros((1, 3, 37, 45), np.float32))
assert scores.shape == (21, 37, 45), scores.shape
assert not any(m == "caffe" or m.startswith("caffe.") for m in sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------- GPU (where there is one)

@pytest.mark.skipif(not GPU, reason="torch sees no CUDA GPU here")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_agrees_with_caffe(demo_caffe_scores, precision):
    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, device="gpu:0", precision=precision)
    for blob, reference in demo_caffe_scores:
        backend.forward(blob)  # the untimed first pass, where cuDNN autotunes
        scores, seconds = backend.forward(blob)
        assert scores.dtype == np.float32 and seconds > 0
        if precision == "fp32":
            _close(reference, scores)
        assert _argmax_agreement(reference, scores) >= (0.999 if precision == "fp32" else 0.98)
    prov = backend.provenance()
    assert prov["cudnn_benchmark"] is True and prov["gpu_memory_peak_mb"] > 0 and prov["gpu_name"]
    assert prov["cudnn_allow_tf32"] is False or precision == "tf32"


@pytest.mark.parametrize("network_hw", [None, (160, 160), (320, 288)])
def test_classes_taken_where_the_scores_are_match_the_hosts(network_hw):
    """forward_classes (used on GPUs: resize and argmax on the device, only the class map copied
    back) gives predict()'s host path: Pillow's bilinear resize of the scores, then the argmax.
    Here on the CPU, with the scores at the photo's size, grown (160x160) and shrunk (320x288)."""
    from segbench import images, steps

    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, threads=1)
    assert not backend.classes_on_device  # the CPU keeps the host path
    model = {"prototxt": str(DEMO_PROTOTXT), "weights": str(DEMO_WEIGHTS), "output_blob": "score"}
    same = total = 0
    for name in ("demo_000", "demo_003", "demo_007"):
        rgb = images.read_image(REPO / "resources" / "demo" / "VOC" / "JPEGImages" / f"{name}.jpg")
        source_hw = rgb.shape[:2]
        fed = rgb if network_hw is None else images.resize_image(rgb, network_hw)
        blob = images.to_network_input(fed, [104.00698793, 116.66876762, 122.67891434], 1.0, "BGR")
        host, _ = steps.predict(backend, blob, source_hw, model, 21, name)
        device, seconds, channels, non_finite = backend.forward_classes(blob, source_hw)
        assert device.dtype == np.uint8 and device.shape == host.shape == source_hw
        assert channels == 21 and non_finite == 0 and seconds > 0
        same, total = same + int((device == host).sum()), total + host.size
    assert same / total >= 0.9995, same / total


def test_predict_takes_device_classes_and_still_refuses_bad_outputs(monkeypatch):
    from segbench import steps

    backend = TorchBackend(prototxt=DEMO_PROTOTXT, weights=DEMO_WEIGHTS, threads=1)
    monkeypatch.setattr(TorchBackend, "classes_on_device", property(lambda self: True))
    model = {"prototxt": str(DEMO_PROTOTXT), "weights": str(DEMO_WEIGHTS), "output_blob": "score"}
    blob = np.zeros((1, 3, 40, 48), np.float32)
    classes, _ = steps.predict(backend, blob, (40, 48), model, 21, "x")
    assert classes.shape == (40, 48)
    with pytest.raises(steps.ModelOutputError, match="21 channels .* dataset.num_classes is 19"):
        steps.predict(backend, blob, (40, 48), model, 19, "x")
    # every score of 21 classes x 40 x 48
    with pytest.raises(steps.ModelOutputError, match="x: the model .* gave 40320 NaN or infinite"):
        steps.predict(backend, np.full((1, 3, 40, 48), np.nan, np.float32), (40, 48), model, 21, "x")


def test_inference_job_with_classes_on_the_device_writes_the_same_predictions(tmp_path, monkeypatch):
    """The GPU path of an inference job (classes from forward_classes, PNGs written by a thread while
    the next pass runs), here on the CPU: the same prediction files as the host path, every one."""
    import json

    from segbench import steps

    ids = ["demo_000", "demo_001", "demo_002", "demo_005"]
    photos = [REPO / "resources" / "demo" / "VOC" / "JPEGImages" / f"{i}.jpg" for i in ids]
    steps.prepare_inputs(ids, photos, tmp_path / "inputs.npz", None)
    model = {"prototxt": str(DEMO_PROTOTXT), "weights": str(DEMO_WEIGHTS), "mean": [104.00698793, 116.66876762,
             122.67891434], "scale": 1.0, "channel_order": "BGR", "input_blob": "data", "output_blob": "score"}

    def job(folder):
        pngs = [tmp_path / folder / f"{i}.png" for i in ids]
        steps.run_inference(ids, [tmp_path / "inputs.npz"], pngs, tmp_path / folder / "shard.json", model, "torch",
                            "cpu", 1, threads=1, num_classes=21)
        return [p.read_bytes() for p in pngs], json.loads((tmp_path / folder / "shard.json").read_text())

    host, _ = job("host")
    monkeypatch.setattr(TorchBackend, "classes_on_device", property(lambda self: True))
    device, shard = job("device")
    assert device == host
    assert [r["id"] for r in shard["images"]] == ids and all(r["forward_s"] > 0 for r in shard["images"])
