"""The final distillation: after the search, the answer is distilled again for a full schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import campaign_args
from safetensors.torch import load_file

from ikd import cli
from ikd.lineage import ROOT_ID, NodeKind, RunDir, Status

pytestmark = pytest.mark.usefixtures("one_thread")


def run(teacher, run_dir, *extra) -> RunDir:
    assert cli.main(campaign_args(teacher, run_dir, "--max-generations", "2", *extra)) == 0
    return RunDir(run_dir)


def test_the_final_distillation_is_the_answer_and_the_baselines_get_its_epochs(tiny_teacher, tmp_path):
    run_dir = run(tiny_teacher, tmp_path / "run", "--final-epochs", "2", "--baselines")
    lineage = run_dir.load()
    answer, final = lineage.search_result(), lineage.distilled()
    assert final is not None  # the answer too, unless validation ranks it below the search's (test_rules)
    assert lineage.final().id == "final"  # within its answer's tolerances (max_drop 100): the answer
    assert answer.status == Status.ACCEPTED and final.id == "final" and final.kind is NodeKind.FINAL
    assert final.parent == answer.id and final.spec() == answer.spec() and final.teachers == [ROOT_ID]
    assert final.epochs == 2 and final.status == Status.FINAL
    # it trained: its weights moved away from the answer's, which it started from
    before, after = (load_file(run_dir.node_dir(n) / "model.safetensors") for n in (answer.id, final.id))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the fair budget counts the final distillation: chain epochs + 2
    chain_epochs = sum(n.epochs for n in lineage.chain(answer) if n.kind is NodeKind.STUDENT)
    assert lineage.epochs_spent(lineage.chain(final)) == chain_epochs + 2
    baselines = [n for n in lineage.nodes if n.kind is NodeKind.BASELINE]
    assert len(baselines) == 2 and all(b.epochs == chain_epochs + 2 for b in baselines)
    assert lineage.baseline_budget() == chain_epochs + 2 and all(lineage.is_current_baseline(b) for b in baselines)
    # a baseline for the search's answer alone (made before the final distillation) is stale
    stale = baselines[0].model_copy(update={"epochs": chain_epochs})
    assert not lineage.is_current_baseline(stale)
    # one that diverged within its budget is that training, not run again on every resume; a lost worker's is
    diverged = baselines[0].model_copy(update={"status": Status.FAILED, "epochs": 1})
    lost = diverged.model_copy(update={"epochs": 0})
    assert lineage.is_current_baseline(diverged) and not lineage.is_current_baseline(lost)
    # a rerun finds everything done: the same nodes, none trained again (weights and seconds unchanged)
    nodes = [(n.id, n.sha256, n.seconds) for n in lineage.nodes]
    again = run(tiny_teacher, tmp_path / "run", "--final-epochs", "2", "--baselines").load()
    assert [(n.id, n.sha256, n.seconds) for n in again.nodes] == nodes


def test_a_final_distillation_made_under_other_final_keys_is_made_again_or_dropped(tiny_teacher, tmp_path):
    first = run(tiny_teacher, tmp_path / "run", "--final-epochs", "1").load()
    searched = [n for n in first.nodes if n.kind is not NodeKind.FINAL]
    assert first.distilled().epochs == 1  # type: ignore[union-attr]
    # --force with another final_epochs: the final is trained again for the new count, the search kept
    again = run(tiny_teacher, tmp_path / "run", "--final-epochs", "2", "--force").load()
    distilled = again.distilled()
    assert distilled is not None and distilled.id == "final" and distilled.epochs == 2
    assert [n for n in again.nodes if n.kind is not NodeKind.FINAL] == searched
    # --force without a final distillation: the old one is no longer the answer
    dropped = run(tiny_teacher, tmp_path / "run", "--force").load()
    assert dropped.distilled() is None and dropped.final() == dropped.search_result()
    assert not RunDir(tmp_path / "run").node_dir("final").exists()


def test_the_final_distillation_can_be_taught_by_the_whole_chain(tiny_teacher, tmp_path):
    from ikd.campaign import compress
    from ikd.config import load_config

    overrides = {"student.final_epochs": 1, "student.final_teachers": "chain"}
    args = cli.build_parser().parse_args(campaign_args(tiny_teacher, tmp_path / "run", "--max-generations", "2"))
    config = load_config(None, cli.compress_overrides(args) | overrides)
    lineage = compress(config, progress=False)
    answer, final = lineage.search_result(), lineage.distilled()
    assert final is not None
    # nearest first, like every node's ancestors: the parent gives the hint
    assert final.teachers == [n.id for n in reversed(lineage.chain(answer)[:-1])] and len(final.teachers) >= 2
    assert final.teachers[0] == answer.parent and final.teachers[-1] == "g0-teacher"


def test_a_final_student_below_its_answers_floor_is_not_the_answer(tiny_teacher, tmp_path, monkeypatch):
    from ikd import campaign

    real = campaign.rules.final_rejection
    monkeypatch.setattr(campaign.rules, "final_rejection", lambda lineage, search: "val 1.00% < made up")
    first = run(tiny_teacher, tmp_path / "run", "--final-epochs", "1", "--baselines").load()
    distilled = first.distilled()
    assert distilled is not None and distilled.reason.startswith("not kept: by validation it fails the test")
    assert first.final() == first.search_result()  # the search's answer, which kept its tolerances
    # the baselines still get the final's epochs: the chain spent them choosing
    assert first.node("baseline-scratch").epochs == first.epochs_spent(first.chain(distilled))
    # decided again on every run: under tolerances it keeps, it is the answer
    monkeypatch.setattr(campaign.rules, "final_rejection", real)
    again = run(tiny_teacher, tmp_path / "run", "--final-epochs", "1", "--baselines").load()
    assert again.final().id == "final" and again.distilled().reason == ""  # type: ignore[union-attr]
    # nothing trained again: the same nodes with the same weights and seconds, only the decision changed
    assert [(n.id, n.sha256, n.seconds) for n in again.nodes] == [(n.id, n.sha256, n.seconds) for n in first.nodes]


def test_a_final_left_from_an_earlier_answer_does_not_count_in_the_search_budget(tiny_teacher, tmp_path):
    # search.budget_epochs limits the candidates' epochs; the old final, retrained for the new answer
    # once --force lets the search go on, took 3 of a budget of 2 and stopped it before generation 2
    config = tmp_path / "budget.yaml"
    config.write_text("search:\n  budget_epochs: 2\n")
    extra = ("--config", str(config), "--final-epochs", "3")
    first = run(tiny_teacher, tmp_path / "run", *extra, "--max-generations", "1").load()
    assert first.distilled() is not None and first.search_epochs() == 1
    again = run(tiny_teacher, tmp_path / "run", *extra, "--force").load()
    assert (again.stop_reason or "").startswith("max_generations"), again.stop_reason
    assert again.search_result().generation == 2 and again.search_epochs() == 2
    final = again.distilled()
    assert final is not None and final.parent == again.search_result().id


def test_a_final_distillation_or_baseline_that_diverges_is_not_a_search_candidate(tiny_teacher, tmp_path, monkeypatch):
    from ikd import train
    from ikd.report import Report

    from audit import fault_injection

    monkeypatch.setattr(train._Student, "begin_epoch", train._Student.begin_epoch)  # undone after the test
    fault_injection.bad_loss(float("nan"), "final", 1)
    fault_injection.bad_loss(float("nan"), "baseline-scratch", 1)
    lineage = run(tiny_teacher, tmp_path / "run", "--final-epochs", "2", "--baselines").load()
    failed, scratch = lineage.node("final"), lineage.node("baseline-scratch")
    assert failed.status == Status.FAILED and failed.kind is NodeKind.FINAL
    assert scratch.status == Status.FAILED and scratch.kind is NodeKind.BASELINE
    # the search's candidates and budget are the search's own; the answer stays the search's
    assert all(n.id not in ("final", "baseline-scratch") for n in lineage.students())
    searched = [n for n in lineage.nodes if n.generation > 0 and n.operator not in ("final", "baseline")]
    assert lineage.search_epochs() == sum(n.epochs for n in searched)
    assert lineage.distilled() is None and lineage.final() == lineage.search_result()
    assert lineage.node("baseline-oneshot-kd").status == Status.BASELINE
    lines = "\n".join(Report(lineage, "digits").facts())
    assert f"Final distillation of {lineage.search_result().id} failed (" in lines
    assert "baseline-scratch failed (" in lines
    assert f"Baselines (same architecture as the final student, {lineage.baseline_budget()} epochs each" in lines
    assert lineage.baseline_budget() != scratch.epochs  # the premise: the failed one stopped short
