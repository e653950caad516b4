"""The four variants on tiny budgets: lineage shape, beam, teacher sets, aggregations."""

import pytest
from test_search import campaign_config

from ikd.campaign import compress
from ikd.cli import format_lineage
from ikd.config import load_config
from ikd.errors import CheckpointError, ConfigError


def config(tmp_path, teacher, name="run", ensemble=None, **search):
    base = campaign_config(tmp_path / name, teacher, **search)
    if ensemble:
        base = base.model_copy(update={"ensemble": base.ensemble.model_copy(update=ensemble)})
    return base


def generation(lineage, g):
    return [n for n in lineage.nodes if n.generation == g and n.status not in ("teacher", "expert", "baseline")]


def test_parent_children_trains_every_child_together_and_keeps_the_smallest(tmp_path, tiny_teacher):
    lineage = compress(
        config(tmp_path, tiny_teacher, strategy="parent-children", width_factor=[0.5, 0.75], max_generations=2),
        progress=False,
    )
    for g in (1, 2):
        kids = generation(lineage, g)
        assert sorted(n.id for n in kids) == sorted(f"g{g}-{op}" for op in ("depth", "width50", "width75"))
        accepted = [n for n in kids if n.status == "accepted"]
        assert len(accepted) == 1 and accepted[0].params == min(n.params for n in kids)
        assert all(n.val_accuracy is not None for n in kids)  # all k were trained
    assert lineage.node("g2-width50").parent == "g1-width50"


def test_tree_keeps_a_beam_and_each_survivor_parents_its_own_children(tmp_path, tiny_teacher):
    lineage = compress(
        config(tmp_path, tiny_teacher, strategy="parent-children", select="tree", beam=2, max_generations=2),
        progress=False,
    )
    first = [n for n in generation(lineage, 1) if n.status == "accepted"]
    assert len(first) == 2  # both children of the root survive in a beam of two
    second = generation(lineage, 2)
    assert {n.parent for n in second} == {n.id for n in first}
    assert len(second) == 4 and all(n.id.startswith(("g2-b0-", "g2-b1-")) for n in second)
    # depth then width and width then depth reach one shape: the beam keeps it once
    accepted = [n for n in second if n.status == "accepted"]
    assert len(accepted) == 2 and accepted[0].arch != accepted[1].arch
    reasons = sorted(n.reason for n in second if n.status == "rejected")
    assert "of the same architecture, was kept" in reasons[0] and "outside the beam" in reasons[1], reasons
    table = format_lineage(lineage)
    assert "\n  g1-" in table and "\n    g2-b" in table  # children indented under their parents


def test_a_mistyped_expert_leaves_no_run_behind(tmp_path, tiny_teacher):
    # the root used to be recorded first: the corrected rerun was then refused as another config
    typo = config(tmp_path, tiny_teacher, strategy="ancestors-child", ensemble={"experts": [str(tmp_path / "nope")]})
    with pytest.raises(CheckpointError, match=r"nope/model.json: not found"):
        compress(typo, progress=False)
    assert not (tmp_path / "run" / "lineage.json").exists()


def test_an_expert_from_another_directory_under_its_id_is_refused(tmp_path, tiny_teacher):
    import shutil

    first, second = (shutil.copytree(tiny_teacher, tmp_path / where / "expert") for where in ("a", "b"))
    for expert, force in ((first, False), (second, True)):
        run = config(
            tmp_path, tiny_teacher, strategy="ancestors-child", max_generations=1, ensemble={"experts": [str(expert)]}
        )
        if expert == first:
            compress(run, progress=False)
        else:
            with pytest.raises(ConfigError, match=f"its expert1-expert was copied from {first}, not from {second}"):
                compress(run, progress=False, force=force)
    for again in (f"{first}/", f"{first}/../{first.name}"):
        with pytest.raises(ConfigError, match="listed twice"):
            load_config(None, {"search.strategy": "ancestors-child", "ensemble.experts": [str(first), again]})


