"""Batching, augmentation and normalisation on tensors.

Everything works on whole batches on the target device: at CIFAR/MNIST scale, per-sample Python
(DataLoader workers, PIL transforms) costs more than the small networks being distilled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from ikd.data.splits import ImageSet
from ikd.errors import DataError

# "reflect-crop-flip" pads by mirroring the border instead of with black, so crops show no empty bands;
# "-cutout" then blanks a random square of each image (DeVries & Taylor 2017), see `cutout`.
Augmentation = Literal["none", "crop", "crop-flip", "reflect-crop-flip", "reflect-crop-flip-cutout"]
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)

Stats = Sequence[float] | torch.Tensor


def check_augment(kind: str) -> str:
    if kind not in AUGMENTATIONS:
        raise DataError(f"augment={kind!r} is not a known augmentation; expected one of: {', '.join(AUGMENTATIONS)}")
    return kind


def crop_padding(size: int) -> int:
    """Padding for random crops: 4 at 32 px (the CIFAR standard), 3 at 28, 1 at 8."""
    return max(1, size // 8)


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """`tensor` on `device`. A host tensor bound for a GPU goes through pinned memory without blocking:
    a plain copy from pageable memory makes the host wait for the GPU's queue to drain, which on every
    batch would serialise Python's kernel launches with the GPU's work."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    # never non-blocking towards the host: the values could be read before they arrive
    return tensor.to(device, non_blocking=device.type == "mps")


def _random_device(generator: torch.Generator | None) -> torch.device:
    # Random numbers are drawn where the generator lives and then moved, so a CPU generator gives
    # the same augmentation whether the batch is on the CPU or a GPU.
    return generator.device if generator is not None else torch.device("cpu")


def augment_batch(images_uint8: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly crop (and for "*crop-flip" mirror) every image of a uint8 (N, C, H, W) batch at once.

    Each sample gets its own offset: one gather from the zero-padded batch with per-sample row and
    column indices (a flip is just reversed column indices). "none" returns the input unchanged.
    """
    check_augment(kind)
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(
            f"augment_batch expects uint8 (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    n, c, h, w = images_uint8.shape
    if kind == "none" or n == 0:
        return images_uint8
    dev = images_uint8.device
    rdev = _random_device(generator)
    p = crop_padding(min(h, w))
    offsets = to_device(torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=rdev), dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    if "flip" in kind:
        flip = to_device(torch.randint(0, 2, (n,), generator=generator, device=rdev), dev).bool()
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)
    cols = offsets[1, :, None] + cols
    padded = F.pad(images_uint8, (p, p, p, p), mode="reflect" if kind.startswith("reflect") else "constant")
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def cutout_size(size: int) -> int:
    """Side of the cutout square: 12 at 32 px (3/8 of the side, as airbench96 uses), 10 at 28."""
    return max(1, size * 3 // 8)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blank a square of cutout_size around a random centre of each normalised (N, C, H, W) image.

    Zero after normalisation is the dataset's mean colour, as in DeVries & Taylor; squares near the
    border are clipped, so some images lose less.
    """
    n, _, h, w = x.shape
    side = cutout_size(min(h, w))
    rdev = _random_device(generator)
    centre = to_device(
        torch.stack(
            [
                torch.randint(0, h, (n,), generator=generator, device=rdev),
                torch.randint(0, w, (n,), generator=generator, device=rdev),
            ]
        ),
        x.device,
    )
    top = centre - side // 2

    def inside(offsets: torch.Tensor, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=x.device)
        return (positions >= offsets[:, None]) & (positions < offsets[:, None] + side)

    mask = inside(top[0], h)[:, :, None] & inside(top[1], w)[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)


def normalize(images_uint8: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """float32 (x/255 - mean)/std per channel, on the images' device; works on (C,H,W) and (N,C,H,W)."""
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    c = images_uint8.shape[-3]
    m = torch.as_tensor(mean, dtype=torch.float32, device=images_uint8.device).reshape(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images_uint8.device).reshape(-1, 1, 1)
    if m.shape[0] != c or s.shape[0] != c:
        raise ValueError(f"normalize got {m.shape[0]} means and {s.shape[0]} stds for {c} channels")
    return images_uint8.to(torch.float32).div_(255.0).sub_(m).div_(s)


def iterate_batches(
    data: ImageSet,
    batch_size: int,
    *,
    mean: Stats,
    std: Stats,
    augment: str = "none",
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    with_index: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield (x float32 normalised, y int64) on `device`; one epoch, every sample once.

    With `with_index`, also the batch's positions in `data` (int64, CPU), for per-sample caches.

    Arguments are checked here, not at the first next(), so a bad flag fails before training starts.
    `data` may already live on `device` (see ImageSet.to), which skips the per-batch copy.
    """
    check_augment(augment)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device)
    s = torch.as_tensor(std, dtype=torch.float32, device=device)
    return _batches(data, int(batch_size), m, s, augment, shuffle, generator, device, drop_last, with_index)


def _batches(
    data: ImageSet,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: str,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device,
    drop_last: bool,
    with_index: bool,
) -> Iterator[tuple[torch.Tensor, ...]]:
    n = len(data)
    orders = None
    if shuffle:
        # the order is drawn where the generator lives and kept there too, beside its copy where the
        # images are: the batch's index is read from the first, so handing it out never waits for a GPU
        order = torch.randperm(n, generator=generator, device=_random_device(generator))
        orders = (order, to_device(order, data.images.device))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if orders is None:
            idx = torch.arange(start, min(start + batch_size, n))
            xb = data.images[start : start + batch_size]
            yb = data.labels[start : start + batch_size]
        else:
            idx, there = (o[start : start + batch_size] for o in orders)
            xb, yb = data.images[there], data.labels[there]
        xb, yb = to_device(xb, device), to_device(yb, device)
        x = normalize(augment_batch(xb, augment, generator), mean, std)
        if augment.endswith("-cutout"):
            x = cutout(x, generator)
        yield (x, yb, idx.cpu()) if with_index else (x, yb)
