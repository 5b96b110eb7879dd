"""Inference backends. Each one loads a model once and runs one image at a time.

A backend class takes keyword arguments (prototxt, weights, onnx, device, input_blob, output_blob,
threads, precision, provider; each uses those it needs: Caffe and OpenCV the prototxt and weights,
ONNX Runtime and OpenVINO the ONNX file the workflow exported) and offers
`check_device(device, precision, provider)` (a static method that refuses a device, precision or
provider that the build or the machine cannot run, without touching the device); `reshape(shape) -> seconds`, which shapes the
net for (1, 3, H, W) inputs before a pass at a new shape; `forward(blob) -> (scores, seconds)`,
where `blob` is a (1, 3, H, W) float32 array, `scores` are the (C, H, W) class scores (which may be
the backend's own buffer, valid only until the next forward call) and `seconds` the time of
the forward pass alone, never of re-shaping or re-allocating the net (run_inference runs the first
pass at each new shape untimed and reports what it cost apart); `load_seconds`; and
`provenance()`, a dict naming what
ran (backend, version, module path, device, threads). Adding a backend is one
module here, one entry in BACKENDS and one in the config schema's `backend` enum.
"""

import importlib
from pathlib import Path

from .. import SegbenchError

BACKENDS = {
    "caffe": "segbench.backends.caffe_backend:CaffeBackend",
    "opencv": "segbench.backends.opencv_backend:OpenCVBackend",
    "onnxruntime": "segbench.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "segbench.backends.openvino_backend:OpenVINOBackend",
    "torch": "segbench.backends.torch_backend:TorchBackend",
}
OPTIONAL_INSTALL = {"torch": "run 'make torch' (requirements-torch.txt), which installs PyTorch into .venv"}
# Backends that run the ONNX export of a Caffe model rather than the Caffe files themselves.
ONNX_BACKENDS = ("onnxruntime", "openvino")


class BackendError(SegbenchError):
    pass


def parse_device(device):
    """'cpu' -> ('cpu', None); 'gpu:N' -> ('gpu', N)."""
    if device == "cpu":
        return "cpu", None
    kind, _, index = device.partition(":")
    if kind == "gpu" and index.isdigit():
        return "gpu", int(index)
    raise BackendError(f"device must be 'cpu' or 'gpu:N', got {device!r}")


def check_model_files(prototxt, weights):
    """Refuse missing or empty model files before a backend reads them (Caffe would abort the process)."""
    for path in (prototxt, weights):
        if not Path(path).is_file():
            raise BackendError(f"{path}: model file not found")
        if Path(path).stat().st_size == 0:
            raise BackendError(f"{path}: model file is empty")


def backend_class(name):
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        # An optional runtime that is not installed (torch: `make torch`), named before any job runs.
        raise BackendError(f"the {name} backend cannot be loaded: {error}; "
                           f"{OPTIONAL_INSTALL.get(name, 'run make setup')}") from None
    return getattr(module, class_name)


def load_backend(name, **model):
    """Load a model with the backend called `name` (a key of BACKENDS)."""
    return backend_class(name)(**model)


def check_device(name, device, precision="fp32", provider=None):
    """Raise BackendError now if backend `name` cannot run on `device` at `precision` (with
    `provider`), without touching the device."""
    backend_class(name).check_device(device, precision=precision, provider=provider)


def refuse_precision(backend, precision, allowed):
    if precision not in allowed:
        raise BackendError(f"the {backend} backend runs in {', '.join(allowed)} only, not {precision}; the "
                           f"onnxruntime and openvino backends run the model's ONNX export at other precisions")
