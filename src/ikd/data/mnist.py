"""MNIST, Fashion-MNIST (verified against the official checksums, downloadable) and generic IDX data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ikd.data.download import DownloadError, fetch, one_line
from ikd.data.idx import (
    IMAGES_NDIM,
    LABELS_NDIM,
    check_label_range,
    check_pair,
    gunzip,
    parse_idx,
    read_maybe_gzip,
)
from ikd.data.paths import candidate_dirs, resolve_data_root
from ikd.data.splits import ImageSet, RawDataset
from ikd.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# md5 of the decompressed files: stable however a copy was re-gzipped (Debian re-gzips Fashion-MNIST).
RAW_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
        TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
        TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
        TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
        TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
        TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Tried in order; each serves `<file>.gz`.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

# Debian/Ubuntu package `dataset-fashion-mnist` installs the gzipped IDX files here.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASSES: dict[str, list[str]] = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}


def find_file(directory: Path, stem: str) -> Path | None:
    """The raw file if present (no decompression needed), else the .gz."""
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def find_set(directory: Path) -> dict[str, Path] | None:
    found = {stem: find_file(directory, stem) for stem in FILES}
    if any(p is None for p in found.values()):
        return None
    return found  # type: ignore[return-value]


def _file_list() -> str:
    return ", ".join(f"{s}.gz" for s in FILES)


def _not_found(name: str, target: Path, searched: list[Path], download_reason: str | None) -> DataError:
    where = ", ".join(str(d) for d in searched)
    failed = f" and download failed ({download_reason})" if download_reason is not None else ""
    return DataError(
        f"{name}: files not found in {target} (searched {where}){failed}; "
        f"put {_file_list()} there, or pass --data-dir DIR"
    )


def _md5_checker(name: str, stem: str):
    def verify(path: Path) -> None:
        # Reported against the URL by fetch(), so name the response rather than the temp file.
        data = gunzip(path.read_bytes(), "response")
        _check_md5(name, stem, "response", data)

    return verify


def _check_md5(name: str, stem: str, where: Path | str, data: bytes) -> None:
    expected = RAW_MD5[name][stem]
    got = hashlib.md5(data).hexdigest()
    if got != expected:
        raise DataError(
            f"{where}: md5 of the decompressed data is {got}, expected {expected} (official {name} {stem}); "
            "for other IDX data use --dataset idx"
        )


def _download(name: str, target: Path) -> dict[str, Path]:
    for stem in FILES:
        if find_file(target, stem) is not None:
            continue  # keep files a previous, interrupted run already verified
        urls = [f"{mirror}{stem}.gz" for mirror in MIRRORS.get(name, [])]
        fetch(urls, target / f"{stem}.gz", _md5_checker(name, stem))
    found = find_set(target)
    if found is None:  # only if someone deletes files while we download
        raise DownloadError(f"files vanished from {target} after download")
    return found


def _read(paths: dict[str, Path], verify_as: str | None) -> tuple[np.ndarray, ...]:
    arrays = []
    for stem in FILES:
        path = paths[stem]
        data = read_maybe_gzip(path)
        if verify_as is not None:
            _check_md5(verify_as, stem, path, data)
        ndim = IMAGES_NDIM if "images" in stem else LABELS_NDIM
        arrays.append(parse_idx(data, str(path), ndim))
    return tuple(arrays)


def _to_imageset(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    # One copy out of the (read-only) file buffer, adding the channel axis.
    x = torch.from_numpy(np.array(images[:, None, :, :], dtype=np.uint8))
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageSet(x, y)


def _build(paths: dict[str, Path], verify_as: str | None, classes: list[str] | None) -> RawDataset:
    xtr, ytr, xte, yte = _read(paths, verify_as)
    check_pair(xtr, ytr, paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
    check_pair(xte, yte, paths[TEST_IMAGES], paths[TEST_LABELS])
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{paths[TRAIN_IMAGES]} holds {xtr.shape[1]}x{xtr.shape[2]} images but "
            f"{paths[TEST_IMAGES]} holds {xte.shape[1]}x{xte.shape[2]}; expected the same size"
        )
    if classes is None:  # generic IDX: the training labels define the classes
        if ytr.size == 0:
            raise DataError(f"{paths[TRAIN_LABELS]}: no labels; expected at least one training sample")
        classes = [str(c) for c in range(int(ytr.max()) + 1)]
    check_label_range(ytr, len(classes), paths[TRAIN_LABELS])
    check_label_range(yte, len(classes), paths[TEST_LABELS])
    return RawDataset(
        train=_to_imageset(xtr, ytr),
        test=_to_imageset(xte, yte),
        classes=list(classes),
        augment="none",
        source=str(paths[TRAIN_IMAGES].parent),
    )


def load_mnist_like(name: str, data_dir: str | Path | None, *, download: bool = True, **_: object) -> RawDataset:
    """MNIST or Fashion-MNIST: search data_dir, root/<name> (and the Debian path), else download."""
    root = resolve_data_root(data_dir)
    target = root / name
    extra = [FASHION_SYSTEM_DIR] if name == "fashion-mnist" else []
    searched = candidate_dirs(data_dir, target, extra)
    for d in searched:
        paths = find_set(d)
        if paths is not None:
            return _build(paths, name, CLASSES[name])
    if not download:
        raise _not_found(name, target, searched, None)
    try:
        paths = _download(name, target)
    except DownloadError as e:
        raise _not_found(name, target, searched, one_line(e, 600)) from None
    return _build(paths, name, CLASSES[name])


def load_idx(data_dir: str | Path | None, **_: object) -> RawDataset:
    """Users' own IDX data: the four MNIST-named files, no checksum, classes from the labels."""
    root = resolve_data_root(data_dir)
    target = root / "idx"
    searched = candidate_dirs(data_dir, target, [])
    for d in searched:
        paths = find_set(d)
        if paths is not None:
            return _build(paths, None, None)
    raise _not_found("idx", target, searched, None)
