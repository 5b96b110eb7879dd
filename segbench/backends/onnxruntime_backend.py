"""The onnxruntime backend: an ONNX export of the Caffe model (segbench.onnx_export) through ORT.

ORT quietly runs a session on the CPU when the asked execution provider is missing or fails to
initialise, which would make a "GPU" timing a CPU one; so the provider is checked before the
session is made and again in the session itself.
"""

import time
from pathlib import Path

import numpy as np
import psutil

from .. import cpu, cuda
from ..provenance import sha256_file
from . import BackendError, parse_device

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
# The precisions each provider can run here; see check_device for the reasons behind the gaps.
PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "int8")}
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendError(f"cannot import onnxruntime ({error}); pip install onnxruntime (CPU) or "
                           f"onnxruntime-gpu (CUDA and TensorRT)") from None
    return onnxruntime


def check_onnx_file(path):
    if not Path(path).is_file():
        raise BackendError(f"{path}: ONNX model not found; export it first (segbench.onnx_export.export_onnx)")
    if Path(path).stat().st_size == 0:
        raise BackendError(f"{path}: ONNX model is empty; export it again (segbench.onnx_export.export_onnx)")


def resolve_provider(device, provider):
    """('cpu' | 'cuda' | 'tensorrt', GPU index or None) for a device and a provider setting (None: default)."""
    kind, index = parse_device(device)
    if provider is not None and provider not in PROVIDERS:
        raise BackendError(f"unknown onnxruntime provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    if kind == "cpu":
        if provider not in (None, "cpu"):
            raise BackendError(f"provider {provider!r} runs on a GPU, but device is cpu; use device: gpu:N "
                               f"with provider {provider}, or provider: cpu")
        return "cpu", None
    if provider == "cpu":
        raise BackendError(f"provider 'cpu' asked for with device {device}; use device: cpu, or provider "
                           f"cuda or tensorrt for the GPU")
    return provider or "cuda", index


class OnnxRuntimeBackend:
    name = "onnxruntime"

    @staticmethod
    def check_device(device, precision="fp32", provider=None):
        provider, index = resolve_provider(device, provider)
        if precision not in ALL_PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; use one of {', '.join(ALL_PRECISIONS)}")
        if precision not in PRECISIONS[provider]:
            why = {
                ("cpu", "fp16"): "onnxruntime's CPU provider has no fp16 convolution kernels on x86 (it "
                                 "would insert casts around fp32 ones, slower and still fp32 math)",
                ("cpu", "bf16"): "onnxruntime's CPU provider has no bf16 convolution kernels on x86",
                ("cuda", "int8"): "the CUDA provider runs a QDQ model's convolutions in float (no int8 "
                                  "kernels); use provider: tensorrt for int8 on the GPU",
                ("cuda", "bf16"): "the ONNX export has no bf16 variant; use fp16 on the GPU",
                ("tensorrt", "bf16"): "the ONNX export has no bf16 variant; use fp16 on the GPU",
            }[provider, precision]
            other = " or OpenVINO (backend: openvino), which has bf16/int8 CPU kernels" if provider == "cpu" else ""
            raise BackendError(f"precision {precision} with onnxruntime on {device} (provider {provider}) "
                               f"cannot run: {why}; use precision {' or '.join(PRECISIONS[provider])}{other}")
        ort = import_onnxruntime()
        name = PROVIDERS[provider]
        if name not in ort.get_available_providers():
            raise BackendError(
                f"device {device} with provider {provider} needs onnxruntime's {name}, which the onnxruntime "
                f"{ort.__version__} at {Path(ort.__file__).parent} lacks (it has "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu instead of onnxruntime "
                f"(with CUDA and cuDNN{' and TensorRT' if provider == 'tensorrt' else ''} libraries it was built "
                f"for), or use device: cpu")
        if provider != "cpu":
            gpus, reason = cuda.gpu_count()
            if gpus == 0:
                raise BackendError(f"device {device} asked for, but {reason}; use device: cpu")
            if index >= gpus:
                raise BackendError(f"device {device} asked for, but CUDA programs see {gpus} GPU(s) here "
                                   f"(gpu:0 to gpu:{gpus - 1})")
        return "cpu" if provider == "cpu" else "gpu"

    def __init__(self, onnx, device="cpu", input_blob="data", output_blob="score", threads=None,
                 precision="fp32", provider=None, **_):
        check_onnx_file(onnx)
        self.check_device(device, precision, provider)
        self.provider, index = resolve_provider(device, provider)
        ort = import_onnxruntime()
        self.ort, self.device, self.precision, self.threads = ort, device, precision, threads
        self.onnx = str(onnx)
        self.onnx_sha256 = sha256_file(onnx)

        options = ort.SessionOptions()
        # One image at a time through a chain of convolutions: the parallelism is inside each
        # operator (intra-op); a second pool for independent branches would only compete for cores.
        options.intra_op_num_threads = int(threads) if threads else 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.options = options
        providers = self._providers(index)
        start = time.perf_counter()
        self.session = self._session(options, providers)
        self.load_seconds = time.perf_counter() - start

        asked = PROVIDERS[self.provider]
        if self.session.get_providers()[0] != asked:
            raise BackendError(f"onnxruntime made the session for {self.onnx} with {self.session.get_providers()} "
                               f"instead of {asked} (it falls back when a provider fails to start: see its log, "
                               f"often a missing CUDA/cuDNN/TensorRT library); refusing to time it as {device}")
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if input_blob not in inputs:
            raise BackendError(f"{self.onnx}: the model has no input {input_blob!r} (inputs: {', '.join(inputs)})")
        if output_blob not in outputs:
            raise BackendError(f"{self.onnx}: the model has no output {output_blob!r} (outputs: {', '.join(outputs)})")
        self.input_blob, self.output_blob = input_blob, output_blob
        input_type = next(i.type for i in self.session.get_inputs() if i.name == input_blob)
        self.input_dtype = np.float16 if input_type == "tensor(float16)" else np.float32

        from ..quantize import metadata_from_map
        self.quantization = metadata_from_map(self.session.get_modelmeta().custom_metadata_map)
        if precision == "int8" and not self.quantization:
            raise BackendError(f"precision int8 asked for, but {self.onnx} is not a model made by "
                               f"segbench.quantize.quantize_int8 (no {'segbench.int8.*'} metadata); quantize it first")
        if precision != "int8" and self.quantization:
            raise BackendError(f"{self.onnx} is an int8 (QDQ) model but precision {precision} was asked for; "
                               f"use precision: int8, or the float export")

    def _providers(self, index):
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        if self.provider == "cuda":
            options = {"device_id": index}
            if self.precision == "fp32":
                # Ampere and later GPUs would otherwise run fp32 convolutions in TF32 (10-bit mantissa).
                options["use_tf32"] = 0
            return [("CUDAExecutionProvider", options)]
        trt = {"device_id": index, "trt_fp16_enable": self.precision == "fp16",
               "trt_int8_enable": self.precision == "int8"}
        # The CUDA provider behind it runs what TensorRT does not take (get_providers lists both).
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": index})]

    def _session(self, options, providers):
        ort = self.ort
        try:
            return ort.InferenceSession(self.onnx, options, providers=providers)
        except Exception as error:  # ORT raises its own exception types (Fail, InvalidArgument, ...)
            text = str(error)
            if self.provider == "cuda" and "use_tf32" in text:
                # An onnxruntime-gpu older than the use_tf32 option: run without it and say so.
                providers = [(providers[0][0], {k: v for k, v in providers[0][1].items() if k != "use_tf32"})]
                return self._session(options, providers)
            raise BackendError(f"{self.onnx}: onnxruntime {ort.__version__} cannot load this model: "
                               f"{text.strip().splitlines()[-1] if text.strip() else type(error).__name__}") from None

    def reshape(self, shape):
        """Nothing to do: the model has symbolic height and width, and ORT sizes its buffers inside
        the first run at a new shape (run_inference runs that pass untimed). Returns seconds (0)."""
        return 0.0

    def forward(self, blob):
        if blob.dtype != self.input_dtype:
            blob = blob.astype(self.input_dtype)  # an fp16 export takes fp16 input; cast outside the timing
        feed = {self.input_blob: blob}
        start = time.perf_counter()
        # run() returns host arrays, so on a GPU it has waited for the device.
        scores = self.session.run([self.output_blob], feed)[0]
        seconds = time.perf_counter() - start
        if scores.ndim != 4 or scores.shape[0] != 1:
            raise BackendError(f"{self.onnx}: output {self.output_blob!r} has shape {scores.shape}; "
                               f"expected (1, classes, height, width)")
        if scores.dtype != np.float32:
            scores = scores.astype(np.float32)
        # A fresh array from ORT each run, not a buffer it reuses.
        return scores[0], seconds

    def provenance(self):
        from ..quantize import saturation_risk

        provider_options = self.session.get_provider_options()
        prov = {
            "backend": self.name,
            "backend_version": self.ort.__version__,
            "backend_module": str(Path(self.ort.__file__).parent),
            "device": self.device,
            "provider": self.provider,
            "providers": self.session.get_providers(),
            "precision": self.precision,
            # ORT's default intra-op pool has one thread per physical core.
            "threads": int(self.threads) if self.threads else psutil.cpu_count(logical=False),
            "intra_op_num_threads": self.options.intra_op_num_threads,
            "inter_op_num_threads": self.options.inter_op_num_threads,
            "execution_mode": str(self.options.execution_mode).rpartition(".")[2],
            "graph_optimization_level": str(self.options.graph_optimization_level).rpartition(".")[2],
            "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256,
            "input_dtype": np.dtype(self.input_dtype).name,
            "cpu_native_precisions": cpu.native_precisions(),
        }
        if self.provider == "cuda":
            # Read back: "0" when TF32 is off; absent from an onnxruntime that has no such option.
            prov["cuda_use_tf32"] = provider_options.get("CUDAExecutionProvider", {}).get(
                "use_tf32", "option not offered by this onnxruntime")
        if self.provider == "tensorrt":
            trt = provider_options.get("TensorrtExecutionProvider", {})
            prov["trt_fp16_enable"] = trt.get("trt_fp16_enable")
            prov["trt_int8_enable"] = trt.get("trt_int8_enable")
        if self.quantization:
            prov["quantization"] = self.quantization
            risk = saturation_risk(self.quantization) if self.provider == "cpu" else None
            if risk:
                prov["int8_warning"] = risk
        return prov
