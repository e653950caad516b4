"""Reliability: bad input is refused in one line, and interruptions or full disks lose no finished work.

The tests below pin the pieces down one by one, in process where a subprocess would only add
start-up time. The whole catalogue (84 bad inputs; kill -9, SIGTERM and full disks at dozens of
points; NaN losses) is the opt-in audit in tests/audit, run by `pytest tests/audit`; its fault
injection (tests/audit/fault_injection.py) serves these tests too.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import campaign_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

import ikd.campaign
from ikd import cli
from ikd.checkpoint import load_model, read_metadata
from ikd.config import CampaignConfig, load_config, validate_config
from ikd.errors import CheckpointError, ConfigError
from ikd.lineage import Lineage, NodeRecord, RunDir, Status

from audit import fault_injection, harness


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_teacher):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(campaign_args(tiny_teacher, run_dir)) == 0
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture
def injected(monkeypatch):
    """Faults from tests/audit/fault_injection.py, undone after the test: every attribute they
    replace is registered with monkeypatch first."""
    for target, name in [
        (os, "fsync"),
        (os, "replace"),
        (os, "rename"),
        (os, "unlink"),
        (os, "remove"),
        (os, "rmdir"),
        (os, "open"),
        (os, "mkdir"),
        (builtins, "open"),
        (io, "open"),
    ]:
        monkeypatch.setattr(target, name, getattr(target, name))
    return fault_injection


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ikd: error:")
    return lines[0]


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.tmp"))


# --- kill -9, SIGTERM, broken pipes, a lineage without a root -----------------------------------


def first_child_finished(run: RunDir) -> bool:
    return run.exists() and any(n.generation == 1 and n.sha256 for n in run.load().nodes)


def test_kill_9_mid_campaign_then_resume(tmp_path, tiny_teacher):
    """A real process killed with SIGKILL once its first child is written -- really killed, its
    campaign unfinished on disk -- then rerun: it completes, keeping every finished node."""
    run = RunDir(tmp_path / "run")
    command = [sys.executable, "-m", "ikd", *campaign_args(tiny_teacher, run.path, "--max-generations", "2")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not first_child_finished(run):
        time.sleep(0.05)
    assert process.poll() is None, "the campaign ended before it could be killed"
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL  # ended by the kill (137 in a shell), not by finishing
    partial = run.load()
    assert partial.stop_reason is None  # the campaign had not finished
    assert run.verify(partial) == []  # what it had written is intact
    finished = {n.id: n.sha256 for n in partial.nodes if n.sha256}
    assert "g0-teacher" in finished and any(node_id.startswith("g1-") for node_id in finished)

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    final = run.load()
    assert final.stop_reason and run.verify(final) == []
    assert len(final.nodes) > len(partial.nodes)  # the kill came before the end, the rerun went on
    for node_id, sha in finished.items():
        assert final.node(node_id).sha256 == sha


def test_sigterm_stops_a_campaign_like_ctrl_c_and_the_rerun_resumes(tmp_path, tiny_teacher, monkeypatch, capsys):
    real_train = ikd.campaign.train_students
    calls = []

    def terminated_in_the_second_child(*args, **kw):
        calls.append(args[3].candidates[0].node_id)
        if len(calls) == 2:
            # only with ikd's handler in place: the default action would end pytest itself
            assert signal.getsignal(signal.SIGTERM) is cli._raise_terminated
            os.kill(os.getpid(), signal.SIGTERM)
        return real_train(*args, **kw)

    monkeypatch.setattr(ikd.campaign, "train_students", terminated_in_the_second_child)
    before = signal.getsignal(signal.SIGTERM)
    args = campaign_args(tiny_teacher, tmp_path / "run", "--max-generations", "2")
    assert cli.main(args) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == harness.INTERRUPTED_LINE
    assert signal.getsignal(signal.SIGTERM) is before  # given back to whoever called main
    run = RunDir(tmp_path / "run")
    partial = run.load()
    assert [n.id for n in partial.nodes] == ["g0-teacher", "g1-width"] and run.verify(partial) == []
    assert temp_files(run.path) == [] and not run.node_dir("g2-width").exists()

    monkeypatch.setattr(ikd.campaign, "train_students", real_train)
    assert cli.main(args) == 0
    final = run.load()
    assert final.node("g1-width").sha256 == partial.node("g1-width").sha256
    assert final.node("g2-width").status == "accepted" and (final.stop_reason or "").startswith("max_generations")


def test_a_closed_pipe_is_not_an_error(finished_run):
    """`ikd lineage RUN | head`: the reader leaves before ikd writes; nothing on stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ikd", "lineage", str(finished_run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None  # both PIPE
    process.stdout.close()  # long before ikd has imported torch
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert stderr == ""


