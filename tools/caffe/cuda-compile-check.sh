#!/usr/bin/env bash
# Compile check of Caffe's CUDA build on a machine with no GPU and no CUDA toolkit.
# Installs CUDA 13.0 (nvcc, cudart, thrust/CUB), cuBLAS, cuRAND and cuDNN 9 from PyPI
# wheels into a cache outside the checkout, builds pycaffe with build.sh
# (SEGBENCH_CAFFE=cuda, SEGBENCH_CUDA_ARCH=90) against them, with cuDNN and without,
# and checks each module: every library resolves, GPU code is embedded, `import caffe`
# works, the module is not CPU-only, a CPU forward pass runs, and a GPU call reaches
# CUDA (with no driver here it fails with "CUDA driver version is insufficient").
#
#   tools/caffe/cuda-compile-check.sh [PYTHON] [--fresh] [--only cudnn|nocudnn]
#   make caffe-cuda-check
#
# PYTHON (default .venv/bin/python) gives the interpreter and the numpy and protobuf
# versions. The builds go to a venv and a cache of their own ($SEGBENCH_CACHE/cuda-check),
# never into .venv or the cache that segbench imports Caffe from. An unchanged build is
# a cache hit (seconds); --fresh rebuilds, to time it: about 10 minutes per build on
# 2 cores. The wheels (1.4 GB unpacked) are installed once.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
python=.venv/bin/python
fresh=0
only="cudnn nocudnn"
while [ $# -gt 0 ]; do
  case $1 in
    --fresh) fresh=1 ;;
    --only) only=${2:?--only needs cudnn or nocudnn}; shift ;;
    -*) echo "cuda-compile-check.sh: unknown option $1" >&2; exit 2 ;;
    *) python=$1 ;;
  esac
  shift
done
cache=${SEGBENCH_CACHE:-$HOME/.cache/segbench}
arch=${SEGBENCH_CUDA_ARCH:-90}
start=$SECONDS

# One CUDA line: with nvvm or crt from a newer release, ptxas rejects the PTX (gpu.md).
WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.14.0.64"
wheels="$cache/cuda-wheels/$(echo $WHEELS | sha256sum | cut -c1-12)"
if [ ! -f "$wheels/.complete" ]; then
  echo "installing the CUDA 13.0 wheels into $wheels"
  rm -rf "$wheels.part"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$wheels.part" $WHEELS
  # Make nvidia/cu13 look like a toolkit: the unversioned libraries that CMake's FindCUDA
  # links, lib64, and targets/x86_64-linux/ (where nvcc.profile looks for include/ and
  # include/cccl/, in which CUDA 13 keeps thrust and CUB).
  tk="$wheels.part/nvidia/cu13"
  for l in cudart cublas cublasLt curand; do
    (cd "$tk/lib" && ln -sf "$(ls lib$l.so.* | head -1)" "lib$l.so")
  done
  ln -sfn lib "$tk/lib64"
  mkdir -p "$tk/targets/x86_64-linux"
  ln -sfn ../../include "$tk/targets/x86_64-linux/include"
  ln -sfn ../../lib "$tk/targets/x86_64-linux/lib"
  touch "$wheels.part/.complete"
  rm -rf "$wheels"; mv "$wheels.part" "$wheels"
fi
toolkit="$wheels/nvidia/cu13"
echo "CUDA wheels ready in $((SECONDS - start)) s: $("$toolkit/bin/nvcc" --version | grep release)"

# A venv of its own, so that build.sh links the CUDA builds into it and not into .venv.
check="$cache/cuda-check"
venv="$check/venv-$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
if [ ! -x "$venv/bin/python" ]; then
  pins=$("$python" - <<'EOF'
from importlib import metadata
for name in ("numpy", "protobuf", "six"):
    try:
        print("%s==%s" % (name, metadata.version(name)))
    except metadata.PackageNotFoundError:
        print(name)
EOF
)
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pins
fi
mkdir -p "$cache/sdist" "$check/cache"
ln -sfn "$cache/sdist" "$check/cache/sdist"  # the sdist is downloaded once for both caches

cat > "$check/import_check.py" <<'EOF'
"""Import the CUDA build, check it is not CPU-only, run a CPU forward, then try the GPU."""
import os
import subprocess
import sys

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402

