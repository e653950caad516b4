"""Run directories ikd must not continue: from another config, with a broken or tampered
lineage, read-only, on a full disk, busy with another campaign, not a directory at all. Each is
refused in one line and left exactly as it was."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.harness import BadInput, Maker, Shared, assert_ok, edit_json, params, run_bad_input


def run_case(edit: Callable[[Path], object] | None, *flags: str, command: str = "compress") -> Maker:
    """A copy of the finished reference campaign, changed by `edit`, resumed (or exported)."""

    def make(case: Path, shared: Shared) -> list[str]:
        run = case / "run"
        shutil.copytree(shared.reference_run, run)
        if edit is not None:
            edit(run)
        if command == "export":
            return ["export", str(run), *flags]
        if command == "lineage":
            return ["lineage", str(run), *flags]
        return [*shared.campaign(run), *flags]

    return make


def set_node(index: int, key: str, value) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        edit_json(run / "lineage.json", lambda d: d["nodes"][index].__setitem__(key, value))

    return edit


def run_dir_is_a_file(case: Path, shared: Shared) -> list[str]:
    case.mkdir(parents=True)
    (case / "file").write_text("not a directory")
    return shared.campaign(case / "file")


def new_run(case: Path, shared: Shared) -> list[str]:
    return shared.campaign(case / "new-run")


def lineage_of_no_run(case: Path, shared: Shared) -> list[str]:
    return ["lineage", str(case / "nothing")]


GROUP = "run directory"
CASES = [
    BadInput(
        "run-from-another-config",
        GROUP,
        "search.max_drop: 100.0 -> 0.5",
        quick=True,
        make=run_case(None, "--max-drop", "0.5"),
    ),
    BadInput(
        "run-lineage-not-json",
        GROUP,
        "not readable JSON",
        make=run_case(lambda r: (r / "lineage.json").write_text('{"nodes": [')),
    ),
    BadInput(
        "run-lineage-wrong-schema",
        GROUP,
        "invalid nodes",
        make=run_case(lambda r: edit_json(r / "lineage.json", lambda d: d.__setitem__("nodes", "x"))),
    ),
    BadInput("run-node-id-escapes", GROUP, "invalid nodes.1.id", make=run_case(set_node(1, "id", "../../escape"))),
    BadInput("run-parent-id-escapes", GROUP, "invalid nodes.1.parent", make=run_case(set_node(1, "parent", "/etc"))),
    BadInput("run-parent-missing", GROUP, "names 'ghost' as its parent", make=run_case(set_node(1, "parent", "ghost"))),
    BadInput(
        "lineage-teacher-missing",
        GROUP,
        "names 'ghost' as its parent or teacher",
        make=run_case(set_node(1, "teachers", ["ghost"]), command="lineage"),
    ),
    BadInput(
        "run-tampered-weights",
        GROUP,
        "grew from them",
        make=run_case(lambda r: (r / "nodes" / "g1-width" / "model.safetensors").write_bytes(b"changed")),
    ),
    BadInput("run-read-only", GROUP, "Read-only file system", make=run_case(None), fault="erofs:{case}/run"),
    BadInput("run-new-on-read-only-disk", GROUP, "Read-only file system", make=new_run, fault="erofs:{case}"),
    BadInput(
        "run-disk-full-on-resume",
        GROUP,
        "No space left on device",
        make=run_case(None),
        fault="enospc:write:lineage.json:1",
    ),
    BadInput("run-in-use", GROUP, "in use by", make=run_case(None), hold_lock=True),
    BadInput("run-dir-is-a-file", GROUP, "cannot open the run directory", make=run_dir_is_a_file),
    BadInput(
        "export-node-id-escapes",
        GROUP,
        "is not in",
        make=run_case(None, "--node", "../../etc", "--format", "safetensors", "--no-latency", command="export"),
    ),
    BadInput("lineage-of-no-run", GROUP, "not found", make=lineage_of_no_run),
]


@pytest.mark.parametrize("case", params(CASES))
def test_a_run_directory_that_cannot_be_continued_is_refused_in_one_line(case, shared, record):
    row = run_bad_input(case, shared)
    record.bad_inputs.append(row)
    assert_ok(row)