def test_a_lineage_without_a_root_teacher_is_a_clear_error():
    node = NodeRecord(
        id="g1-width",
        generation=1,
        status=Status.ACCEPTED,
        arch={},
        params=1,
        size_bytes_fp32=4,
        macs=1,
        compression=1.0,
    )
    with pytest.raises(CheckpointError, match="no root teacher"):
        Lineage(config={}, nodes=[node]).root()


def test_usage_mistakes_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compress", "--strategy", "bogus"])
    assert exit_.value.code == cli.EXIT_USAGE
    assert "invalid choice: 'bogus'" in one_error_line(capsys)


# --- durable writes ----------------------------------------------------------------------------


def test_an_atomic_write_syncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    import stat

    from ikd import atomic

    target = tmp_path / "state" / "epoch-00002.pt"
    synced: list[tuple[bool, bytes | None]] = []  # each fsync: of a directory?, the target's bytes then
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), target.read_bytes() if target.exists() else None))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.atomic_write_bytes(target, b"new")
    assert synced == [(False, None), (True, b"new")]  # the file's data, then its name in the directory

    def refusing(fd: int) -> None:  # a filesystem that cannot fsync a directory still gets the file
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", refusing)
    atomic.atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"newer" and os.listdir(target.parent) == [target.name]


# --- read-only and full disks ------------------------------------------------------------------


def test_a_full_disk_on_resume_leaves_the_lineage_as_it_was(run_copy, tiny_teacher, injected, capsys):
    before = harness.snapshot(run_copy)
    injected.on_write("enospc", "lineage.json", 1)
    assert cli.main(campaign_args(tiny_teacher, run_copy)) == cli.EXIT_USAGE
    line = one_error_line(capsys)
    assert line == f"ikd: error: {run_copy / 'lineage.json'}: No space left on device"
    assert harness.snapshot(run_copy) == before
    run = RunDir(run_copy)
    assert run.verify(run.load()) == []


def test_a_disk_filling_up_mid_campaign_keeps_finished_nodes(tmp_path, tiny_teacher, injected, monkeypatch, capsys):
    injected.on_write("enospc", "model.safetensors", 2)  # the first child's weights
    args = campaign_args(tiny_teacher, tmp_path / "run")
    assert cli.main(args) == cli.EXIT_USAGE
    assert "model.safetensors: No space left on device" in one_error_line(capsys)
    run = RunDir(tmp_path / "run")
    partial = run.load()
    assert [n.id for n in partial.nodes] == ["g0-teacher"] and run.verify(partial) == []
    assert temp_files(run.path) == []

    monkeypatch.undo()  # space again
    assert cli.main(args) == 0
    final = run.load()
    assert final.node("g0-teacher").sha256 == partial.node("g0-teacher").sha256
    assert final.find("g1-width") is not None and run.verify(final) == []


def test_a_read_only_run_directory_is_refused_and_still_readable(run_copy, tiny_teacher, injected, capsys):
    before = harness.snapshot(run_copy.parent)
    injected.read_only(str(run_copy))
    assert cli.main(campaign_args(tiny_teacher, run_copy)) == cli.EXIT_USAGE
    assert one_error_line(capsys).endswith("cannot open the run directory for writing (Read-only file system)")
    assert cli.main(["lineage", str(run_copy)]) == 0  # reading needs no write access
    assert "g1-width" in capsys.readouterr().out
    new = run_copy.parent / "new" / "run"
    injected.read_only(str(run_copy.parent))
    assert cli.main(campaign_args(tiny_teacher, new)) == cli.EXIT_USAGE
    assert "Read-only file system" in one_error_line(capsys)
    assert harness.snapshot(run_copy.parent) == before


