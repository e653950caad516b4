"""Epoch-level training state on disk, so an interrupted training continues where it stopped.

Each finished epoch is one file, `epoch-NNNNN.pt`: a line with the SHA-256 of the payload, then
the payload, a torch.save of plain containers and tensors that is read back with
torch.load(weights_only=True) (nothing else is unpickled). The digest catches a truncated or
damaged file, which is then passed over for the previous one: the newest two are kept. Every
state carries the fingerprint of its job (settings, architecture, data), so a directory left by
another job is never resumed by mistake.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ikd.atomic import TEMP_SUFFIX, atomic_write_bytes
from ikd.diff import config_differences
from ikd.errors import ForeignStateError

FORMAT = 1
KEEP = 2  # the newest and, in case it is damaged, the one before
_NAME = re.compile(r"epoch-(\d{5,})\.pt")


def job_fingerprint(document: dict[str, Any]) -> str:
    """A digest of everything that must match for a saved state to belong to this job."""
    return hashlib.sha256(_job_text(document).encode()).hexdigest()


def _job_text(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, default=str)


@dataclass
class SavedState:
    path: Path
    epoch: int
    state: dict[str, Any]


# A state that differs in these was saved by the same job on another machine or precision: the run
# could resume where it was saved, so it is never discarded on its behalf.
MOVED_KEYS = ("config.device", "config.precision")


class StateStore:
    """The state files of one training job in one directory. `discard_foreign`: another job's state
    is passed over (and then deleted with the damaged ones) instead of refused, when its saved job
    shows settings that no command of its owner could resume any more (a campaign's config decides
    the job): not when only MOVED_KEYS differ, nor when the state predates saved jobs."""

    def __init__(
        self,
        directory: Path,
        fingerprint: str,
        keep: int = KEEP,
        *,
        discard_foreign: bool = False,
        job: dict[str, Any] | None = None,
        also_accepted: tuple[str, ...] = (),
        upgrade: Callable[[dict[str, Any]], dict[str, Any]] = lambda saved: saved,
    ):
        """`job`: the document `fingerprint` digests, saved beside it (as JSON text, which loads back
        with weights_only) so a refusal can say what differs. `also_accepted`: fingerprints an older
        ikd gave this same job (its states resume as this job's); `upgrade`: a saved job document in
        today's layout, so a refusal compares like with like."""
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.also_accepted = also_accepted
        self.upgrade = upgrade
        self.keep = keep
        self.discard_foreign = discard_foreign
        self.job = job

    def _files_newest_first(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:05d}.pt"

    def epochs(self) -> list[int]:
        """The epochs with a state file here, newest first (intact or not)."""
        return [epoch for epoch, _ in self._files_newest_first()]

    def discard_after(self, epoch: int) -> None:
        """Delete the files of epochs after `epoch`: a run resuming from `epoch` (0: starting over)
        passed them over as damaged, and left there they would outrank its new saves, which `keep`
        would then delete as soon as they were written."""
        for newer, path in self._files_newest_first():
            if newer > epoch:
                with contextlib.suppress(OSError):
                    path.unlink()

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write the state after `epoch` all or nothing, then drop all but the newest `keep` files."""
        buffer = io.BytesIO()
        job = {"job": _job_text(self.job)} if self.job is not None else {}
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "epoch": epoch, **job, **state}, buffer)
        payload = buffer.getbuffer()  # a view: a VGG-16 student's state is ~200 MB, not copied twice more
        path = self.path(epoch)
        atomic_write_bytes(path, (hashlib.sha256(payload).hexdigest().encode() + b"\n", payload))
        for _, old in self._files_newest_first()[self.keep :]:
            with contextlib.suppress(OSError):
                old.unlink()
        # a process killed inside a write leaves its temporary file behind
        for stale in self.directory.glob(f".epoch-*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return path

    def load_latest(self) -> tuple[SavedState | None, list[str]]:
        """The newest intact state of this job (or None) and one line per damaged file passed over.

        A state of another job is a ForeignStateError unless `discard_foreign`: resuming it would be
        wrong, silently discarding it could throw away a long training.
        """
        skipped: list[str] = []
        for epoch, path in self._files_newest_first():
            try:
                return SavedState(path, epoch, self._checked(epoch, path)), skipped
            except ValueError as exc:
                skipped.append(f"{path}: {exc}; passed over")
        return None, skipped

    def try_load(self, epoch: int) -> tuple[dict[str, Any] | None, str | None]:
        """The state after `epoch`, or None and why it cannot be used (missing, damaged); a state of
        another job is a ForeignStateError, as in load_latest."""
        path = self.path(epoch)
        if not path.is_file():
            return None, f"{path}: missing"
        try:
            return self._checked(epoch, path), None
        except ValueError as exc:
            return None, f"{path}: {exc}"

    def _checked(self, epoch: int, path: Path) -> dict[str, Any]:
        """The state in `path`; ValueError when it is damaged, ForeignStateError when it is another job's."""
        try:
            state = _read(path)
        except (OSError, ValueError, RuntimeError, EOFError, TypeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"unreadable ({exc})") from None
        if state.get("fingerprint") not in (self.fingerprint, *self.also_accepted):
            keys = self._differing_keys(state)
            what = f"{', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} differ" if keys else None
            if self.discard_foreign and keys and not set(keys) & set(MOVED_KEYS):
                raise ValueError(f"the state of another job ({what}); discarded")
            if keys and set(keys) <= set(MOVED_KEYS):
                raise ForeignStateError(f"{self.directory}: {self._moved(state)}", keys)
            raise ForeignStateError(
                f"{self.directory}: holds the training state of a different job "
                f"({what or 'other settings, architecture or data'}); "
                "rerun that job's command to resume it, pass --force to discard it and start over, or delete "
                "the directory",
                keys,
            )
        if state.get("epoch") != epoch:
            raise ValueError(f"names epoch {epoch} but holds {state.get('epoch')}")
        return state

    def _moved(self, state: dict[str, Any]) -> str:
        """What to do with this job's state saved on another device or in another precision."""
        assert self.job is not None
        saved, here = self.upgrade(json.loads(state["job"]))["config"], self.job["config"]
        advice = (
            f"pass --precision {saved['precision']} to continue it here in the precision it began with"
            if saved["device"] == here["device"]
            else f"resume it on a machine with {saved['device']}"
        )
        return (
            f"holds this job's training state, saved on {saved['device']} in {saved['precision']}; this run would "
            f"continue it on {here['device']} in {here['precision']}; {advice}, or delete the directory to start "
            "it over"
        )

    def _differing_keys(self, state: dict[str, Any]) -> list[str] | None:
        """The job keys that differ; None when unknown (a state saved before ikd kept its job)."""
        if self.job is None or not isinstance(state.get("job"), str):
            return None
        with contextlib.suppress(ValueError):
            saved, wanted = self.upgrade(json.loads(state["job"])), json.loads(_job_text(self.job))
            wanted = {key: value for key, value in wanted.items() if key in saved}  # what an older ikd did not record
            keys = [d.partition(":")[0] for d in config_differences(saved, wanted)]
            if "objectives" in keys:  # which loss settings: a list of [spec, settings] per student, one key alone
                keys[keys.index("objectives") : keys.index("objectives") + 1] = _objective_keys(
                    saved["objectives"], wanted["objectives"]
                )
            return keys or None
        return None


def _objective_keys(saved: Any, wanted: Any) -> list[str]:
    """The settings that differ between two jobs' objectives (ikd.train's job document: [spec, settings] per
    student): `objectives.spec`, `objectives.weights.kd`, `objectives.teachers`, ...; `objectives` when their
    shapes do not compare."""
    if not isinstance(saved, list) or not isinstance(wanted, list) or len(saved) != len(wanted):
        return ["objectives"]
    pairs = list(zip(saved, wanted, strict=True))
    if not all(isinstance(p, list) and len(p) == 2 for pair in pairs for p in pair):
        return ["objectives"]
    keys: list[str] = []
    for (old_spec, old_settings), (new_spec, new_settings) in pairs:
        if old_spec != new_spec:
            keys.append("objectives.spec")
        if isinstance(old_settings, dict) and isinstance(new_settings, dict):
            keys += [d.partition(":")[0] for d in config_differences(old_settings, new_settings, "objectives.")]
        elif old_settings != new_settings:
            keys.append("objectives")
    return list(dict.fromkeys(keys)) or ["objectives"]


STATE_DIR = ".train-state"  # beside a job's output: its state while unfinished, removed once it is saved


def _state_files(directory: Path) -> dict[str, tuple[int, Path]]:
    """The epoch files under a job's state directory (one folder per stage), by their path relative to
    it: (epoch, path). Temporary files of writes cut short are not epoch files (StateStore's naming)."""
    if not directory.is_dir():
        return {}
    return {
        path.relative_to(directory).as_posix(): (int(match.group(1)), path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and (match := _NAME.fullmatch(path.name))
    }


def pack_state(directory: Path) -> dict[str, bytes]:
    """The newest state of each stage of a job (all a resume reads, unless it is damaged) as {path
    relative to `directory`: bytes}, to carry it to another machine: a Ray job's worker and the
    campaign's process share no disk. {} when there is none."""
    newest: dict[str, tuple[int, str]] = {}
    files = _state_files(directory)
    for name, (epoch, _) in files.items():
        stage = name.rpartition("/")[0]
        newest[stage] = max(newest.get(stage, (epoch, name)), (epoch, name))
    return {name: files[name][1].read_bytes() for _, name in sorted(newest.values(), key=lambda e: e[1])}


def unpack_state(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold what pack_state carried: each file written all or nothing (its checksum is
    checked when it is read), then the files it no longer needs (older epochs) removed. Nothing carried
    leaves it as it is."""
    for name in files:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"a training state file outside its directory: {name!r}")
    if not files:
        return
    for name, payload in files.items():
        atomic_write_bytes(directory / name, payload)
    for name, (_, path) in _state_files(directory).items():
        if name not in files:
            with contextlib.suppress(OSError):
                path.unlink()


def remove_state(directory: Path) -> None:
    """Drop a finished job's state: only its final weights are worth keeping."""
    shutil.rmtree(directory, ignore_errors=True)


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    digest, newline, payload = raw.partition(b"\n")
    if not newline or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch: truncated or damaged")
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not an ikd training state of format {FORMAT}")
    return state
