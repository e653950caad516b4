"""`npz`: one NumPy archive with x_train, y_train, x_test, y_test (and optionally `classes`).

--data-dir is the .npz file itself, or a directory holding exactly one .npz file. Arrays are read
with allow_pickle=False, so an archive cannot run code. Accepted layouts:
  x: uint8 or float in [0, 1]; (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}
  y: integers >= 0, shape (N,) or (N, 1); classes 0..max(y_train), or named by a 1-d str
     array `classes` (then labels must be below its length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ikd.data.download import one_line
from ikd.data.paths import user_path
from ikd.data.splits import ImageSet, RawDataset
from ikd.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
_LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"


def _npz_path(data_dir: str | Path | None) -> Path:
    if data_dir is None or str(data_dir) == "":
        raise DataError(f"npz: no --data-dir given; expected the path of an .npz file with {', '.join(KEYS)}")
    p = user_path(data_dir)
    if p.is_dir():
        found = sorted(p.glob("*.npz"))
        if len(found) != 1:
            names = ", ".join(f.name for f in found) or "none"
            raise DataError(
                f"{p}: holds {len(found)} .npz files ({names}); expected exactly one, or pass the .npz file itself"
            )
        return found[0]
    if not p.is_file():
        raise DataError(f"{p}: not found; expected an .npz file with {', '.join(KEYS)}")
    return p


def _channels_first(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        last, first = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
        if last and first:  # only tiny images are ambiguous; the square reading wins, NHWC on a tie
            last = x.shape[1] == x.shape[2] or x.shape[2] != x.shape[3]
            first = not last
        if last:
            return x.transpose(0, 3, 1, 2)
        if first:
            return x
    raise DataError(f"{where} has shape {x.shape}; expected {_LAYOUTS}")


def _images(x: np.ndarray, where: str) -> torch.Tensor:
    x = _channels_first(x, where)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise DataError(f"{where} has shape {x.shape}; expected images of at least 1x1 pixels")
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind == "f":
        if x.size and not np.isfinite(x).all():
            raise DataError(
                f"{where} is {x.dtype} holding NaN or infinite values; expected uint8 0..255 or floats in [0, 1]"
            )
        if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):
            raise DataError(
                f"{where} is {x.dtype} with values outside [0, 1] (min {x.min():.4g}, max {x.max():.4g}); "
                "expected uint8 0..255 or floats in [0, 1]"
            )
        x = np.rint(x * 255.0).astype(np.uint8)
    else:
        raise DataError(f"{where} is {x.dtype}; expected uint8 0..255 or floats in [0, 1]")
    return torch.from_numpy(np.array(x, dtype=np.uint8, order="C"))


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # Keras' CIFAR layout
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{where} is {y.dtype} of shape {y.shape}; expected integer labels of shape (N,)")
    if y.shape[0] != n:
        raise DataError(f"{where} has {y.shape[0]} labels for {n} images; expected the same count")
    if y.size and int(y.min()) < 0:
        raise DataError(f"{where} holds label {int(y.min())}; expected labels >= 0")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:  # the cast below would wrap it negative
        raise DataError(f"{where} holds label {int(y.max())}; expected class indices 0..N-1")
    return y.astype(np.int64)


def load_npz(data_dir: str | Path | None, **_: object) -> RawDataset:
    path = _npz_path(data_dir)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as e:
        raise DataError(f"{path}: not readable ({e.strerror})") from None
    if not magic.startswith((b"PK", b"\x93NUMPY")):  # else numpy's error is about pickles, which ikd never loads
        raise DataError(f"{path}: not an .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {one_line(e, 120)})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array; expected an .npz archive with keys {', '.join(KEYS)}")
    arrays: dict[str, np.ndarray] = {}
    with z:
        for key in (*KEYS, "classes"):
            if key not in z.files:
                if key == "classes":
                    continue
                raise DataError(
                    f"{path}: missing key '{key}' (has: {', '.join(z.files) or 'none'}); expected {', '.join(KEYS)}"
                )
            try:
                arrays[key] = z[key]
            except Exception as e:
                raise DataError(f"{path}: key '{key}' is unreadable ({type(e).__name__}: {one_line(e, 120)})") from None
    w = {k: f"{path} key '{k}'" for k in (*KEYS, "classes")}
    xtr, xte = _images(arrays["x_train"], w["x_train"]), _images(arrays["x_test"], w["x_test"])
    ytr = _labels(arrays["y_train"], xtr.shape[0], w["y_train"])
    yte = _labels(arrays["y_test"], xte.shape[0], w["y_test"])
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind != "U" or names.size == 0:
            raise DataError(
                f"{w['classes']} is {names.dtype} of shape {names.shape}; expected a 1-d array of class names"
            )
        classes = [str(n) for n in names]
    else:
        if ytr.size == 0:
            raise DataError(f"{w['y_train']} is empty; expected at least one training label")
        if int(ytr.max()) >= ytr.size:  # its classes would be built one by one: a label of 1e9 ran out of memory
            raise DataError(
                f"{w['y_train']} holds label {int(ytr.max())} among {ytr.size} images; expected class indices "
                "0..N-1 (name more classes than images with a 'classes' array)"
            )
        classes = [str(c) for c in range(int(ytr.max()) + 1)]
    for key, y in (("y_train", ytr), ("y_test", yte)):
        if y.size and int(y.max()) >= len(classes):
            raise DataError(
                f"{w[key]} holds label {int(y.max())}; expected labels 0..{len(classes) - 1} ({len(classes)} classes)"
            )
    return RawDataset(
        train=ImageSet(xtr, torch.from_numpy(ytr)),
        test=ImageSet(xte, torch.from_numpy(yte)),
        classes=classes,
        augment="none",
        source=str(path),
    )
