"""The campaign: lineage shape, accept/stop rules, resume after an interruption, config checks."""

import json
import re
import shutil
import time

import pytest
import torch

import ikd
import ikd.campaign
import ikd.external
from ikd.arch import ArchSpec
from ikd.campaign import UNDECIDED, Campaign, command_line, compress
from ikd.checkpoint import read_metadata
from ikd.config import load_config
from ikd.errors import ConfigError
from ikd.lineage import RunDir
from ikd.report import Report
from ikd.shrink import cuts_per_block, shrink_width
from ikd.strategy import propose
from ikd.train import TrainConfig, train_model


def campaign_config(run_dir, teacher, **search):
    return load_config(
        None,
        {
            "run_dir": str(run_dir),
            "teacher.dir": str(teacher),
            "precision": "fp32",
            "device": "cpu",
            "student.epochs": 1,
            "student.batch_size": 64,
            **{
                f"search.{k}": v
                for k, v in ({"max_drop": 100.0, "max_step_drop": 100.0, "max_generations": 2} | search).items()
            },
        },
    )


def test_campaign_grows_a_lineage_and_records_why_it_stopped(tmp_path, tiny_teacher):
    lineage = compress(campaign_config(tmp_path / "run", tiny_teacher, candidates="all"), progress=False)
    ids = [n.id for n in lineage.nodes]
    assert ids[0] == "g0-teacher" and {"g1-depth", "g1-width", "g2-depth", "g2-width"} <= set(ids)
    accepted = [n for n in lineage.nodes if n.status == "accepted"]
    assert [n.generation for n in sorted(accepted, key=lambda n: n.generation)] == [1, 2]
    for gen in (1, 2):
        kids = [n for n in lineage.nodes if n.generation == gen]
        chosen = next(n for n in kids if n.status == "accepted")
        assert chosen.params == min(n.params for n in kids)  # smallest within a loose tolerance
        assert chosen.parent is not None
        parent = lineage.node(chosen.parent)
        assert parent.status in ("teacher", "accepted") and chosen.teachers == [parent.id]
        assert chosen.compression == pytest.approx(lineage.root().params / chosen.params)
    assert (lineage.stop_reason or "").startswith("max_generations")
    run = RunDir(tmp_path / "run")
    assert run.verify(lineage) == [] and all(n.sha256 for n in lineage.nodes)
    on_disk = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert on_disk["stop_reason"] == lineage.stop_reason


def test_smallest_first_makes_the_same_choices_without_training_larger_candidates(tmp_path, tiny_teacher):
    def run(name, candidates):
        config = campaign_config(
            tmp_path / name, tiny_teacher, candidates=candidates, max_drop=100.0, max_step_drop=20.0, max_generations=3
        )
        return compress(
            config.model_copy(update={"student": config.student.model_copy(update={"epochs": 2})}), progress=False
        )

    every, lazy = run("all", "all"), run("lazy", "smallest-first")

    def chain(lineage):
        return [(n.id, n.params, n.val_accuracy, n.test_accuracy) for n in lineage.nodes if n.status == "accepted"]

    assert chain(lazy) == chain(every) and lazy.stop_reason == every.stop_reason
    assert len(every.nodes) == 7  # the teacher and both candidates of three generations
    # Generations 1-2: the width child passed, so the larger depth child was never trained.
    # Generation 3: the width child failed the step tolerance, so the depth child was trained too.
    assert [n.id for n in lazy.nodes] == ["g0-teacher", "g1-width", "g2-width", "g3-width", "g3-depth"]
    assert lazy.node("g3-width").status == "rejected" and lazy.node("g3-depth").status == "accepted"
    assert "not trained: g1-depth" in lazy.node("g1-width").reason


def test_a_child_that_passes_without_the_accept_margin_makes_its_larger_siblings_train(tmp_path, tiny_teacher):
    # A floor 50 points under the parent leaves no child 60 points of room: every candidate trains, and
    # the smallest within tolerance is kept after all, saying why; the larger one is within tolerance too.
    config = campaign_config(
        tmp_path / "run", tiny_teacher, max_generations=1, max_drop=50.0, max_step_drop=50.0, accept_margin=60.0
    )
    lineage = compress(config, progress=False)
    assert [n.id for n in lineage.nodes] == ["g0-teacher", "g1-width", "g1-depth"]
    assert lineage.node("g1-width").status == "accepted" and lineage.node("g1-depth").status == "rejected"
    assert "none cleared its floor by 60.0 points" in lineage.node("g1-width").reason
    assert lineage.node("g1-depth").reason == "within tolerance, but g1-width is smaller"


def test_the_objective_macs_cuts_and_keeps_by_macs_and_trains_in_that_order(tmp_path, tiny_teacher):
    # By parameters the tiny teacher's depth child drops a late conv; by MACs depth drops an early one
    # and block halves the first block, the cheapest child by MACs (test_shrink has the operators' rule).
    def config(name, **search):
        return campaign_config(tmp_path / name, tiny_teacher, operators=["depth", "block"], max_generations=1, **search)

    by_params = compress(config("params", candidates="all"), progress=False)
    by_macs = compress(config("macs", candidates="all", objective="macs"), progress=False)
    chose, chose_by_macs = by_params.search_result(), by_macs.search_result()
    assert (chose.id, chose_by_macs.id) == ("g1-depth", "g1-block")
    assert chose_by_macs.macs < chose.macs and chose_by_macs.params > chose.params  # the trade
    assert chose_by_macs.macs == min(n.macs for n in by_macs.students())
    depth = by_macs.node("g1-depth")
    assert depth.status == "rejected" and depth.reason == "within tolerance, but g1-block costs fewer MACs"
    assert chose_by_macs.reason == "fewest MACs within tolerance"
    assert "smallest by MACs per image" in "\n".join(Report(by_macs, "digits").facts())
    # smallest first by MACs: block trains first, passes with room, and depth never trains
    lazy = compress(config("lazy", objective="macs"), progress=False)
    assert [n.id for n in lazy.students()] == ["g1-block"] and lazy.search_result().arch == chose_by_macs.arch
    # a decision key: --redecide replays the params run by MACs, training the children that objective cuts
    redecided = compress(config("params", candidates="all", objective="macs"), progress=False, redecide=True)
    assert redecided.search_result().arch == chose_by_macs.arch
    # the same decisions as the run made under it; the children it cuts train under versioned ids, as
    # the params run's trainings keep theirs, undecided, for a --redecide that returns to them
    old_path = [n for n in redecided.nodes if n.reason == f"{UNDECIDED} the search no longer reaches it"]
    assert [(n.id, n.arch) for n in old_path] == [(n.id, n.arch) for n in by_params.students()]
    new_path = [n for n in redecided.nodes if n not in old_path]
    assert sorted((n.id.replace("-v2", ""), n.arch, n.status, n.reason.replace("-v2", "")) for n in new_path) == sorted(
        (n.id, n.arch, n.status, n.reason) for n in by_macs.nodes
    )
    assert {n.id for n in redecided.students()} - {n.id for n in old_path} == {"g1-depth-v2", "g1-block-v2"}
    # ... and returning to params trains nothing: every training it asks for is on record
    returned = compress(config("params", candidates="all"), progress=False, redecide=True)
    kept = {n.id: n.sha256 for n in redecided.nodes}
    assert all(kept[n.id] == n.sha256 for n in returned.nodes)
    assert [(n.id, n.status, n.reason) for n in returned.nodes if n.id in {"g1-depth", "g1-block"}] == [
        (n.id, n.status, n.reason) for n in by_params.students()
    ]


