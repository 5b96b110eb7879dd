"""The OpenCV DNN backend: the same Caffe prototxt and weights through cv2.dnn.

OpenCV 5 removed the Caffe importer, so requirements.txt pins opencv-python-headless 4.x.
"""

import time
from pathlib import Path

from . import BackendError, check_model_files, parse_device, refuse_precision


def import_cv2():
    try:
        import cv2
    except ImportError as error:
        raise BackendError(f"cannot import cv2 ({error}); run 'make setup'") from None
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise BackendError(f"OpenCV {cv2.__version__} has no Caffe importer (removed in OpenCV 5); "
                           f"install opencv-python-headless<5 (make setup does)")
    return cv2


def dnn_cuda_targets(cv2):
    """The CUDA targets that OpenCV's DNN module itself offers (empty without CUDA).

    cv2.cuda.getCudaEnabledDeviceCount() is not enough: OpenCV's core can have CUDA while its DNN
    module was built without it, and then a net asked to run on CUDA falls back to the CPU with
    only a warning.
    """
    try:
        return list(cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_CUDA))
    except (cv2.error, AttributeError):
        return []


def cv2_has_cuda(cv2):
    if cv2.dnn.DNN_TARGET_CUDA not in dnn_cuda_targets(cv2):
        return False
    try:
        return cv2.cuda.getCudaEnabledDeviceCount() > 0
    except cv2.error:
        return False


class OpenCVBackend:
    name = "opencv"

    @staticmethod
    def check_device(device, precision="fp32", provider=None):
        refuse_precision("opencv", precision, ["fp32"])
        kind, _ = parse_device(device)
        if kind == "gpu":
            cv2 = import_cv2()
            if not cv2_has_cuda(cv2):
                # Never fall back to the CPU silently: the timings would then lie.
                raise BackendError(
                    f"device {device} asked for, but the DNN module of OpenCV {cv2.__version__} at "
                    f"{Path(cv2.__file__).parent} offers no CUDA target (cv2.dnn.getAvailableTargets"
                    f"(DNN_BACKEND_CUDA) is empty) or sees no GPU; use device: cpu, or an OpenCV whose DNN "
                    f"module was built with CUDA")
            if parse_device(device)[1] >= cv2.cuda.getCudaEnabledDeviceCount():
                raise BackendError(f"device {device} asked for, but OpenCV sees "
                                   f"{cv2.cuda.getCudaEnabledDeviceCount()} GPU(s)")
        return kind

    def __init__(self, prototxt, weights, device="cpu", input_blob="data", output_blob="score", threads=None,
                 precision="fp32", **_):
        check_model_files(prototxt, weights)
        kind = self.check_device(device, precision)
        cv2 = import_cv2()
        if threads:
            cv2.setNumThreads(int(threads))
        self.cv2, self.device, self.threads = cv2, device, threads
        self.prototxt, self.weights = str(prototxt), str(weights)
        start = time.perf_counter()
        try:
            self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        except cv2.error as error:
            raise BackendError(f"{prototxt}, {weights}: OpenCV cannot read this Caffe model: "
                               f"{str(error).strip().splitlines()[-1]}") from None
        if kind == "gpu":
            cv2.cuda.setDevice(parse_device(device)[1])
            self.dnn_backend, self.dnn_target = "DNN_BACKEND_CUDA", "DNN_TARGET_CUDA"
        else:
            self.dnn_backend, self.dnn_target = "DNN_BACKEND_OPENCV", "DNN_TARGET_CPU"
        self.net.setPreferableBackend(getattr(cv2.dnn, self.dnn_backend))
        self.net.setPreferableTarget(getattr(cv2.dnn, self.dnn_target))
        self.load_seconds = time.perf_counter() - start
        names = set(self.net.getLayerNames())
        if output_blob not in names:
            raise BackendError(f"{prototxt}: the net has no output layer {output_blob!r}")
        self.input_blob, self.output_blob = input_blob, output_blob

    def reshape(self, shape):
        """Nothing to do before the pass: OpenCV re-allocates its net inside the first forward() after
        setInput() with a new shape (run_inference runs that pass untimed). Returns seconds (0)."""
        return 0.0

    def forward(self, blob):
        self.net.setInput(blob, self.input_blob)
        start = time.perf_counter()
        # forward() returns a host array, so on a GPU it has waited for the device.
        scores = self.net.forward(self.output_blob)
        seconds = time.perf_counter() - start
        if scores.ndim != 4 or scores.shape[0] != 1:
            raise BackendError(f"{self.prototxt}: output {self.output_blob!r} has shape {scores.shape}; "
                               f"expected (1, classes, height, width)")
        return scores[0].copy(), seconds

    def provenance(self):
        return {
            "backend": self.name,
            "backend_version": self.cv2.__version__,
            "backend_module": str(Path(self.cv2.__file__).parent),
            "backend_cuda": cv2_has_cuda(self.cv2),
            # What the net was set to run on; a CUDA device is refused at start unless the DNN
            # module offers DNN_TARGET_CUDA, so that a GPU run never falls back to the CPU.
            "dnn_backend": self.dnn_backend,
            "dnn_target": self.dnn_target,
            "device": self.device,
            "threads": self.threads if self.threads else self.cv2.getNumThreads(),
        }
