"""Run `ikd` with one fault injected: how the audit (tests/audit) stops and breaks real ikd
processes, and, imported, how tests/test_reliability.py injects the same faults in process.

    python tests/audit/fault_injection.py FAULT -- IKD_ARGUMENTS...

The fault is patched into this process only; ikd itself carries no test hooks. FAULT is one of:

    kill:write:NAME:K:PHASE  SIGKILL during the K-th atomic write of a file named NAME (lineage.json,
                             model.safetensors, model.json). PHASE: mid-write (the temporary file is
                             cut to half its length first), before-rename or after-rename
    term:write:NAME:K:PHASE  the same with SIGTERM, which ikd must turn into a clean stop
    kill:step:NODE:N         SIGKILL at training step N of node NODE (mid-epoch)
    term:step:NODE:N         SIGTERM there
    nan:NODE:EPOCH           NODE's loss becomes NaN from its epoch EPOCH on (inf:NODE:EPOCH: +inf)
    enospc:write:NAME:K      the K-th write of NAME fails with "No space left on device"
    erofs:DIR                DIR is on a read-only file system: creating, writing, renaming or
                             removing anything under it fails with EROFS
    trace:FILE               no fault: append the name of every atomically written file to FILE

Atomic writes (ikd.atomic.atomic_write_bytes) are recognised by their `fsync` and `os.replace`
calls, the file behind a descriptor through /proc/self/fd: Linux only.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import signal
import sys
from collections import Counter
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # ikd.atomic.TEMP_SUFFIX, not imported so the patches go in before ikd loads
PHASES = ("mid-write", "before-rename", "after-rename")


def _signal_self(action: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGTERM)


def _atomic_target(fd: int) -> str | None:
    """`lineage.json` for a descriptor open on `.lineage.json.<random>.tmp`, else None."""
    try:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
    except OSError:
        return None
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    return name[1:].rsplit(".", 2)[0]


def on_write(action: str, name: str, k: int, phase: str = "mid-write") -> None:
    """kill / term / enospc at the K-th atomic write of `name`."""
    if phase not in PHASES:
        raise SystemExit(f"fault_injection: phase {phase!r}: expected one of {', '.join(PHASES)}")
    real_fsync, real_replace = os.fsync, os.replace
    seen: Counter[str] = Counter()

    def fsync(fd) -> None:  # int or an object with fileno(), as os.fsync takes
        if _atomic_target(fd) == name:
            seen["fsync"] += 1
            if seen["fsync"] == k:
                if action == "enospc":  # as the kernel reports it: no file name
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if phase == "mid-write":
                    os.ftruncate(fd, os.fstat(fd).st_size // 2)
                    _signal_self(action)
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs) -> None:
        hit = Path(os.fsdecode(dst)).name == name
        if hit:
            seen["replace"] += 1
        if hit and seen["replace"] == k and phase == "before-rename" and action != "enospc":
            _signal_self(action)
        real_replace(src, dst, *args, **kwargs)
        if hit and seen["replace"] == k and phase == "after-rename" and action != "enospc":
            _signal_self(action)

    os.fsync, os.replace = fsync, replace


def on_step(action: str, node: str, n: int) -> None:
    from ikd import train

    real_step = train._Student.step
    steps: Counter[str] = Counter()

    def step(self, *args, **kwargs):
        if self.description == node:
            steps[node] += 1
            if steps[node] == n:
                _signal_self(action)
        return real_step(self, *args, **kwargs)

    train._Student.step = step  # type: ignore[method-assign]  # the fault: a patched method


def bad_loss(value: float, node: str, epoch: int) -> None:
    """From `epoch` on, `node`'s objective returns loss * NaN (or loss + inf)."""
    from ikd import train

    real_begin = train._Student.begin_epoch
    epochs: Counter[str] = Counter()

    def begin_epoch(self, device):
        real_begin(self, device)
        if self.description != node:
            return
        epochs[node] += 1
        if epochs[node] == epoch:
            objective = self.objective

            def poisoned(model, x, y, index):
                logits, terms = objective(model, x, y, index)
                loss = terms["loss"] * value if value != value else terms["loss"] + value
                return logits, {**terms, "loss": loss}

            self.objective = poisoned

    train._Student.begin_epoch = begin_epoch  # type: ignore[method-assign]  # the fault: a patched method


def read_only(directory: str) -> None:
    """Everything under `directory` behaves as on a read-only mount (root ignores chmod, so
    permissions cannot show this in a test run as root)."""
    root = os.path.abspath(directory)

    def inside(path) -> bool:
        if isinstance(path, int):  # a descriptor
            return False
        full = os.path.abspath(os.fsdecode(path))
        return full == root or full.startswith(root + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "remove", "rmdir")}
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and any(flag in mode for flag in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writing:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.exists(path):  # an existing one: EEXIST, as the kernel says first
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def changing(name):
        def guarded(*paths, **kwargs):
            for path in paths:
                if inside(path):
                    refuse(path)
            return real[name](*paths, **kwargs)

        return guarded

    builtins.open = io.open = open_
    os.open, os.mkdir = os_open, mkdir
    for name in real:
        setattr(os, name, changing(name))


def trace(log: str) -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs) -> None:
        real_replace(src, dst, *args, **kwargs)
        with open(log, "a") as handle:
            handle.write(Path(os.fsdecode(dst)).name + "\n")

    os.replace = replace


def install(fault: str) -> None:
    kind, *rest = fault.split(":")
    try:
        if kind in ("kill", "term") and rest[0] == "write":
            on_write(kind, rest[1], int(rest[2]), rest[3])
        elif kind in ("kill", "term") and rest[0] == "step":
            on_step(kind, rest[1], int(rest[2]))
        elif kind in ("nan", "inf"):
            bad_loss(float(kind), rest[0], int(rest[1]))
        elif kind == "enospc" and rest[0] == "write":
            on_write("enospc", rest[1], int(rest[2]))
        elif kind == "erofs":
            read_only(":".join(rest))
        elif kind == "trace":
            trace(":".join(rest))
        else:
            raise ValueError(kind)
    except (IndexError, ValueError):
        raise SystemExit(f"fault_injection: cannot read fault {fault!r}; see the module docstring") from None


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        raise SystemExit("usage: python tests/audit/fault_injection.py FAULT -- IKD_ARGUMENTS...")
    install(argv[0])
    from ikd.cli import main as ikd_main

    return ikd_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