def test_strict_tolerance_rejects_and_stops(tmp_path, tiny_teacher):
    config = campaign_config(
        tmp_path / "run", tiny_teacher, max_drop=0.0, max_step_drop=0.0, operators=["width"], width_factor=0.1
    )
    lineage = compress(config, progress=False)
    child = lineage.node("g1-width")
    root = lineage.root()
    assert child.val_accuracy is not None and root.val_accuracy is not None
    assert child.val_accuracy < root.val_accuracy  # 1 epoch at a tenth of the width loses accuracy
    assert child.status == "rejected" and "max_drop" in child.reason
    assert "no candidate" in (lineage.stop_reason or "")
    # a rerun decides its trained nodes again: the reason is replaced, not appended to each time
    for _ in range(2):
        compress(config, progress=False)
    assert RunDir(tmp_path / "run").load().node("g1-width").reason == child.reason


def test_resuming_on_other_images_than_the_roots_is_refused(tmp_path, tiny_teacher):
    # data.dir is not compared (where files lie), but for npz, idx or a folder the directory is the data
    config = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, operators=["width"])
    compress(config, progress=False)
    meta = tmp_path / "run" / "nodes" / "g0-teacher" / "model.json"
    document = json.loads(meta.read_text())
    document["dataset"]["mean"] = [m + 0.01 for m in document["dataset"]["mean"]]  # as other files would give
    meta.write_text(json.dumps(document))
    before = RunDir(tmp_path / "run").lineage_path.read_bytes()
    with pytest.raises(ConfigError, match=r"its root teacher saw other images .*--data-dir points at other files"):
        compress(config, progress=False)
    assert RunDir(tmp_path / "run").lineage_path.read_bytes() == before  # refused before anything was written
    # the same sizes and statistics, the class folders renamed: every label would mean another class
    document["dataset"]["mean"] = [m - 0.01 for m in document["dataset"]["mean"]]
    document["dataset"]["classes"] = document["dataset"]["classes"][::-1]
    meta.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"its root teacher was trained with class 0 = '9', the data has '0' there"):
        compress(config, progress=False)


def test_resuming_with_the_teacher_path_spelt_otherwise_is_the_same_run(tmp_path, tiny_teacher):
    # `t/` or `./t` for `t` was refused, even under --force, as "a root teacher made under other settings"
    config = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, operators=["width"])
    first = compress(config, progress=False)
    respelt = config.model_copy(update={"teacher": config.teacher.model_copy(update={"dir": f"{tiny_teacher}/"})})
    again = compress(respelt, progress=False)
    assert [(n.id, n.sha256) for n in again.nodes] == [(n.id, n.sha256) for n in first.nodes]


def test_resume_after_interruption_keeps_finished_nodes(tmp_path, tiny_teacher, monkeypatch):
    config = campaign_config(tmp_path / "run", tiny_teacher)
    real_train = ikd.campaign.train_students
    calls: list[str] = []

    def interrupted(*args, **kw):
        job = args[3]
        calls.extend(c.node_id for c in job.candidates)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while training the second node
        return real_train(*args, **kw)

    monkeypatch.setattr(ikd.campaign, "train_students", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compress(config, progress=False)
    run = RunDir(tmp_path / "run")
    partial = run.load()
    assert [n.id for n in partial.nodes] == ["g0-teacher", calls[0]]
    first_sha = partial.node(calls[0]).sha256

    trained: list[str] = []

    def counted(*args, **kw):
        trained.extend(c.node_id for c in args[3].candidates)
        return real_train(*args, **kw)

    monkeypatch.setattr(ikd.campaign, "train_students", counted)
    lineage = compress(config, progress=False)
    assert calls[0] not in trained and calls[1] in trained  # finished work is never redone
    assert lineage.node(calls[0]).sha256 == first_sha
    assert (lineage.stop_reason or "").startswith("max_generations")
    again: list[str] = []
    monkeypatch.setattr(
        ikd.campaign, "train_students", lambda *args, **kw: again.extend(c.node_id for c in args[3].candidates)
    )
    compress(config, progress=False)
    assert again == []  # a finished campaign resumes to the same place without training
    # every run of the campaign is on record: when, the command, the machine
    sessions = run.load().sessions
    assert len(partial.sessions) == 1 and sessions[0] == partial.sessions[0] and len(sessions) == 3
    assert all("torch threads" in s.machine and f"ikd {ikd.__version__}" in s.machine and s.command for s in sessions)
    assert sessions[0].started <= sessions[2].started
    # `python -m ikd ...` is recorded as the `ikd ...` a user would retype; a script calling compress() by its name
    assert command_line(["/x/site-packages/ikd/__main__.py", "compress", "--quiet"]) == ["ikd", "compress", "--quiet"]
    assert command_line(["/repo/benchmarks/paper.py", "--quick"]) == ["paper.py", "--quick"]


def test_run_dir_from_another_config_is_refused(tmp_path, tiny_teacher):
    compress(campaign_config(tmp_path / "run", tiny_teacher, max_generations=1), progress=False)
    other = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, max_drop=0.5)
    with pytest.raises(ConfigError, match=re.escape("max_drop: 100.0 -> 0.5")):
        Campaign(other, progress=False)


def test_teacher_from_another_split_is_refused(tmp_path, tiny_teacher):
    config = load_config(
        None, {"run_dir": str(tmp_path / "r"), "teacher.dir": str(tiny_teacher), "data.split_seed": 5, "device": "cpu"}
    )
    with pytest.raises(ConfigError, match="split"):
        compress(config, progress=False)


def test_teacher_of_another_image_size_names_the_key_to_set(tmp_path, tiny_teacher):
    config = load_config(
        None, {"run_dir": str(tmp_path / "r"), "teacher.dir": str(tiny_teacher), "data.image_size": 12, "device": "cpu"}
    )
    with pytest.raises(
        ConfigError,
        match=re.escape("images and 10 classes; the data has 1x12x12 and 10 (set data.image_size, --image-size 8)"),
    ):
        compress(config, progress=False)
    assert not (tmp_path / "r" / "nodes").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"search.bogus": 1}, "unknown key 'search.bogus'; valid keys here: .*max_drop"),
        ({"student.epochs": -1}, "student.epochs"),
        ({"search.max_drop": 101}, "search.max_drop"),
        ({"search.operators": ["prune"]}, "search.operators"),
        ({"teacher.arch": "resnet"}, "teacher.arch"),
        ({"student.lr": float("inf")}, "student.lr = inf .*finite number"),
        ({"loss.temperature": float("inf")}, "loss.temperature = inf .*finite number"),
        ({"teacher.ema_epochs": float("inf")}, "teacher.ema_epochs = inf .*finite number"),
        ({"data.name": "cifar"}, "data.name = 'cifar' .*expected one of digits, mnist"),  # not after a slow start
        ({"data.image_size": 5000}, "data.image_size = 5000 .*less than or equal to 4096"),
        ({"seed": 2**62}, "seed = "),
        ({"search.width_factor": [float("nan")]}, "^search.width_factor = .nan. .an override"),  # not .float
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_one_factor_is_one_setting_as_a_number_or_a_list_of_one():
    # `--width-factors 0.5` (a list) resuming a run configured `width_factor: 0.5` was refused as another config
    for key in ("search.width_factor", "search.slim_fraction"):
        assert load_config(None, {key: [0.5]}).decision_fields() == load_config(None, {key: 0.5}).decision_fields()


def test_a_rule_across_keys_set_by_flags_does_not_blame_the_defaults():
    with pytest.raises(ConfigError, match=r"^defaults with the flags given: search.select 'tree' needs"):
        load_config(None, {"search.select": "tree"}, from_flags=True)


