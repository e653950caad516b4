"""augment_batch, normalize and iterate_batches."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ikd.data import (
    AUGMENTATIONS,
    ImageSet,
    augment_batch,
    crop_padding,
    cutout_size,
    iterate_batches,
    normalize,
)
from ikd.errors import DataError


def images(n=32, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # values 1..255 so zero padding is distinguishable from image content
    return torch.randint(1, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def windows(x: torch.Tensor, p: int, flips: bool, reflect: bool = False) -> list[torch.Tensor]:
    """Every crop the augmentation may produce for one (C, H, W) image."""
    h, w = x.shape[1:]
    if reflect:  # by hand: row -k is row k, row h-1+k is row h-1-k
        rows = [abs(i) if i < h else 2 * (h - 1) - i for i in range(-p, h + p)]
        cols = [abs(j) if j < w else 2 * (w - 1) - j for j in range(-p, w + p)]
        padded = x[:, rows][:, :, cols]
    else:
        padded = F.pad(x, (p, p, p, p))
    out = []
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            win = padded[:, oy : oy + h, ox : ox + w]
            out.append(win)
            if flips:
                out.append(win.flip(-1))
    return out


def test_padding_rule():
    assert [crop_padding(s) for s in (8, 16, 28, 32, 64)] == [1, 2, 3, 4, 8]
    assert AUGMENTATIONS == ("none", "crop", "crop-flip", "reflect-crop-flip", "reflect-crop-flip-cutout")


@pytest.mark.parametrize("kind", ["crop", "crop-flip", "reflect-crop-flip"])
@pytest.mark.parametrize("size, c", [(32, 3), (28, 1), (8, 1)])
def test_every_output_is_a_valid_window(kind, size, c):
    x = images(n=24, c=c, size=size)
    out = augment_batch(x, kind, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_contiguous()
    p = crop_padding(size)
    for i in range(len(x)):
        reflect = kind == "reflect-crop-flip"
        expected = windows(x[i], p, flips=kind != "crop", reflect=reflect)
        assert any(torch.equal(out[i], w) for w in expected), i
        if reflect:  # never a padded zero: image values are 1..255
            assert out[i].ne(0).all()


def test_crop_flip_varies_and_flips():
    x = images(n=1).expand(256, -1, -1, -1).contiguous()
    out = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    distinct = {bytes(o.numpy()) for o in out}
    assert len(distinct) > 40
    plain = {bytes(w.numpy()) for w in windows(x[0], 4, flips=False)}
    flipped = sum(bytes(o.numpy()) not in plain for o in out)
    assert 80 < flipped < 176  # about half are mirrored
    assert augment_batch(x, "crop", torch.Generator().manual_seed(0)).ne(0).any()


def test_crop_never_flips():
    x = images(n=64, size=8, c=1)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(3))
    for i in range(len(x)):
        assert any(torch.equal(out[i], w) for w in windows(x[i], 1, flips=False))


def test_augment_deterministic_with_generator_and_none_is_identity():
    x = images()
    a = augment_batch(x, "crop-flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, "crop-flip", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert augment_batch(x, "none") is x
    assert augment_batch(x[:0], "crop-flip").shape == (0, 3, 32, 32)


def test_augment_kind_validated():
    with pytest.raises(
        DataError,
        match=r"augment='flip' is not a known augmentation; expected one of: none, crop, crop-flip, "
        r"reflect-crop-flip, reflect-crop-flip-cutout$",
    ):
        augment_batch(images(n=2), "flip")
    with pytest.raises(ValueError, match=r"augment_batch expects uint8 \(N, C, H, W\), got torch.float32"):
        augment_batch(images(n=2).float(), "crop")


def test_normalize():
    x = images(n=4)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(3, 1, 1)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(normalize(x[0], mean, std), y[0])  # unbatched too
    with pytest.raises(ValueError, match="normalize got 1 means and 1 stds for 3 channels"):
        normalize(x, (0.1,), (0.2,))


def dataset(n=103, size=6):
    imgs = torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return ImageSet(imgs, torch.arange(n, dtype=torch.int64))


def test_iterate_shuffled_epoch_covers_every_sample_once():
    data = dataset()
    mean, std = (0.4,), (0.25,)
    seen = []
    for x, y in iterate_batches(data, 10, mean=mean, std=std, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 6, 6)
        torch.testing.assert_close(x, normalize(data.images[y], mean, std))
        seen.append(y)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(103))
    assert order.tolist() != list(range(103))
    assert [len(s) for s in seen] == [10] * 10 + [3]


def test_the_shuffled_index_is_on_the_host_and_names_the_batch_images():
    data = dataset()  # each label is the image's position
    g = torch.Generator().manual_seed(3)
    batches = list(iterate_batches(data, 16, mean=(0.5,), std=(0.5,), shuffle=True, generator=g, with_index=True))
    for _, y, index in batches:
        assert index.device.type == "cpu" and torch.equal(index, y)
    assert sorted(torch.cat([i for _, _, i in batches]).tolist()) == list(range(103))


def test_iterate_order_and_drop_last_and_determinism():
    data = dataset()
    kw: dict[str, Any] = {"mean": (0.5,), "std": (0.5,)}
    ys = [y for _, y in iterate_batches(data, 25, **kw)]
    assert torch.cat(ys).tolist() == list(range(103))
    assert [len(y) for _, y in iterate_batches(data, 25, drop_last=True, **kw)] == [25] * 4

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(data, 7, shuffle=True, generator=g, augment="crop", **kw)])

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_iterate_augments_then_normalises():
    data = dataset(n=16, size=8)
    batches = list(
        iterate_batches(data, 16, mean=(0.0,), std=(1.0,), augment="crop", generator=torch.Generator().manual_seed(0))
    )
    x, _ = batches[0]
    restored = (x * 255).round().to(torch.uint8)
    assert not torch.equal(restored, data.images)  # something was cropped
    for i in range(16):
        assert any(torch.equal(restored[i], w) for w in windows(data.images[i], 1, flips=False))


def test_iterate_validates_eagerly():
    with pytest.raises(DataError, match="augment='bad'"):
        iterate_batches(dataset(), 8, mean=(0.5,), std=(0.5,), augment="bad")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        iterate_batches(dataset(), 0, mean=(0.5,), std=(0.5,))


def test_iterate_does_not_modify_data():
    data = dataset()
    before = data.images.clone()
    for _ in iterate_batches(data, 50, mean=(0.5,), std=(0.5,), augment="crop"):
        pass
    assert torch.equal(before, data.images)


def test_cutout_blanks_one_clipped_square_per_image_to_the_mean():
    data = ImageSet(torch.full((64, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
    ((x, _),) = iterate_batches(
        data, 64, mean=mean, std=std, augment="reflect-crop-flip-cutout", generator=torch.Generator().manual_seed(0)
    )
    blank = (x == 0).all(dim=1)  # (N, H, W): every channel at the mean
    side = cutout_size(32)
    assert side == 12
    for image in blank:
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert 0 < image.sum() <= side * side  # one square, clipped at the border
        assert image.sum() == len(rows) * len(cols)  # a rectangle: every blank row has the same blank columns
        assert len(rows) <= side and len(cols) <= side
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
    assert (blank.sum((1, 2)) == side * side).float().mean() > 0.3  # most squares lie whole inside
    assert not torch.equal(blank[0], blank[1])  # each image its own square