def test_a_campaign_that_fails_before_any_work_leaves_no_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "new" / "deeper" / "run"
    assert cli.main(campaign_args(tmp_path / "no-teacher", run_dir)) == cli.EXIT_USAGE
    assert "model.json: not found" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_a_kill_left_are_removed_by_the_next_run(run_copy, tiny_teacher):
    stale = [
        run_copy / ".lineage.json.k1ll3d_0.tmp",
        run_copy / "nodes" / "g1-width" / ".model.safetensors.x1y2z3w4.tmp",
    ]
    # a run directory may be a folder of the user's (--run-dir ~): only what ikd's writes are named like, where
    # it writes, goes (the whole tree was searched for `.*.tmp`)
    mine = [run_copy / "notes" / ".draft.k1ll3d_0.tmp", run_copy / ".draft.tmp", run_copy / "nodes" / ".a.tmp"]
    mine[0].parent.mkdir()
    for path in [*stale, *mine]:
        path.write_bytes(b"half")
    assert cli.main(campaign_args(tiny_teacher, run_copy)) == 0
    assert temp_files(run_copy) == sorted(mine)


def test_force_continues_a_run_directory_from_another_config(run_copy, tiny_teacher, capsys):
    before = harness.snapshot(run_copy)
    assert cli.main(campaign_args(tiny_teacher, run_copy, "--max-drop", "0.5")) == cli.EXIT_USAGE
    assert "search.max_drop: 100.0 -> 0.5" in one_error_line(capsys)
    assert harness.snapshot(run_copy) == before
    assert cli.main(campaign_args(tiny_teacher, run_copy, "--max-drop", "0.5", "--force")) == 0
    assert RunDir(run_copy).load().config["search"]["max_drop"] == 0.5


def test_trained_nodes_without_their_lineage_are_never_trained_over(run_copy, tiny_teacher, capsys):
    lineage = run_copy / "lineage.json"
    lineage.unlink()
    before = harness.snapshot(run_copy)
    assert cli.main(campaign_args(tiny_teacher, run_copy, "--force")) == cli.EXIT_USAGE
    assert "trained nodes (g0-teacher, g1-width" in one_error_line(capsys) and harness.snapshot(run_copy) == before
    lineage.mkdir()  # not a file: nothing a new campaign may take as "no lineage yet"
    before = harness.snapshot(run_copy)
    assert cli.main(campaign_args(tiny_teacher, run_copy)) == cli.EXIT_USAGE
    assert "lineage.json: is not a file" in one_error_line(capsys) and harness.snapshot(run_copy) == before
    assert cli.main(["lineage", str(run_copy)]) == cli.EXIT_USAGE  # it said "not found"
    assert "lineage.json: not a file" in one_error_line(capsys)
    # the root alone may be there: a run killed after saving its teacher, before recording it
    lineage.rmdir()
    for node in (run_copy / "nodes").iterdir():
        if node.name != "g0-teacher":
            shutil.rmtree(node)
    assert cli.main(campaign_args(tiny_teacher, run_copy)) == 0


def test_nothing_writes_a_campaign_or_a_report_into_another_campaigns_nodes(run_copy, tiny_teacher, capsys):
    before = harness.snapshot(run_copy)
    inner = run_copy / "nodes" / "new-run"
    assert cli.main(campaign_args(tiny_teacher, inner)) == cli.EXIT_USAGE
    assert "lies in the nodes of the campaign in" in one_error_line(capsys)
    assert cli.main(["report", str(run_copy), "--out", str(run_copy / "nodes" / "g1-width")]) == cli.EXIT_USAGE
    assert "lies in the nodes of the campaign in" in one_error_line(capsys)
    assert cli.main(["report", str(run_copy), "--out", ""]) == cli.EXIT_USAGE  # not the default folder
    assert "expected a directory for the report" in one_error_line(capsys)
    assert harness.snapshot(run_copy) == before