def test_a_tree_stopped_between_branches_leaves_the_decided_nothing(tmp_path, tiny_teacher, monkeypatch):
    # a time limit inside the second branch: the first branch's children within tolerance are still
    # candidates on disk (they read "rejected" until the resume accepted them), and the rerun decides
    from ikd.campaign import Campaign, CampaignPaused
    from ikd.lineage import RunDir
    from ikd.train import TrainingPaused

    real_grow = Campaign.grow

    def grow(self, generation, parent, candidates, expert_ids):
        if generation == 2 and candidates[0].node_id.startswith("g2-b1-"):
            raise TrainingPaused(1, 2, tmp_path)
        return real_grow(self, generation, parent, candidates, expert_ids)

    tree = config(tmp_path, tiny_teacher, strategy="parent-children", select="tree", beam=2, max_generations=2)
    monkeypatch.setattr(Campaign, "grow", grow)
    with pytest.raises(CampaignPaused):
        compress(tree, progress=False)
    first_branch = [n for n in RunDir(tmp_path / "run").load().nodes if n.id.startswith("g2-b0-")]
    assert first_branch and {n.status for n in first_branch} == {"candidate"}
    monkeypatch.setattr(Campaign, "grow", real_grow)
    second = generation(compress(tree, progress=False), 2)
    assert len([n for n in second if n.status == "accepted"]) == 2


def test_seeds_give_children_of_one_architecture(tmp_path, tiny_teacher):
    lineage = compress(
        config(tmp_path, tiny_teacher, strategy="parent-children", operators=["width"], seeds=2, max_generations=1),
        progress=False,
    )
    kids = generation(lineage, 1)
    assert sorted(n.id for n in kids) == ["g1-width-s0", "g1-width-s1"]
    assert kids[0].arch == kids[1].arch
    assert sorted(n.seed or 0 for n in kids) == [1, 1 + 7919]  # the seeds they trained with: campaign seed 0, g1
    [other] = [n for n in kids if n.status != "accepted"]
    assert other.reason.endswith("is as small, and no less accurate by validation")


@pytest.mark.parametrize(
    "ancestors, expected",
    [("all", ["g2-width", "g1-width", "g0-teacher"]), (2, ["g2-width", "g1-width"]), (1, ["g2-width"])],
)
def test_ancestors_child_is_taught_by_its_chain(tmp_path, tiny_teacher, ancestors, expected):
    lineage = compress(
        config(
            tmp_path,
            tiny_teacher,
            strategy="ancestors-child",
            operators=["width"],
            max_generations=3,
            ensemble={"ancestors": ancestors},
        ),
        progress=False,
    )
    child = lineage.node("g3-width")
    assert child.teachers == expected
    if len(expected) > 1:
        assert child.loss["aggregate"] == "mean-kd" and len(child.loss["teacher_weights"]) == len(expected)
    assert ("teachers" in format_lineage(lineage)) == (len(expected) > 1)


def test_experts_join_the_ancestors_and_are_copied_into_the_run(tmp_path, tiny_teacher):
    import shutil

    expert_dir = shutil.copytree(tiny_teacher, tmp_path / "expert")
    lineage = compress(
        config(
            tmp_path,
            tiny_teacher,
            strategy="ancestors-children",
            operators=["width"],
            max_generations=2,
            ensemble={
                "experts": [str(expert_dir)],
                "aggregate": "mean-probs",
                "weighting": "val-accuracy",
                "drop": 0.5,
                "hints": "each",
            },
        ),
        progress=False,
    )
    expert = next(n for n in lineage.nodes if n.status == "expert")
    assert (tmp_path / "run" / "nodes" / expert.id / "model.safetensors").is_file()
    child = lineage.node("g2-width")
    assert child.teachers == ["g1-width", "g0-teacher", expert.id]
    assert child.loss["aggregate"] == "mean-probs" and child.loss["hints"] == "each"
    assert child.loss["teacher_weights"] == [lineage.node(t).val_accuracy for t in child.teachers]
    assert child.status == "accepted"


