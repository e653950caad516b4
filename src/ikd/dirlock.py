"""One writer per directory at a time: a campaign's run directory, or the model directory that `ikd train`,
`ikd distill` or `ikd export` writes into. Two writers would interleave their epochs' states and could
leave one's model.json beside the other's weights."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ikd.errors import CheckpointError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def held(path: Path, purpose: str, *, what: str = "directory") -> Iterator[None]:
    """Hold `path` (made if missing) for `purpose`, e.g. "ikd train"; a second holder is refused in one
    line naming the first.

    An advisory flock: the kernel releases it when the holder dies, even by kill -9, so a crash never
    leaves a stale lock behind. A directory this call created is removed again (with the parents made for
    it) if nothing but the lock was written into it: a command that fails before any work leaves nothing.
    """
    created = _missing_dirs(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # opened outside `with` so that only the open's OSError becomes the CheckpointError
        handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open the {what} for writing ({exc.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CheckpointError(f"{path}: in use by {holder}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{purpose} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            if created:
                _remove_if_unused(path, created)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_unused(path: Path, created: list[Path]) -> None:
    """Remove a directory (and the parents made for it) that holds nothing but its lock."""
    with contextlib.suppress(OSError):
        if os.listdir(path) == [LOCK_FILE]:
            (path / LOCK_FILE).unlink()
            for directory in created:
                directory.rmdir()
