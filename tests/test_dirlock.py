"""ikd.dirlock: one writer per directory, and which torchrun rank is that writer."""

import fcntl
import os

import pytest

from ikd import dirlock, distributed
from ikd.dirlock import LOCK_FILE, held
from ikd.errors import CheckpointError


def test_a_second_holder_is_refused_naming_the_first_and_a_made_directory_goes_with_its_lock(tmp_path):
    out = tmp_path / "new" / "model"
    refusal = rf"model: in use by ikd train \(pid {os.getpid()}\); wait"
    with (
        held(out, "ikd train", leave_lock=False),
        pytest.raises(CheckpointError, match=refusal),
        held(out, "ikd distill"),
    ):
        pass
    assert not (tmp_path / "new").exists()  # made for the holder, left empty: removed with its parent
    (kept := tmp_path / "kept").mkdir()
    with held(kept, "ikd train", leave_lock=False):
        (kept / "model.json").write_text("{}")
    assert os.listdir(kept) == ["model.json"]
    with held(kept, "ikd compress"):  # a run directory keeps its (released) lock file
        pass
    assert sorted(os.listdir(kept)) == [LOCK_FILE, "model.json"] and (kept / LOCK_FILE).read_text() == ""


def test_a_lock_file_unlinked_between_open_and_flock_is_taken_again(tmp_path, monkeypatch):
    """The holder before unlinked its file on release just after this process opened it: the flock then
    succeeds on a file no longer in the directory, which a third process could not see, so it is retried."""
    lock = tmp_path / LOCK_FILE
    lock.write_text("ikd train (pid 1)")
    calls = []
    real_flock = fcntl.flock

    def flock(handle, operation):
        calls.append(os.fstat(handle.fileno()).st_ino)
        if len(calls) == 1:
            lock.unlink()  # the previous holder's release, between this open and this flock
        real_flock(handle, operation)

    monkeypatch.setattr(dirlock.fcntl, "flock", flock)
    with dirlock._locked_file(lock) as handle:
        assert len(calls) == 2  # taken again (the new file may reuse the freed inode's number)
        assert os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino  # held on the file others will open


@pytest.mark.parametrize(
    ("environment", "saves"),
    [
        ({}, True),
        ({"WORLD_SIZE": "1"}, True),
        ({"WORLD_SIZE": "2", "RANK": "0"}, True),
        ({"WORLD_SIZE": "2", "RANK": "1"}, False),
    ],
)
def test_only_the_rank_that_saves_holds_the_model_directory(monkeypatch, environment, saves):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert distributed.saves_here() is saves
