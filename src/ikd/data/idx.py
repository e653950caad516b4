"""IDX files (the MNIST format): strict parsing of uint8 image and label files, raw or gzipped.

Strict on purpose: a file that is truncated, padded or of the wrong kind would otherwise load as
plausible-looking garbage and only show up as a mysteriously bad accuracy.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ikd.errors import DataError

IMAGES_NDIM = 3
LABELS_NDIM = 1
_KIND = {IMAGES_NDIM: "images", LABELS_NDIM: "labels"}
_GZIP_MAGIC = b"\x1f\x8b"
# Largest decompressed file accepted: far above any IDX dataset, low enough that a gzip bomb
# fails with a message instead of exhausting memory.
MAX_DECOMPRESSED = 1 << 31
_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_maybe_gzip(path: Path) -> bytes:
    """File bytes, gunzipped when the name ends in .gz or the content starts with the gzip magic."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.name.endswith(".gz") or data[:2] == _GZIP_MAGIC:
        data = gunzip(data, str(path))
    return data


def gunzip(data: bytes, where: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_DECOMPRESSED + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: not a valid gzip file ({e}); expected a gzip-compressed IDX file") from None
    if len(out) > MAX_DECOMPRESSED:
        raise DataError(f"{where}: decompresses to more than {MAX_DECOMPRESSED} bytes; expected an IDX file")
    return out


def parse_idx(data: bytes, where: str, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file with `ndim` dimensions (3: images N,H,W; 1: labels N)."""
    kind = _KIND[ndim]
    expected = 0x0800 | ndim
    want = f"expected 0x{expected:08X} (IDX uint8 {kind})"
    if len(data) < 4:
        raise DataError(f"{where}: {len(data)} bytes is too short for an IDX header; {want}")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{where}: wrong magic number 0x{magic:08X}, {want}")
    if data[2] != 0x08:
        name = _IDX_TYPES.get(data[2], "unknown type")
        raise DataError(f"{where}: IDX dtype byte is 0x{data[2]:02X} ({name}), expected 0x08 (uint8)")
    if data[3] != ndim:
        raise DataError(
            f"{where}: wrong magic number 0x{magic:08X} ({data[3]} dimensions), {want} with {ndim} dimensions"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == IMAGES_NDIM and (dims[1] == 0 or dims[2] == 0):
        raise DataError(f"{where}: image size {dims[1]}x{dims[2]}; expected at least 1x1")
    promised = math.prod(dims)
    have = len(data) - header
    shape = "x".join(str(d) for d in dims)
    if have < promised:
        raise DataError(f"{where}: truncated: header promises {promised} bytes ({shape}), file has {have}")
    if have > promised:
        raise DataError(
            f"{where}: {have - promised} extra bytes after the {promised} bytes ({shape}) the header "
            "promises; expected exactly that many"
        )
    return np.frombuffer(data, dtype=np.uint8, count=promised, offset=header).reshape(dims)


def check_pair(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels; "
            "expected the same count"
        )


def check_label_range(labels: np.ndarray, num_classes: int, where: Path | str) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.flatnonzero(labels >= num_classes)[0])
        raise DataError(
            f"{where}: label {int(labels[bad])} at index {bad} is out of range; expected labels 0..{num_classes - 1}"
        )
