"""`ikd report` and `--log tensorboard`: numbers from the lineage, valid figures, a self-contained page."""

from __future__ import annotations

import base64
import html
import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ikd.arch import millions
from ikd.campaign import compress
from ikd.cli import format_lineage, main
from ikd.config import load_config
from ikd.lineage import Latency, RunDir, Status
from ikd.report import FIGURES, STYLE, load_report, speedup, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_teacher):
    """A tiny finished campaign with baselines, logged to TensorBoard."""
    path = tmp_path_factory.mktemp("report") / "run"
    config = load_config(
        None,
        {
            "run_dir": str(path),
            "teacher.dir": str(tiny_teacher),
            "precision": "fp32",
            "device": "cpu",
            "student.epochs": 2,
            "student.batch_size": 64,
            "search.max_drop": 100.0,
            "search.max_step_drop": 100.0,
            "search.max_generations": 2,
            "search.candidates": "all",
            "baselines": True,
            "log": "tensorboard",
        },
    )
    compress(config, progress=False)
    return path


def measured(accuracy: float | None) -> float:
    assert accuracy is not None, "every node of this campaign was evaluated"
    return accuracy


def _table_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip().replace("\u00a0", "") for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_report_numbers_come_from_the_lineage(run_dir):
    out = write_report(run_dir)
    lineage = RunDir(run_dir).load()
    rows = _table_rows((out / "report.md").read_text())
    assert set(rows) == {n.id for n in lineage.nodes}
    session = lineage.sessions[-1]  # where and how the campaign ran
    assert f"- Run {session.started}: `{session.command}` on {session.machine}." in (out / "report.md").read_text()
    root, final = lineage.root(), lineage.final()
    for node in lineage.nodes:
        row = rows[node.id]
        assert row["params"] == f"{node.params:,}"
        assert row["M MACs"] == millions(node.macs) and float(row["M MACs"]) == pytest.approx(node.macs / 1e6, rel=0.05)
        assert float(row["test %"]) == pytest.approx(100 * measured(node.test_accuracy), abs=0.006)
        assert float(row["val %"]) == pytest.approx(100 * measured(node.val_accuracy), abs=0.006)
        assert float(row["drop test (pts)"]) == pytest.approx(
            100 * (measured(root.test_accuracy) - measured(node.test_accuracy)), abs=0.006
        )
        assert float(row["reduction %"]) == pytest.approx(
            100 * (1 - node.size_bytes_fp32 / root.size_bytes_fp32), abs=0.006
        )
        assert row["status"].startswith(node.status)
        assert row["teachers"] == ("+".join(node.teachers) or "-")
        assert row["why (the search's reason)"] == (node.reason or "-").replace("|", "\\|")
    assert rows[final.id]["status"] == "accepted (final)"
    assert {rows["baseline-scratch"]["status"], rows["baseline-oneshot-kd"]["status"]} == {"baseline"}
    headline = load_report(run_dir).headline()
    reduction = 100 * (1 - final.size_bytes_fp32 / root.size_bytes_fp32)
    assert f"by {reduction:.2f}% in memory footprint" in headline
    assert f"{final.compression:.1f}x fewer parameters" in headline
    assert f"{100 * measured(final.test_accuracy):.2f}%" in headline
    assert f"in {final.generation} generations" in headline
    val_drop = 100 * (measured(root.val_accuracy) - measured(final.val_accuracy))
    assert f"{abs(val_drop):.2f} points {'down' if val_drop >= 0 else 'up'}" in headline