def test_an_expert_dropped_from_the_config_teaches_no_more(tmp_path, tiny_teacher):
    import shutil

    one, other = (shutil.copytree(tiny_teacher, tmp_path / name) for name in ("one", "other"))

    def run(experts, generations, **kw):
        ensemble = {"experts": [str(e) for e in experts]}
        search = dict(strategy="ancestors-child", operators=["width"], max_generations=generations)
        return compress(config(tmp_path, tiny_teacher, ensemble=ensemble, **search), progress=False, **kw)

    first = run([one, other], 1)
    assert first.node("g1-width").teachers == ["g0-teacher", "expert1-one", "expert2-other"]
    # under --force the old experts stay on record (earlier nodes learnt from them) but no longer teach
    lineage = run([other], 2, force=True)
    assert lineage.node("g2-width").teachers == ["g1-width", "g0-teacher", "expert1-other"]


@pytest.mark.parametrize("ancestors", [1, "all"])
def test_the_root_listed_as_an_expert_is_the_root_and_teaches_once(tmp_path, tiny_teacher, ancestors):
    # copied in as expert1-<name> it taught twice wherever the root was an ancestor already
    ensemble = {"experts": [f"{tiny_teacher}/"], "ancestors": ancestors}
    search = dict(strategy="ancestors-child", operators=["width"], max_generations=2)
    lineage = compress(config(tmp_path, tiny_teacher, ensemble=ensemble, **search), progress=False)
    assert lineage.node("g1-width").teachers == ["g0-teacher"]
    assert lineage.node("g2-width").teachers == ["g1-width", "g0-teacher"]
    assert not [n for n in lineage.nodes if n.status == "expert"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"search.select": "tree"}, "needs a \\*-children strategy"),
        ({"search.seeds": 2}, "needs a \\*-children strategy"),
        ({"ensemble.experts": ["x"]}, "needs an ancestors-\\* strategy"),
        ({"ensemble.ancestors": 0}, "ensemble.ancestors"),
        ({"ensemble.aggregate": "max"}, "ensemble.aggregate"),
        ({"search.strategy": "siblings"}, "search.strategy"),
        ({"search.operators": ["slim", "prune"]}, "depth, width, block, slim"),
        ({"search.slim_fraction": [0.5, 1.0]}, "search.slim_fraction"),
        ({"search.slim_min_channels": 0}, "search.slim_min_channels"),
        (
            {"search.retry_within": 0.3, "search.retry_epochs": 5, "student.epochs": 5},
            "expected more than student.epochs \\(5\\)",
        ),
        ({"search.retry_within": 0.3, "search.retry_epochs": 3, "student.epochs": 5}, "only longer"),
        ({"search.budget_epochs": 4}, "expected at least one candidate's training \\(5 epochs\\)"),
        (
            {"search.budget_epochs": 6, "student.hint_stage": "two-stage", "student.hint_epochs": 2},
            "\\(7 epochs\\), or the campaign would train its teacher and stop before any student",
        ),
        # an unset shell variable ("$RUN"): the run would be the current directory, the teacher trained
        ({"run_dir": ""}, "run_dir = '' .*expected a path or address, not an empty string"),
        ({"teacher.dir": " "}, "teacher.dir = ' ' .*not an empty string"),
        ({"data.dir": ""}, "data.dir = ''"),
        ({"executor.ray_address": ""}, "executor.ray_address = ''"),
        ({"search.strategy": "ancestors-child", "ensemble.experts": ["e", ""]}, "ensemble.experts"),
        ({"time_limit": "1h1h"}, "expected a duration such as 2h30m"),  # the format, not "greater than zero"
        ({"time_limit": "0s"}, "expected a duration greater than zero"),
        ({"time_limit": "1e400"}, "expected a finite duration"),  # it said "greater than zero"
        # YAML's yes/no read as a number: `epochs: true` trained 1 epoch
        ({"student.epochs": True}, "student.epochs = True .*true is a yes/no; expected a number"),
        ({"ensemble.ancestors": True}, "ensemble.ancestors = True"),
        ({"search.width_factor": False}, "search.width_factor = False"),
        ({"loss.gamma": True}, "loss.gamma = True"),
    ],
)
def test_strategy_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("strategy", ["parent-child", "parent-children"])
def test_a_training_budget_stops_the_campaign_before_it_is_exceeded(tmp_path, tiny_teacher, strategy):
    lineage = compress(
        config(tmp_path, tiny_teacher, strategy=strategy, budget_epochs=3, max_generations=10), progress=False
    )
    spent = sum(n.epochs for n in lineage.nodes if n.generation > 0 and n.status != "baseline")
    assert spent <= 3 and "budget" in (lineage.stop_reason or "")
    # parent-child: one child per generation fits (1 epoch each); parent-children: k=2 per pass
    assert spent == (3 if strategy == "parent-child" else 2)


