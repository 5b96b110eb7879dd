"""What the NVIDIA driver says about this machine's GPUs, asked without any CUDA library of our own.

A CUDA build of Caffe aborts the whole process (a fatal glog check) when it is asked for a
device that is not there, or when there is no driver at all, so the GPUs are counted first,
through the driver's own libraries: libcuda (the driver API: what CUDA programs can use) and
NVML (memory in use, as nvidia-smi reports it). Both come with the driver; without it, there is
no usable GPU.
"""

import ctypes
import os

CUDA_SUCCESS = 0
NVML_SUCCESS = 0


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load(names):
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def gpu_count():
    """(number of GPUs CUDA programs can use here, why there are none or None).

    Honours CUDA_VISIBLE_DEVICES, as CUDA programs do (SLURM sets it for the GPUs it allocated).
    """
    libcuda = _load(["libcuda.so.1", "libcuda.so"])
    if libcuda is None:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    status = libcuda.cuInit(0)
    if status != CUDA_SUCCESS:
        return 0, f"the NVIDIA driver found no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if status != CUDA_SUCCESS:
        return 0, f"the NVIDIA driver cannot count the GPUs (cuDeviceGetCount error {status})"
    return count.value, None if count.value else "the NVIDIA driver sees no GPU"


def _nvml_index(cuda_index):
    """NVML numbers every GPU of the machine; CUDA only those in CUDA_VISIBLE_DEVICES, in its order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return cuda_index
    entries = [v.strip() for v in visible.split(",")]
    if cuda_index < len(entries) and entries[cuda_index].isdigit():
        return int(entries[cuda_index])
    return None  # GPU UUIDs or MIG names: not mapped here


def _ask_nvml(cuda_index, ask):
    """ask(nvml, handle) for GPU `cuda_index`, between NVML's init and shutdown; None where NVML or the GPU is not there."""
    nvml = _load(["libnvidia-ml.so.1", "libnvidia-ml.so"])
    if nvml is None or nvml.nvmlInit_v2() != NVML_SUCCESS:
        return None
    try:
        index = _nvml_index(cuda_index)
        handle = ctypes.c_void_p()
        if index is None or nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) != NVML_SUCCESS:
            return None
        return ask(nvml, handle)
    finally:
        nvml.nvmlShutdown()


def gpu_name(cuda_index):
    """The name of GPU `cuda_index` as nvidia-smi shows it ("NVIDIA H200"); None if unknown."""
    def ask(nvml, handle):
        name = ctypes.create_string_buffer(96)
        ok = nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) == NVML_SUCCESS
        return name.value.decode(errors="replace") if ok else None
    return _ask_nvml(cuda_index, ask)


def compute_capability(cuda_index):
    """(major, minor) of GPU `cuda_index` (9, 0 for an H200), without initialising CUDA; None if unknown."""
    def ask(nvml, handle):
        major, minor = ctypes.c_int(), ctypes.c_int()
        ok = nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)) == NVML_SUCCESS
        return (major.value, minor.value) if ok else None
    return _ask_nvml(cuda_index, ask)


def memory_used_mb(cuda_index):
    """Memory in use on GPU `cuda_index`, in MiB, by every process (as nvidia-smi shows it); None if unknown."""
    def ask(nvml, handle):
        memory = _NvmlMemory()
        ok = nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) == NVML_SUCCESS
        return memory.used / 2**20 if ok else None
    return _ask_nvml(cuda_index, ask)


def refuse_unusable_gpu(device, index, cpu_only, gpus, reason, build):
    """The message that refuses `device` (gpu:`index`) for a Caffe `build`, or None when it can run.

    `cpu_only`: the build has no CUDA; `gpus`, `reason`: from gpu_count().
    """
    if cpu_only:
        return (f"device {device} asked for, but the Caffe at {build} was built CPU-only; use device: cpu, "
                f"or build Caffe with CUDA (make setup on a machine with an NVIDIA GPU and a CUDA toolkit, "
                f"or SEGBENCH_CAFFE=cuda make setup)")
    if gpus == 0:
        return (f"device {device} asked for, but {reason}: the Caffe at {build} was built with CUDA, and "
                f"would abort on the first GPU call; use device: cpu, or run on a machine with a GPU")
    if index >= gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        limited = f"; CUDA_VISIBLE_DEVICES={visible}" if visible else ""
        return f"device {device} asked for, but CUDA programs see {gpus} GPU(s) here (gpu:0 to gpu:{gpus - 1}{limited})"
    return None
