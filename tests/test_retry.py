"""Retries (search.retry_within): a candidate that misses its floor narrowly trains a little more."""

from __future__ import annotations

import pytest
import torch
from conftest import campaign_args
from safetensors.torch import load_file

from ikd import cli, rules
from ikd.config import CampaignConfig, SearchConfig
from ikd.lineage import Lineage, RunDir, Status

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("max_drop", ["0", "10"])
def test_a_near_miss_is_retrained_from_its_parent_and_judged_against_the_same_floor(tiny_teacher, tmp_path, max_drop):
    # a 1-epoch child misses the floor; retry_within 100 makes every one that does a near miss, trained
    # again for 2. At max_drop 0 the retries miss too; at 10 one passes, parenting generation 2.
    extra = ("--max-drop", max_drop, "--max-step-drop", max_drop, "--retry-within", "100", "--retry-epochs", "2")
    args = campaign_args(tiny_teacher, tmp_path / "run", *extra, "--baselines", generations=2)
    assert cli.main(args) == 0
    run = RunDir(tmp_path / "run")
    lineage = run.load()
    root = lineage.root()
    retries = [n for n in lineage.nodes if n.operator == rules.RETRY]
    near = [n for n in lineage.students() if n.status == Status.REJECTED and n.operator != rules.RETRY]
    assert retries and {r.id for r in retries} == {rules.retry_id(n.id) for n in near if n.epochs == 1}
    for retry in retries:
        missed = lineage.node(rules.near_miss_id(retry.id))
        assert retry.spec() == missed.spec() and retry.epochs == 2 and missed.epochs == 1
        assert (retry.parent, retry.generation) == (missed.parent, missed.generation)
        assert retry.teachers == missed.teachers == [missed.parent]
        assert f"retried as {retry.id}" in missed.reason
        # another training than the near miss's
        before, after = (load_file(run.node_dir(n) / "model.safetensors") for n in (missed.id, retry.id))
        assert any(not torch.equal(before[k], after[k]) for k in before)
        # judged against the floor its near miss had
        assert missed.parent is not None
        expected = rules.rejection(retry, lineage.node(missed.parent), root, lineage_search(lineage))
        assert (retry.status == Status.ACCEPTED) == (expected is None), (retry.status, expected, retry.reason)
        if retry.status == Status.REJECTED:
            assert retry.reason == expected
    accepted = [r for r in retries if r.status == Status.ACCEPTED]
    assert bool(accepted) == (max_drop == "10")
    for retry in accepted:  # it parents the next generation and teaches it
        children = [n for n in lineage.nodes if n.parent == retry.id]
        assert children and all(c.teachers == [retry.id] and c.generation == retry.generation + 1 for c in children)
    if lineage.final().generation == 1:  # no child of generation 2 passed: the retry is the answer
        # its near miss is a rejected sibling, off the chain: the baselines get the retry's epochs
        assert lineage.final().operator == rules.RETRY and lineage.baseline_budget() == 2
    # a rerun of the same command finds everything done
    assert cli.main(args) == 0
    assert run.load().nodes == lineage.nodes


def lineage_search(lineage: Lineage) -> SearchConfig:
    return CampaignConfig.model_validate(lineage.config).search


def test_redecide_reuses_the_retries_it_reaches_and_a_rerun_retrains_nothing(tiny_teacher, tmp_path):
    extra = ("--max-drop", "10", "--max-step-drop", "10", "--retry-within", "100", "--retry-epochs", "2")
    assert cli.main(campaign_args(tiny_teacher, tmp_path / "run", *extra)) == 0
    run = RunDir(tmp_path / "run")
    before = {n.id: n.sha256 for n in run.load().nodes}
    assert rules.retry_id("g1-width") in before
    # decided again under max_drop 0: the trained nodes and their retries come back undecided and are
    # reused where the replay reaches them (nothing of what exists is retrained)
    strict = ("--max-drop", "0", "--max-step-drop", "0", "--retry-within", "100", "--retry-epochs", "2")
    assert cli.main([*campaign_args(tiny_teacher, tmp_path / "run", *strict), "--redecide"]) == 0
    after = run.load()
    assert all(after.node(i).sha256 == sha for i, sha in before.items())
    assert after.node(rules.retry_id("g1-width")).status == Status.REJECTED


def test_no_retry_for_a_near_miss_that_a_smaller_passing_sibling_already_beats(tiny_teacher, tmp_path):
    # parent-children trains both children together; the smaller one passes with room, so retrying the
    # larger one could not change the choice (select: best keeps one)
    extra = ("--strategy", "parent-children", "--max-drop", "25", "--max-step-drop", "25", "--retry-within", "100")
    assert cli.main(campaign_args(tiny_teacher, tmp_path / "run", *extra, "--retry-epochs", "2")) == 0
    lineage = RunDir(tmp_path / "run").load()
    children = {n.id: n for n in lineage.students()}
    seen = [(n.id, n.status, n.val_accuracy) for n in children.values()]
    accepted = [n for n in children.values() if n.status == Status.ACCEPTED]
    assert accepted, seen
    larger = [n for n in children.values() if n.status == Status.REJECTED and n.params > accepted[0].params]
    root, search = lineage.root(), CampaignConfig.model_validate(lineage.config).search
    # a near miss, which would be retried without the smaller sibling (not one merely passed over for it)
    assert larger and all(rules.near_miss(n, root, root, search) for n in larger), seen
    assert not any(n.operator == rules.RETRY for n in children.values())


def test_the_retries_of_two_seed_siblings_are_two_trainings(tiny_teacher, tmp_path):
    # both siblings of one architecture miss the floor (max_drop 0) and are near misses: each retry keeps
    # its sibling's seed, so neither is taken for the other
    extra = ("--strategy", "parent-children", "--operators", "width", "--seeds", "2", "--select", "tree")
    strict = ("--max-drop", "0", "--max-step-drop", "0", "--retry-within", "100", "--retry-epochs", "2")
    assert cli.main(campaign_args(tiny_teacher, tmp_path / "run", *extra, *strict)) == 0
    run = RunDir(tmp_path / "run")
    lineage = run.load()
    retries = sorted(n.id for n in lineage.nodes if n.operator == rules.RETRY)
    assert retries == ["g1-width-s0-retry", "g1-width-s1-retry"], [(n.id, n.reason) for n in lineage.nodes]
    first, second = (load_file(run.node_dir(i) / "model.safetensors") for i in retries)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    for sibling in ("g1-width-s0", "g1-width-s1"):
        assert f"retried as {sibling}-retry" in lineage.node(sibling).reason
