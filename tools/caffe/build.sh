#!/usr/bin/env bash
# Build pycaffe from the brocolli-caffe sdist on PyPI, CPU-only or with CUDA, and
# install it into a cache outside the checkout; link it into a virtual environment.
#
#   tools/caffe/build.sh PYTHON [--variant segbench|stock]
#
# PYTHON and --variant as in build-cpu.sh. SEGBENCH_CAFFE picks the build:
#   auto   (default) cuda when an NVIDIA GPU is present (`nvidia-smi -L` lists one)
#          and a CUDA toolkit is found, else cpu
#   cpu    the CPU-only build: build-cpu.sh, kept byte for byte as it was, because its
#          own text is part of the CPU cache key (edit it only to change the CPU build)
#   cuda   CUDA, with cuDNN when cuDNN's header and library are found; fails if no
#          CUDA toolkit is found
# CUDA toolkit: $CUDA_HOME/bin/nvcc, else nvcc on PATH, else /usr/local/cuda/bin/nvcc.
# cuDNN: $CUDNN_HOME, the toolkit's include dir, /usr/include(/x86_64-linux-gnu), or the
#   nvidia-cudnn wheel in PYTHON's site-packages; SEGBENCH_CUDNN=no builds without it.
# GPU architectures: SEGBENCH_CUDA_ARCH ("90", or "80 90"), else those of the GPUs
#   present (nvidia-smi's compute_cap, 9.0 -> 90); PTX is added for the highest.
# A CUDA build applies patches/cuda/*.patch after the variant's patches and goes to
#   caffe/<variant>-cuda<version>-<cudnn<major>|nocudnn>-sm<archs>-<sdist>-<python>-<key>;
#   its build-info.json says "cpu_only": false, "cuda", "cudnn" and "cuda_arch".
#   The key covers this script, the patches, the CUDA version, cuDNN and the archs.
# Facts behind the CUDA patches: shared notes, gpu.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

# The toolkit root (the directory with bin/nvcc and include/cuda_runtime.h), if any.
find_cuda() {
  local nvcc root
  for nvcc in ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    [ -n "$nvcc" ] && [ -x "$nvcc" ] || continue
    # nvcc may be a symlink or a wrapper script somewhere on PATH: try both ways up.
    for root in "$(dirname "$(dirname "$nvcc")")" "$(dirname "$(dirname "$(readlink -f "$nvcc")")")"; do
      if [ -x "$root/bin/nvcc" ] && [ -f "$root/include/cuda_runtime.h" ]; then echo "$root"; return 0; fi
    done
  done
  return 1
}
gpu_present() {
  local gpus
  command -v nvidia-smi >/dev/null 2>&1 && gpus=$(timeout 60 nvidia-smi -L 2>/dev/null) && [[ $gpus == *"GPU "[0-9]* ]]
}

mode=${SEGBENCH_CAFFE:-auto}
case $mode in
  cpu) ;;
  cuda)
    cuda_root=$(find_cuda) || {
      echo "build.sh: SEGBENCH_CAFFE=cuda, but no CUDA toolkit was found (no nvcc in \$CUDA_HOME/bin, on PATH or in /usr/local/cuda/bin)" >&2
      exit 1; } ;;
  auto)
    mode=cpu
    if gpu_present; then
      if cuda_root=$(find_cuda); then mode=cuda
      else echo "build.sh: an NVIDIA GPU is present, but no CUDA toolkit (nvcc) was found: building the CPU-only Caffe" >&2
      fi
    fi ;;
  *) echo "build.sh: SEGBENCH_CAFFE=$mode: expected auto, cpu or cuda" >&2; exit 2 ;;
esac
if [ "$mode" = cpu ]; then exec bash "$here/build-cpu.sh" "$@"; fi

# ---- The CUDA build ---------------------------------------------------------------
SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
APT_PACKAGES="build-essential cmake libboost-system-dev libboost-thread-dev libboost-filesystem-dev
libboost-regex-dev libboost-python-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev
libgflags-dev libhdf5-dev libopenblas-dev"

