"""GPU checks that run before any CUDA call: on this machine (no GPU) and, for the messages, by their inputs."""

from pathlib import Path

import pytest

from segbench import cuda

NO_NVIDIA_DEVICE = not Path("/dev/nvidiactl").exists()


@pytest.mark.skipif(not NO_NVIDIA_DEVICE, reason="an NVIDIA driver is here")
def test_no_driver_means_no_usable_gpu_and_no_memory_figure():
    gpus, reason = cuda.gpu_count()
    assert gpus == 0 and reason  # says why: no libcuda, or the driver sees none
    assert cuda.memory_used_mb(0) is None
    assert cuda.gpu_name(0) is None and cuda.compute_capability(0) is None


def test_refusals_name_the_device_and_what_to_do():
    build = "/cache/caffe/python/caffe"
    cpu_only = cuda.refuse_unusable_gpu("gpu:0", 0, True, 0, None, build)
    assert "gpu:0 asked for" in cpu_only and "built CPU-only" in cpu_only and "SEGBENCH_CAFFE=cuda" in cpu_only
    no_gpu = cuda.refuse_unusable_gpu("gpu:0", 0, False, 0, "no NVIDIA driver (libcuda.so.1 not found)", build)
    assert "no NVIDIA driver" in no_gpu and "built with CUDA" in no_gpu and build in no_gpu
    assert cuda.refuse_unusable_gpu("gpu:0", 0, False, 1, None, build) is None
    beyond = cuda.refuse_unusable_gpu("gpu:2", 2, False, 2, None, build)
    assert "gpu:2 asked for" in beyond and "see 2 GPU(s)" in beyond and "gpu:0 to gpu:1" in beyond


def test_cuda_visible_devices_maps_cuda_numbers_to_the_drivers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert (cuda._nvml_index(0), cuda._nvml_index(1), cuda._nvml_index(2)) == (3, 1, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f6c")
    assert cuda._nvml_index(0) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda._nvml_index(1) == 1
