"""Where datasets live on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeGuard

ENV_DATA_DIR = "IKD_DATA_DIR"


def data_dir_given(data_dir: str | Path | None) -> TypeGuard[str | Path]:
    """Whether the user named a data directory (an empty value, as from an unset variable, names none)."""
    return data_dir is not None and str(data_dir) != ""


def resolve_data_root(data_dir: str | Path | None) -> Path:
    """data_dir if given, else $IKD_DATA_DIR if set and non-empty, else ~/.cache/ikd.

    Made absolute so error messages and the recorded source name a full path.
    """
    if data_dir_given(data_dir):
        return user_path(data_dir)
    env = os.environ.get(ENV_DATA_DIR, "")
    if env:
        return user_path(env)
    return Path.home().absolute() / ".cache" / "ikd"


def user_path(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()


def same_place(path: str | Path) -> Path:
    """`path` as the place it names: `dir/../dir`, `dir/` and a link to dir are one directory."""
    return user_path(path).resolve()


def candidate_dirs(data_dir: str | Path | None, target: Path, extra: list[Path]) -> list[Path]:
    """data_dir itself (users point at the folder holding the files), then root/<name>, then extras."""
    dirs = ([user_path(data_dir)] if data_dir_given(data_dir) else []) + [target] + extra
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen
