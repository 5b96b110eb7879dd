"""The Caffe backend (pycaffe).

Caffe reports many errors through glog's fatal checks, which abort the whole
process: a missing file, a prototxt that does not parse, a GPU call in a
CPU-only build. So every such condition is checked in Python first.
"""

import json
import os
import sys
import time
from pathlib import Path

from threadpoolctl import threadpool_info, threadpool_limits

from .. import cuda
from . import BackendError, check_model_files, parse_device, refuse_precision

# The string behind Caffe's NO_GPU check exists only in CPU-only builds.
_CPU_ONLY_MARKER = b"Cannot use GPU in CPU-only Caffe"


def cached_build():
    """The python/ folder of segbench's Caffe build for this Python and numpy, if `make setup` made one.

    The venv finds it through a .pth file; other environments (the conda ones in envs/) through this.
    """
    import numpy

    cache = Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench")) / "caffe"
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-np{numpy.__version__.split('.')[0]}"
    builds = sorted(cache.glob(f"segbench-*-{tag}-*/build-info.json"), key=lambda p: p.stat().st_mtime)
    return builds[-1].parent / "python" if builds else None


def caffe_available():
    """Whether pycaffe can be imported here, without importing it (which takes a second)."""
    import importlib.util

    try:
        if importlib.util.find_spec("caffe") is not None:
            return True
    except (ImportError, ValueError):  # an import hook that refuses it, or a broken module
        return False
    return cached_build() is not None


def import_caffe():
    os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's per-layer log out of job logs
    try:
        import caffe
    except ImportError as error:
        build = cached_build()
        if build is None:
            raise BackendError(f"cannot import pycaffe ({error}); run 'make setup', which builds it "
                               f"and links it into .venv") from None
        sys.path.insert(0, str(build))
        import caffe
    return caffe


def build_info(caffe):
    """The build-info.json that tools/caffe/build.sh wrote beside this pycaffe ({} for another Caffe)."""
    path = Path(caffe.__file__).resolve().parents[2] / "build-info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def build_summary(info):
    """The parts of a build-info.json that say what the build can run on (None for a Caffe built elsewhere)."""
    if not info:
        return None
    return {"variant": info.get("variant"), "cpu_only": info.get("cpu_only"), "cuda": info.get("cuda"),
            "cudnn": info.get("cudnn"), "cuda_arch": info.get("cuda_arch")}


def caffe_is_cpu_only(caffe):
    library = Path(caffe._caffe.__file__)
    return _CPU_ONLY_MARKER in library.read_bytes()


def _check_prototxt(caffe, prototxt):
    from google.protobuf import text_format
    from caffe.proto import caffe_pb2

    try:
        text_format.Merge(Path(prototxt).read_text(), caffe_pb2.NetParameter())
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise BackendError(f"{prototxt}: not a valid Caffe prototxt: {error}") from None


