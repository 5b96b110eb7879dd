#!/usr/bin/env bash
# segbench's GPU proofs on the project's lent GPU machine, which starts bare and reaches no package
# registry (../shared/notes/gpu.md: Python 3.12 with torch, CUDA 13, cuDNN 9; no snakemake, no
# glog/gflags/Boost libraries). Prepare here, on the CPU machine:
#
#   tools/gpu/wheels.sh                 # .gpu-wheels/: what the workflow needs beyond the machine's own
#   tools/gpu/caffe-bundle.sh           # .gpu-caffe/: the CUDA pycaffe for Python 3.12 + its libraries
#
# then, through the device tool, with carry [".gpu-wheels", ".gpu-caffe"]:
#
#   bash tools/gpu/proof.sh [caffe] [torch]        # both when none is named (caffe first: it is shorter)
#
# caffe: benchmarks/gpu_caffe.py with the cuDNN build (the demo through the workflow on gpu:0 beside
#        the CPU, and FCN-8s at 500x500), then FCN-8s alone with cuDNN's TF32 turned off
#        (NVIDIA_TF32_OVERRIDE=0) and with the build without cuDNN (im2col + cuBLAS), which say where
#        Caffe's time goes.
#        GPU_CAFFE_ARGS passes options to each (e.g. "--device cpu --images 2" to rehearse on a CPU).
# torch: benchmarks/gpu_torch.py (the demo at fp32/tf32/fp16/bf16, FCN-8s per precision, the
#        workflow's throughput on 500 images). GPU_TORCH_ARGS passes options to it.
# Reports go to $OUT (the device tool's folder; gpu-out/ elsewhere): everything printed in proof.log,
# and one JSON report per run (gpu_caffe_<cudnn|cudnn-no-tf32|nocudnn>.json, gpu_torch.json: five files,
# as the device tool returns eight at most), each written as its parts end, so a part that runs out
# of time leaves the others'.
set -uo pipefail
export PYTHONUNBUFFERED=1  # so that proof.log holds what was printed when a run is cut off
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-gpu-out}
SITE=${SITE:-/tmp/segbench-gpu-site}
CAFFE_DIR=${CAFFE_DIR:-/tmp/segbench-gpu-caffe}
parts=${*:-caffe torch}
mkdir -p "$OUT"
status=0
start=$SECONDS
log() { echo "[proof $((SECONDS - start)) s] $*" | tee -a "$OUT/proof.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | tee -a "$OUT/proof.log"
# The carried wheels go into a folder on PYTHONPATH, not a venv: a venv made from $PY (itself a venv)
# with --system-site-packages would see the base Python's packages, not torch's. pip comes as a wheel
# too (it runs from its own zip), since that venv may have none.
if [ ! -f "$SITE/.complete" ]; then
  pip_wheel=$(ls .gpu-wheels/pip-*.whl 2>/dev/null | head -1)
  [ -n "$pip_wheel" ] || { log "no .gpu-wheels/pip-*.whl: run tools/gpu/wheels.sh, carry .gpu-wheels"; exit 1; }
  rm -rf "$SITE"
  "$PY" "$pip_wheel/pip" install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" \
    $(ls .gpu-wheels/*.whl | grep -v '/pip-') || { log "installing .gpu-wheels failed"; exit 1; }
  touch "$SITE/.complete"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import snakemake, jsonschema, numpy, six, google.protobuf as pb; print('snakemake', snakemake.__version__, 'numpy', numpy.__version__, 'protobuf', pb.__version__)" 2>&1 | tee -a "$OUT/proof.log"

# A carried Caffe build: unpacked, its libraries found (bundle first, then the machine's CUDA, cuDNN
# and those in torch's nvidia wheels), and every library of _caffe.so resolved before anything runs.
caffe_env() {
  local name=$1 dir="$CAFFE_DIR/$1" extra=""
  [ -f ".gpu-caffe/$name.tar.xz" ] || { log "no .gpu-caffe/$name.tar.xz (run tools/gpu/caffe-bundle.sh, carry .gpu-caffe)"; return 1; }
  if [ ! -d "$dir" ]; then  # with Python's tarfile: a bare image may have no xz for tar
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
      ".gpu-caffe/$name.tar.xz" "$CAFFE_DIR" || { log "cannot unpack .gpu-caffe/$name.tar.xz"; return 1; }
  fi
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(ls -d "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/nvidia/*/lib 2>/dev/null); do
    [ -d "$d" ] && extra="$extra:$d"
  done
  CAFFE_LD="$dir/lib$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  CAFFE_PY="$dir/python"
  local missing
  missing=$(LD_LIBRARY_PATH=$CAFFE_LD ldd "$dir/python/caffe/_caffe.so" | grep "not found")
  if [ -n "$missing" ]; then log "$name: libraries not found: $missing"; return 1; fi
  LD_LIBRARY_PATH=$CAFFE_LD ldd "$dir/python/caffe/_caffe.so" | grep -E "^\s*lib(cudnn|cublas|curand|hdf5|openblas)" | tee -a "$OUT/proof.log"
}
gpu_caffe() {  # gpu_caffe NAME BUNDLE [ENV=VALUE ...] -- [gpu_caffe.py options]
  local name=$1 bundle=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  caffe_env "$bundle" || { status=1; return; }
  log "caffe $name: starting"
  env LD_LIBRARY_PATH="$CAFFE_LD" PYTHONPATH="$CAFFE_PY:$PYTHONPATH" GLOG_minloglevel=2 "${envs[@]}" \
    "$PY" benchmarks/gpu_caffe.py --json "$OUT/gpu_caffe_$name.json" "$@" ${GPU_CAFFE_ARGS:-} 2>&1 | tee -a "$OUT/proof.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { status=1; log "caffe $name: FAILED"; return; }
  log "caffe $name: done"
}

for part in $parts; do
  case $part in
    caffe)
      gpu_caffe cudnn caffe-cuda-cudnn9-py312 --
      gpu_caffe cudnn-no-tf32 caffe-cuda-cudnn9-py312 NVIDIA_TF32_OVERRIDE=0 -- --skip demo
      gpu_caffe nocudnn caffe-cuda-nocudnn-py312 -- --skip demo ;;
    torch)
      log "torch: starting"
      # shellcheck disable=SC2086
      "$PY" benchmarks/gpu_torch.py --json "$OUT/gpu_torch.json" ${GPU_TORCH_ARGS:-} 2>&1 | tee -a "$OUT/proof.log"
      [ "${PIPESTATUS[0]}" = 0 ] || { status=1; log "torch: FAILED"; continue; }
      log "torch: done" ;;
    *) log "unknown part '$part' (caffe or torch)"; status=2 ;;
  esac
done
log "finished with status $status"
exit $status
