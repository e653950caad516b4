"""Early rejection in a campaign: a hopeless candidate stops before its last epoch and is rejected."""

from __future__ import annotations

import pytest
from conftest import campaign_args

from ikd import cli, rules, training_pass
from ikd.config import CampaignConfig
from ikd.lineage import RunDir, Status

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_hopeless_candidate_stops_early_costs_only_its_epochs_and_is_rejected(tiny_teacher, tmp_path, monkeypatch):
    # The rule's numbers are tested in test_rules; here its wiring: what the campaign hands it and what
    # a stop does. The first two candidates have too few fully trained ones before them (rules.EVIDENCE):
    # no late error ratios, no stop.
    calls = []

    def spy(curve, epochs, needed, slack, later=()):
        calls.append((len(curve), epochs, needed, slack, later))
        return "stopped after epoch 2/5: told to" if later and len(curve) == 2 else None

    monkeypatch.setattr(training_pass, "hopeless", spy)
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "5", "--early-rejection", "1")
    args += ["--max-drop", "0", "--max-step-drop", "0", "--width-factors", "0.25,0.5"]  # three candidates
    assert cli.main(args) == 0
    children = [n for n in RunDir(tmp_path / "run").load().nodes if n.generation == 1]
    *evidence, last = children
    assert rules.EVIDENCE == len(evidence) == 2
    for node in evidence:
        assert node.epochs == 5 and "stopped" not in node.reason, (node.id, node.reason)
    assert calls[0][4] == () and calls[0][3] == 1.0 and calls[0][1] == 5
    assert last.status == Status.REJECTED and last.epochs == 2 and len(last.val_curve) == 2, last
    assert last.reason.startswith("val ") and "told to" in last.reason
    assert any(len(call[4]) == 4 for call in calls)  # the last candidate saw the first two's late error ratios


def test_without_early_rejection_every_candidate_trains_all_its_epochs(tiny_teacher, tmp_path, monkeypatch):
    # three candidates, so the last has the evidence the rule needs: only the setting keeps it from being asked
    asked = []

    def hopeless(*args):
        asked.append(args)
        return "stopped: told to"

    monkeypatch.setattr(training_pass, "hopeless", hopeless)
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "3", "--max-drop", "0", "--max-step-drop", "0")
    assert cli.main([*args, "--width-factors", "0.25,0.5"]) == 0
    children = [n for n in RunDir(tmp_path / "run").load().nodes if n.generation == 1]
    assert len(children) == 3 and asked == []
    assert all(n.epochs == 3 and len(n.val_curve) == 3 and not n.reason.count("stopped") for n in children)


def test_a_candidate_heading_for_a_near_miss_is_not_hopeless(tiny_teacher, tmp_path, monkeypatch):
    # with retries on, one that would end within retry_within of its floor earns a retry: early rejection
    # judges it against the floor less retry_within, not the floor itself (a retry: the floor itself)
    judged: dict[str, float | None] = {}
    real = training_pass.TrainingPass.give_up

    def give_up(self, epochs):
        for candidate in self.candidates:
            judged[candidate.node_id] = self.floor
        return real(self, epochs)

    monkeypatch.setattr(training_pass.TrainingPass, "give_up", give_up)
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "3", "--early-rejection", "1")
    args += ["--max-drop", "0", "--max-step-drop", "0", "--retry-within", "100", "--retry-epochs", "4"]
    assert cli.main(args) == 0
    lineage = RunDir(tmp_path / "run").load()
    root = lineage.root()
    floor = rules.floor(root, root, CampaignConfig.model_validate(lineage.config).search)
    first = [n.id for n in lineage.students() if n.operator != rules.RETRY]
    retried = [n.id for n in lineage.students() if n.operator == rules.RETRY]
    assert first and retried  # at max_drop 0 every child misses, and retry_within 100 retries each
    assert all(judged[i] == pytest.approx(floor - 1.0) for i in first)
    assert all(judged[i] == pytest.approx(floor) for i in retried)


def test_a_redecide_gives_early_rejection_only_the_evidence_a_fresh_run_would_have(tiny_teacher, tmp_path, monkeypatch):
    # The first run accepts its smallest child in each of two generations. Replayed at max_drop 0, the first
    # generation's smallest is rejected and the next one trains: a fresh run would then know one fully trained
    # candidate (under rules.EVIDENCE), not also the old path's second generation, which it never reached.
    seen: dict[str, tuple[float, ...]] = {}
    real = training_pass.TrainingPass.give_up

    def give_up(self, epochs):
        seen.update((c.node_id, self.later_ratios) for c in self.candidates)
        return real(self, epochs)

    monkeypatch.setattr(training_pass.TrainingPass, "give_up", give_up)
    args = campaign_args(tiny_teacher, tmp_path / "run", "--epochs", "3", "--early-rejection", "1")
    args += ["--max-generations", "2", "--width-factors", "0.25,0.5"]
    assert cli.main(args) == 0
    first = RunDir(tmp_path / "run").load()
    old_path = [n.id for n in first.students()]
    assert [first.node(i).generation for i in old_path] == [1, 2] and rules.EVIDENCE == 2
    seen.clear()
    assert cli.main([*args, "--max-drop", "0", "--max-step-drop", "0", "--redecide"]) == 0
    replay = RunDir(tmp_path / "run").load()
    assert replay.node(old_path[0]).status == Status.REJECTED  # the replay's premise: the old answer fails
    new = [n.id for n in replay.students() if n.id not in old_path]
    assert new and seen[new[0]] == ()  # one fully trained candidate reached before it: no evidence yet
