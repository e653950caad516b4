"""One writer per directory at a time: a campaign's run directory (its campaign, or `ikd export --node`),
or a model directory (`ikd train` or `ikd distill` writing it, where two writers would interleave their
epochs' states and could leave one's model.json beside the other's weights; `ikd export` reading it)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ikd.errors import CheckpointError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def held(path: Path, purpose: str, *, what: str = "directory", leave_lock: bool = True) -> Iterator[None]:
    """Hold `path` (made if missing) for `purpose`, e.g. "ikd train"; a second holder is refused in one
    line naming the first.

    An advisory flock: the kernel releases it when the holder dies, even by kill -9, so a crash never
    leaves a stale lock behind. A directory this call created is removed again (with the parents made for
    it) if nothing but the lock was written into it: a command that fails before any work leaves nothing.
    Without `leave_lock` the lock file goes too, so the directory ends as its holder left it.
    """
    created = _missing_dirs(path)
    lock = path / LOCK_FILE
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = _locked_file(lock)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open the {what} for writing ({exc.strerror})") from None
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{purpose} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            if not leave_lock:  # unlinked while still held: see _locked_file
                lock.unlink(missing_ok=True)
            if created:
                _remove_if_unused(path, created)


def _locked_file(lock: Path) -> IO[str]:
    """`lock` opened and flocked. A holder that unlinks its lock file on release may do so between another
    process's open and flock, leaving that one holding a file no longer in the directory; so the lock counts
    only on the file still at `lock`, and is taken again otherwise."""
    while True:
        # opened outside `with`: the caller's `with` closes it
        handle = open(lock, "a+")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same_file = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same_file = False
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(f"{lock.parent}: in use by {holder}; wait for it to finish") from None
        except BaseException:  # e.g. a file system without locks (ENOLCK): the caller words it, the file closes
            handle.close()
            raise
        if same_file:
            return handle
        handle.close()


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_unused(path: Path, created: list[Path]) -> None:
    """Remove a directory (and the parents made for it) that holds nothing but its lock, if that."""
    with contextlib.suppress(OSError):
        if set(os.listdir(path)) <= {LOCK_FILE}:
            (path / LOCK_FILE).unlink(missing_ok=True)
            for directory in created:
                directory.rmdir()
