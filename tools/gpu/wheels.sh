#!/usr/bin/env bash
# Wheels for the project's lent GPU machine, which reaches no package registry: what segbench's
# workflow needs beyond what that machine has (Python 3.12 with torch, numpy, pandas, pillow, pyyaml,
# scipy, scikit-learn, onnx, onnxruntime, opencv: ../shared/notes/gpu.md), at the versions of
# requirements.txt, for CPython 3.12 on x86_64. About 44 MB, into .gpu-wheels/ (git-ignored), which
# the device tool carries; tools/gpu/proof.sh installs them there.
#
#   tools/gpu/wheels.sh [PYTHON]     # PYTHON: a pip to download with (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
OUT=.gpu-wheels
# On the GPU machine already (its own versions), or not needed by the workflow there.
HAVE='numpy|pillow|pandas|PyYAML|scipy|scikit-learn|pytest|onnx|onnxruntime|openvino|openvino-telemetry|opencv-python-headless|playwright|greenlet|pyee|protobuf|ml_dtypes|flatbuffers|joblib|threadpoolctl|iniconfig|pluggy|python-dateutil|tzdata|typing_extensions|Pygments|imgviz|cmap'
mkdir -p "$OUT"
list=$(mktemp)
grep -v '^#' requirements.txt | grep -v -i -E "^($HAVE)==" | grep -v '^connection_pool==' > "$list"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$OUT" -r "$list"
# pip itself, which tools/gpu/proof.sh runs from its wheel (the machine's venv may have no pip).
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$OUT" pip==25.3
# Published as a source archive only (pure Python): built into a wheel here.
"$PY" -m pip wheel -q --no-deps -w "$OUT" "$(grep '^connection_pool==' requirements.txt)"
rm -f "$list"
du -sh "$OUT"
