"""CIFAR-10 in the `cifar-10-batches-py` pickle layout, from a directory or straight from the tar.gz.

The batches are pickles, and unpickling runs whatever callables the file names. Data files come
from the internet, so the unpickler only resolves the handful of numpy reconstructors these files
need; anything else is refused before it can run.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ikd.data.download import one_line
from ikd.data.paths import candidate_dirs, resolve_data_root
from ikd.data.splits import ImageSet, RawDataset
from ikd.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SHAPE = (3, 32, 32)
ROW = 3 * 32 * 32
# An official batch is 31 MB; a member far larger is not a CIFAR batch and is not read into memory.
MAX_MEMBER = 512 << 20


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    # Only that use is honoured, so the codec machinery cannot be driven to anything else.
    normalized = str(encoding).lower().replace("-", "").replace("_", "")
    if not isinstance(text, str) or normalized not in ("latin1", "iso88591", "l1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin1", "strict")


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # Files pickled under numpy 1 name numpy.core.*, under numpy 2 numpy._core.*; both map to
    # the installed functions without importing the deprecated module path.
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        # private to numpy, so not in its stubs; the pickles name it
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


_ALLOWED = _numpy_globals()


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, where: str) -> None:
        # "bytes" keeps Python 2 str (the official files' keys and array data) as bytes.
        super().__init__(file, encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> object:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise DataError(
                f"{self._where}: pickle tries to load {one_line(module, 80)}.{one_line(name, 80)}; "
                "only plain data and numpy arrays are allowed"
            )
        return obj


def safe_unpickle(data: bytes, where: str) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data), where).load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: not a readable pickle ({type(e).__name__}: {one_line(e, 120)})") from None


def _str_keys(obj: object, where: str, what: str) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: pickle holds a {type(obj).__name__}; expected a dict ({what})")
    out: dict[str, object] = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin1")
        if isinstance(k, str):
            out[k] = v
    return out


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def parse_batch(obj: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,3,32,32), labels int64 (N,)) from one unpickled batch dict."""
    d = _str_keys(obj, where, "with keys 'data' and 'labels'")
    for key in ("data", "labels"):
        if key not in d:
            raise DataError(
                f"{where}: batch has no '{key}' key (keys: {', '.join(sorted(d)) or 'none'}); "
                "expected 'data' and 'labels'"
            )
    data, labels = d["data"], d["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == ROW):
        raise DataError(f"{where}: 'data' is {_describe(data)}; expected a uint8 array of shape (N, {ROW})")
    if isinstance(labels, (list, tuple)):
        try:  # numpy infers the dtype; anything but integers shows up as a non-integer kind below
            labels = np.asarray(labels)
        except (ValueError, TypeError, OverflowError):
            raise DataError(
                f"{where}: 'labels' is a list numpy cannot read as integers; expected integers 0..9"
            ) from None
    if not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1):
        raise DataError(f"{where}: 'labels' is {_describe(labels)}; expected a list or 1-d integer array")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{where}: {data.shape[0]} images but {labels.shape[0]} labels; expected the same count")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise DataError(f"{where}: labels span {int(labels.min())}..{int(labels.max())}; expected 0..9")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def parse_meta(obj: object, where: str) -> list[str]:
    d = _str_keys(obj, where, "with key 'label_names'")
    names = d.get("label_names")
    if names is None:
        return list(CLASSES)
    if not isinstance(names, (list, tuple)) or len(names) != 10 or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{where}: 'label_names' is {_describe(names)}; expected a list of 10 names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise DataError(f"{where}: 'label_names' are not UTF-8 text; expected 10 class names") from None


def load_batch_bytes(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    return parse_batch(safe_unpickle(data, where), where)


def _read_dir(directory: Path) -> dict[str, tuple[bytes, str]]:
    out = {}
    for name in (*TRAIN_FILES, TEST_FILE, META_FILE):
        path = directory / name
        if not path.is_file():
            if name == META_FILE:
                continue
            raise DataError(f"{path}: missing; expected {', '.join(TRAIN_FILES)}, {TEST_FILE} in {directory}")
        try:
            out[name] = (path.read_bytes(), str(path))
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return out


def _read_archive(archive: Path) -> dict[str, tuple[bytes, str]]:
    """Member contents by base name, read in memory; member paths are only compared, never used."""
    wanted = {*TRAIN_FILES, TEST_FILE, META_FILE}
    out: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if base not in wanted or not member.isfile():
                    continue
                where = f"{archive} (member {base})"
                if base in out:
                    raise DataError(f"{archive}: two members named {base}; expected one {BATCHES_DIR}/{base}")
                if member.size > MAX_MEMBER:
                    raise DataError(f"{where}: {member.size} bytes; expected a CIFAR batch of about 31 MB")
                f = tar.extractfile(member)
                if f is None:
                    continue
                out[base] = (f.read(), where)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar archive ({one_line(e, 120)}); expected {ARCHIVE}") from None
    missing = [n for n in (*TRAIN_FILES, TEST_FILE) if n not in out]
    if missing:
        raise DataError(
            f"{archive}: no member {BATCHES_DIR}/{missing[0]}; expected {', '.join(TRAIN_FILES)}, {TEST_FILE}"
        )
    return out


def _locate(data_dir: str | Path | None) -> tuple[str, Path, list[Path]]:
    target = resolve_data_root(data_dir) / "cifar10"
    searched = candidate_dirs(data_dir, target, [])
    for base in searched:
        if base.is_file() and base.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "archive", base, searched
        if (base / TRAIN_FILES[0]).is_file():
            return "dir", base, searched
        if (base / BATCHES_DIR).is_dir():
            return "dir", base / BATCHES_DIR, searched
        if (base / ARCHIVE).is_file():
            return "archive", base / ARCHIVE, searched
    raise DataError(
        f"cifar10: no CIFAR-10 data found (searched {', '.join(str(d) for d in searched)}); "
        f"place {ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html) or the {BATCHES_DIR} directory "
        f"in {target}, or pass --data-dir DIR"
    )


def load_cifar10(data_dir: str | Path | None, **_: object) -> RawDataset:
    kind, path, _searched = _locate(data_dir)
    files = _read_archive(path) if kind == "archive" else _read_dir(path)
    parts = [load_batch_bytes(*files[name]) for name in TRAIN_FILES]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = load_batch_bytes(*files[TEST_FILE])
    classes = parse_meta(safe_unpickle(*files[META_FILE]), files[META_FILE][1]) if META_FILE in files else list(CLASSES)
    return RawDataset(
        train=ImageSet(torch.from_numpy(xtr), torch.from_numpy(ytr)),
        # The test batch comes straight from the unpickler; copy it so the tensor owns writable memory.
        test=ImageSet(torch.from_numpy(np.array(xte, order="C")), torch.from_numpy(yte)),
        classes=classes,
        augment="reflect-crop-flip",
        source=str(path),
    )