def test_headline_words_a_student_above_its_teacher_as_a_gain(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    document = json.loads((copy / "lineage.json").read_text())
    root = document["nodes"][0]
    final = load_report(copy).final
    for node in document["nodes"]:
        if node["id"] == final.id:
            node["val_accuracy"], node["test_accuracy"] = root["val_accuracy"] + 0.006, root["test_accuracy"] + 0.0025
    (copy / "lineage.json").write_text(json.dumps(document))
    headline = load_report(copy).headline()
    assert "a 0.25-point gain in test accuracy" in headline and "the split that chose it, 0.60 points up)" in headline


def test_the_headline_of_an_unfinished_run_says_it_is_no_result(run_dir, tmp_path):
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    assert load_report(run.path).headline().startswith("ikd compressed")
    lost = "candidates lost with their workers: g2-width in generation 2"
    for stop, said in ((None, "Not finished (not stopped); so far: ikd compressed"), (lost, f"Not finished ({lost})")):
        run.save(lineage.model_copy(update={"stop_reason": stop}))
        assert load_report(run.path).headline().startswith(said)
    # no student accepted yet: nothing "stands" (it said the teacher did, over the generations of baselines too)
    students = [
        n.model_copy(update={"status": "rejected"}) if n.status == Status.ACCEPTED else n for n in lineage.nodes
    ]
    run.save(lineage.model_copy(update={"stop_reason": None, "nodes": students}))
    headline = load_report(run.path).headline()
    tried = max(n.generation for n in lineage.students())
    assert headline.endswith(f"({tried} generations tried).") and "stands" not in headline


def test_a_teacher_without_a_test_accuracy_is_one_line_not_a_crash(run_dir, tmp_path, capsys):
    # with the root alone, the Pareto plot's max() of no points crashed as an internal error
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    root = lineage.root().model_copy(update={"test_accuracy": None})
    run.save(lineage.model_copy(update={"nodes": [root], "stop_reason": "max_generations (0) reached"}))
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "node g0-teacher has no test_accuracy" in err and len(err.strip().splitlines()) == 1


def test_figures_are_readable_pngs(run_dir):
    out = write_report(run_dir)
    for name in FIGURES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 500 <= width <= 4000 and 300 <= height <= 4000, (name, image.size)
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
        # something is drawn: not a blank canvas
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.002, name


def test_a_campaign_with_a_final_distillation_is_drawn_too(run_dir, tmp_path):
    assert set(STYLE) == set(Status)  # every status has its colour and marker in every figure
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    answer = lineage.final()
    run.add_node(lineage, answer.model_copy(update={"id": "final", "status": Status.FINAL, "parent": answer.id}))
    out = write_report(run.path)
    assert load_report(run.path).final.id == "final"
    line = next(f for f in load_report(run.path).facts() if f.startswith("Final distillation"))
    assert f"Final distillation: {answer.id} trained again" in line and "Not kept" not in line
    for name in FIGURES:
        with Image.open(out / name) as image:
            image.verify()


def test_a_final_student_the_campaign_did_not_keep_is_said_so(run_dir, tmp_path):
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    answer = lineage.final()
    final = answer.model_copy(update={"id": "final", "status": Status.FINAL, "parent": answer.id})
    final = final.model_copy(update={"reason": "not kept: by validation it fails the test (made up)"})
    run.add_node(lineage, final)
    report = load_report(run.path)
    assert report.final.id == answer.id
    line = next(f for f in report.facts() if f.startswith("Final distillation"))
    assert "Not kept (by validation it fails the test (made up))" in line and f"{answer.id} stays the answer" in line
    assert "nodes/final" in line
    table = format_lineage(run.load())
    assert "final: not kept (by validation it fails the test (made up))" in table
    assert f"{answer.id} stays the answer" in table


def test_a_final_below_its_floor_that_an_older_ikd_kept_is_flagged(tmp_path):
    # made before finals were judged: it stays the answer until the campaign is rerun, and readers say so
    committed = Path(__file__).parents[1] / "benchmarks/results/lineages/iterating-pays/block+final+gentle-seed1"
    shutil.copytree(committed, tmp_path / "run")
    report = load_report(tmp_path / "run")
    assert report.final.id == "final"
    line = next(f for f in report.facts() if f.startswith("Final distillation"))
    assert "By validation it fails the test g9-block75 passed (val 98.92% <" in line and "rerun `ikd compress`" in line
    assert "the ikd that made this run kept it as the answer" in format_lineage(report.lineage)


def test_parameters_that_never_meet_a_pixel_are_counted_apart(run_dir, tmp_path):
    assert not any("never meet a pixel" in line for line in load_report(run_dir).facts())  # 8 -> 4 -> 2: all meet
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    document = json.loads((copy / "lineage.json").read_text())
    document["nodes"][0]["arch"]["blocks"].append([64, 64])  # a teacher with a fourth block, on 1x1 maps
    (copy / "lineage.json").write_text(json.dumps(document))
    report = load_report(copy)
    root, final = report.root.spec(), report.final.spec()
    assert root.block_input_sizes()[-1] == 1 and root.live_params() < root.num_params()
    fact = next(line for line in report.facts() if "never meet a pixel" in line)
    assert f"{root.num_params() - root.live_params():,} of the teacher's {root.num_params():,}" in fact
    assert f"{root.live_params() / final.live_params():.1f}x fewer" in fact


def test_html_is_self_contained(run_dir):
    out = write_report(run_dir)
    page = (out / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert [base64.b64decode(e) for e in embedded] == [(out / name).read_bytes() for name in FIGURES]
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)  # no file or network references
    assert load_report(run_dir).headline() in html.unescape(page)


def copied(run_dir, tmp_path) -> RunDir:
    """A copy of the module's finished run, to record made-up timings in."""
    shutil.copytree(run_dir, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_latency_appears_with_its_speed_up(run_dir, tmp_path):
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    measure: dict[str, Any] = {"runtime": "onnxruntime", "repeats": 5, "threads": 2, "device": "test cpu"}
    root, final = lineage.root(), lineage.final()
    lineage = run.add_node(lineage, root.model_copy(update={"latency": [Latency(batch=1, median_ms=4.0, **measure)]}))
    run.add_node(lineage, final.model_copy(update={"latency": [Latency(batch=1, median_ms=0.5, **measure)]}))
    rows = _table_rows((write_report(run.path) / "report.md").read_text())
    assert rows[final.id]["onnxruntime b1 ms (speed-up)"] == "0.5 (8.0x)"
    assert rows[root.id]["onnxruntime b1 ms (speed-up)"] == "4 (1.0x)"
    assert rows[final.id]["onnxruntime b64 ms (speed-up)"] == "-"
    lineage = run.load()
    assert speedup(lineage.final(), lineage.root(), "onnxruntime", 1) == 8.0
    assert speedup(lineage.final(), lineage.root(), "onnxruntime", 64) is None


def test_the_searchs_own_timing_shows_where_export_timed_nothing_alike(run_dir, tmp_path):
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    measure: dict[str, Any] = {"runtime": "onnxruntime", "repeats": 3, "threads": 1, "device": "test cpu"}
    searched = Latency(batch=1, median_ms=0.5, teacher_ms=2.0, **measure)
    exported = Latency(batch=64, median_ms=10.0, teacher_ms=50.0, **measure)
    final = lineage.final()
    run.add_node(lineage, final.model_copy(update={"speedup_timing": searched, "latency": [exported]}))
    rows = _table_rows((write_report(run.path) / "report.md").read_text())
    assert rows[final.id]["onnxruntime b1 ms (speed-up)"] == "0.5 (4.0x)"
    assert rows[final.id]["onnxruntime b64 ms (speed-up)"] == "10 (5.0x)"
    newer = Latency(batch=1, median_ms=0.4, teacher_ms=2.0, **measure)  # an export at batch 1 is the latest
    run.add_node(run.load(), run.load().final().model_copy(update={"latency": [exported, newer]}))
    rows = _table_rows((write_report(run.path) / "report.md").read_text())
    assert rows[final.id]["onnxruntime b1 ms (speed-up)"] == "0.4 (5.0x)"


@pytest.mark.parametrize("other", [{"threads": 1}, {"device": "another cpu"}])
def test_no_speed_up_between_timings_taken_on_other_threads_or_cpus(run_dir, tmp_path, other, monkeypatch):
    run = copied(run_dir, tmp_path)
    lineage = run.load()
    measure: dict[str, Any] = {"runtime": "onnxruntime", "batch": 1, "repeats": 5, "threads": 2, "device": "test cpu"}
    root, final = lineage.root(), lineage.final()
    lineage = run.add_node(lineage, root.model_copy(update={"latency": [Latency(median_ms=4.0, **measure)]}))
    node_latency = Latency(median_ms=0.5, **(measure | other))
    run.add_node(lineage, final.model_copy(update={"latency": [node_latency]}))
    rows = _table_rows((write_report(run.path) / "report.md").read_text())
    assert rows[final.id]["onnxruntime b1 ms (speed-up)"] == "0.5"  # its time, and no ratio to a root timed otherwise
    # the paper table (benchmarks/paper.py) takes its ratios by the same rule
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    paper = importlib.import_module("paper")
    row = paper.Row("digits", "vgg16", ("width",))
    assert paper.row_result(row, "digits-vgg16-width", run.load())["speedup_ort"] is None


def test_a_campaign_without_survivors_says_so(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    document = json.loads((copy / "lineage.json").read_text())
    for node in document["nodes"]:
        if node["status"] == "accepted":
            node["status"] = "rejected"
    (copy / "lineage.json").write_text(json.dumps(document))
    report = load_report(copy)
    assert report.final.id == "g0-teacher"
    assert "found no student" in report.headline() and "2 generations tried" in report.headline()
    write_report(copy)  # figures still draw with no accepted chain


def test_a_teacher_history_without_loss_terms_or_of_odd_entries_still_draws(run_dir, tmp_path):
    # the root's model.json is the user's teacher.dir copied in: no train dicts crashed the legend (ncol=0)
    import shutil

    copy = shutil.copytree(run_dir, tmp_path / "run")
    for node in ("g0-teacher", *(d.name for d in (copy / "nodes").iterdir())):
        meta = copy / "nodes" / node / "model.json"
        document = json.loads(meta.read_text())
        document["history"] = [{"val_accuracy": 0.5}, "epoch two", {"train": "n/a", "val_accuracy": float("nan")}]
        meta.write_text(json.dumps(document))
    out = write_report(copy)
    assert (out / "training.png").is_file() and (out / "report.html").is_file()


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lineage.json: not found" in err
    (taken := tmp_path / "a-file").write_text("")
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(taken)]) == 2  # it said only "File exists"
    err = capsys.readouterr().err.strip()
    assert err == f"ikd: error: --out {taken}: {taken} is not a directory"


def test_tensorboard_log_has_every_epoch_of_every_node(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lineage = RunDir(run_dir).load()
    trained = [n for n in lineage.nodes if n.generation > 0 or n.status == "baseline"]
    assert {p.name for p in (run_dir / "tb").iterdir()} == {n.id for n in trained}
    for node in trained:
        events = EventAccumulator(str(run_dir / "tb" / node.id))
        events.Reload()
        accuracy = [e.value for e in events.Scalars("val/accuracy")]
        assert len(accuracy) == node.epochs
        assert max(accuracy) == pytest.approx(node.val_accuracy)  # the saved weights are the best epoch's
        terms = {"train/loss", "train/kd", "train/ce", "train/hint"} if node.teachers else {"train/loss"}
        assert terms | {"lr", "val/loss"} <= set(events.Tags()["scalars"])


def test_the_report_line_names_only_the_figures_drawn(tmp_path, capsys):
    # a committed lineage has no node files: no training curves to draw, and a stale figure goes
    import shutil

    from ikd import cli

    source = Path(__file__).resolve().parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth"
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "report").mkdir()
    (run / "report" / "training.png").write_bytes(b"stale")
    assert cli.main(["report", str(run)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "figures: pareto.png, lineage.png)" in last
    assert not (run / "report" / "training.png").exists()


def test_a_final_distillation_and_the_costs_are_labelled_as_what_they_are(tmp_path):
    # a committed campaign with a final distillation and baselines (its weights are not committed)
    committed = Path(__file__).parents[1] / "benchmarks/results/lineages/iterating-pays/final+dkd+early-seed0"
    shutil.copytree(committed, tmp_path / "run")
    report = load_report(tmp_path / "run")
    headline, facts = report.headline(), report.facts()
    answer = report.lineage.node(report.final.parent or "")
    assert f"validation chose {answer.id}, which this final distillation retrained" in headline
    assert "the split that chose it" not in headline  # the final student was never judged
    students = report.lineage.students()
    cost = next(line for line in facts if line.startswith("Training recorded: "))
    assert f"{len(students)} candidates trained, {sum(n.epochs for n in students)} epochs" in cost
    assert f"final distillation {report.final.epochs} epochs" in cost and "2 baselines" in cost
    baseline = next(n for n in report.lineage.nodes if n.status == Status.BASELINE)
    assert f"{baseline.epochs} epochs each" in next(line for line in facts if line.startswith("Baselines"))


def test_the_lineage_table_ends_with_the_campaigns_answer():
    from pathlib import Path

    from ikd.lineage import Lineage

    recorded = Path(__file__).parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth/lineage.json"
    lineage = Lineage.model_validate_json(recorded.read_text())
    assert (
        format_lineage(lineage).splitlines()[-1] == "answer: g8-depth (557,386 params, 26.4x, val 99.20%, test 99.47%)"
    )
    # each node's multiply-accumulates per image, in millions, from its architecture
    header, _, teacher_row, *_ = format_lineage(lineage).splitlines()
    assert header.split()[5:7] == ["M", "MACs"] and teacher_row.split()[5] == f"{lineage.root().macs / 1e6:.0f}"
    alone = lineage.model_copy(update={"nodes": [lineage.root()]})
    assert format_lineage(alone).splitlines()[-1] == "answer: the teacher (no student was accepted)"
    # a search under target_speedup: how much faster than the root each timed child ran, beside its MACs
    timing = Latency(runtime="onnxruntime", batch=1, median_ms=0.5, repeats=3, threads=1, device="c", teacher_ms=2.0)
    nodes = [n.model_copy(update={"speedup_timing": timing}) if n.id == "g8-depth" else n for n in lineage.nodes]
    timed = lineage.model_copy(update={"nodes": nodes})
    header, _, teacher_row, *rows = format_lineage(timed).splitlines()
    assert header.split()[7] == "faster" and teacher_row.split()[6] == "-"
    assert next(r for r in rows if r.split()[0] == "g8-depth").split()[6] == "4.00x"


def test_ikd_lineage_why_gives_each_node_its_reason(capsys):

    recorded = Path(__file__).parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth"
    assert main(["lineage", str(recorded), "--why"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "why"
    rejected = next(line for line in table if " rejected " in line)
    assert "max_drop" in rejected
    assert main(["lineage", str(recorded)]) == 0
    assert "max_drop" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "keys, shown",
    [
        ({}, "Strategy `parent-child`, operators"),
        (
            {"search.strategy": "parent-children", "search.select": "tree", "search.beam": 2, "search.seeds": 2},
            "Strategy `parent-children` (select tree, beam 2; 2 seeds per architecture), operators",
        ),
        (
            {"search.strategy": "ancestors-child", "ensemble.ancestors": 2, "ensemble.experts": ["e"]},
            "Strategy `ancestors-child` (ancestors 2 + 1 expert(s), mean-kd weighted uniform, hints from parent), ",
        ),
    ],
)
def test_the_report_names_the_variants_settings(tmp_path, keys, shown):
    # a tree, seed siblings or a teachers' ensemble decide what the lineage holds: the report says which
    from ikd.lineage import Lineage
    from ikd.report import Report

    config = load_config(None, keys).decision_fields()
    recorded = Path(__file__).parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth/lineage.json"
    lineage = Lineage.model_validate_json(recorded.read_text()).model_copy(update={"config": config})
    assert Report(lineage, "MNIST").facts()[0].startswith(shown)


@pytest.mark.parametrize("margin, shown", [(0.0, "of the parent (validation)."), (0.1, "0.1 points above that.")])
def test_the_report_names_the_accept_margin(margin, shown):
    from ikd.lineage import Lineage
    from ikd.report import Report

    config = load_config(None, {"search.accept_margin": margin}).decision_fields()
    recorded = Path(__file__).parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth/lineage.json"
    lineage = Lineage.model_validate_json(recorded.read_text()).model_copy(update={"config": config})
    assert Report(lineage, "MNIST").facts()[0].endswith(shown)


@pytest.mark.parametrize(
    "arch,name", [("vgg16", "VGG-16"), ("vgg11", "VGG-11"), ("16x1-32x1-64x2-128x2", "16x1-32x1-64x2-128x2")]
)
def test_a_preset_is_named_as_one_and_any_other_layout_by_its_line(arch, name):
    from ikd.arch import preset
    from ikd.lineage import NodeRecord
    from ikd.report import arch_name

    spec = preset(arch, in_channels=1, image_size=28, num_classes=10)
    node = NodeRecord(
        id="g0-teacher", generation=0, parent=None, teachers=[], status=Status.TEACHER, arch=spec.to_json_dict(),
        params=spec.num_params(), size_bytes_fp32=spec.size_bytes_fp32(), macs=spec.macs(), compression=1.0,
        val_accuracy=0.9, epochs=1,
    )  # fmt: skip
    assert arch_name(node) == name


def test_a_campaign_paused_in_its_teachers_training_is_one_line_in_every_reader(tmp_path, capsys):
    # export said "it has: " and nothing more; lineage printed a bare header
    from ikd.lineage import NO_NODE_YET, Lineage

    RunDir(tmp_path).save(Lineage(config={}))
    assert main(["lineage", str(tmp_path)]) == 0
    assert NO_NODE_YET in capsys.readouterr().out
    for command in (["report", str(tmp_path)], ["export", str(tmp_path), "--format", "onnx", "--node", "g0-teacher"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{tmp_path / 'lineage.json'}: has {NO_NODE_YET}" in err, err
