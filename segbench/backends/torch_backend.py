"""The PyTorch backend: the Caffe model computed by segbench.torch_model, on the CPU or a CUDA GPU.

No pycaffe and no ONNX: the prototxt and caffemodel are read by segbench.caffe_model and each
layer runs as torch.nn.functional calls with Caffe's arithmetic, in eager mode.

Precisions: fp32 is IEEE fp32 everywhere (TF32 switched off for cuDNN and matmuls, which
PyTorch would otherwise allow on Ampere and later for convolutions); tf32 is fp32 storage
with TF32 tensor-core math (GPU, compute capability 8.0+); fp16 and bf16 cast the module and
the input to that dtype (not autocast: every layer, pooling and upsampling included, runs in
it), and the scores are cast back to float32 after the clock stops. The process-wide flags
(TF32, cuDNN benchmark, float32 matmul precision, threads) are set when the backend is made
and read back into the provenance.

Timing: forward() times the module's pass alone. On a GPU, torch.cuda.synchronize() runs
before the clock starts and before it stops (kernels are asynchronous), the input is copied
to the device before the clock starts, and the scores are cast to float32 and copied to the
host after it stops: the figure is the device's compute time for the pass, not PCIe
transfers. On the CPU every op has finished when it returns, so perf_counter at both ends.
cuDNN autotuning (cudnn.benchmark) runs at the first pass at each new input shape, which
run_inference makes untimed and reports as reshape_s.
"""

import os
import time
from pathlib import Path

import numpy as np

from .. import cpu, cuda
from . import BackendError, check_model_files, parse_device

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Memory format per (device kind, precision). On the GPU, cuDNN's tensor-core kernels work in
# NHWC: channels_last saves the layout transposes around every convolution at reduced precision.
# fp32 stays NCHW there (no tensor cores, and cuDNN's fp32 kernels are NCHW-first).
# On the CPU, channels_last was faster for both fp32 and bf16 (FCN-8s at 500x500, 2 threads, a
# Zen 4 with avx512_bf16): oneDNN then reorders NHWC activations to its blocked layout and back
# more cheaply than NCHW ones, and max pooling has a vectorised NHWC kernel (about 4x faster
# than NCHW's). Medians of 5 passes, interleaved, after 2 warm-up (torch 2.13, oneDNN 3.12):
# fp32 2.09 s channels_last vs 2.62 s contiguous, bf16 1.04 s vs 1.24 s. The layout changes
# only the order in which oneDNN sums, not what it computes.
MEMORY_FORMATS = {
    ("gpu", "fp32"): "contiguous",
    ("gpu", "tf32"): "channels_last",
    ("gpu", "fp16"): "channels_last",
    ("gpu", "bf16"): "channels_last",
    ("cpu", "fp32"): "channels_last",
    ("cpu", "bf16"): "channels_last",
}


def import_torch():
    try:
        import torch
    except ImportError as error:
        raise BackendError(f"cannot import torch ({error}); run 'make torch' (requirements-torch.txt), which "
                           f"installs PyTorch into .venv") from None
    return torch


def _refuse_capability(device, precision, capability):
    if capability is not None and capability < (8, 0):
        raise BackendError(f"precision {precision} on {device} needs a GPU of compute capability 8.0 or later "
                           f"(Ampere, Hopper), this one is {capability[0]}.{capability[1]}; use precision "
                           f"{'fp16' if precision == 'bf16' else 'fp32'}")