def test_yaml_config_file_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("search: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("seed: abc\n")
    with pytest.raises(ConfigError, match="seed"):
        load_config(bad)


def test_yaml_merge_keys_may_be_overridden_but_a_key_may_not_be_given_twice(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("student: &common {lr: 0.02, epochs: 2}\nteacher:\n  <<: *common\n  epochs: 4\n")
    loaded = load_config(config)
    assert (loaded.teacher.lr, loaded.teacher.epochs, loaded.student.epochs) == (0.02, 4, 2)
    config.write_text("teacher:\n  epochs: 4\n  lr: 0.1\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="line 4, column 3: key 'epochs' given twice"):
        load_config(config)


@pytest.mark.parametrize("hint_stage", ["joint", "two-stage"])
def test_baselines_get_the_chain_budget(tmp_path, tiny_teacher, hint_stage):
    config = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, operators=["width"])
    student = config.student.model_copy(update={"hint_stage": hint_stage, "hint_epochs": 1, "epochs": 1})
    config = config.model_copy(update={"baselines": True, "student": student})
    lineage = compress(config, progress=False)
    final = lineage.node("g1-width")
    assert final.epochs == (2 if hint_stage == "two-stage" else 1)
    for node_id, teachers in (("baseline-scratch", []), ("baseline-oneshot-kd", ["g0-teacher"])):
        node = lineage.node(node_id)
        assert node.status == "baseline" and node.arch == final.arch
        assert node.epochs == final.epochs and node.teachers == teachers
    # two-stage's hint pre-training counts inside the one-shot KD baseline's budget: a rerun keeps it
    rerun = compress(config, progress=False)
    assert rerun.node("baseline-oneshot-kd").seconds == lineage.node("baseline-oneshot-kd").seconds


def test_python_api_takes_a_dict_config(tmp_path, tiny_teacher):
    import ikd

    lineage = ikd.compress(
        {"run_dir": str(tmp_path / "api"), "teacher": {"dir": str(tiny_teacher)}, "device": "cpu", "precision": "fp32"},
        overrides={
            "student.epochs": 1,
            "search.max_generations": 1,
            "search.operators": ["width"],
            "search.max_drop": 100.0,
            "search.max_step_drop": 100.0,
        },
        progress=False,
    )
    assert [n.id for n in lineage.nodes] == ["g0-teacher", "g1-width"]


def test_same_config_and_seed_give_identical_metrics(tmp_path, tiny_teacher):
    metrics = []
    for name in ("a", "b"):
        lineage = compress(
            campaign_config(tmp_path / name, tiny_teacher, max_generations=1, operators=["width"]), progress=False
        )
        metrics.append([(n.id, n.val_accuracy, n.test_accuracy, n.sha256) for n in lineage.nodes])
    assert metrics[0] == metrics[1]


def own_teacher(digits, epochs: int = 3) -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(12 * 16, 10)
    )
    if epochs:
        config = TrainConfig(epochs=epochs, batch_size=32, precision="fp32", device="cpu")
        train_model(teacher, digits, config, progress=False)  # the loop trains any logits module
    return teacher


def own_teacher_overrides(run_dir) -> dict:
    return {
        "run_dir": str(run_dir),
        "device": "cpu",
        "precision": "fp32",
        "student.epochs": 1,
        "search.max_generations": 2,
        "search.operators": ["width"],
        "search.max_drop": 100.0,
        "search.max_step_drop": 100.0,
    }


def test_a_users_own_module_can_be_the_root_teacher(tmp_path, digits):
    """Any nn.Module returning logits: hint read by module path, chain starts from a given spec."""
    from ikd.external import module_digest
    from ikd.report import write_report

    teacher = own_teacher(digits)
    student = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[8], [8]])
    overrides = own_teacher_overrides(tmp_path / "own")
    lineage = ikd.compress(overrides=overrides, progress=False, teacher=teacher, hint_layer="1", student=student)
    assert [n.id for n in lineage.nodes] == ["g0-teacher", "g1-student", "g2-width"]
    root = lineage.root()
    assert root.arch == {"external": "Sequential", "state_sha256": module_digest(teacher), "hint_layer": "1"}
    assert root.params == sum(p.numel() for p in teacher.parameters())
    assert root.macs == 12 * 9 * 8 * 8 + 12 * 16 * 10  # counted per image: the conv's and the linear head's
    assert lineage.node("g1-student").arch == student.to_json_dict()
    assert lineage.node("g2-width").parent == "g1-student"
    assert "Sequential" in (write_report(tmp_path / "own") / "report.md").read_text()  # no spec: no crash
    again = ikd.compress(overrides=overrides, progress=False, teacher=teacher, hint_layer="1", student=student)
    assert again.nodes == lineage.nodes
    with pytest.raises(ConfigError, match="not a submodule"):
        ikd.compress(
            overrides={**overrides, "run_dir": str(tmp_path / "bad")},
            progress=False,
            teacher=teacher,
            hint_layer="nope",
        )
    with pytest.raises(ConfigError, match="pass it again"):
        ikd.compress(overrides=overrides, progress=False)  # resuming needs the module
    # another module of the same shape, or another hint layer, is not this run's teacher
    with pytest.raises(ConfigError, match="its weights differ"):
        ikd.compress(overrides=overrides, progress=False, teacher=own_teacher(digits, epochs=0), hint_layer="1")
    with pytest.raises(ConfigError, match="hint_layer '3'"):
        ikd.compress(overrides=overrides, progress=False, teacher=teacher, hint_layer="3")
    assert RunDir(tmp_path / "own").load().nodes == lineage.nodes


def test_a_users_module_gives_its_first_student_student_first_epochs(tmp_path, digits, tiny_teacher, capsys):
    # the first student starts from random weights: its own schedule; the children after it inherit
    teacher = own_teacher(digits)
    student = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[8], [8]])
    overrides = own_teacher_overrides(tmp_path / "own") | {"student.first_epochs": 3}
    lineage = ikd.compress(overrides=overrides, progress=False, teacher=teacher, hint_layer="1", student=student)
    first, child = lineage.node("g1-student"), lineage.node("g2-width")
    assert (first.epochs, len(first.val_curve), child.epochs) == (3, 3, 1)
    assert lineage.search_epochs() == 4
    # a --redecide keeps it: it trained all the epochs its config asks of it
    redecided = ikd.compress(
        overrides=overrides | {"search.max_generations": 1},
        progress=False,
        teacher=teacher,
        hint_layer="1",
        student=student,
        redecide=True,
    )
    kept = redecided.node("g1-student")  # not trained again: the same record, its seconds included
    assert (kept.sha256, kept.seconds) == (first.sha256, first.seconds) and redecided.search_result().id == kept.id
    # a near miss among first students is retried on twice its own schedule, not twice student.epochs
    retried = ikd.compress(
        overrides=overrides
        | {"run_dir": str(tmp_path / "retry"), "search.max_generations": 1, "search.max_drop": 0.0}
        | {"search.max_step_drop": 0.0, "search.retry_within": 100.0},
        progress=False,
        teacher=teacher,
        hint_layer="1",
        student=student,
    )
    assert retried.node("g1-student").status == "rejected"  # the premise: the teacher's floor is missed
    assert retried.node("g1-student-retry").epochs == 6
    with pytest.raises(ConfigError, match=r"search.retry_epochs 3: expected more than student.first_epochs \(3\)"):
        load_config(None, overrides | {"search.retry_within": 0.1, "search.retry_epochs": 3})
    # a budget under the first student's epochs stops before any work, saying why
    with pytest.raises(ConfigError, match="first student of a user module trains for 3 epochs"):
        ikd.compress(
            overrides=overrides | {"run_dir": str(tmp_path / "budget"), "search.budget_epochs": 2},
            progress=False,
            teacher=teacher,
            hint_layer="1",
            student=student,
        )
    # without a module it is named as read by nothing
    capsys.readouterr()
    config = campaign_config(tmp_path / "plain", tiny_teacher, max_generations=1)
    student_keys = {"first_epochs": 3, "first_arch": "8x1-8x1"}
    compress(
        config.model_copy(
            update={
                "student": config.student.model_copy(update=student_keys),
                "teacher": config.teacher.model_copy(update={"hint_layer": "1"}),
            }
        )
    )
    said = capsys.readouterr().err
    for key in ("student.first_epochs", "student.first_arch", "teacher.hint_layer"):
        assert f"note: {key}: read only when the root is a user's module" in said
    # a module from Python and one from a file are two roots
    with pytest.raises(ConfigError, match=r"teacher\.program and a module passed as teacher=: expected one root"):
        ikd.compress(
            overrides=overrides | {"teacher.program": str(tmp_path / "x.pt2")}, teacher=teacher, student=student
        )


def test_a_users_module_has_its_macs_counted_and_its_first_student_weighed_by_the_objective(
    tmp_path, digits, capsys, monkeypatch
):
    teacher = own_teacher(digits, epochs=0)  # 2,050 params, 8,832 MACs per image
    student = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[8], [8]])
    assert student.num_params() < 2050 and student.macs() > 8832  # fewer parameters, more MACs
    overrides = own_teacher_overrides(tmp_path / "params") | {"search.max_generations": 1}

    def run(**keys):
        return ikd.compress(
            overrides=overrides | keys, progress=False, teacher=teacher, hint_layer="1", student=student
        )

    assert run().root().macs == 8832 and "is not smaller" not in capsys.readouterr().err
    run(run_dir=str(tmp_path / "macs"), **{"search.objective": "macs"})
    warned = f"({student.summary()}, {student.macs():,} MACs) is not smaller than the teacher module (8,832 MACs)"
    assert warned in capsys.readouterr().err  # said under --quiet too
    # a forward torch's counter breaks is left uncounted, not refused

    class Broken:
        def __init__(self, **_):
            pass

        def __enter__(self):
            raise RuntimeError("no formula")

        def __exit__(self, *_):
            return False

    monkeypatch.setattr(ikd.external, "FlopCounterMode", Broken)
    root = run(run_dir=str(tmp_path / "uncounted")).root()
    assert root.macs == 0
    assert root.reason.endswith("MACs not counted (torch's FLOP counter could not count its forward)")


def test_a_teacher_module_is_refused_by_a_run_ikd_trained_the_root_of(tmp_path, tiny_teacher, digits):
    compress(campaign_config(tmp_path / "run", tiny_teacher, max_generations=1), progress=False)
    with pytest.raises(ConfigError, match="not a module passed from Python"):
        compress(
            campaign_config(tmp_path / "run", tiny_teacher, max_generations=1),
            progress=False,
            teacher=own_teacher(digits, epochs=0),
            hint_layer="1",
        )


class _Returns(torch.nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.inner, self.wrap = torch.nn.Linear(64, 10), wrap

    def forward(self, x):
        return self.wrap(self.inner(x.flatten(1)))


def _bad_teachers():
    from torch import nn

    return {
        "a tuple": (_Returns(lambda y: (y, y)), "returns a tuple"),
        "a dict": (_Returns(lambda y: {"logits": y}), "returns a dict"),
        "5 classes": (nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), r"shape \(2, 5\) .* expected .*\(2, 10\)"),
        "double weights": (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(), "fails on a batch of"),
        "28x28 input": (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), r"fails on a batch of \(2, 1, 8, 8\)"),
        "not a module": (lambda x: x, "expected a torch.nn.Module"),
    }


@pytest.mark.parametrize("case", list(_bad_teachers()))
def test_a_teacher_module_that_cannot_be_the_root_is_refused_before_anything_is_recorded(tmp_path, digits, case):
    module, message = _bad_teachers()[case]
    overrides = {**own_teacher_overrides(tmp_path / "run"), "loss.gamma": 0.0}
    with pytest.raises(ConfigError, match=message) as error:
        ikd.compress(overrides=overrides, progress=False, teacher=module)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # created for the campaign, removed again: nothing was written


def test_a_teacher_module_without_a_hint_layer_needs_gamma_0(tmp_path, digits):
    with pytest.raises(ConfigError, match="no hint_layer"):
        ikd.compress(overrides=own_teacher_overrides(tmp_path / "run"), progress=False, teacher=own_teacher(digits, 0))
    assert not (tmp_path / "run").exists()


def test_two_stage_pretrains_the_hint_then_distils_without_it(tmp_path, tiny_teacher, monkeypatch):
    from ikd import training_pass

    stages: list[object] = []
    # each stage's loss weights (alpha, beta, gamma), then its epochs and whether a stage follows (time limits)
    real_build, real_train = training_pass.build_objective, training_pass.train_models

    def build_objective(student, teacher, weights, **kw):
        stages.append((weights.alpha, weights.beta, weights.gamma))
        return real_build(student, teacher, weights, **kw)

    def train_models(models, data, config, **kw):
        stages.append((config.epochs, kw["stage_follows"]))
        return real_train(models, data, config, **kw)

    monkeypatch.setattr(training_pass, "build_objective", build_objective)
    monkeypatch.setattr(training_pass, "train_models", train_models)
    config = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, operators=["width"])
    config = config.model_copy(
        update={"student": config.student.model_copy(update={"hint_stage": "two-stage", "hint_epochs": 2})}
    )
    lineage = compress(config, progress=False)
    weights = config.loss
    # stage 1: the hint alone for hint_epochs; stage 2: KD + CE without the hint for epochs
    assert stages == [(0, 0, weights.gamma), (2, True), (weights.alpha, weights.beta, 0.0), (1, False)]
    child = lineage.node("g1-width")
    assert child.epochs == 3 and child.loss["hint_stage"] == "two-stage"


def test_a_changed_node_is_retrained_but_never_silently_with_its_descendants(tmp_path, tiny_teacher):
    from ikd.errors import CheckpointError

    config = campaign_config(tmp_path / "run", tiny_teacher)
    lineage = compress(config, progress=False)
    run = RunDir(tmp_path / "run")
    leaf = next(n for n in lineage.nodes if n.generation == 2 and n.status == "accepted")
    (run.node_dir(leaf.id) / "model.safetensors").write_bytes(b"garbage")
    again = compress(config, progress=False)  # a leaf: retrained, nothing else touched
    assert run.verify(again) == [] and again.node(leaf.id).sha256 == leaf.sha256  # deterministic retrain
    assert again.node("g1-width").sha256 == lineage.node("g1-width").sha256

    (run.node_dir("g1-width") / "model.safetensors").write_bytes(b"garbage")  # g2 grew from it
    with pytest.raises(CheckpointError, match=r"g1-width.*g2-width.*--force"):
        compress(config, progress=False)
    assert run.load().find("g2-width") is not None  # refused without touching the lineage
    forced = compress(config, progress=False, force=True)
    assert run.verify(forced) == [] and (forced.stop_reason or "").startswith("max_generations")


def trained_ids(monkeypatch) -> list[str]:
    """The ids of every candidate the campaign trains from now on (it still trains them)."""
    real_train = ikd.campaign.train_students
    calls: list[str] = []

    def counting(*args, **kw):
        calls.extend(c.node_id for c in args[3].candidates)
        return real_train(*args, **kw)

    monkeypatch.setattr(ikd.campaign, "train_students", counting)
    return calls