def test_a_budget_under_the_first_pass_of_children_trained_together_is_refused_before_anything(
    tmp_path, tiny_teacher, monkeypatch
):
    from test_search import trained_ids

    from ikd.lineage import RunDir

    calls = trained_ids(monkeypatch)
    # one candidate's epoch fits (the config's check), the first pass trains depth and width together (2)
    short = config(tmp_path, tiny_teacher, strategy="parent-children", budget_epochs=1, max_generations=3)
    with pytest.raises(ConfigError, match=r"trains its 2 candidates together \(2 x 1 = 2 epochs\)"):
        compress(short, progress=False)
    assert calls == [] and not RunDir(tmp_path / "run").exists()
    # one at a time, the same budget trains the smallest candidate
    one_by_one = compress(config(tmp_path, tiny_teacher, name="child", budget_epochs=1), progress=False)
    assert [n.id for n in generation(one_by_one, 1)] and "budget" in (one_by_one.stop_reason or "")


def test_a_generation_the_budget_cuts_short_is_left_undecided_and_finished_later(tmp_path, tiny_teacher, monkeypatch):
    from test_search import trained_ids

    keys = dict(strategy="parent-children", select="tree", max_generations=2)
    short = compress(config(tmp_path, tiny_teacher, budget_epochs=5, **keys), progress=False)  # g1: 2, g2-b0: 2
    assert "budget" in (short.stop_reason or "")
    cut = generation(short, 2)
    assert {n.id for n in cut} == {"g2-b0-width", "g2-b0-depth"} and "accepted" not in {n.status for n in cut}
    undecided = [n for n in cut if n.status == "candidate"]
    assert undecided and all("the budget ran out before g2-b1-" in n.reason for n in undecided)
    assert short.final().generation == 1
    calls = trained_ids(monkeypatch)
    more = compress(config(tmp_path, tiny_teacher, budget_epochs=12, **keys), progress=False, force=True)
    assert sorted(calls) == ["g2-b1-depth", "g2-b1-width"]  # b0 reused, the generation decided whole
    assert "accepted" in {n.status for n in generation(more, 2)}


def lose_workers(monkeypatch, lost: set[str], why: str = "worker lost: killed") -> None:
    """Every job of the `lost` node ids comes back as if its worker had died (the others train)."""
    from ikd import executor

    real = executor.LocalExecutor.run

    def run(self, job, models):
        trained = real(self, job, models)
        gone = executor.Trained(None, executor.WorkerLost(why), 0.0, "lost")
        return [gone if c.node_id in lost else t for c, t in zip(job.candidates, trained, strict=True)]

    monkeypatch.setattr(executor.LocalExecutor, "run", run)


def test_a_lost_candidate_that_could_have_been_chosen_leaves_its_generation_undecided(
    tmp_path, tiny_teacher, monkeypatch
):
    from ikd.campaign import LOST_STOP

    keys = dict(strategy="parent-children", max_generations=1)
    lose_workers(monkeypatch, {"g1-width"})  # the smaller child: had it come back, it would have won
    first = compress(config(tmp_path, tiny_teacher, **keys), progress=False)
    assert (first.stop_reason or "").startswith(f"{LOST_STOP} g1-width in generation 1")
    assert "could have been chosen over g1-depth" in (first.stop_reason or "")
    assert first.node("g1-depth").status == "candidate" and first.final().id == "g0-teacher"
    assert "once the candidates lost with their workers train again" in first.node("g1-depth").reason
    monkeypatch.undo()
    again = compress(config(tmp_path, tiny_teacher, **keys), progress=False)
    assert again.node("g1-width").status == "accepted" and again.node("g1-depth").status == "rejected"
    # a lost child larger than the one chosen could not have changed the decision
    lose_workers(monkeypatch, {"g1-depth"})
    other = compress(config(tmp_path, tiny_teacher, name="other", **keys), progress=False)
    assert other.node("g1-width").status == "accepted" and other.node("g1-depth").status == "failed"
    # ... unless it would have taken a place the beam left empty
    tree = compress(config(tmp_path, tiny_teacher, name="tree", select="tree", beam=2, **keys), progress=False)
    assert (tree.stop_reason or "").startswith(f"{LOST_STOP} g1-depth in generation 1")