library = caffe._caffe.__file__
assert b"Cannot use GPU in CPU-only Caffe" not in open(library, "rb").read(), library + " is CPU-only"
# engine: CAFFE, as a cuDNN build's default convolution engine (cuDNN) needs a GPU even in CPU mode
net_text = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 2 kernel_size: 3 engine: CAFFE } }
"""
prototxt = os.path.join(os.environ["CHECK_DIR"], "tiny.prototxt")
with open(prototxt, "w") as f:
    f.write(net_text)
if sys.argv[1:] == ["gpu"]:
    caffe.set_mode_gpu()
    caffe.set_device(0)
    net = caffe.Net(prototxt, caffe.TEST)
    net.forward()
    print("GPU forward ran")
    sys.exit(0)
caffe.set_mode_cpu()
net = caffe.Net(prototxt, caffe.TEST)
net.blobs["data"].data[...] = 1.0
net.params["conv"][0].data[...] = 1.0
out = net.forward()["score"]
assert out.shape == (1, 2, 6, 6) and abs(float(out.min()) - 27.0) < 1e-4, out
print("import ok (%s), not CPU-only, CPU forward ok" % library)
# A GPU call aborts the process on failure (glog), so it runs in a child process.
gpu = subprocess.run([sys.executable, __file__, "gpu"], capture_output=True, text=True, timeout=300)
if gpu.returncode == 0:
    print("GPU: " + gpu.stdout.strip())
else:
    lines = [l for l in gpu.stderr.splitlines() if "Check failed" in l or "CUDA" in l or "cuda" in l]
    message = lines[-1] if lines else gpu.stderr.strip()[-300:]
    if "CPU-only" in gpu.stderr:
        sys.exit("GPU call hit the CPU-only guard: " + message)
    print("GPU call reached CUDA, which has no usable GPU here (exit %d): %s" % (gpu.returncode, message))
EOF

summary=""
for kind in $only; do
  case $kind in
    cudnn) env_cudnn=(CUDNN_HOME="$wheels/nvidia/cudnn") ; want_cudnn='"9"' ;;
    nocudnn) env_cudnn=(SEGBENCH_CUDNN=no) ; want_cudnn=null ;;
    *) echo "cuda-compile-check.sh: --only cudnn or nocudnn" >&2; exit 2 ;;
  esac
  if [ "$fresh" = 1 ]; then
    tag=$([ "$kind" = cudnn ] && echo cudnn9 || echo nocudnn)
    rm -rf "$check/cache/caffe/segbench-cuda13.0-$tag-sm${arch// /_}-"*
  fi
  echo "== CUDA build, $kind"
  t0=$SECONDS
  out=$(env SEGBENCH_CACHE="$check/cache" SEGBENCH_CAFFE=cuda SEGBENCH_CUDA_ARCH="$arch" CUDA_HOME="$toolkit" \
        "${env_cudnn[@]}" "$repo/tools/caffe/build.sh" "$venv/bin/python" 2>&1) || { echo "$out"; echo "FAILED: CUDA build ($kind)"; exit 1; }
  echo "$out"
  took=$((SECONDS - t0))
  dest=${out##*built: }
  so="$dest/python/caffe/_caffe.so"
  "$venv/bin/python" - "$dest/build-info.json" "$want_cudnn" "$arch" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
want = {"cpu_only": False, "cuda": "13.0", "cudnn": json.loads(sys.argv[2]),
        "cuda_arch": [int(a) for a in sys.argv[3].split()]}
wrong = {k: info.get(k) for k, v in want.items() if info.get(k) != v}
assert not wrong, "build-info.json: %s, expected %s" % (wrong, want)
EOF
  if ldd "$so" | grep -q "not found"; then ldd "$so" | grep "not found"; echo "FAILED: unresolved libraries"; exit 1; fi
  fatbin=$(objdump -h "$so" | awk '$2 == ".nv_fatbin" {print $3}')
  [ -n "$fatbin" ] || { echo "FAILED: no GPU code (.nv_fatbin) in $so"; exit 1; }
  fatbin=$((16#$fatbin))
  CHECK_DIR="$check" PYTHONPATH="$dest/python" "$venv/bin/python" "$check/import_check.py"
  size=$(stat -c %s "$so")
  cuda_libs=$(readelf -d "$so" | sed -n 's/.*NEEDED.*\[\(lib\(cu\|nv\)[^]]*\)\].*/\1/p' | tr '\n' ' ')
  mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
  line="$kind: built or found in ${took} s; _caffe.so $(mib "$size") stripped (GPU code $(mib "$fatbin")), CUDA libraries: $cuda_libs"
  echo "$line"
  summary="$summary$line"$'\n'
done
echo "== CUDA compile check passed in $((SECONDS - start)) s on $(nproc) cores"
printf '%s' "$summary"