def test_redecide_replays_the_decisions_reusing_what_it_reaches(tmp_path, tiny_teacher, monkeypatch):
    config = campaign_config(tmp_path / "run", tiny_teacher, candidates="all")
    first = compress(config, progress=False)
    chain = [(n.id, n.status, n.sha256) for n in first.nodes]
    calls = trained_ids(monkeypatch)

    # An acceptance key changed (refused without --redecide): generation 2 is no longer reached.
    shorter = campaign_config(tmp_path / "run", tiny_teacher, candidates="all", max_generations=1)
    with pytest.raises(ConfigError, match=r"max_generations: 2 -> 1\).*pass --redecide"):
        compress(shorter, progress=False)
    one = compress(shorter, progress=False, redecide=True)
    assert calls == [] and (one.stop_reason or "").startswith("max_generations")
    assert [n.status for n in one.nodes if n.generation == 2] == ["candidate", "candidate"]
    assert {n.reason for n in one.nodes if n.generation == 2} == {"undecided: the search no longer reaches it"}
    # Back to the first rules: the same decisions, nothing trained.
    again = compress(config, progress=False, redecide=True)
    assert calls == [] and [(n.id, n.status, n.sha256) for n in again.nodes] == chain

    # A key that changes what training computes still needs --force.
    longer = config.model_copy(update={"student": config.student.model_copy(update={"epochs": 2})})
    with pytest.raises(ConfigError, match=re.escape("student.epochs: 1 -> 2")):
        compress(longer, progress=False, redecide=True)
    budgeted = campaign_config(tmp_path / "run", tiny_teacher, candidates="all", budget_epochs=10)
    with pytest.raises(ConfigError, match=re.escape("--redecide with search.budget_epochs 10")):
        compress(budgeted, progress=False, redecide=True)

    # A check the campaign makes before any work refuses the run: the decisions --redecide undid stay on
    # disk (they were written undone before the check)
    before = RunDir(tmp_path / "run").lineage_path.read_bytes()

    def refused(*args, **kwargs):
        raise ConfigError("ensemble.experts: not found")

    monkeypatch.setattr(ikd.campaign, "new_experts", refused)
    with pytest.raises(ConfigError, match="not found"):
        compress(shorter, progress=False, redecide=True)
    assert RunDir(tmp_path / "run").lineage_path.read_bytes() == before


def test_redecide_from_a_tree_to_one_child_reuses_the_branch_trainings(tmp_path, tiny_teacher, monkeypatch):
    tree = campaign_config(tmp_path / "run", tiny_teacher, strategy="parent-children", select="tree")
    first = compress(tree, progress=False)
    assert {n.id for n in first.nodes if n.generation == 2} >= {"g2-b0-width", "g2-b1-width"}
    calls = trained_ids(monkeypatch)
    best = campaign_config(tmp_path / "run", tiny_teacher, strategy="parent-children", select="best")
    again = compress(best, progress=False, redecide=True)
    assert calls == []  # every child the single chain reaches was trained as a branch's
    [kept] = [n for n in again.nodes if n.generation == 2 and n.status == "accepted"]
    assert kept.parent == next(n.id for n in again.nodes if n.generation == 1 and n.status == "accepted")


def test_redecide_from_one_child_to_a_tree_reuses_the_single_chains_trainings(tmp_path, tiny_teacher, monkeypatch):
    best = campaign_config(tmp_path / "run", tiny_teacher, strategy="parent-children", select="best")
    first = compress(best, progress=False)
    chain = [(n.parent, n.arch) for n in first.nodes if n.generation == 2]
    calls = trained_ids(monkeypatch)
    tree = campaign_config(tmp_path / "run", tiny_teacher, strategy="parent-children", select="tree")
    again = compress(tree, progress=False, redecide=True)
    # the branch grown from the single chain's parent reuses its children; only the other branch trains
    reused = [n for n in again.nodes if n.generation == 2 and (n.parent, n.arch) in chain]
    assert {n.id for n in reused} == {n.id for n in first.nodes if n.generation == 2}
    assert calls and not {n.id for n in reused} & set(calls)
    assert len({(n.parent, json.dumps(n.arch, sort_keys=True)) for n in again.nodes if n.generation == 2}) == len(
        [n for n in again.nodes if n.generation == 2]
    )  # no training recorded twice


@pytest.mark.parametrize("candidates", ["smallest-first", "all"])
def test_redecide_with_a_factor_list_reuses_the_children_trained_under_their_old_names(
    tmp_path, tiny_teacher, monkeypatch, candidates
):
    # A single width factor names the child g1-width; a list names the same child g1-width50.
    config = campaign_config(tmp_path / "run", tiny_teacher, operators=["width"], candidates=candidates)
    first = compress(config, progress=False)
    assert [n.id for n in first.students()] == ["g1-width", "g2-width"]
    calls = trained_ids(monkeypatch)
    gentle = campaign_config(
        tmp_path / "run", tiny_teacher, operators=["width"], candidates=candidates, width_factor=[0.5, 0.75]
    )
    with pytest.raises(ConfigError, match=r"search.width_factor.*pass --redecide"):
        compress(gentle, progress=False)
    again = compress(gentle, progress=False, redecide=True)
    # Only the 0.75 children are new; smallest-first never trains them (the 0.5 child passes first).
    assert sorted(calls) == ([] if candidates == "smallest-first" else ["g1-width75", "g2-width75"])
    for old in first.students():
        assert again.node(old.id).sha256 == old.sha256 and again.node(old.id).status == "accepted"
    assert again.find("g1-width50") is None and again.final().id == "g2-width"
    assert RunDir(tmp_path / "run").verify(again) == []


def test_baselines_of_another_answer_are_dropped_even_when_not_asked_for(tmp_path, tiny_teacher, monkeypatch):
    config = campaign_config(tmp_path / "run", tiny_teacher, candidates="all", max_drop=90.0, max_step_drop=90.0)
    first = compress(config.model_copy(update={"baselines": True}), progress=False)
    assert first.final().generation == 2 and first.node("baseline-scratch").arch == first.final().arch
    calls = trained_ids(monkeypatch)
    # A replay that stops at generation 1, without --baselines: the old ones were trained for g2's shape.
    shorter = campaign_config(
        tmp_path / "run", tiny_teacher, candidates="all", max_drop=90.0, max_step_drop=90.0, max_generations=1
    )
    one = compress(shorter, progress=False, redecide=True)
    assert calls == [] and one.final().generation == 1
    assert one.find("baseline-scratch") is None and one.find("baseline-oneshot-kd") is None
    assert not (tmp_path / "run" / "nodes" / "baseline-scratch").exists()
    # Back to the first rules, still without --baselines: the same answer, no baselines trained or kept.
    again = compress(config, progress=False, redecide=True)
    assert calls == [] and again.final().id == first.final().id and again.find("baseline-scratch") is None


@pytest.mark.parametrize("interrupted", [False, True])
def test_redecide_trains_anew_what_grew_on_a_path_it_leaves_and_keeps_that(
    tmp_path, tiny_teacher, monkeypatch, interrupted
):
    config = campaign_config(tmp_path / "run", tiny_teacher, candidates="all", max_drop=90.0, max_step_drop=90.0)
    config = config.model_copy(update={"baselines": True})
    first = compress(config, progress=False)
    assert first.node("g1-width").status == "accepted" and first.node("g2-width").parent == "g1-width"
    # The recorded accuracy is what decisions read: as if g1-width had scored nothing, the replay takes
    # g1-depth, and generation 2 (grown from g1-width) and the baselines (its shape) must train again.
    run = RunDir(tmp_path / "run")
    edited = first.model_copy(
        update={"nodes": [n.model_copy(update={"val_accuracy": 0.0}) if n.id == "g1-width" else n for n in first.nodes]}
    )
    run.save(edited)
    calls = trained_ids(monkeypatch)
    if interrupted:  # killed right after the undone decisions were written; rerun without --redecide
        real = ikd.campaign.expert_teachers

        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(ikd.campaign, "expert_teachers", killed)  # the first step after the write
        with pytest.raises(KeyboardInterrupt):
            compress(config, progress=False, redecide=True)
        monkeypatch.setattr(ikd.campaign, "expert_teachers", real)
        assert run.load().node("g1-width").status == "candidate"
    again = compress(config, progress=False, redecide=not interrupted)
    assert again.node("g1-width").status == "rejected" and again.node("g1-depth").status == "accepted"
    # generation 2 grown from g1-width stays on record, undecided; the one grown from g1-depth trains beside it
    assert sorted(calls) == ["baseline-oneshot-kd", "baseline-scratch", "g2-depth-v2", "g2-width-v2"]
    assert {again.node(i).parent for i in ("g2-depth-v2", "g2-width-v2")} == {"g1-depth"}
    old_path = [again.node(i) for i in ("g2-depth", "g2-width")]
    assert {(n.parent, n.status, n.reason) for n in old_path} == {
        ("g1-width", "candidate", f"{UNDECIDED} the search no longer reaches it")
    }
    assert [n.sha256 for n in old_path] == [first.node(n.id).sha256 for n in old_path]
    final = again.final()
    assert final.parent == "g1-depth" and again.node("baseline-scratch").arch == final.arch
    assert run.verify(again) == []
    for node in again.nodes:  # every accepted node hangs from an accepted node or the root
        if node.status == "accepted":
            assert node.parent is not None and again.node(node.parent).status in ("accepted", "teacher")