def test_a_candidate_that_loses_its_worker_every_time_fails_after_the_last_try(tmp_path, tiny_teacher, monkeypatch):
    from ikd.campaign import LOST_STOP
    from ikd.executor import MAX_WORKER_LOSSES, NO_ROOM

    keys = dict(strategy="parent-children", max_generations=1)
    # a job that never started (no worker left on the cluster) killed no worker: not counted
    lose_workers(monkeypatch, {"g1-width"}, f"worker lost: {NO_ROOM}")
    queued = compress(config(tmp_path, tiny_teacher, **keys), progress=False)
    assert (queued.stop_reason or "").startswith(LOST_STOP) and queued.node("g1-width").workers_lost == 0
    monkeypatch.undo()
    lose_workers(monkeypatch, {"g1-width"})  # the child that could win dies with its worker on every run
    for run in range(1, MAX_WORKER_LOSSES):
        lineage = compress(config(tmp_path, tiny_teacher, **keys), progress=False)
        assert (lineage.stop_reason or "").startswith(LOST_STOP), run
        assert lineage.node("g1-width").workers_lost == run
    last = compress(config(tmp_path, tiny_teacher, **keys), progress=False)
    lost = last.node("g1-width")
    assert lost.status == "failed" and lost.workers_lost == MAX_WORKER_LOSSES
    assert lost.reason.startswith(f"failed {MAX_WORKER_LOSSES} times with its worker")
    assert last.answered() and last.node("g1-depth").status == "accepted"  # decided without it
    assert compress(config(tmp_path, tiny_teacher, **keys), progress=False).node("g1-width") == lost  # not tried again


def test_a_budget_stop_in_one_branch_trains_no_other(tmp_path, tiny_teacher, monkeypatch):
    from ikd.campaign import Campaign

    real, grown = Campaign.grow, []

    def grow(self, generation, parent, candidates, expert_ids):
        grown.append((generation, parent.id))
        if generation == 2:  # the first branch of generation 2 runs out of budget
            return [], [c.node_id for c in candidates], True
        return real(self, generation, parent, candidates, expert_ids)

    monkeypatch.setattr(Campaign, "grow", grow)
    keys = dict(strategy="parent-children", select="tree", beam=2, max_generations=2)
    lineage = compress(config(tmp_path, tiny_teacher, budget_epochs=100, **keys), progress=False)
    assert [g for g in grown if g[0] == 2] == [(2, "g1-width")]  # not g1-depth's branch: it could not count
    assert "budget" in (lineage.stop_reason or "")


