#!/usr/bin/env bash
# Optional, for a GPU machine without network access: run it on a machine that has the network,
# then copy the resulting .device/ (git-ignored) into the GPU machine's checkout. It gathers what
# paper_cifar.sh may need there: pydantic's wheels for that machine's Python (PY_VERSION, default
# 3.12; the other dependencies are usually part of a PyTorch image) and the CIFAR-10 JPEG-Q75
# source the committed table used (a folder with build_batches.py, 54 MB; paper_cifar.sh unpacks
# it into the 178 MB batches there). See benchmarks/device/README.md.
#
#   bash benchmarks/device/prepare.sh [CIFAR_JPEG_DIR]     # default ../shared/data/cifar10-jpeg75
set -euo pipefail
cd "$(dirname "$0")/../.."
source_dir=${1:-../shared/data/cifar10-jpeg75}
py_version=${PY_VERSION:-3.12}
[ -f "$source_dir/build_batches.py" ] || { echo "prepare.sh: $source_dir: no build_batches.py; expected the CIFAR-10 JPEG-Q75 folder" >&2; exit 2; }
pip=.venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
rm -rf .device
mkdir -p .device/wheels
$pip download -q --dest .device/wheels --only-binary=:all: --implementation cp \
    --python-version "$py_version" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 "pydantic>=2.6"
cp -r "$source_dir" .device/cifar10-jpeg75
du -sh .device