def test_an_undecided_training_of_another_shape_is_kept_by_a_redecide_but_not_by_a_force(tmp_path, tiny_teacher):
    # g1-width trained at factor 0.5 and left undecided (as by a kill before its generation's decision);
    # the keys now ask for 0.25: a --redecide keeps the old training beside the new, --force replaces it
    def config(name, factor):
        return campaign_config(
            tmp_path / name, tiny_teacher, operators=["width"], width_factor=factor, max_generations=1
        )

    for name in ("redecide", "force"):
        first = compress(config(name, 0.5), progress=False)
        nodes = [n.model_copy(update={"status": "candidate"}) if n.id == "g1-width" else n for n in first.nodes]
        RunDir(tmp_path / name).save(first.model_copy(update={"nodes": nodes}))
    kept = compress(config("redecide", 0.25), progress=False, redecide=True)
    old_shape, new_shape = first.node("g1-width").arch, kept.node("g1-width-v2").arch
    assert [(n.id, n.arch) for n in kept.students()] == [("g1-width", old_shape), ("g1-width-v2", new_shape)]
    assert kept.node("g1-width").status == "candidate" and kept.node("g1-width-v2").status == "accepted"
    replaced = compress(config("force", 0.25), progress=False, force=True)
    assert [(n.id, n.arch) for n in replaced.students()] == [("g1-width", new_shape)] and new_shape != old_shape


def test_a_failure_left_from_another_path_is_trained_again_not_reused(tmp_path, tiny_teacher):
    # A --redecide killed halfway, resumed without the flag, keeps the old path's failures: one of the
    # asked id and shape, grown from another parent, is another training (a failure is not a decision)
    from ikd.lineage import NodeRecord

    first = compress(campaign_config(tmp_path / "run", tiny_teacher, operators=["width"], max_generations=1))
    shape = shrink_width(first.node("g1-width").spec())
    assert shape is not None
    old = NodeRecord.of_spec(
        "g2-width",
        shape,
        root_params=first.root().params,
        generation=2,
        parent="g0-teacher",  # not the parent the search now grows it from
        teachers=["g0-teacher"],
        operator="width",
        status="failed",
        reason="loss became nan at epoch 1",
        epochs=1,
    )
    RunDir(tmp_path / "run").save(first.model_copy(update={"nodes": [*first.nodes, old]}))
    again = compress(campaign_config(tmp_path / "run", tiny_teacher, operators=["width"]), force=True)
    grown = again.node("g2-width")
    assert grown.parent == "g1-width" and grown.status == "accepted" and grown.sha256


@pytest.mark.parametrize("key", ["search.width_factor", "search.slim_fraction"])
def test_scales_that_would_share_a_node_id_are_refused(key):
    # g1-width50 twice, with different architectures, would overwrite each other's records
    expected = "expected values that round to distinct whole percents"
    with pytest.raises(ConfigError, match=rf"{key} = \[0.5, 0.501\].*: {expected}"):
        load_config(None, {key: [0.5, 0.501]})
    assert load_config(None, {key: [0.5, 0.51]})


def test_a_paused_campaign_counts_only_the_students_it_trained(tmp_path):
    # an expert copied into the run is no student: it was counted as one
    from ikd.campaign import CampaignPaused
    from ikd.lineage import Lineage, NodeRecord

    def record(node_id, status, parent=None):
        return NodeRecord(
            id=node_id, generation=0 if parent is None else 1, parent=parent, status=status, arch={},
            params=10, size_bytes_fp32=40, macs=0, compression=1.0,
        )  # fmt: skip

    nodes = [
        record("g0-teacher", "teacher"),
        record("expert1-x", "expert"),
        record("g1-width", "accepted", "g0-teacher"),
    ]
    paused = CampaignPaused(Lineage(config={}, nodes=nodes), tmp_path)
    assert "time limit reached with 1 student(s) trained" in str(paused)


def test_force_with_another_factor_trains_the_child_of_that_shape(tmp_path, tiny_teacher):
    # one factor: the child's id does not name it (`g1-width` at 0.5, then at 0.75). The generation that
    # stopped the search is run again; its record of the other shape must not stand for the new child.
    keys = dict(max_generations=1, operators=["width"], max_drop=0.0, max_step_drop=0.0)
    half = campaign_config(tmp_path / "run", tiny_teacher, width_factor=0.5, **keys)
    first = compress(half, progress=False)
    assert first.node("g1-width").status == "rejected" and "no candidate stayed" in (first.stop_reason or "")
    three_quarters = half.model_copy(update={"search": half.search.model_copy(update={"width_factor": 0.75})})
    again = compress(three_quarters, progress=False, force=True)
    child = again.node("g1-width")
    assert child.spec() == shrink_width(again.root().spec(), 0.75) != first.node("g1-width").spec()
    assert child.sha256 != first.node("g1-width").sha256


def test_the_kd_warm_up_reaches_a_campaigns_training_and_its_record(tmp_path, tiny_teacher):
    def run(name, warmup):
        config = campaign_config(tmp_path / name, tiny_teacher, max_generations=1)
        config = config.model_copy(update={"loss": config.loss.model_copy(update={"kd": "dkd", "kd_warmup": warmup})})
        return compress(config, progress=False)

    warmed, plain = run("warmed", 1.0), run("plain", 0.0)
    child = "g1-width"
    assert warmed.node(child).loss["kd_warmup"] == 1.0 and plain.node(child).loss["kd_warmup"] == 0.0
    # one epoch of warm-up over a one-epoch child: every step weighs DKD below alpha, so the weights differ
    assert warmed.node(child).sha256 != plain.node(child).sha256


def slowed_steps(monkeypatch) -> dict[str, float]:
    """Make every training step sleep `slept["per_step"]` seconds (a tenth at first), so that a session's
    share of a node's time stands well above the work around it; returns the seconds slept, by node."""
    import ikd.train

    slept: dict[str, float] = {"per_step": 0.1}
    real_step = ikd.train._Student.step

    def slow_step(self, x, y, index):
        time.sleep(slept["per_step"])
        slept[self.description] = slept.get(self.description, 0.0) + slept["per_step"]
        real_step(self, x, y, index)

    monkeypatch.setattr(ikd.train._Student, "step", slow_step)
    return slept


def test_a_node_resumed_in_another_process_is_timed_over_both(tmp_path, tiny_teacher, monkeypatch):
    # its record kept only the last process's time: a baseline trained in three sessions said 5.6 minutes of 50
    slept = slowed_steps(monkeypatch)
    config = campaign_config(tmp_path / "run", tiny_teacher, max_generations=1, operators=["width"])
    config = config.model_copy(update={"student": config.student.model_copy(update={"epochs": 2})})
    with pytest.raises(ikd.campaign.CampaignPaused):
        compress(config.model_copy(update={"time_limit": "0.01s"}), progress=False)
    first_session, slept["per_step"] = slept["g1-width"], 0.0  # the second session's time is its own work only
    assert first_session >= 1.0 and RunDir(config.run_dir).load().find("g1-width") is None  # paused inside it
    child = compress(config, progress=False).node("g1-width")
    assert child.epochs == 2 and child.seconds >= first_session


