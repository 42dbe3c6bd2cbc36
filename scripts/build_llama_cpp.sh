#!/usr/bin/env bash
# llama-cpp-python built from its source release with chatd's patches to the llama.cpp
# it vendors (patches/llama-cpp-python-VERSION/*.patch), into the given Python's
# environment. Without them chatd still runs, on llama.cpp's stock kernels.
#
#   scripts/build_llama_cpp.sh .venv/bin/python
set -euo pipefail
PY=${1:?usage: $0 PYTHON}
VERSION=0.3.36
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
for patch in "$root/patches/llama-cpp-python-$VERSION"/*.patch; do
    patch --quiet --forward -p1 -d "$work/llama_cpp_python-$VERSION" < "$patch"
done
"$PY" -m pip install --quiet --force-reinstall --no-deps "$work/llama_cpp_python-$VERSION"
