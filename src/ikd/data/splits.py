"""In-memory dataset containers, the seeded validation split and the normalisation statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ikd.errors import DataError


# eq=False: generated __eq__/__hash__ would compare tensors elementwise (ambiguous) and hash a list.
@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split held entirely in memory as uint8, so batches are gathered by indexing, not decoding."""

    images: torch.Tensor  # uint8 (N, C, H, W), contiguous
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        # Loaders validate user data; these checks only catch programming mistakes.
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.ndim != 1:
            raise ValueError(f"ImageSet.labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"ImageSet has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if not self.images.is_contiguous():
            object.__setattr__(self, "images", self.images.contiguous())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: str | torch.device) -> ImageSet:
        """Copy to a device once, so every later batch is gathered there without host transfers."""
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True, eq=False)
class DataSplits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    source: str
    decoder: str | None = None  # what turned image files into pixels (None: the files hold raw pixels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def augment_for(self, asked: str | None) -> str:
        """The augmentation a training asked for, None meaning this dataset's default."""
        return self.augment if asked is None else asked

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])


@dataclass(frozen=True, eq=False)
class RawDataset:
    """What a source reader returns: the full training set (before the validation split) and the test set."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    augment: str
    source: str
    decoder: str | None = None  # as DataSplits.decoder


def check_val_fraction(val_fraction: float) -> float:
    try:
        f = float(val_fraction)
    except (TypeError, ValueError):
        f = math.nan
    if not 0.0 < f < 1.0:  # also rejects NaN
        raise DataError(f"val_fraction={val_fraction!r}: expected a number strictly between 0 and 1")
    return f


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (kept, held_out) indices, holding out about `fraction` of every class.

    The held-out total is round(fraction * N), shared among classes by largest remainder, so
    class proportions match in both parts and small sets still get a non-empty split. Every class
    keeps at least one sample so a rare class never vanishes from training. Classes are visited in
    sorted order with one numpy Generator: the split depends only on (labels, fraction, seed).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    order = np.argsort(labels, kind="stable")
    groups = [g for g in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1) if g.size]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    quota = fraction * sizes
    cap = sizes - 1
    k = np.minimum(np.floor(quota).astype(np.int64), cap)
    remaining = min(math.floor(fraction * n + 0.5), int(cap.sum())) - int(k.sum())
    by_remainder = np.argsort(-(quota - k), kind="stable")
    while remaining > 0:
        for c in by_remainder:
            if remaining > 0 and k[c] < cap[c]:
                k[c] += 1
                remaining -= 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(g)[:kc] for g, kc in zip(groups, k, strict=True) if kc > 0]
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def subset(data: ImageSet, idx: np.ndarray) -> ImageSet:
    t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    return ImageSet(data.images[t].contiguous(), data.labels[t].contiguous())


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of images/255 from 256-bin histograms.

    Converting 45k CIFAR images to float64 would need ~1 GB; histograms are exact, small and fast.
    A constant channel gets std 1.0 instead of 0 so normalisation cannot divide by zero.
    """
    c = images.shape[1]
    # One bincount per channel: torch.bincount has a large per-call cost, chunking made it 10x slower.
    hist = torch.stack([torch.bincount(images[:, ch].reshape(-1), minlength=256) for ch in range(c)])
    h = hist.numpy().astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = h.sum(axis=1)
    mean = (h @ values) / count
    var = (h * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / count
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_consistent(raw: RawDataset, where: str) -> None:
    """Final guard shared by every source: shapes agree, images square, labels inside the class list."""
    tr, te = raw.train.images, raw.test.images
    if len(raw.train) == 0:
        raise DataError(f"{where}: the training set is empty; expected at least one image")
    if len(raw.test) == 0:
        raise DataError(f"{where}: the test set is empty; expected at least one image")
    if tr.shape[1:] != te.shape[1:]:
        raise DataError(
            f"{where}: train images are {tuple(tr.shape[1:])} (C, H, W) but test images are "
            f"{tuple(te.shape[1:])}; expected the same shape"
        )
    if tr.shape[2] != tr.shape[3]:
        raise DataError(
            f"{where}: images are {tr.shape[2]}x{tr.shape[3]} (HxW); "
            "expected square images (pass image_size / --image-size to resize)"
        )
    k = len(raw.classes)
    if k < 2:
        raise DataError(f"{where}: {k} class ({', '.join(map(str, raw.classes))}); expected at least 2 to classify")
    if len(set(raw.classes)) != k:  # the model's record of them would be refused (ikd.checkpoint), after training
        twice = next(c for c in raw.classes if raw.classes.count(c) > 1)
        raise DataError(f"{where}: names class {twice!r} twice; expected distinct class names")
    for part, s in (("train", raw.train), ("test", raw.test)):
        lo, hi = int(s.labels.min()), int(s.labels.max())
        if lo < 0 or hi >= k:
            raise DataError(f"{where}: {part} labels span {lo}..{hi}; expected labels in 0..{k - 1} ({k} classes)")
    # a class without training images cannot be learnt, only lost (npz and idx take the class count from
    # the largest label: labels {0, 2} made a class 1 nobody trains)
    counts = torch.bincount(raw.train.labels, minlength=k)
    if empty := [str(raw.classes[c]) for c in range(k) if counts[c] == 0]:
        shown = ", ".join(empty[:5]) + (f", ... ({len(empty)} classes)" if len(empty) > 5 else "")
        raise DataError(f"{where}: no training image of class {shown}; expected every class in the training set")


def check_split_seed(split_seed: int) -> int:
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise DataError(f"split_seed={split_seed!r}: expected a non-negative integer")
    return int(split_seed)


def make_splits(name: str, raw: RawDataset, val_fraction: float, split_seed: int) -> DataSplits:
    check_consistent(raw, raw.source)
    f = check_val_fraction(val_fraction)
    kept, held = stratified_split(raw.train.labels.numpy(), f, check_split_seed(split_seed))
    if held.size == 0:
        raise DataError(
            f"val_fraction={val_fraction!r} leaves no validation images out of {len(raw.train)} "
            "training images; expected a larger fraction or more data"
        )
    train, val = subset(raw.train, kept), subset(raw.train, held)
    mean, std = channel_stats(train.images)
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=raw.test,
        classes=list(raw.classes),
        mean=mean,
        std=std,
        augment=raw.augment,
        source=raw.source,
        decoder=raw.decoder,
    )
