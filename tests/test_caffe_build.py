"""The pycaffe that `make setup` builds: large weight files, and the GPU guard of a CPU-only build."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from segbench import cuda
from segbench.backends import BackendError, load_backend
from segbench.backends.caffe_backend import caffe_is_cpu_only, import_caffe

caffe = import_caffe()

# 4096 inputs x 33000 outputs of float32 weights: 540.7 MB, over the 512 MiB
# (536,870,912 bytes) that the sdist's protobuf reader accepted.
BIG_NET = """
name: "big"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4096 dim: 1 dim: 1 } } }
layer { name: "big" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 33000 kernel_size: 1 } }
"""


@pytest.mark.slow
def test_loads_weights_over_512_mib(tmp_path):
    prototxt = tmp_path / "big.prototxt"
    prototxt.write_text(BIG_NET)
    weights = tmp_path / "big.caffemodel"
    net = caffe.Net(str(prototxt), caffe.TEST)
    net.params["big"][0].data[...] = 0.001
    net.params["big"][1].data[...] = np.arange(33000, dtype=np.float32)
    net.save(str(weights))
    del net
    assert weights.stat().st_size > 512 * 1024 * 1024

    # Load in a fresh process: a rejected file aborts the process, which a test must survive.
    script = textwrap.dedent(f"""
        import numpy as np
        from segbench.backends.caffe_backend import import_caffe
        caffe = import_caffe()
        net = caffe.Net({str(prototxt)!r}, caffe.TEST, weights={str(weights)!r})
        net.blobs["data"].data[...] = 1.0
        out = net.forward()["score"].ravel()
        print(out[0], out[12345], out[-1])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Each output is 4096 * 0.001 + its bias (the output's index).
    values = [float(v) for v in result.stdout.split()]
    assert values == pytest.approx([4.096, 4.096 + 12345, 4.096 + 32999], rel=1e-5)


NO_GPU = cuda.gpu_count()[0] == 0


@pytest.mark.skipif(not NO_GPU or os.environ.get("SEGBENCH_CAFFE") == "cuda",
                    reason="a GPU is here, or a CUDA build was asked for")
def test_build_on_a_machine_without_a_gpu_is_cpu_only():
    assert caffe_is_cpu_only(caffe)


@pytest.mark.skipif(not NO_GPU, reason="a GPU is here")
def test_gpu_device_is_refused_before_any_gpu_call(tmp_path):
    # A GPU call aborts the process on a CPU-only Caffe, and on a CUDA build with no GPU; the
    # backend must refuse first, in this very process (if it aborted, the test run itself would die).
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(BIG_NET.replace("4096", "3").replace("33000", "2"))
    weights = tmp_path / "tiny.caffemodel"
    caffe.Net(str(prototxt), caffe.TEST).save(str(weights))
    why = r"gpu:0.*CPU-only" if caffe_is_cpu_only(caffe) else r"gpu:0 asked for, but .*built with CUDA, and would abort"
    with pytest.raises(BackendError, match=why):
        load_backend("caffe", prototxt=str(prototxt), weights=str(weights), device="gpu:0")


def test_missing_and_broken_model_files_are_refused(tmp_path):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(BIG_NET.replace("4096", "3").replace("33000", "2"))
    weights = tmp_path / "tiny.caffemodel"
    caffe.Net(str(prototxt), caffe.TEST).save(str(weights))
    with pytest.raises(BackendError, match="missing.caffemodel: model file not found"):
        load_backend("caffe", prototxt=str(prototxt), weights=str(tmp_path / "missing.caffemodel"))
    broken = tmp_path / "broken.prototxt"
    broken.write_text("layer { name: 'data' type: 'Input' top: 'data' ")
    with pytest.raises(BackendError, match="broken.prototxt: not a valid Caffe prototxt"):
        load_backend("caffe", prototxt=str(broken), weights=str(weights))
    with pytest.raises(BackendError, match="no output blob 'prob'"):
        load_backend("caffe", prototxt=str(prototxt), weights=str(weights), output_blob="prob")


def test_backend_finds_the_cached_build_without_the_venv_link():
    # As in a conda environment of envs/, where the .pth file of .venv is not read.
    script = ("import sys; sys.path[:] = [p for p in sys.path if '/caffe/segbench-' not in p]\n"
              "from segbench.backends.caffe_backend import import_caffe\n"
              "print(import_caffe().__file__)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == caffe.__file__