def test_a_root_teacher_resumed_in_another_process_is_timed_over_both(tmp_path, monkeypatch):
    slept = slowed_steps(monkeypatch)
    slept["per_step"] = 0.3  # its epoch is a few big batches
    config = load_config(
        None,
        {
            "run_dir": str(tmp_path / "run"),
            "teacher.arch": "8-16",
            "teacher.epochs": 2,
            "student.epochs": 1,
            "search.max_generations": 1,
            "search.operators": ["width"],
            "precision": "fp32",
            "device": "cpu",
        },
    )
    with pytest.raises(ikd.campaign.CampaignPaused):
        compress(config.model_copy(update={"time_limit": "0.01s"}), progress=False)
    first_session, slept["per_step"] = slept["g0-teacher"], 0.0
    assert first_session >= 1.0 and RunDir(tmp_path / "run").load().find("g0-teacher") is None  # paused inside it
    root = compress(config, progress=False).root()
    assert root.epochs == 2 and root.seconds >= first_session


def test_a_speedup_target_times_each_accepted_child_beside_the_root_on_this_cpu(tmp_path, tiny_teacher):
    from ikd.runtime import cpu_model_name

    keys = {"operators": ["width"], "max_generations": 1, "target_speedup": 1000}
    lineage = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    assert (lineage.stop_reason or "").startswith("max_generations")  # no tiny child is 1000x faster
    child = lineage.node("g1-width")
    timing = ikd.rules.speedup_timing(child, 1)
    assert timing is not None and timing.runtime == "onnxruntime" and timing.threads == 1
    assert timing.device == cpu_model_name() and timing.teacher_ms is not None and timing.rounds == 200
    assert child.latency == [] and lineage.root().latency == []  # export's record, left to export
    assert RunDir(tmp_path / "run").verify(lineage) == []  # recorded through add_nodes: hashes intact


def fixed_timings(monkeypatch, root_ms: float, ms_by_generation: dict[int, float]) -> list[list[str]]:
    """Time without a clock or a graph: each node's ms per call by its generation, the root's `root_ms`.
    Returns the ids timed, per timing."""
    from ikd.lineage import Latency
    from ikd.runtime import cpu_model_name

    calls: list[list[str]] = []
    here = cpu_model_name()

    def time_beside_root(run, lineage, nodes, batch):
        calls.append([n.id for n in nodes])
        return {
            n.id: Latency(
                runtime="onnxruntime",
                batch=batch,
                median_ms=ms_by_generation[n.generation],
                repeats=3,
                threads=1,
                device=here,
                teacher_ms=root_ms,
            )
            for n in nodes
        }

    monkeypatch.setattr(ikd.campaign, "time_beside_root", time_beside_root)
    return calls


def test_a_speedup_target_stops_at_the_first_child_fast_enough_and_replays_from_the_record(
    tmp_path, tiny_teacher, monkeypatch
):
    calls = fixed_timings(monkeypatch, 1.0, {1: 0.6, 2: 0.3, 3: 0.25})
    keys = {"operators": ["width"], "max_generations": 3}
    lineage = compress(campaign_config(tmp_path / "run", tiny_teacher, target_speedup=3, **keys), progress=False)
    assert [n.id for n in lineage.nodes if n.status == "accepted"] == ["g1-width", "g2-width"]
    assert calls == [["g1-width"], ["g2-width"]]
    assert (lineage.stop_reason or "").startswith("target reached: g2-width runs 3.33x faster than the root")

    # rerun, and replayed under a looser target: decided from the recorded timings, nothing timed again
    again = compress(campaign_config(tmp_path / "run", tiny_teacher, target_speedup=3, **keys), progress=False)
    assert again.nodes == lineage.nodes and len(calls) == 2
    looser = campaign_config(tmp_path / "run", tiny_teacher, target_speedup=1.5, **keys)
    replayed = compress(looser, progress=False, redecide=True)
    assert (replayed.stop_reason or "").startswith("target reached: g1-width runs 1.67x") and len(calls) == 2


def test_a_speedup_target_reached_in_the_last_generation_is_the_reason_the_search_stopped(
    tmp_path, tiny_teacher, monkeypatch
):
    calls = fixed_timings(monkeypatch, 1.0, {1: 0.6, 2: 0.3})
    keys = {"operators": ["width"], "max_generations": 2, "target_speedup": 3}
    lineage = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    assert calls == [["g1-width"], ["g2-width"]]
    assert (lineage.stop_reason or "").startswith("target reached: g2-width runs 3.33x faster than the root")
    again = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    assert again.stop_reason == lineage.stop_reason and len(calls) == 2  # said again, from the record


def test_a_child_that_cannot_be_timed_says_how_to_go_on_without_the_target(tmp_path, tiny_teacher, monkeypatch):
    from ikd.export import ExportMismatch

    def mismatch(run, lineage, nodes, batch):
        raise ExportMismatch("the ONNX graph g1-width is timed in disagrees with PyTorch")

    monkeypatch.setattr(ikd.campaign, "time_beside_root", mismatch)
    config = campaign_config(tmp_path / "run", tiny_teacher, operators=["width"], target_speedup=2)
    with pytest.raises(ExportMismatch, match=r"search\.target_speedup: cannot time g1-width .* disagrees .*--redecide"):
        compress(config, progress=False)
    assert RunDir(tmp_path / "run").load().node("g1-width").status == "accepted"  # the training is kept


def test_a_speedup_target_needs_a_root_ikd_can_time(tmp_path, digits):
    overrides = own_teacher_overrides(tmp_path / "own") | {"search.target_speedup": 2}
    with pytest.raises(
        ConfigError,
        match=r"search\.target_speedup 2: the root teacher is a module passed from Python.*teacher\.program",
    ):
        ikd.compress(overrides=overrides, progress=False, teacher=own_teacher(digits), hint_layer="1")
    assert not RunDir(tmp_path / "own").exists()  # refused before the root was recorded: no run to undo


def test_a_child_accepted_but_not_yet_timed_when_the_run_died_is_timed_on_resuming(tmp_path, tiny_teacher, monkeypatch):
    calls = fixed_timings(monkeypatch, 1.0, {1: 0.6, 2: 0.3, 3: 0.25})
    timing = ikd.campaign.time_beside_root

    def dies_at_generation_2(run, lineage, nodes, batch):
        if nodes[0].generation == 2:
            raise KeyboardInterrupt  # after g2-width's acceptance was written
        return timing(run, lineage, nodes, batch)

    config = campaign_config(tmp_path / "run", tiny_teacher, operators=["width"], max_generations=3, target_speedup=3)
    monkeypatch.setattr(ikd.campaign, "time_beside_root", dies_at_generation_2)
    with pytest.raises(KeyboardInterrupt):
        compress(config, progress=False)
    assert RunDir(tmp_path / "run").load().node("g2-width").status == "accepted"
    monkeypatch.setattr(ikd.campaign, "time_beside_root", timing)
    lineage = compress(config, progress=False)
    assert calls == [["g1-width"], ["g2-width"]] and "g3-width" not in [n.id for n in lineage.nodes]
    assert (lineage.stop_reason or "").startswith("target reached: g2-width runs 3.33x faster")


def test_a_beam_is_timed_in_one_call_and_any_of_it_reaching_the_target_stops_the_search(
    tmp_path, tiny_teacher, monkeypatch
):
    calls = fixed_timings(monkeypatch, 1.0, {1: 0.3})
    keys = {"strategy": "parent-children", "select": "tree", "beam": 2, "max_generations": 3, "target_speedup": 3}
    lineage = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    assert [sorted(ids) for ids in calls] == [["g1-depth", "g1-width"]]  # both survivors, timed together
    assert (lineage.stop_reason or "").startswith("target reached: g1-")
    assert not [n for n in lineage.nodes if n.generation == 2]


