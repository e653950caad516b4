"""Files written all or nothing: a temporary file beside the target, fsynced, then renamed (and the
directory fsynced), so a crash or power loss at any moment leaves either the old file or the new one,
never a part, and a write that returned stays written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"  # atomic writes go through `.<name>.<random>.tmp` beside their target
# tempfile.mkstemp's <random>: 8 of [a-z0-9_]
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def is_temp_name(name: str) -> bool:
    """Whether `name` is one an atomic write here would have used for its temporary file."""
    return _TEMP_NAME.fullmatch(name) is not None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Write `data` (or its parts, one after another: no joined copy of a large file in memory) to
    `path` all or nothing: a temporary file beside it, fsynced, then renamed.

    Any failure (a full or read-only disk, an interrupt) leaves `path` as it was and removes the
    temporary file; an OSError names `path`, as a failed write or fsync by itself names no file and
    a failed rename names the temporary one.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        # mkstemp makes the file owner-only; results are meant to be shared like any file the user writes
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            for part in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None  # renamed: nothing left to remove
        _sync_directory(path.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable: without it, power lost after os.replace returned can bring
    back the old file (and a state store could already have removed the epochs the new one replaced)."""
    # some filesystems (network, FUSE) refuse a directory's fsync: the file itself is synced, and written
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, document: Any) -> None:
    atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())


def cannot_make_dir(path: Path) -> str | None:
    """Why `path` cannot be (or be made) a directory ikd writes into (None: it looks possible): checked
    before any work, so a mistyped output does not fail after the training."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