@pytest.mark.parametrize(
    "keys, inert",
    [
        ({"ensemble.aggregate": "mean-probs", "ensemble.ancestors": 2}, ["ensemble.ancestors", "ensemble.aggregate"]),
        ({"ensemble.aggregate": "mean-probs", "student.final_epochs": 3, "student.final_teachers": "chain"}, []),
        ({"search.beam": 5}, ["search.beam"]),
        ({"search.strategy": "parent-children", "search.candidates": "all"}, ["search.candidates"]),
        ({"search.retry_epochs": 4}, ["search.retry_epochs"]),
        ({"search.speedup_batch": 64}, ["search.speedup_batch"]),
        ({"search.speedup_batch": 64, "search.target_speedup": 5}, []),
        ({"search.slim_fraction": 0.5, "search.width_factor": 0.75}, ["search.slim_fraction"]),
        ({"search.operators": ["depth"], "search.width_factor": 0.75}, ["search.width_factor"]),
        ({"search.operators": ["block"], "search.width_factor": 0.75}, []),
        ({"teacher.dir": "t", "teacher.arch": "vgg19", "teacher.lr": 0.05}, ["teacher.lr", "teacher.arch"]),
        ({"teacher.arch": "vgg19"}, []),
        ({"student.final_teachers": "chain"}, ["student.final_teachers"]),  # no final distillation
        ({"search.early_rejection": 2.0, "student.epochs": 2}, ["search.early_rejection"]),  # it could never fire
        ({"search.early_rejection": 2.0, "student.epochs": 3}, []),
        ({"loss.kd_warmup": 1.0}, []),
        ({"loss.kd_warmup": 5.0}, ["loss.kd_warmup"]),  # the child's 5 epochs end before the ramp does
        ({"loss.kd_warmup": 1.0, "loss.alpha": 0.0}, ["loss.kd_warmup"]),
        ({"student.hint_stage": "two-stage", "student.hint_epochs": 0}, ["student.hint_stage"]),
        (
            {"executor.gpus_per_job": 1, "executor.ray_address": "auto"},
            ["executor.ray_address", "executor.gpus_per_job"],
        ),
        ({"executor.kind": "ray", "executor.gpus_per_job": 1}, []),
        ({"student.hint_epochs": 3}, ["student.hint_epochs"]),
        ({"student.hint_epochs": 3, "student.hint_stage": "two-stage"}, []),
        ({"search.slim_round_to": 8, "search.slim_by_share": True}, ["search.slim_by_share", "search.slim_round_to"]),
        ({"search.strategy": "ancestors-children", "ensemble.ancestors": 2, "search.beam": 3}, ["search.beam"]),
        ({"search.strategy": "ancestors-child", "ensemble.ancestors": 1, "ensemble.drop": 0.5}, ["ensemble.drop"]),
        (
            {
                "search.strategy": "ancestors-child",
                "ensemble.ancestors": 1,
                "ensemble.experts": ["e"],
                "ensemble.drop": 0.5,
            },
            [],
        ),
    ],
)
def test_settings_the_strategy_never_reads_are_named(keys, inert):
    from ikd.config import load_config

    assert [note.partition(":")[0] for note in load_config(None, keys).inert_settings()] == inert


def test_a_child_id_names_its_sibling_seed_and_its_branch():
    from ikd import rules
    from ikd.strategy import child_prefix, id_prefix, seed_index, versioned_id

    assert [seed_index(i) for i in ("g2-width", "g2-width-s0", "g2-b1-slim50-s3", "g2-width-s1-retry")] == [0, 0, 3, 0]
    assert [id_prefix(i) for i in ("g2-width", "g12-b1-slim50-s3", "final")] == ["g2-", "g12-b1-", ""]
    assert [id_prefix(child_prefix(g, b) + "width") for g, b in ((2, None), (12, 1))] == ["g2-", "g12-b1-"]
    # another path's training holds the id: the version goes before the seed, which still reads the same
    ids = ("g2-width", "g2-b1-slim50-s3", "g3-depth-s12", "g2-width-s1-retry", "g4-block-retry")
    versions = [versioned_id(i, 2) for i in ids]
    assert versions == [
        "g2-width-v2",
        "g2-b1-slim50-v2-s3",
        "g3-depth-v2-s12",
        "g2-width-v2-s1-retry",
        "g4-block-v2-retry",
    ]
    assert [(seed_index(i), id_prefix(i)) for i in versions] == [(seed_index(i), id_prefix(i)) for i in ids]
    assert [rules.near_miss_id(i) for i in versions[3:]] == ["g2-width-v2-s1", "g4-block-v2"]
    assert rules.near_miss_id(rules.retry_id(versions[1])) == versions[1]


def test_a_record_is_the_same_training_whatever_its_id_but_not_whatever_its_operator():
    from ikd.arch import preset
    from ikd.campaign import same_training
    from ikd.lineage import NodeRecord, Status
    from ikd.shrink import Candidate

    spec = preset("vgg11", in_channels=1, image_size=8, num_classes=10)

    def record(node_id: str, operator: str | None) -> NodeRecord:
        return NodeRecord.of_spec(
            node_id,
            spec,
            root_params=10 * spec.num_params(),
            generation=2,
            parent="g1-width",
            teachers=["g1-width"],
            operator=operator,
            status=Status.REJECTED,
        )

    def same(node: NodeRecord, node_id: str, operator: str, sibling: int = 0, teachers=("g1-width",)) -> bool:
        return same_training(node, Candidate(node_id, operator, spec, sibling), "g1-width", list(teachers))

    assert same(record("g2-block", "block"), "g2-block50", "block")  # renamed by a factor list: reused
    assert not same(record("g2-block", "block"), "g2-block", "block", sibling=1)
    assert not same(record("g2-block", "block"), "g2-block", "block", teachers=("g1-width", "g0-teacher"))
    # a retry has its near miss's parent, shape and seed: only the operator tells them apart
    assert not same(record("g2-block", "block"), "g2-block-retry", "retry")
    assert same(record("g2-block-retry", "retry"), "g2-block-retry", "retry")
    # a record from before operators were recorded counts under its own id only
    assert same(record("g2-block", None), "g2-block", "block")
    assert not same(record("g2-block", None), "g2-block-retry", "retry")