# --- files that would crash a naive reader -----------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe binary", "not UTF-8"),
        (b"[" * 100_000, "not valid YAML"),
        (b"seed: " + b"9" * 5000, "not valid YAML"),
        (b"seed: !!python/object/apply:os.system ['true']", "not valid YAML"),
        (b"0", "expected a mapping"),  # falsy, but not empty: not the defaults
    ],
)
def test_config_files_that_are_not_configs(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_yaml_numbers_in_other_bases_are_not_read_as_decimal_integers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher: {arch: 0x1}\n")  # YAML 1.1's hex 1: it trained a one-conv network of width 1
    with pytest.raises(ConfigError, match=r"teacher\.arch"):
        load_config(path)
    path.write_text("student: {epochs: 012}\nsearch: {max_generations: 2}\n")  # octal 10 in YAML 1.1
    assert load_config(path).student.epochs == 12 and load_config(path).search.max_generations == 2


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, '{"arch": ' + "9" * 5000 + "}", "\udcff"])
def test_json_that_would_crash_the_parser_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / "model.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_metadata(tmp_path)
    (tmp_path / "lineage.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="not readable JSON"):
        RunDir(tmp_path).load()


@pytest.mark.parametrize(("content", "kind"), [("[]", "list"), ("null", "NoneType"), ("3", "int")])
def test_a_lineage_that_is_json_but_not_an_object_says_so(tmp_path, content, kind):
    (tmp_path / "lineage.json").write_text(content)  # it said "invalid : Input should be...", naming no key
    with pytest.raises(CheckpointError, match=f"lineage.json: is JSON {kind}; expected an object"):
        RunDir(tmp_path).load()


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("digits", "'dataset' is str; expected an object"),
        ({"mean": None}, "dataset.mean is None; expected a list of finite numbers, one per channel"),
        ({"std": [0.0]}, r"dataset.std is \[0.0\]; expected a list of finite numbers above 0"),  # it printed loss nan
        ({"mean": [0.1, 0.2, 0.3]}, "dataset.mean has 3 values for a model of 1 input channel"),
        # these named no file: "val_fraction=2: expected ..."
        ({"val_fraction": 2}, "dataset.val_fraction=2: expected a number strictly between 0 and 1"),
        ({"split_seed": -1}, "dataset.split_seed=-1: expected a non-negative integer"),
        # an internal error in eval, distill and export, or labels a safetensors export wrote for other outputs
        ({"classes": 5}, "dataset.classes is 5; expected a list of distinct class names"),
        ({"classes": ["a", "b"]}, r"one per output of the model \(arch.num_classes 10\)"),
        ({"classes": ["a"] * 10}, "expected a list of distinct class names"),
        ({"image_size": -1}, "dataset.image_size is -1; expected a positive number of pixels"),
        ({"name": 3}, "dataset.name is 3; expected the dataset's name"),
        ({"training": "x"}, "'training' is str; expected an object"),
        ({"history": {}}, "'history' is dict; expected a list of epochs"),
    ],
)
def test_a_model_whose_dataset_record_cannot_normalise_is_a_checkpoint_error(tiny_teacher, tmp_path, dataset, message):
    # each was an internal error (or a NaN loss) in ikd eval and export
    model = shutil.copytree(tiny_teacher, tmp_path / "model")
    document = json.loads((model / "model.json").read_text())
    if isinstance(dataset, dict) and dataset.keys() & {"training", "history"}:  # top-level sections
        document |= dataset
    else:
        document["dataset"] = dataset if isinstance(dataset, str) else document["dataset"] | dataset
    (model / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(model)
    assert str(model / "model.json") in str(error.value) and "\n" not in str(error.value)


def test_a_lineage_from_a_newer_ikd_says_so(run_copy):
    # its new fields failed validation as "extra inputs are not permitted", which reads as damage
    document = json.loads((run_copy / "lineage.json").read_text())
    document["version"] += 1
    document["nodes"][1]["added_later"] = True
    (run_copy / "lineage.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=f"written by a newer ikd \\(lineage version {document['version']};"):
        RunDir(run_copy).load()


@pytest.mark.parametrize("node_id", ["../escape", "/etc", "a/b", ".hidden", "ok\n", ""])
def test_node_ids_that_could_leave_the_run_directory_are_refused_on_load(run_copy, node_id):
    document = json.loads((run_copy / "lineage.json").read_text())
    document["nodes"][1]["id"] = node_id
    (run_copy / "lineage.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=re.escape("invalid nodes.1.id")):
        RunDir(run_copy).load()


def _self_parent(nodes: list[dict]) -> None:
    nodes[1]["parent"] = nodes[1]["id"]


def _parent_loop(nodes: list[dict]) -> None:
    nodes[0]["parent"] = nodes[1]["id"]  # the root's parent is its own child


def _twice(nodes: list[dict]) -> None:
    nodes.append(dict(nodes[1]))


def _bad_arch(nodes: list[dict]) -> None:
    nodes[1]["arch"]["blocks"] = [[0]]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_self_parent, "is its own ancestor"),
        (_parent_loop, "is its own ancestor"),  # walks up the chain never ended: compress and report hung
        (_twice, "appears twice"),
        # a pydantic report of several lines, met only when the node was used
        (_bad_arch, "invalid nodes.1.arch.blocks: Value error, conv widths must be positive"),
        # values no run writes: printed as "val 500.00%" and "-3 params" (exit 0), or crashing the report's plots
        (lambda nodes: nodes[1].update(val_accuracy=5.0), "invalid nodes.1.val_accuracy: Input should be less"),
        (lambda nodes: nodes[1].update(params=-3), "invalid nodes.1.params: Input should be greater"),
        (lambda nodes: nodes[1].update(val_curve=[float("nan")]), "invalid nodes.1.val_curve.0"),
        (lambda nodes: nodes[1].update(params=10**400), "invalid nodes.1.params"),
        # ikd report crashed on it after replacing its plots, leaving them beside the old report
        ("config.search", "config.search is str; expected an object"),
    ],
)
def test_a_lineage_edited_into_a_shape_ikd_never_writes_is_refused_in_one_line(run_copy, damage, message, capsys):
    document = json.loads((run_copy / "lineage.json").read_text())
    if damage == "config.search":
        document["config"]["search"] = "x"
    else:
        damage(document["nodes"])
    (run_copy / "lineage.json").write_text(json.dumps(document))
    for command in (["lineage", str(run_copy)], ["report", str(run_copy), "--out", str(run_copy.parent / "r")]):
        assert cli.main(command) == 2
        line = one_error_line(capsys)
        assert str(run_copy / "lineage.json") in line and message in line, line


def test_a_node_whose_lineage_architecture_is_not_its_models_is_refused(run_copy, capsys):
    # the checksum covers the weights, not model.json: lineage and export would describe two different models
    document = json.loads((run_copy / "lineage.json").read_text())
    node, other = document["nodes"][1], next(n for n in document["nodes"] if n["arch"] != document["nodes"][1]["arch"])
    node["arch"] = other["arch"]
    (run_copy / "lineage.json").write_text(json.dumps(document))
    assert cli.main(["export", str(run_copy), "--node", node["id"], "--format", "safetensors", "--no-latency"]) == 2
    line = one_error_line(capsys)
    assert f"nodes/{node['id']}/model.json: architecture " in line and f"for node {node['id']!r}" in line, line


def test_a_campaign_refuses_to_teach_from_a_node_whose_lineage_architecture_is_not_its_models(
    run_copy, tiny_teacher, capsys
):
    # the same check on the campaign's side: the teacher cache loads a parent through RunDir.load_node
    document = json.loads((run_copy / "lineage.json").read_text())
    parent = next(n for n in document["nodes"] if n["status"] == "accepted")
    parent["arch"] = document["nodes"][0]["arch"]  # the root's: valid, and not the parent's model
    (run_copy / "lineage.json").write_text(json.dumps(document))
    assert cli.main(campaign_args(tiny_teacher, run_copy, "--force", generations=2)) == 2
    line = one_error_line(capsys)
    assert f"nodes/{parent['id']}/model.json: architecture " in line and f"for node {parent['id']!r}" in line, line


def test_weights_that_do_not_fit_their_spec_are_refused_before_anything_is_built(tmp_path, tiny_teacher):
    teacher = tmp_path / "t"
    shutil.copytree(tiny_teacher, teacher)
    meta = json.loads((teacher / "model.json").read_text())
    meta["arch"]["blocks"] = [[200_000, 200_000]]  # 1.4 TB of weights if it were built
    (teacher / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="the spec needs 1,440,"):
        load_model(teacher)
    shutil.copy(tiny_teacher / "model.json", teacher / "model.json")
    state = load_file(teacher / "model.safetensors")
    save_file({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, teacher / "model.safetensors")
    with pytest.raises(CheckpointError, match="wrong dtype"):
        load_model(teacher)
    state["blocks.0.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, teacher / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape("NaN or infinite values in blocks.0.0.weight")):
        load_model(teacher)


# --- the config loader under random documents ----------------------------------------------------

SECTIONS = {
    name: field.annotation
    for name, field in CampaignConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
TOP_KEYS = sorted(CampaignConfig.model_fields)
PLAUSIBLE = [
    "parent-child",
    "parent-children",
    "ancestors-child",
    "ancestors-children",
    "best",
    "tree",
    "all",
    "depth",
    "width",
    ["depth", "width"],
    ["prune"],
    [],
    0.5,
    [0.25, 0.5],
    [0.0],
    1.5,
    0,
    1,
    2,
    -1,
    100,
    101,
    "fp32",
    "bf16",
    "cpu",
    "cuda",
    "auto",
    "digits",
    "cifar10",
    "vgg11",
    "vgg16",
    "resnet",
    "onecycle",
    "cosine",
    "none",
    "crop-flip",
    "mean-kd",
    "mean-probs",
    "each",
    "tensorboard",
    "smallest-first",
    True,
]
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8), st.sampled_from(PLAUSIBLE)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
JUNK_KEYS = st.one_of(st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())


def section_documents(model) -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(sorted(model.model_fields)), JUNK_KEYS)
    return st.dictionaries(keys, VALUES, max_size=5)


@st.composite
def documents(draw):
    keys = draw(st.lists(st.one_of(st.sampled_from(TOP_KEYS), JUNK_KEYS), max_size=6, unique=True))
    document = {}
    for key in keys:
        model = SECTIONS.get(key)
        document[key] = draw(section_documents(model) if model and draw(st.booleans()) else VALUES)
    return document


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_or_config_error(load) -> None:
    try:
        config = load()
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    assert isinstance(config, CampaignConfig)


@FUZZ
@given(document=st.one_of(documents(), VALUES))
def test_fuzz_config_documents(document):
    _valid_or_config_error(lambda: validate_config(document, "fuzz"))


@FUZZ
@given(document=documents())
def test_fuzz_config_files(document):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "c.yaml"
        path.write_text(yaml.safe_dump(document))
        _valid_or_config_error(lambda: load_config(path))


@FUZZ
@given(content=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode)))
def test_fuzz_config_bytes(content):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "c.yaml"
        path.write_bytes(content)
        _valid_or_config_error(lambda: load_config(path))