python=${1:?usage: build.sh PYTHON [--variant segbench|stock]}
variant=segbench
if [ "${2:-}" = "--variant" ]; then variant=${3:?--variant needs a value}; fi
case $variant in
  segbench) patches=$(ls "$here"/patches/*.patch) ;;
  stock) patches="$here/patches/0001-build-on-debian.patch $here/patches/0002-load-weights-over-512mib.patch" ;;
  *) echo "build.sh: unknown variant '$variant' (segbench or stock)" >&2; exit 2 ;;
esac
patches="$patches $(ls "$here"/patches/cuda/*.patch)"
cache=${SEGBENCH_CACHE:-$HOME/.cache/segbench}
nvcc="$cuda_root/bin/nvcc"

cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
[ -n "$cuda_version" ] || { echo "build.sh: cannot read the CUDA version from '$nvcc --version'" >&2; exit 1; }

# GPU architectures, as numbers (90 for compute capability 9.0).
archs=${SEGBENCH_CUDA_ARCH:-}
if [ -z "$archs" ] && command -v nvidia-smi >/dev/null 2>&1; then
  archs=$(timeout 60 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. ' | grep -E '^[0-9]+$' || true)
fi
archs=$(echo $archs | tr ' ,' '\n\n' | { grep -v '^$' || true; } | sort -n -u | tr '\n' ' ' | sed 's/ $//')
if [ -z "$archs" ]; then
  echo "build.sh: no GPU answers nvidia-smi, so the GPU architecture is unknown: set SEGBENCH_CUDA_ARCH (e.g. 90 for H100/H200, \"80 90\" for several)" >&2
  exit 1
fi
supported=$("$nvcc" --list-gpu-arch 2>/dev/null | sed -n 's/^compute_//p' | tr '\n' ' ' || true)
for a in $archs; do
  if ! [[ $a =~ ^[0-9]+$ ]]; then echo "build.sh: GPU architecture '$a': expected a number such as 90" >&2; exit 2; fi
  if [ -n "$supported" ] && ! [[ " $supported " == *" $a "* ]]; then
    echo "build.sh: CUDA $cuda_version cannot build for sm_$a (it supports: $supported)" >&2; exit 1
  fi
done
ptx=${archs##* }

# cuDNN: a header with CUDNN_MAJOR, and its library next to it or in a usual place.
cudnn_include="" cudnn_library="" cudnn_major=""
if [ "${SEGBENCH_CUDNN:-auto}" != no ]; then
  wheel_include=$("$python" -c 'import importlib.util as u, os
try:
    s = u.find_spec("nvidia.cudnn")
    print(os.path.join(list(s.submodule_search_locations)[0], "include") if s else "")
except ImportError:
    pass' 2>/dev/null || true)
  for d in ${CUDNN_HOME:+"$CUDNN_HOME/include" "$CUDNN_HOME"} "$cuda_root/include" /usr/include \
           /usr/include/x86_64-linux-gnu /usr/local/cuda/include ${wheel_include:+"$wheel_include"}; do
    for h in cudnn_version.h cudnn.h; do
      [ -f "$d/$h" ] || continue
      cudnn_major=$(sed -n 's/^#define CUDNN_MAJOR *\([0-9][0-9]*\).*/\1/p' "$d/$h" | head -1)
      [ -n "$cudnn_major" ] && [ -f "$d/cudnn.h" ] && { cudnn_include=$d; break 2; }
    done
  done
  if [ -n "$cudnn_include" ]; then
    for l in ${CUDNN_HOME:+"$CUDNN_HOME/lib64" "$CUDNN_HOME/lib"} "$cudnn_include/../lib64" "$cudnn_include/../lib" \
             "$cuda_root/lib64" "$cuda_root/lib" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/lib64; do
      for n in libcudnn.so "libcudnn.so.$cudnn_major"; do
        if [ -f "$l/$n" ]; then cudnn_library=$(readlink -f "$l/$n"); break 2; fi
      done
    done
    if [ -z "$cudnn_library" ]; then
      echo "build.sh: cuDNN $cudnn_major header in $cudnn_include, but no libcudnn.so: building without cuDNN" >&2
      cudnn_include="" cudnn_major=""
    elif [ "$cudnn_major" -lt 7 ]; then
      echo "build.sh: cuDNN $cudnn_major is too old (7 or newer): building without cuDNN" >&2
      cudnn_include="" cudnn_library="" cudnn_major=""
    fi
  fi
fi

cudnn_tag=nocudnn; [ -z "$cudnn_major" ] || cudnn_tag=cudnn$cudnn_major
build_tag="cuda$cuda_version-$cudnn_tag-sm$(echo "$archs" | tr ' ' '_')"
py_tag=$("$python" -c 'import sys, numpy; v = sys.version_info; print("py%d%d-np%s" % (v[0], v[1], numpy.__version__.split(".")[0]))')
key=$( { cat "$0" $patches; echo "$build_tag"; } | sha256sum | cut -c1-12)
dest="$cache/caffe/$variant-$build_tag-$SDIST_VERSION-$py_tag-$key"
what="$variant, CUDA $cuda_version, cuDNN ${cudnn_major:-none}, sm_$(echo "$archs" | sed 's/ /+sm_/g')"

link_into_venv() {
  # A .pth file in the venv's site-packages puts the cached package on sys.path,
  # so `import caffe` works with no environment variable set.
  [ "$variant" = segbench ] || return 0
  local site
  site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$dest/python" > "$site/segbench-caffe.pth"
}

if [ -f "$dest/build-info.json" ]; then
  link_into_venv
  echo "caffe ($what) already built: $dest"
  exit 0
fi

# An interpreter without its C headers (Debian's own python3) needs python3-dev.
if ! "$python" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  APT_PACKAGES="$APT_PACKAGES python3-dev"
fi
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Caffe build dependencies:$missing"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null || {
      echo "build.sh: could not install:$missing" >&2; exit 1; }
  else
    echo "build.sh: missing Debian packages:$missing (run: sudo apt-get install$missing)" >&2
    exit 1
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/segbench-caffe.XXXXXX")
trap 'rm -rf "$work"' EXIT
sdist="$cache/sdist/$SDIST_NAME-$SDIST_VERSION.tar.gz"
if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet 2>/dev/null; then
  mkdir -p "$cache/sdist"
  "$python" -m pip download --quiet --no-deps --no-binary :all: "$SDIST_NAME==$SDIST_VERSION" -d "$work/dl"
  mv "$work/dl/$SDIST_NAME-$SDIST_VERSION.tar.gz" "$sdist.part"
  if ! echo "$SDIST_SHA256  $sdist.part" | sha256sum -c --quiet; then
    echo "build.sh: $SDIST_NAME-$SDIST_VERSION.tar.gz: sha256 $(sha256sum < "$sdist.part" | cut -c1-64), expected $SDIST_SHA256" >&2
    rm -f "$sdist.part"; exit 1
  fi
  mv "$sdist.part" "$sdist"
