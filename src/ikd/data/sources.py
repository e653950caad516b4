"""The dataset registry and `load_dataset`, the one entry point the rest of ikd uses."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ikd.data.cifar import load_cifar10
from ikd.data.folder import DEFAULT_IMAGE_SIZE, load_imagefolder
from ikd.data.mnist import load_idx, load_mnist_like
from ikd.data.npz import load_npz
from ikd.data.paths import data_dir_given
from ikd.data.splits import (
    DataSplits,
    ImageSet,
    RawDataset,
    check_split_seed,
    check_val_fraction,
    make_splits,
    stratified_split,
    subset,
)
from ikd.errors import DataError

MAX_IMAGE_SIZE = 4096
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "idx", "cifar10", "imagefolder", "npz")

# digits has no official test split; this one is fixed forever so test numbers stay comparable
# across runs whatever --split-seed is.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


DIGITS_SHAPE = (1797, 8 * 8 + 1)  # rows of scikit-learn's digits.csv.gz: 64 pixels (0-16), then the label


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images 0-16, n x 8 x 8; labels). Read from the CSV file scikit-learn ships,
    without importing scikit-learn: its import is over a second of every ikd command on digits. Its own
    loader reads that same file, and takes over where a version keeps it elsewhere."""
    package = importlib.util.find_spec("sklearn")  # finds the package without running it
    if package is not None and package.origin is not None:
        path = Path(package.origin).parent / "datasets" / "data" / "digits.csv.gz"
        table = np.loadtxt(path, delimiter=",") if path.is_file() else None
        if table is not None and table.shape == DIGITS_SHAPE:
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    return d.images, d.target.astype(np.int64)


def load_digits(data_dir: str | Path | None = None, **_: object) -> RawDataset:
    """scikit-learn's 8x8 digits (1,797 images, shipped inside the package: no download)."""
    pixels, labels = digits_arrays()
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    full = ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))
    kept, test = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return RawDataset(
        train=subset(full, kept),
        test=subset(full, test),
        classes=[str(c) for c in range(10)],
        augment="none",
        source="sklearn.datasets.load_digits",
    )


Loader = Callable[..., RawDataset]

# The size each dataset loads at when no image_size is given; idx and npz files have their own.
NATIVE_IMAGE_SIZES: dict[str, int] = {
    "digits": 8,
    "mnist": 28,
    "fashion-mnist": 28,
    "cifar10": 32,
    "imagefolder": DEFAULT_IMAGE_SIZE,
}


def effective_image_size(name: str, image_size: int | None) -> int | None:
    """The size `load_dataset(name, image_size=image_size)` gives its images, where it is known
    without loading (None: it depends on the files)."""
    return NATIVE_IMAGE_SIZES.get(name) if image_size is None else image_size


_LOADERS: dict[str, Loader] = {
    "digits": load_digits,
    "mnist": functools.partial(load_mnist_like, "mnist"),
    "fashion-mnist": functools.partial(load_mnist_like, "fashion-mnist"),
    "idx": load_idx,
    "cifar10": load_cifar10,
    "imagefolder": load_imagefolder,
    "npz": load_npz,
}


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 (N, C, H, W), in chunks to bound float memory."""
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    step = 4096
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step].to(torch.float32)
        r = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + step] = r.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _resized(raw: RawDataset, size: int) -> RawDataset:
    def one(s: ImageSet) -> ImageSet:
        if tuple(s.images.shape[2:]) == (size, size):
            return s
        return ImageSet(resize_images(s.images, size), s.labels)

    return dataclasses.replace(raw, train=one(raw.train), test=one(raw.test))


def _check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or not 1 <= int(image_size) <= MAX_IMAGE_SIZE
    ):
        raise DataError(
            f"image_size={image_size!r}: expected an integer number of pixels between 1 and {MAX_IMAGE_SIZE}"
        )
    return int(image_size)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    image_size: int | None = None,
    download: bool = True,
) -> DataSplits:
    """Load a dataset into memory as train/val/test uint8 tensors with train-only statistics.

    image_size: None keeps each dataset's native size (imagefolder: 32); otherwise images are
    resized to image_size x image_size (imagefolder by Pillow while decoding, the others with an
    antialiased bilinear resize after loading).
    """
    if name not in _LOADERS:
        raise DataError(f"dataset {name!r} is not known; expected one of: {', '.join(DATASETS)}")
    if name == "digits" and data_dir_given(data_dir):
        # the user meant some files to be read; training on the built-in set instead would hide that
        raise DataError(
            f"--data-dir {data_dir}: the digits dataset is built into scikit-learn and reads no files; "
            "drop --data-dir (data.dir), or name the dataset those files hold"
        )
    check_val_fraction(val_fraction)  # before any slow loading or downloading
    check_split_seed(split_seed)
    size = _check_image_size(image_size)
    raw = _LOADERS[name](data_dir, download=download, image_size=size)
    if size is not None:
        raw = _resized(raw, size)
    if name in USER_SPLIT and (shared := images_in_both(raw)):
        print(
            f"ikd: warning: {raw.source}: {shared} of the {len(raw.test)} test images are also training images, "
            "pixel for pixel; test accuracy on them overstates (remove them from one split)",
            file=sys.stderr,
        )
    return make_splits(name, raw, val_fraction, split_seed)


# Datasets whose train/test split the user made (the published ones are as published)
USER_SPLIT = ("idx", "imagefolder", "npz")


def images_in_both(raw: RawDataset) -> int:
    """How many test images equal some training image exactly (a copy in both folders, a split made
    twice): a model is then tested on images it learnt."""

    def digests(images: torch.Tensor) -> list[bytes]:
        rows = images.flatten(1).numpy()  # reshape(len, -1) fails on an empty split, which is refused later
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]

    train = set(digests(raw.train.images))
    return sum(d in train for d in digests(raw.test.images))
