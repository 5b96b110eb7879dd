"""Caffe's CUDA build compiles: tools/caffe/cuda-compile-check.sh (`make caffe-cuda-check`).

Opt-in (SEGBENCH_TEST_CUDA_BUILD=1): the first run installs 1.4 GB of CUDA wheels and
compiles Caffe twice (with and without cuDNN), about 20 minutes on 2 cores; later runs
are cache hits (seconds) until tools/caffe/build.sh or its patches change. No GPU needed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SEGBENCH_TEST_CUDA_BUILD") != "1",
                       reason="compiles Caffe with CUDA (about 20 minutes on 2 cores): "
                              "set SEGBENCH_TEST_CUDA_BUILD=1 to run"),
]


def test_cuda_build_compiles_with_and_without_cudnn():
    result = subprocess.run(["bash", str(REPO / "tools" / "caffe" / "cuda-compile-check.sh"), sys.executable],
                            cwd=REPO, capture_output=True, text=True, timeout=3 * 3600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "CUDA compile check passed" in result.stdout
    for kind in ("cudnn", "nocudnn"):
        assert f"\n{kind}: built or found in" in result.stdout, result.stdout[-4000:]
    assert "not CPU-only, CPU forward ok" in result.stdout


GUARD = """
import sys
sys.path[:] = [p for p in sys.path if "/caffe/segbench-" not in p]
sys.path.insert(0, sys.argv[1])
from segbench.backends import BackendError, load_backend
model = dict(prototxt="resources/demo/fcn-tiny/deploy.prototxt", weights="resources/demo/fcn-tiny/fcn-tiny.caffemodel")
for device in ("gpu:0", "cpu"):
    try:
        net = load_backend("caffe", device=device, **model)
        print(device, "loaded", net.provenance()["backend_cpu_only"])
    except BackendError as error:
        print(device, "refused:", error)
"""


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU driver is here")
@pytest.mark.parametrize("kind", ["cudnn9", "nocudnn"])
def test_a_cuda_build_without_a_gpu_is_refused_not_aborted(kind):
    """The real CUDA builds of the check, on this machine with no GPU: gpu:0 is refused before any
    CUDA call, and so is device: cpu on the cuDNN build (its convolutions need a GPU even then)."""
    cache = Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench")) / "cuda-check" / "cache"
    builds = sorted(cache.glob(f"caffe/segbench-cuda*-{kind}-*/python"))
    assert builds, f"no {kind} build under {cache}: run the compile check first"
    result = subprocess.run([sys.executable, "-c", GUARD, str(builds[-1])], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]  # an abort inside Caffe would end the process
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpu:0 refused:") and "built with CUDA, and would abort" in lines[0]
    if kind == "cudnn9":
        assert lines[1].startswith("cpu refused:") and "built with cuDNN, which needs a GPU" in lines[1]
    else:
        assert lines[1] == "cpu loaded False"  # a CUDA build without cuDNN runs on the CPU