class TorchBackend:
    name = "torch"

    @staticmethod
    def check_device(device, precision="fp32", provider=None):
        kind, index = parse_device(device)
        if provider is not None:
            raise BackendError(f"provider {provider!r} is an onnxruntime setting; the torch backend takes none "
                               f"(leave provider unset)")
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} for the torch backend; use one of "
                               f"{', '.join(PRECISIONS)}")
        torch = import_torch()
        if kind == "cpu":
            if precision == "tf32":
                raise BackendError("precision tf32 is a GPU tensor-core mode (Ampere and later); on the CPU use "
                                   "precision fp32 or bf16")
            if precision == "fp16":
                raise BackendError("precision fp16 with the torch backend on the CPU: PyTorch's CPU fp16 "
                                   "convolutions are emulated (converted to fp32 and back, slower than fp32), so "
                                   "the timing would not be fp16's; use fp32 or bf16 on the CPU, or fp16 on a GPU")
            if precision == "bf16" and "bf16" not in cpu.native_precisions():
                raise BackendError(f"precision bf16 asked for, but this CPU ({cpu.cpu_model_name()}) has no bf16 "
                                   f"instructions (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo flags): "
                                   f"oneDNN would emulate bf16, slower than fp32; use precision fp32, or a CPU with "
                                   f"AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids)")
            return kind
        where = Path(torch.__file__).parent
        if torch.version.cuda is None:
            raise BackendError(f"device {device} asked for, but the torch {torch.__version__} at {where} is a CPU "
                               f"build (torch.version.cuda is None); install a CUDA build of torch that the "
                               f"driver supports (PyPI's torch wheel is one; or pip install torch --index-url "
                               f"https://download.pytorch.org/whl/cuXXX for CUDA XX.X), or use device: cpu")
        # device_count() asks NVML, not the CUDA runtime: no CUDA context, so a later fork still works.
        gpus = torch.cuda.device_count()
        if gpus == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "no NVIDIA driver or GPU"
            raise BackendError(f"device {device} asked for, but torch sees no CUDA GPU here "
                               f"(torch.cuda.device_count() is 0: {why}); use device: cpu")
        if index >= gpus:
            raise BackendError(f"device {device} asked for, but torch sees {gpus} CUDA GPU(s) here "
                               f"(gpu:0 to gpu:{gpus - 1})")
        if precision in ("tf32", "bf16"):
            _refuse_capability(device, precision, cuda.compute_capability(index))
        return kind

    def __init__(self, prototxt, weights, onnx=None, device="cpu", input_blob="data", output_blob="score",
                 threads=None, precision="fp32", provider=None, memory_format=None, **_):
        """`memory_format`: "contiguous" or "channels_last" to override MEMORY_FORMATS (for measuring)."""
        check_model_files(prototxt, weights)
        kind = self.check_device(device, precision, provider)
        torch = import_torch()
        from ..torch_model import build_module

        self.torch, self.kind, self.device, self.precision = torch, kind, device, precision
        self.prototxt, self.weights = str(prototxt), str(weights)
        self.input_blob, self.output_blob = input_blob, output_blob
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = threads
        self.dtype = getattr(torch, DTYPES[precision])
        self.memory_format = memory_format or MEMORY_FORMATS[kind, precision]
        if self.memory_format not in ("contiguous", "channels_last"):
            raise BackendError(f"memory_format must be 'contiguous' or 'channels_last', got {memory_format!r}")
        self._set_math_flags()

        if kind == "gpu":
            if not torch.cuda.is_available():
                raise BackendError(f"device {device} asked for, but torch {torch.__version__} cannot use CUDA here "
                                   f"(torch.cuda.is_available() is false: driver too old for its CUDA "
                                   f"{torch.version.cuda}?); use device: cpu")
            self.torch_device = torch.device("cuda", parse_device(device)[1])
            torch.cuda.set_device(self.torch_device)
            if precision in ("tf32", "bf16"):
                _refuse_capability(device, precision, torch.cuda.get_device_capability(self.torch_device))
            torch.cuda.reset_peak_memory_stats(self.torch_device)
        else:
            self.torch_device = torch.device("cpu")

        start = time.perf_counter()
        module = build_module(prototxt, weights, input_blob, output_blob)
        module = module.to(self.torch_device, self.dtype)
        if self.memory_format == "channels_last":
            module = module.to(memory_format=torch.channels_last)
        self.module = module.eval()
        if kind == "gpu":
            torch.cuda.synchronize(self.torch_device)
        self.load_seconds = time.perf_counter() - start

    def _set_math_flags(self):
        torch = self.torch
        tf32 = self.precision == "tf32"
        # Global switches: one backend per process, so they are set (not restored) here and read back
        # into the provenance. "highest" keeps float32 matmuls in fp32 on any device.
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.benchmark = self.kind == "gpu"

    def reshape(self, shape):
        """Nothing to re-allocate in eager PyTorch: returns 0.0. The caller's untimed first pass at
        each new shape covers the caching allocator's growth and cuDNN's autotuning."""
        return 0.0

    def _input(self, blob):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))
        x = x.to(self.torch_device, self.dtype, non_blocking=False)
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _timed_pass(self, blob):
        """The output tensor (on the device) and the seconds of the pass alone."""
        torch = self.torch
        x = self._input(blob)
        if self.kind == "gpu":
            torch.cuda.synchronize(self.torch_device)
        start = time.perf_counter()
        out = self.module(x)
        if self.kind == "gpu":
            torch.cuda.synchronize(self.torch_device)
        seconds = time.perf_counter() - start
        if out.dim() != 4 or out.shape[0] != 1:
            raise BackendError(f"{self.prototxt}: output blob {self.output_blob!r} has shape "
                               f"{tuple(out.shape)}; expected (1, classes, height, width)")
        return out, seconds

    def forward(self, blob):
        torch = self.torch
        with torch.inference_mode():
            out, seconds = self._timed_pass(blob)
            # After the clock: back to float32, NCHW and the host.
            scores = out[0].to(torch.float32).contiguous().cpu().numpy()
        return scores, seconds

    @property
    def classes_on_device(self):
        """Whether segbench.steps.predict should take the classes from forward_classes: on a GPU,
        where the host's argmax over the scores and their copy back would cost more than the pass."""
        return self.kind == "gpu"

    def forward_classes(self, blob, size_hw):
        """(classes (H, W) uint8 at size_hw, seconds of the pass, channels, non-finite score count):
        what predict() computes on the host from forward()'s scores (bilinear resize of the scores,
        the same filter as Pillow's, then the lowest class among equal maxima), computed where the
        scores are, so that only the class map comes back."""
        torch = self.torch
        with torch.inference_mode():
            out, seconds = self._timed_pass(blob)
            scores = out.to(torch.float32)
            non_finite = int((~torch.isfinite(scores)).sum())
            if tuple(scores.shape[2:]) != tuple(size_hw):
                # antialias reproduces Pillow's BILINEAR when shrinking (it widens the filter);
                # growing is plain half-pixel bilinear in both.
                scores = torch.nn.functional.interpolate(scores, size=tuple(size_hw), mode="bilinear",
                                                         align_corners=False, antialias=True)
            classes = scores[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
        return classes, seconds, int(out.shape[1]), non_finite

    def provenance(self):
        torch = self.torch
        prov = {
            "backend": self.name,
            "backend_version": torch.__version__,
            "backend_module": str(Path(torch.__file__).parent),
            "device": self.device,
            "precision": self.precision,
            "dtype": DTYPES[self.precision],
            "cast": "module and input",  # not autocast
            "memory_format": self.memory_format,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "tf32_flags": _tf32_flags(torch),
            "threads": torch.get_num_threads(),
            "torch_cuda_version": torch.version.cuda,
            "prototxt": self.prototxt,
            "weights": self.weights,
            "cpu_native_precisions": cpu.native_precisions(),
        }
        if self.kind == "cpu":
            prov["mkldnn_enabled"] = bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
            prov["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        else:
            prov["cudnn_version"] = torch.backends.cudnn.version()
            prov["gpu_name"] = torch.cuda.get_device_name(self.torch_device)
            prov["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(self.torch_device)))
            prov["gpu_memory_peak_mb"] = torch.cuda.max_memory_allocated(self.torch_device) / 2**20
        return prov


def _tf32_flags(torch):
    """The TF32 switches as torch 2.9 and later report them (its newer fp32_precision API, onto which
    the allow_tf32 flags set above are mapped): "tf32" where TF32 is on, "ieee" or "none" where it is
    off. Read, never set here: mixing the two APIs' setters makes torch refuse to answer. None on
    older torch."""
    flags = {}
    for name, owner in (("cuda_matmul", getattr(torch.backends.cuda, "matmul", None)),
                        ("cudnn_conv", getattr(torch.backends.cudnn, "conv", None))):
        value = getattr(owner, "fp32_precision", None)
        if value is not None:
            flags[name] = value
    return flags or None
