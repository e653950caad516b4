"""`imagefolder`: DIR/train/<class>/*.png and DIR/test/<class>/*.png, decoded once with Pillow.

Files whose extension Pillow does not register (README.txt, .DS_Store, .heic without a plugin) are
skipped with one line counting them, as are hidden files and folders; a file with an image
extension that does not decode is an error. Images are turned upright by their EXIF orientation,
16-bit ones scaled to 8 bits, and an alpha channel is dropped.
"""

from __future__ import annotations

import os
import sys
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageOps

from ikd.data.download import one_line
from ikd.data.paths import user_path
from ikd.data.splits import ImageSet, RawDataset
from ikd.errors import DataError

DEFAULT_IMAGE_SIZE = 32
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_GREY_MODES = ("L", "1", "LA", *_SIXTEEN_BIT)
# 32-bit integer or float pixels have no agreed range (0..1? 0..65535? Hounsfield units?)
_NO_RANGE = {"I": "32-bit integer", "F": "32-bit float"}


def _image_extensions() -> frozenset[str]:
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _class_dirs(split_dir: Path) -> list[str]:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    # the same name typed on macOS (decomposed) and on Linux (composed) would be two classes that print alike
    forms = Counter(unicodedata.normalize("NFC", n) for n in names)
    if twice := [n for n in names if forms[unicodedata.normalize("NFC", n)] > 1]:
        raise DataError(
            f"{split_dir}: class folders {', '.join(map(ascii, twice))} are one name in two Unicode forms; "
            "expected each class once (rename one)"
        )
    return names


def _list_images(class_dir: Path, extensions: frozenset[str], skipped: Counter[str]) -> list[Path]:
    """The image files under `class_dir`, sorted; counts in `skipped` the extensions of the others."""
    files, seen = [], set()
    # Sorted walk so the sample order, and with it the seeded split, is the same on every filesystem;
    # linked folders are followed, as a linked class folder is, each real folder once (no link loops).
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        if (real := os.path.realpath(dirpath)) in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            extension = os.path.splitext(f)[1].lower()
            if extension in extensions:
                files.append(Path(dirpath) / f)
            else:
                skipped[extension or "(none)"] += 1
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


def _eight_bit(im: Image.Image, path: Path) -> Image.Image:
    """`im` with 8-bit samples: 16-bit greyscale scaled (0..65535 -> 0..255), not clipped at 255 as
    Pillow's convert would; 32-bit integer or float pixels refused, their range unknown."""
    if im.mode in _NO_RANGE:
        raise DataError(
            f"{path}: {_NO_RANGE[im.mode]} pixels (mode {im.mode}), whose range ikd cannot know; "
            "expected 8- or 16-bit images: convert it first"
        )
    if im.mode in _SIXTEEN_BIT:
        return Image.fromarray((np.asarray(im, dtype=np.uint32) * 255 // 65535).astype(np.uint8), "L")
    return im


def _decode(files: list[tuple[Path, int]], mode: str, size: int) -> ImageSet:
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with _open(path) as opened:
                im = _eight_bit(ImageOps.exif_transpose(opened), path).convert(mode)
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
    if len(classes) < 2:
        raise DataError(f"{train_dir}: one class folder ({classes[0]}); expected at least 2, one per class")
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
    skipped: Counter[str] = Counter()
    train_files = [(p, index[c]) for c in classes for p in _list_images(train_dir / c, ext, skipped)]
    test_files = [(p, index[c]) for c in test_classes for p in _list_images(test_dir / c, ext, skipped)]
    loose = sum(1 for d in (train_dir, test_dir) for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    if skipped or loose:  # said, not silent: a .heic folder would otherwise vanish from the data
        kinds = ", ".join(f"{n} {e}" for e, n in skipped.most_common(5)) + (", ..." if len(skipped) > 5 else "")
        parts = [f"{sum(skipped.values())} files Pillow does not read ({kinds})"] if skipped else []
        parts += [f"{loose} files outside the class folders of train/ and test/"] if loose else []
        print(f"ikd: imagefolder {base}: skipped {' and '.join(parts)}", file=sys.stderr)
    # Greyscale data stays one channel (a third of the compute); one colour image makes it RGB.
    mode = "L" if all(_mode(p) in _GREY_MODES for p, _ in train_files) else "RGB"
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    return RawDataset(
        train=_decode(train_files, mode, size),
        test=_decode(test_files, mode, size),
        classes=classes,
        augment="reflect-crop-flip",
        source=str(base),
        decoder=f"Pillow {PIL.__version__}",  # another version may decode (and resize) a file to other pixels
    )
