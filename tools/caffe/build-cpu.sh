#!/usr/bin/env bash
# Build pycaffe (CPU only) from the brocolli-caffe sdist on PyPI and install it
# into a cache outside the checkout; link it into a virtual environment.
#
#   tools/caffe/build.sh PYTHON [--variant segbench|stock]
#
# PYTHON is the interpreter of the virtual environment that will import caffe
# (its numpy headers are compiled in). The variant picks the patch set:
#   segbench  all patches in patches/ (build fixes, >512 MiB weights, lazy imports, and
#             CPU speed: Crop fix, convolution in row bands through one small im2col
#             buffer, max pooling in registers, the other layers on all BLAS threads)
#   stock     only what is needed to build and to load weights over 512 MiB (the
#             reference that benchmarks/bench.py measures segbench's build against)
# The cache key covers the sdist hash, the patches, this script, the Python and
# numpy versions, so a second run with nothing changed takes a second.
# Facts behind each patch: shared notes, caffe.md.
set -euo pipefail

SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
APT_PACKAGES="build-essential cmake libboost-system-dev libboost-thread-dev libboost-filesystem-dev
libboost-regex-dev libboost-python-dev libprotobuf-dev protobuf-compiler libgoogle-glog-dev
libgflags-dev libhdf5-dev libopenblas-dev"

here=$(cd "$(dirname "$0")" && pwd)
python=${1:?usage: build.sh PYTHON [--variant segbench|stock]}
variant=segbench
if [ "${2:-}" = "--variant" ]; then variant=${3:?--variant needs a value}; fi
case $variant in
  segbench) patches=$(ls "$here"/patches/*.patch) ;;
  stock) patches="$here/patches/0001-build-on-debian.patch $here/patches/0002-load-weights-over-512mib.patch" ;;
  *) echo "build.sh: unknown variant '$variant' (segbench or stock)" >&2; exit 2 ;;
esac
cache=${SEGBENCH_CACHE:-$HOME/.cache/segbench}

py_tag=$("$python" -c 'import sys, numpy; v = sys.version_info; print("py%d%d-np%s" % (v[0], v[1], numpy.__version__.split(".")[0]))')
key=$(cat "$0" $patches | sha256sum | cut -c1-12)
dest="$cache/caffe/$variant-$SDIST_VERSION-$py_tag-$key"

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
  echo "caffe ($variant) already built: $dest"
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
  if [ "$(id -u)" = 0 ]; then
    echo "installing Caffe build dependencies:$missing"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null
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

echo "building pycaffe ($variant) in $work; this takes about 4 minutes on 2 cores"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCPU_ONLY=ON -DUSE_OPENCV=OFF \
  -DUSE_LEVELDB=OFF -DUSE_LMDB=OFF -DBUILD_docs=OFF -DPython3_EXECUTABLE="$python" \
  > "$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
make -C "$work/build" -j"$(nproc)" pycaffe > "$work/make.log" 2>&1 || { tail -40 "$work/make.log" >&2; exit 1; }

# The build leaves python/caffe/_caffe.so as a symlink into the build tree:
# copy with links dereferenced so that the cached package stands alone.
stage="$dest.part"
rm -rf "$stage"; mkdir -p "$stage/python"
cp -rL "$src/python/caffe" "$stage/python/caffe"
rm -rf "$stage/python/caffe/test"
strip --strip-unneeded "$stage/python/caffe/_caffe.so"
cat > "$stage/build-info.json" <<EOF
{"source": "$SDIST_NAME==$SDIST_VERSION", "sdist_sha256": "$SDIST_SHA256", "variant": "$variant",
 "patches": [$(for p in $patches; do printf '"%s",' "$(basename "$p")"; done | sed 's/,$//')],
 "cpu_only": true, "python": "$py_tag", "key": "$key"}
EOF
rm -rf "$dest"; mv "$stage" "$dest"
link_into_venv
echo "caffe ($variant) built: $dest"
