"""Caffe's CUDA build compiles: tools/caffe/cuda-compile-check.sh (`make caffe-cuda-check`).

Opt-in (SEGBENCH_TEST_CUDA_BUILD=1): the first run installs 1.4 GB of CUDA wheels and
compiles Caffe twice (with and without cuDNN), about 20 minutes on 2 cores, and twice more for
Python 3.12 where a python3.12 is found (the GPU machine's bundle, tools/gpu/caffe-bundle.sh); later
runs are cache hits (seconds) until tools/caffe/build.sh or its patches change. No GPU needed.
"""

import os
import shutil
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
    python = "py%d%d" % sys.version_info[:2]  # the check also holds Python 3.12 builds for the GPU machine
    builds = sorted(cache.glob(f"caffe/segbench-cuda*-{kind}-*-{python}-*/python"))
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


def python312():
    """A Python 3.12 interpreter that runs (pyenv's shim on PATH may not, when 3.12 is not selected)."""
    pyenv = sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")))
    candidates = [shutil.which("python3.12"), *pyenv]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                          capture_output=True).returncode == 0:
            return candidate
    return None


PY312 = python312()
# What the lent GPU machine has of segbench's needs (../shared/notes/gpu.md); tools/gpu/wheels.sh brings the rest.
GPU_MACHINE_HAS = ("numpy", "pillow", "pandas", "PyYAML", "scipy", "protobuf", "threadpoolctl", "typing_extensions")
GPU_MACHINE_OPENCV = "opencv-python-headless>=5,<6"  # 5.0 there (no Caffe importer; segbench's metrics use it)


@pytest.mark.skipif(PY312 is None, reason="needs a python3.12 (the GPU machine's Python) to stand in for it")
@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU driver is here")
def test_gpu_machine_bundle_runs_in_a_python312_stand_in(tmp_path):
    """tools/gpu/caffe-bundle.sh's builds, unpacked and run by tools/gpu/proof.sh as on the GPU machine:
    a Python 3.12 venv with only what that machine has (as its /opt/torch/.venv) plus .gpu-wheels, no RUNPATH into this machine's
    CUDA wheels (their libraries come through LD_LIBRARY_PATH, as /usr/local/cuda/lib64 does there).
    Without a GPU: the cuDNN build is refused with a message (not an abort), the build without cuDNN
    runs FCN-8s and the demo workflow on the CPU."""
    bundle = subprocess.run(["bash", "tools/gpu/caffe-bundle.sh", PY312], cwd=REPO, capture_output=True, text=True,
                            timeout=3 * 3600)
    assert bundle.returncode == 0, (bundle.stdout + bundle.stderr)[-4000:]
    if not list((REPO / ".gpu-wheels").glob("snakemake-*.whl")):
        wheels = subprocess.run(["bash", "tools/gpu/wheels.sh"], cwd=REPO, capture_output=True, text=True, timeout=1800)
        assert wheels.returncode == 0, wheels.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([PY312, "-m", "venv", str(venv)], check=True)
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.split("==")[0] in GPU_MACHINE_HAS]
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *pins, GPU_MACHINE_OPENCV], check=True, timeout=1800)
    cache = Path(os.environ.get("SEGBENCH_CACHE", Path.home() / ".cache" / "segbench"))
    toolkit = sorted(cache.glob("cuda-wheels/*/nvidia"))[-1]
    env = {**os.environ, "PYTHON": str(venv / "bin" / "python"), "OUT": str(tmp_path / "out"),
           "CAFFE_DIR": str(tmp_path / "caffe"), "GPU_CAFFE_ARGS": "--device cpu --images 2 --warmup 1",
           "LD_LIBRARY_PATH": f"{toolkit}/cu13/lib:{toolkit}/cudnn/lib", "SITE": str(tmp_path / "site")}
    proof = subprocess.run(["bash", "tools/gpu/proof.sh", "caffe"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=1800)
    out = proof.stdout + proof.stderr
    assert proof.returncode == 1, out[-4000:]  # the cuDNN runs cannot run without a GPU
    assert out.count("built with cuDNN, which needs a GPU even for device: cpu") == 2, out[-4000:]
    assert "Caffe at " in out and "'cudnn': None, 'cuda_arch': [90]" in out
    assert "FCN-8s layout, 500x500, Caffe on cpu, 2 passes" in out and "caffe nocudnn: done" in out
    demo = subprocess.run([str(venv / "bin" / "python"), "benchmarks/gpu_caffe.py", "--device", "cpu",
                           "--skip", "fcn8s"], cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**env, "PYTHONPATH": f"{tmp_path}/caffe/caffe-cuda-nocudnn-py312/python:{tmp_path}/site",
                               "LD_LIBRARY_PATH": f"{tmp_path}/caffe/caffe-cuda-nocudnn-py312/lib:{toolkit}/cu13/lib"})
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    assert "24 images, Caffe on cpu and on cpu: 100.00000% of pixels agree" in demo.stdout