fi

tar xzf "$sdist" -C "$work"
src="$work/$SDIST_NAME-$SDIST_VERSION"
for p in $patches; do patch -s -p1 -d "$src" < "$p"; done

echo "building pycaffe ($what) with $nvcc in $work; this takes about 10 minutes on 2 cores"
cudnn_flags=(-DUSE_CUDNN=OFF)
if [ -n "$cudnn_include" ]; then
  cudnn_flags=(-DUSE_CUDNN=ON -DCUDNN_INCLUDE="$cudnn_include" -DCUDNN_LIBRARY="$cudnn_library")
fi
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCPU_ONLY=OFF -DUSE_OPENCV=OFF \
  -DUSE_LEVELDB=OFF -DUSE_LMDB=OFF -DBUILD_docs=OFF -DPython3_EXECUTABLE="$python" \
  -DCUDA_TOOLKIT_ROOT_DIR="$cuda_root" -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$archs" -DCUDA_ARCH_PTX="$ptx" \
  "${cudnn_flags[@]}" > "$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
make -C "$work/build" -j"$(nproc)" pycaffe > "$work/make.log" 2>&1 || { grep -E -m 20 'error|Error' "$work/make.log" >&2; tail -20 "$work/make.log" >&2; exit 1; }

# As in build-cpu.sh: copy the package with links dereferenced, so that it stands alone.
stage="$dest.part"
rm -rf "$stage"; mkdir -p "$stage/python"
cp -rL "$src/python/caffe" "$stage/python/caffe"
rm -rf "$stage/python/caffe/test"
strip --strip-unneeded "$stage/python/caffe/_caffe.so"
# The string of Caffe's NO_GPU check exists only in CPU-only builds (segbench's backend looks for it).
if grep -q "Cannot use GPU in CPU-only Caffe" "$stage/python/caffe/_caffe.so"; then
  echo "build.sh: the CUDA build came out CPU-only (see $work/cmake.log)" >&2; trap - EXIT; exit 1
fi
cat > "$stage/build-info.json" <<EOF
{"source": "$SDIST_NAME==$SDIST_VERSION", "sdist_sha256": "$SDIST_SHA256", "variant": "$variant",
 "patches": [$(for p in $patches; do printf '"%s",' "${p#"$here/patches/"}"; done | sed 's/,$//')],
 "cpu_only": false, "cuda": "$cuda_version", "cudnn": $([ -n "$cudnn_major" ] && echo "\"$cudnn_major\"" || echo null),
 "cuda_arch": [$(echo "$archs" | sed 's/ /, /g')], "cuda_ptx": $ptx, "cuda_home": "$cuda_root",
 "cudnn_library": $([ -n "$cudnn_library" ] && echo "\"$cudnn_library\"" || echo null),
 "python": "$py_tag", "key": "$key"}
EOF
rm -rf "$dest"; mv "$stage" "$dest"
link_into_venv
echo "caffe ($what) built: $dest"