def test_a_recorded_config_is_read_back_under_the_rules_of_its_time():
    # a run made before retry_epochs < student.epochs and budgets below one pass were refused still
    # compares as a config (raw, every key added to ikd since would have read as a difference)
    from pydantic import ValidationError

    from ikd.config import RECORDED, CampaignConfig

    old = load_config(None).model_dump(mode="json")
    old["search"] |= {"retry_within": 0.2, "retry_epochs": 2, "budget_epochs": 3}
    with pytest.raises(ValidationError, match=r"expected more than student\.epochs"):
        CampaignConfig.model_validate(old)
    assert CampaignConfig.model_validate(old, context={RECORDED: True}).search.retry_epochs == 2
    old["search"]["retry_epochs"] = 5  # the rule it always had: the same length replays the near miss
    with pytest.raises(ValidationError, match=r"expected more than student\.epochs"):
        CampaignConfig.model_validate(old, context={RECORDED: True})


def test_teacher_views_distil_from_the_mirrored_pair_and_refuse_teachers_never_shown_mirror_images(
    tmp_path, tiny_teacher, digits, monkeypatch
):
    import torch

    import ikd.objective
    from ikd.arch import ArchSpec
    from ikd.checkpoint import save_model, training_metadata
    from ikd.model import build_model
    from ikd.runtime import resolve_precision
    from ikd.train import TrainConfig, evaluate, train_model

    def views_config(name, teacher, student_augment):
        base = config(tmp_path, teacher, name=name, max_generations=1)
        return base.model_copy(
            update={
                "loss": base.loss.model_copy(update={"teacher_views": "flip"}),
                "student": base.student.model_copy(update={"augment": student_augment}),
            }
        )

    # digits' own augmentation has no flips: neither the students nor the imported root learnt mirror images
    with pytest.raises(ConfigError, match=r"loss.teacher_views flip: every student \(student.augment\) .*'none'"):
        compress(views_config("students", tiny_teacher, None), progress=False)
    with pytest.raises(ConfigError, match=rf"loss.teacher_views flip: {tiny_teacher} .*use loss.teacher_views none"):
        compress(views_config("root", tiny_teacher, "crop-flip"), progress=False)

    spec = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[16], [32], [32]])
    flipped = build_model(spec, seed=0)
    train_config = TrainConfig(epochs=2, batch_size=32, precision="fp32", device="cpu", augment="crop-flip")
    result = train_model(flipped, digits, train_config, progress=False)
    cpu = torch.device("cpu")
    fp32 = resolve_precision("fp32", cpu)
    test = evaluate(flipped, digits.test, mean=digits.mean, std=digits.std, device=cpu, precision=fp32)
    teacher_dir = tmp_path / "flipped-teacher"
    save_model(
        teacher_dir,
        flipped,
        training_metadata(
            data=digits, val_fraction=0.1, split_seed=0, spec=spec, config=train_config, result=result, test=test
        ),
    )
    asked = []  # the views every live teacher forward averaged over
    original = ikd.objective.viewed_logits

    def recorded(model, x, views, plain=None):
        asked.append(views)
        return original(model, x, views, plain)

    monkeypatch.setattr(ikd.objective, "viewed_logits", recorded)
    lineage = compress(views_config("flipped", teacher_dir, "crop-flip"), progress=False)
    assert [n.status for n in lineage.nodes if n.generation == 1] and set(asked) == {"flip"}
