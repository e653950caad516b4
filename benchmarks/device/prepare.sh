#!/usr/bin/env bash
# Run HERE before lending the CIFAR-10 rows of the paper table to a GPU machine (the device tool).
# That machine starts bare, reaches no network and has its own Python 3.12 with PyTorch, numpy,
# Pillow, onnx(runtime), matplotlib, scikit-learn... but not pydantic. This gathers what it lacks
# into .device/ (git-ignored; it travels with `carry`): pydantic's wheels for its Python, and the
# CIFAR-10 JPEG-Q75 source (54 MB; the unpacked batches, 178 MB, would not fit the 64 MiB carry).
#
#   bash benchmarks/device/prepare.sh [CIFAR_JPEG_DIR]     # default ../shared/data/cifar10-jpeg75
set -euo pipefail
cd "$(dirname "$0")/../.."
source_dir=${1:-../shared/data/cifar10-jpeg75}
[ -f "$source_dir/build_batches.py" ] || { echo "prepare.sh: $source_dir: no build_batches.py; expected the CIFAR-10 JPEG-Q75 folder" >&2; exit 2; }
rm -rf .device
mkdir -p .device/wheels
.venv/bin/pip download -q --dest .device/wheels --only-binary=:all: --implementation cp \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 "pydantic>=2.6"
cp -r "$source_dir" .device/cifar10-jpeg75
du -sh .device
