"""The OpenVINO backend: an ONNX export of the Caffe model on OpenVINO's CPU plugin.

OpenVINO treats INFERENCE_PRECISION_HINT as a wish: asked for f16 on a CPU without f16
arithmetic it quietly takes bf16 (or f32), and it keeps some layers in f32 whatever the hint. So
after each compile the hint is read back and the precision each convolution actually runs in is
counted from the compiled (runtime) model; a run that would not be what its label says is refused.
"""

import collections
import time
from pathlib import Path

import numpy as np

from .. import cpu
from . import BackendError, parse_device
from ..provenance import sha256_file
from .onnxruntime_backend import check_onnx_file

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# Element types as the compiled model reports them, per precision asked for.
READ_BACK = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# The runtime precisions of convolutions that show a precision really ran.
CONV_PRECISIONS = {"bf16": ("bf16",), "fp16": ("f16",), "int8": ("u8", "i8")}
CONV_LAYERS = ("Convolution", "Deconvolution", "FullyConnected")
PROPERTIES = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
              "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def import_openvino():
    try:
        import openvino
    except ImportError as error:
        raise BackendError(f"cannot import openvino ({error}); pip install openvino") from None
    return openvino


def _element_type(value):
    """'f32', 'bf16', ... from an ov.Type (whose str() differs between OpenVINO versions)."""
    name = getattr(value, "get_type_name", None)
    return name() if name else str(value)