DOTTED = [f"{s}.{k}" for s, model in SECTIONS.items() for k in model.model_fields] + TOP_KEYS


@FUZZ
@given(overrides=st.dictionaries(st.one_of(st.sampled_from(DOTTED), st.text(max_size=8)), VALUES, max_size=4))
def test_fuzz_config_overrides(overrides):
    """What the command-line flags feed in."""
    _valid_or_config_error(lambda: load_config(None, overrides))


# --- the audit ------------------------------------------------------------------------------------


def test_the_audit_check_flags_every_way_of_failing():
    good = "ikd: error: x/train-images-idx3-ubyte: wrong magic number 0x00000801\n"
    assert harness.check_refusal(2, good, "magic", []) == []
    crash = "Traceback (most recent call last):\n  File ...\nValueError: boom\n"
    problems = harness.check_refusal(1, crash, "magic", [])
    assert "exit 1, expected 2" in problems and "a traceback on stderr" in problems
    assert "3 lines on stderr, expected 1" in problems
    assert harness.check_refusal(2, "ikd: error: something else\n", "magic", []) == [
        "the error does not mention 'magic'"
    ]
    assert harness.check_refusal(2, "ikd: internal error: magic\n", "magic", []) == [
        "stderr does not start with 'ikd: error:'"
    ]
    assert harness.check_refusal(2, good, "magic", ["added run/.lock"]) == ["files changed: added run/.lock"]
    before = {"a": "1", "b": "2", "d": "dir"}
    assert harness.changes(before, {"a": "1", "b": "3", "c": "4", "d": "dir"}) == ["added c", "modified b"]
    stop = harness.Stop("term", expect="terminated")
    assert harness.check_stopped(stop, harness.Run(0, "", 1.0), Path("/nonexistent")) == [
        "exit 0, expected 130",
        f"last stderr line '', expected {harness.INTERRUPTED_LINE!r}",
    ]