def test_an_image_folder_teacher_gives_the_campaign_its_folder_and_size(tmp_path, tiny_teacher):
    from ikd.teachers import with_teachers_data

    teacher = shutil.copytree(tiny_teacher, tmp_path / "teacher")
    meta = json.loads((teacher / "model.json").read_text())
    meta["dataset"] |= {"name": "imagefolder", "source": str(tmp_path / "photos"), "val_fraction": 0.25}
    (teacher / "model.json").write_text(json.dumps(meta))
    run = RunDir(tmp_path / "run")  # not started
    config, note = with_teachers_data(load_config(None, {"teacher.dir": str(teacher), "data.split_seed": 4}), run)
    assert (config.data.name, config.data.dir, config.data.image_size) == ("imagefolder", str(tmp_path / "photos"), 8)
    assert (config.data.val_fraction, config.data.split_seed) == (0.25, 4)  # the split seed set stays the config's
    assert note is not None and note.startswith("data.name imagefolder, data.val_fraction 0.25, data.image_size 8")
    # the same dataset named: the rest is still the teacher's
    same, _ = with_teachers_data(load_config(None, {"teacher.dir": str(teacher), "data.name": "imagefolder"}), run)
    assert (same.data.dir, same.data.val_fraction) == (str(tmp_path / "photos"), 0.25)
    other = load_config(None, {"teacher.dir": str(teacher), "data.name": "digits"})
    assert with_teachers_data(other, run) == (other, None)  # another dataset: its import names the one to set
    unreadable = load_config(None, {"teacher.dir": str(tmp_path / "nowhere")})
    assert with_teachers_data(unreadable, run) == (unreadable, None)  # said where the teacher is imported
    meta["dataset"]["name"] = "svhn"  # a dataset this ikd does not know (a model.json from a later one)
    (teacher / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"^data\.name svhn, .*\(as teacher\.dir .* was trained\): data\.name: "):
        with_teachers_data(load_config(None, {"teacher.dir": str(teacher)}), run)


def test_a_config_passed_as_an_object_is_checked_again_and_keeps_which_keys_were_set():
    from ikd.config import as_config

    config = load_config(None, {"data.val_fraction": 0.2})
    config.search.max_drop = -1.0  # assigned after validation
    with pytest.raises(ConfigError, match="max_drop"):
        as_config(config)
    config.search.max_drop = 1.0
    for again in (as_config(config), as_config(config, {"search.max_generations": 3})):
        assert again.data.model_fields_set == {"val_fraction"} and again.data.val_fraction == 0.2


def test_a_child_timed_on_another_cpu_is_not_timed_again(tmp_path, tiny_teacher, monkeypatch):
    """A resume elsewhere decides from the record: timing the answer again could flip the stop with other noise."""
    calls = fixed_timings(monkeypatch, 1.0, {1: 0.6, 2: 0.3})
    keys = {"operators": ["width"], "max_generations": 3, "target_speedup": 3}
    first = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    run = RunDir(tmp_path / "run")
    elsewhere = [
        n.model_copy(update={"speedup_timing": timing.model_copy(update={"device": "another CPU"})})
        if (timing := n.speedup_timing)
        else n
        for n in first.nodes
    ]
    run.save(first.model_copy(update={"nodes": elsewhere, "stop_reason": None}))  # as if paused before it stopped
    again = compress(campaign_config(tmp_path / "run", tiny_teacher, **keys), progress=False)
    assert calls == [["g1-width"], ["g2-width"]]  # not timed again here
    reason = again.stop_reason or ""
    assert reason.startswith("target reached: g2-width") and "another CPU" in reason


def test_a_beam_names_the_same_node_for_its_target_in_a_fresh_run_and_a_rerun(tmp_path, tiny_teacher, monkeypatch):
    # survivors may list a beam's narrow children last (accept_margin): the reason must not follow that order
    survivors = ikd.rules.survivors
    monkeypatch.setattr(ikd.rules, "survivors", lambda *args: list(reversed(survivors(*args))))
    keys = {"strategy": "parent-children", "select": "tree", "beam": 2, "max_generations": 2}
    config = campaign_config(tmp_path / "run", tiny_teacher, target_params=10**9, **keys)  # every child reaches it
    fresh = compress(config, progress=False)
    first = min((n for n in fresh.nodes if n.status == "accepted"), key=ikd.lineage.rank)
    assert (fresh.stop_reason or "").startswith(f"target reached: {first.id} has")
    assert compress(config, progress=False).stop_reason == fresh.stop_reason


def test_cut_sites_fall_back_to_the_next_blocks_cut_when_the_most_saving_one_fails(tmp_path, tiny_teacher, monkeypatch):
    config = campaign_config(tmp_path / "run", tiny_teacher, operators=["depth"], cut_sites="all", max_generations=1)
    spec = ArchSpec.model_validate(read_metadata(tiny_teacher)["arch"])
    cuts: dict[str, int] = {}  # child -> its block; two cuts that make the same child propose it once, as the first
    for block, child in cuts_per_block("depth", spec):
        cuts.setdefault(child.model_dump_json(), block)
    proposed = propose(spec, config.search, "g1-")
    assert len(proposed) == len(cuts) > 1
    assert [c.node_id for c in proposed] == [f"g1-depth-in{b + 1}" for b in cuts.values()]  # smallest first
    assert [c.spec.model_dump_json() for c in proposed] == list(cuts)
    assert [c.node_id for c in propose(spec, config.search.model_copy(update={"cut_sites": 2}), "g1-")] == [
        c.node_id for c in proposed[:2]
    ]
    assert [c.node_id for c in propose(spec, config.search.model_copy(update={"cut_sites": 1}), "g1-")] == ["g1-depth"]
    # the most saving cut fails (scripted): the next block's trains and is kept; any larger ones never train
    rejection = ikd.rules.rejection
    failing = proposed[0].node_id
    monkeypatch.setattr(
        ikd.rules, "rejection", lambda node, *rest: "scripted miss" if node.id == failing else rejection(node, *rest)
    )
    lineage = compress(config, progress=False)
    students = {n.id: n for n in lineage.students()}
    assert set(students) == {failing, proposed[1].node_id}
    assert students[failing].status == "rejected" and students[failing].reason == "scripted miss"
    assert students[proposed[1].node_id].status == "accepted" and lineage.final().id == proposed[1].node_id
    assert ("larger candidates not trained" in students[proposed[1].node_id].reason) == (len(proposed) > 2)


@pytest.mark.parametrize("sites", [0, -1, "some"])
def test_cut_sites_is_validated(sites):
    with pytest.raises(ConfigError, match=r"search\.cut_sites"):
        load_config(None, {"search.cut_sites": sites})


def test_cut_sites_under_another_objective_or_count_reuse_every_cut_already_trained(tmp_path, tiny_teacher):
    # every cut is named by its block, so a cut is one id whichever objective ranks it first; a one-site
    # run's child (named by its operator alone) is found by its training, not its id
    def config(**search):
        keys = {"operators": ["depth", "block"], "candidates": "all", "max_generations": 1} | search
        return campaign_config(tmp_path / "run", tiny_teacher, **keys)

    one_site = compress(config(), progress=False)
    assert {n.id for n in one_site.students()} == {"g1-depth", "g1-block"}
    every = compress(config(cut_sites="all"), progress=False, redecide=True)
    trained = {n.id: n for n in every.students()}
    archs = [json.dumps(n.arch, sort_keys=True) for n in trained.values()]
    assert len(archs) == len(set(archs))  # no cut trained twice: the one-site children were reused
    assert {"g1-depth", "g1-block"} <= set(trained) and len(trained) > 2
    assert not any("-v2" in i for i in trained)
    by_macs = compress(config(cut_sites="all", objective="macs"), progress=False, redecide=True)
    assert {n.id: n.sha256 for n in by_macs.students()} == {i: n.sha256 for i, n in trained.items()}
    assert by_macs.search_result().macs == min(n.macs for n in by_macs.students())
