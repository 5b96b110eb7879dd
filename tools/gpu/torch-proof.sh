#!/usr/bin/env bash
# The torch backend's proof on the project's lent GPU machine (bare, no registry; see
# ../shared/notes/gpu.md). Run tools/gpu/wheels.sh here first, then, through the device tool with
# carry [".gpu-wheels"]:
#
#   bash tools/gpu/torch-proof.sh [ARGS for benchmarks/gpu_torch.py]
#
# It makes a venv that sees the machine's torch (--system-site-packages), installs the carried
# wheels into it, and runs benchmarks/gpu_torch.py on gpu:0; the report goes to $OUT (or gpu-out/).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/opt/torch/.venv/bin/python}
OUT=${OUT:-gpu-out}
VENV=${VENV:-/tmp/segbench-gpu-venv}
mkdir -p "$OUT"
"$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q --no-index --no-deps .gpu-wheels/*.whl
"$VENV/bin/python" -c "import snakemake, matplotlib, jsonschema, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$VENV/bin/python" benchmarks/gpu_torch.py --json "$OUT/gpu_torch.json" "$@" 2>&1 | tee "$OUT/gpu_torch.txt"
