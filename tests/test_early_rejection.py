"""Early rejection in a campaign: a hopeless candidate stops before its last epoch and is rejected."""

from __future__ import annotations

import pytest
from conftest import campaign_args

from ikd import cli
from ikd.lineage import RunDir, Status

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_hopeless_candidate_stops_early_costs_only_its_epochs_and_is_rejected(tiny_teacher, tmp_path):
    # nothing may lose a point: the children of a 98.6% teacher trained for 1-2 epochs cannot make it
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "5", "--early-rejection", "1")
    args += ["--max-drop", "0", "--max-step-drop", "0"]
    assert cli.main(args) == 0
    children = [n for n in RunDir(tmp_path / "run").load().nodes if n.generation == 1]
    stopped = [n for n in children if "stopped after epoch" in n.reason]
    assert stopped, [(n.id, n.val_curve, n.reason) for n in children]
    for node in stopped:
        assert node.status == Status.REJECTED and 2 <= node.epochs < 5 and len(node.val_curve) == node.epochs
        assert node.reason.startswith("val ") and "needed" in node.reason


def test_without_early_rejection_every_candidate_trains_all_its_epochs(tiny_teacher, tmp_path):
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "3", "--max-drop", "0", "--max-step-drop", "0")
    assert cli.main(args) == 0
    children = [n for n in RunDir(tmp_path / "run").load().nodes if n.generation == 1]
    assert children and all(n.epochs == 3 and len(n.val_curve) == 3 and not n.reason.count("stopped") for n in children)