class CaffeBackend:
    name = "caffe"

    @staticmethod
    def check_device(device, precision="fp32", provider=None):
        refuse_precision("caffe", precision, ["fp32"])
        kind, index = parse_device(device)
        if kind == "gpu":
            caffe = import_caffe()
            cpu_only = caffe_is_cpu_only(caffe)
            gpus, reason = (0, None) if cpu_only else cuda.gpu_count()
            refusal = cuda.refuse_unusable_gpu(device, index, cpu_only, gpus, reason, Path(caffe.__file__).parent)
            if refusal:
                raise BackendError(refusal)
        return kind

    def __init__(self, prototxt, weights, device="cpu", input_blob="data", output_blob="score", threads=None,
                 precision="fp32", **_):
        check_model_files(prototxt, weights)
        kind = self.check_device(device, precision)
        caffe = import_caffe()
        if kind == "cpu" and build_info(caffe).get("cudnn"):
            # cuDNN's convolution layers set up CUDA streams even in CPU mode: without a GPU Caffe would abort.
            gpus, no_gpu = cuda.gpu_count()
            if gpus == 0:
                raise BackendError(f"the Caffe at {Path(caffe.__file__).parent} was built with cuDNN, which needs "
                                   f"a GPU even for device: cpu, and {no_gpu}; build Caffe for this machine "
                                   f"(SEGBENCH_CAFFE=cpu make setup, or SEGBENCH_CUDNN=no for a CUDA build that "
                                   f"also runs on the CPU)")
        if threads:
            # Caffe's CPU layers are BLAS calls; its OpenBLAS reads no setting once loaded,
            # so the limit is set through threadpoolctl, which reaches the loaded library.
            threadpool_limits(limits=int(threads), user_api="blas")
        self.threads = threads
        self.gpu_memory_before_mb = None
        if kind == "gpu":
            # Mode and device before the net is built: its buffers go where the mode says.
            self.gpu_memory_before_mb = cuda.memory_used_mb(parse_device(device)[1])
            caffe.set_mode_gpu()
            caffe.set_device(parse_device(device)[1])
        else:
            caffe.set_mode_cpu()
        _check_prototxt(caffe, prototxt)
        self.caffe = caffe
        self.device = device
        self.prototxt, self.weights = str(prototxt), str(weights)
        start = time.perf_counter()
        self.net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
        self.load_seconds = time.perf_counter() - start
        for role, blob in (("input", input_blob), ("output", output_blob)):
            if blob not in self.net.blobs:
                raise BackendError(f"{prototxt}: the net has no {role} blob {blob!r} "
                                   f"(blobs: {', '.join(self.net.blobs)})")
        self.input_blob, self.output_blob = input_blob, output_blob

    def reshape(self, shape):
        """Shape the net for (1, 3, H, W) inputs (FCN style: each image at its own size); returns seconds."""
        start = time.perf_counter()
        self.net.blobs[self.input_blob].reshape(*shape)
        self.net.reshape()
        return time.perf_counter() - start

    def forward(self, blob):
        data = self.net.blobs[self.input_blob]
        if tuple(data.data.shape) != blob.shape:
            self.reshape(blob.shape)
        data.data[...] = blob
        start = time.perf_counter()
        self.net.forward()
        scores = self.net.blobs[self.output_blob].data  # on a GPU, reading the output waits for the device
        seconds = time.perf_counter() - start
        if scores.ndim != 4 or scores.shape[0] != 1:
            raise BackendError(f"{self.prototxt}: output blob {self.output_blob!r} has shape "
                               f"{scores.shape}; expected (1, classes, height, width)")
        # The net's own output buffer, not a copy (a 500x500 image's scores are 21 MB): it is
        # valid until the next forward pass, and predict() is done with it by then.
        return scores[0], seconds

    def provenance(self):
        return {
            "backend": self.name,
            "backend_version": str(getattr(self.caffe, "__version__", "unknown")),
            "backend_module": str(Path(self.caffe.__file__).parent),
            "backend_cpu_only": caffe_is_cpu_only(self.caffe),
            # How this Caffe was built (tools/caffe/build.sh): CUDA version, cuDNN major, GPU architectures.
            "backend_build": build_summary(build_info(self.caffe)),
            "device": self.device,
            "threads": self.threads or _caffe_blas_threads(),
            **self._gpu_memory(),
        }

    def _gpu_memory(self):
        """GPU memory the job took: Caffe keeps every buffer it allocated until the net is freed, so
        what is in use after the passes, less what was before the model was loaded, is its peak
        (as nvidia-smi counts it, CUDA context included; other processes' use would count too)."""
        if self.gpu_memory_before_mb is None:
            return {}
        index = parse_device(self.device)[1]
        now = cuda.memory_used_mb(index)
        return {"gpu_name": cuda.gpu_name(index),
                "gpu_memory_peak_mb": None if now is None else now - self.gpu_memory_before_mb}


def _caffe_blas_threads():
    # numpy carries its own OpenBLAS inside site-packages; Caffe links the system one.
    system = [i["num_threads"] for i in threadpool_info()
              if i["user_api"] == "blas" and "site-packages" not in i["filepath"]]
    return max(system) if system else None
