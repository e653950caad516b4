"""`imagefolder`: DIR/train/<class>/*.png and DIR/test/<class>/*.png, decoded once with Pillow.

Files whose extension Pillow does not register (README.txt, .DS_Store) are skipped, as are hidden
files and folders; a file with an image extension that does not decode is an error.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ikd.data.download import one_line
from ikd.data.paths import user_path
from ikd.data.splits import ImageSet, RawDataset
from ikd.errors import DataError

DEFAULT_IMAGE_SIZE = 32
_GREY_MODES = ("L", "1")


def _image_extensions() -> frozenset[str]:
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(class_dir: Path, extensions: frozenset[str]) -> list[Path]:
    files = []
    # Sorted walk so the sample order, and with it the seeded split, is the same on every filesystem.
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions:
                files.append(Path(dirpath) / f)
    if not files:
        raise DataError(
            f"{class_dir}: class folder holds no images; "
            "expected at least one image file Pillow reads (.png, .jpg, .bmp, ...)"
        )
    return files


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {one_line(e, 120)})") from None


def _mode(path: Path) -> str:
    with _open(path) as im:
        return im.mode


def _decode(files: list[tuple[Path, int]], mode: str, size: int) -> ImageSet:
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with _open(path) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(im).reshape(size, size, channels)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {one_line(e, 120)})") from None
    images = torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageSet(images, labels)


def load_imagefolder(data_dir: str | Path | None, *, image_size: int | None = None, **_: object) -> RawDataset:
    if data_dir is None or str(data_dir) == "":
        raise DataError(
            "imagefolder: no --data-dir given; expected DIR with train/<class>/ and test/<class>/ image folders"
        )
    base = user_path(data_dir)
    train_dir, test_dir = base / "train", base / "test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DataError(
                f"{d}: not a directory; expected {base} to hold train/ and test/ with one subfolder per class"
            )
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir}: no class subfolders; expected one subfolder of images per class")
    test_classes = _class_dirs(test_dir)
    unknown = [c for c in test_classes if c not in classes]
    if unknown:
        raise DataError(
            f"{test_dir}: class folders {', '.join(unknown)} are not in {train_dir}; "
            f"expected test classes among: {', '.join(classes)}"
        )
    if not test_classes:
        raise DataError(f"{test_dir}: no class subfolders; expected one subfolder of images per class")
    ext = _image_extensions()
    index = {c: i for i, c in enumerate(classes)}
    train_files = [(p, index[c]) for c in classes for p in _list_images(train_dir / c, ext)]
    test_files = [(p, index[c]) for c in test_classes for p in _list_images(test_dir / c, ext)]
    # Greyscale data stays one channel (a third of the compute); one colour image makes it RGB.
    mode = "L" if all(_mode(p) in _GREY_MODES for p, _ in train_files) else "RGB"
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    return RawDataset(
        train=_decode(train_files, mode, size),
        test=_decode(test_files, mode, size),
        classes=classes,
        augment="reflect-crop-flip",
        source=str(base),
    )