class OpenVINOBackend:
    name = "openvino"

    @staticmethod
    def check_device(device, precision="fp32", provider=None):
        kind, _ = parse_device(device)
        if kind == "gpu":
            raise BackendError(f"device {device} asked for, but OpenVINO's GPU plugin runs on Intel GPUs only, not "
                               f"on the NVIDIA GPUs that gpu:N means here; use device: cpu with backend openvino, "
                               f"or backend onnxruntime (provider cuda or tensorrt) for the GPU")
        if provider not in (None, "cpu"):
            raise BackendError(f"provider {provider!r} is an onnxruntime setting; OpenVINO runs on its CPU plugin "
                               f"(leave provider unset, or use backend: onnxruntime)")
        if precision not in HINTS:
            raise BackendError(f"unknown precision {precision!r}; use one of {', '.join(HINTS)}")
        native = cpu.native_precisions()
        model = cpu.cpu_model_name()
        if precision == "bf16" and "bf16" not in native:
            raise BackendError(f"precision bf16 asked for, but this CPU ({model}) has no bf16 instructions "
                               f"(neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo flags): OpenVINO would run "
                               f"f32 or emulate bf16, and the timing would not be bf16's; use precision fp32 or "
                               f"int8, or a CPU with AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids)")
        if precision == "fp16" and "fp16" not in native:
            raise BackendError(f"precision fp16 asked for, but this CPU ({model}) has no fp16 arithmetic (neither "
                               f"avx512_fp16 nor amx_fp16 in /proc/cpuinfo flags), and OpenVINO's CPU plugin "
                               f"computes f16 only there (elsewhere it silently takes bf16 or f32); use "
                               f"precision bf16{' (this CPU has it)' if 'bf16' in native else ''}, fp32 or int8")
        return kind

    def __init__(self, onnx, device="cpu", input_blob="data", output_blob="score", threads=None,
                 precision="fp32", provider=None, **_):
        check_onnx_file(onnx)
        self.check_device(device, precision, provider)
        ov = import_openvino()
        self.ov, self.device, self.precision, self.threads = ov, device, precision, threads
        self.onnx = str(onnx)
        self.onnx_sha256 = sha256_file(onnx)
        self.quantization = {}
        if precision == "int8":
            from ..quantize import quantization_metadata
            self.quantization = quantization_metadata(onnx)
            if not self.quantization:
                raise BackendError(f"precision int8 asked for, but {self.onnx} is not a model made by "
                                   f"segbench.quantize.quantize_int8 (no segbench.int8.* metadata); quantize it first")

        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": HINTS[precision]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.core = ov.Core()
        start = time.perf_counter()
        try:
            self.model = self.core.read_model(self.onnx)
        except RuntimeError as error:
            raise BackendError(f"{self.onnx}: OpenVINO {ov.get_version()} cannot read this model: "
                               f"{_last_line(error)}") from None
        self._ports(input_blob, output_blob)
        if precision != "int8" and any(op.get_type_name() == "FakeQuantize" for op in self.model.get_ordered_ops()):
            raise BackendError(f"{self.onnx} is an int8 (QDQ) model but precision {precision} was asked for; "
                               f"use precision: int8, or the float export")
        self._compile()
        self.load_seconds = time.perf_counter() - start
        self.shape = None  # dynamic until the first reshape

    def _ports(self, input_blob, output_blob):
        inputs = [name for port in self.model.inputs for name in port.get_names()]
        outputs = [name for port in self.model.outputs for name in port.get_names()]
        if input_blob not in inputs:
            raise BackendError(f"{self.onnx}: the model has no input {input_blob!r} (inputs: {', '.join(inputs)})")
        if output_blob not in outputs:
            raise BackendError(f"{self.onnx}: the model has no output {output_blob!r} (outputs: {', '.join(outputs)})")
        self.input_blob, self.output_blob = input_blob, output_blob

    def _compile(self):
        self.request = None  # free the previous shape's buffers before compiling the next
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self.output_port = self.compiled.output(self.output_blob)
        self._check_precision()

    def _check_precision(self):
        hint = _element_type(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if hint != READ_BACK[self.precision]:
            raise BackendError(f"precision {self.precision} asked for (INFERENCE_PRECISION_HINT "
                               f"{HINTS[self.precision]}), but OpenVINO {self.ov.get_version()} compiled "
                               f"{self.onnx} with {hint} on this CPU ({cpu.cpu_model_name()}); use another precision")
        self.runtime_precisions = runtime_precisions(self.compiled)
        wanted = CONV_PRECISIONS.get(self.precision)
        if wanted:
            ran = {p for layer in self.runtime_precisions.values() for p in layer}
            if not ran.intersection(wanted):
                raise BackendError(f"precision {self.precision} asked for, but none of the convolutions of "
                                   f"{self.onnx} runs in {'/'.join(wanted)} in the compiled model "
                                   f"({self.runtime_precisions}); the timing would not be {self.precision}'s")

    def reshape(self, shape):
        """Make the model static at `shape` (1, 3, H, W) and compile it for that shape (the CPU plugin's
        fastest kernels need static shapes; only the current shape is kept). Returns seconds."""
        start = time.perf_counter()
        self.model.reshape({self.input_blob: list(shape)})
        self._compile()
        self.shape = tuple(shape)
        return time.perf_counter() - start

    def forward(self, blob):
        if self.shape != blob.shape:
            self.reshape(blob.shape)
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        # Shares the caller's array (no copy), set before the clock starts: only inference is timed.
        self.request.set_tensor(self.input_blob, self.ov.Tensor(blob, shared_memory=True))
        start = time.perf_counter()
        self.request.infer()
        seconds = time.perf_counter() - start
        scores = self.request.get_tensor(self.output_port).data
        if scores.ndim != 4 or scores.shape[0] != 1:
            raise BackendError(f"{self.onnx}: output {self.output_blob!r} has shape {scores.shape}; "
                               f"expected (1, classes, height, width)")
        # A view of the infer request's output buffer, not a copy: the next forward() overwrites it
        # and the next reshape() frees it, and predict() is done with it by then.
        return scores[0], seconds

    def provenance(self):
        from ..quantize import saturation_risk

        read_back = {}
        for name in PROPERTIES:
            try:
                value = self.compiled.get_property(name)
            except RuntimeError:  # a property this OpenVINO version lacks
                continue
            read_back[name] = _element_type(value) if name == "INFERENCE_PRECISION_HINT" else str(value)
        prov = {
            "backend": self.name,
            # The release (as pip names it) for the tables; the full build string beside it.
            "backend_version": _release(self.ov),
            "backend_build": self.ov.get_version(),
            "backend_module": str(Path(self.ov.__file__).parent),
            "device": self.device,
            "ov_device": "CPU",
            "ov_device_name": self.core.get_property("CPU", "FULL_DEVICE_NAME"),
            "precision": self.precision,
            "inference_precision": read_back.get("INFERENCE_PRECISION_HINT"),
            "threads": int(read_back["INFERENCE_NUM_THREADS"]) if "INFERENCE_NUM_THREADS" in read_back
            else self.threads,
            "streams": read_back.get("NUM_STREAMS"),
            "ov_properties": read_back,
            "runtime_precisions": self.runtime_precisions,
            "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256,
            "cpu_native_precisions": cpu.native_precisions(),
        }
        if self.quantization:
            prov["quantization"] = self.quantization
            risk = saturation_risk(self.quantization)
            if risk:
                prov["int8_warning"] = risk
        return prov


def runtime_precisions(compiled):
    """{layer type: {precision: count}} of the convolution-like layers of a compiled model, as they run."""
    counts = collections.defaultdict(collections.Counter)
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in CONV_LAYERS and "runtimePrecision" in info:
            counts[layer][info["runtimePrecision"].astype(str)] += 1
    return {layer: dict(c) for layer, c in counts.items()}


def _last_line(error):
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _release(ov):
    try:
        import importlib.metadata

        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return ov.get_version().split("-")[0]
