"""`ikd export`: the exported files compute what the node computes, latencies land in the lineage,
and every user mistake is one line with exit code 2."""

import hashlib
import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_search import campaign_config

from ikd import latency
from ikd.arch import ArchSpec
from ikd.campaign import compress
from ikd.checkpoint import load_model
from ikd.cli import main
from ikd.data import normalize
from ikd.dirlock import held
from ikd.errors import CheckpointError
from ikd.export import export, onnx_graph
from ikd.latency import LATENCY_PLAN, cpu_session, min_of_medians
from ikd.lineage import Latency, RunDir
from ikd.model import NormalizedModel, build_model

NODE, ROOT = "g1-width", "g0-teacher"
MEASURED = {(runtime, batch) for runtime in ("onnxruntime", "torch") for batch in (1, 64)}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny_teacher):
    """A finished two-node campaign (root teacher and one width child); tests work on copies."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    compress(campaign_config(run_dir, tiny_teacher, max_generations=1, operators=["width"]), progress=False)
    return run_dir


@pytest.fixture
def run_dir(campaign, tmp_path):
    return shutil.copytree(campaign, tmp_path / "run")


def test_onnx_export_agrees_with_pytorch_and_describes_its_input(run_dir, digits):
    result = export(run_dir, "onnx", node=NODE, measure_latency=False)
    verification = result.verification
    assert verification is not None  # asked for: an ONNX export is checked
    assert verification.images == 256 and verification.top1_agree == 256
    assert verification.max_abs_logit_diff < 1e-3

    # Independently of the built-in check: raw [0, 1] images in, the node's logits out, any batch size.
    path = run_dir / "export" / NODE / "model.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    model, metadata = load_model(run_dir / "nodes" / NODE)
    model.eval()
    for batch in (1, 7):
        images = digits.test.images[-batch:]
        (logits,) = session.run(["logits"], {"images": (images.float() / 255).numpy()})
        with torch.inference_mode():
            expected = model(normalize(images, metadata["dataset"]["mean"], metadata["dataset"]["std"])).numpy()
        assert logits.shape == (batch, 10)
        assert np.array_equal(logits.argmax(1), expected.argmax(1)) and np.abs(logits - expected).max() < 1e-4

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["ikd.classes"]) == metadata["dataset"]["classes"]
    assert json.loads(props["ikd.mean"]) == metadata["dataset"]["mean"]
    assert json.loads(props["ikd.std"]) == metadata["dataset"]["std"]
    assert props["ikd.arch_summary"] == model.spec.summary()
    summary = json.loads((run_dir / "export" / NODE / "export.json").read_text())
    assert summary["formats"]["onnx"]["verification"]["top1_agree"] == 256 and summary["latency"] is None


def test_a_graph_that_disagrees_is_refused_and_not_written(run_dir, monkeypatch, capsys):
    # A classic exporter bug: the graph forgets to normalise its input.
    monkeypatch.setattr(NormalizedModel, "forward", lambda self, images: self.model(images))
    code = main(["export", str(run_dir), "--node", NODE, "--format", "onnx", "--no-latency"])
    err = capsys.readouterr().err
    assert code == 2 and "disagrees with PyTorch" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "export" / NODE / "model.onnx").exists()


def test_a_timed_graph_that_disagrees_is_refused_even_when_not_exported(run_dir, monkeypatch, capsys):
    # the teacher's graph (and the node's, for a safetensors export) was timed without any check
    from ikd import export

    real, graphs = export.onnx_graph, []

    def the_first_graph_again(*args, **kwargs):  # the teacher timed in the node's graph
        graphs.append(real(*args, **kwargs))
        return graphs[0]

    monkeypatch.setattr(export, "onnx_graph", the_first_graph_again)
    before = RunDir(run_dir).lineage_path.read_bytes()
    code = main(["export", str(run_dir), "--node", NODE, "--format", "safetensors", "--repeats", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"the ONNX graph {ROOT} is timed in disagrees with PyTorch" in err, err
    assert not (run_dir / "export").exists() and RunDir(run_dir).lineage_path.read_bytes() == before


def test_a_near_tie_that_flips_within_the_allowed_difference_is_no_disagreement(run_dir, monkeypatch):
    # every logit of a zeroed head ties; onnxruntime's arithmetic may break the tie the other way
    from ikd import export

    model, metadata = load_model(run_dir / "nodes" / NODE)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)

    class Session:
        def run(self, outputs, feeds):
            logits = np.zeros((len(feeds["images"]), last.out_features), dtype=np.float32)
            logits[:, 1] = 1e-5  # within MAX_LOGIT_DIFF, but top-1 moves from class 0 to 1
            return [logits]

    monkeypatch.setattr(export, "cpu_session", lambda graph, threads: Session())
    verified = export.verify_onnx(b"", model.eval(), metadata["dataset"], None)
    assert verified.top1_agree == 0 and verified.max_abs_logit_diff == pytest.approx(1e-5)


def test_safetensors_export_loads_back_into_an_identical_model(run_dir):
    export(run_dir, "safetensors", node=NODE, measure_latency=False)
    path = run_dir / "export" / NODE / "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    original, original_meta = load_model(run_dir / "nodes" / NODE)
    # Rebuilt from the file alone, without model.json or the run directory.
    rebuilt = build_model(ArchSpec.model_validate_json(metadata["ikd.arch"]))
    state = load_file(path)
    assert state.keys() == original.state_dict().keys()  # the model's tensors and nothing else
    rebuilt.load_state_dict(state, strict=True)
    for name, tensor in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(rebuilt.eval()(x), original.eval()(x))
    assert json.loads(metadata["ikd.mean"]) == original_meta["dataset"]["mean"]
    assert json.loads(metadata["ikd.classes"]) == original_meta["dataset"]["classes"]
    assert json.loads(metadata["ikd.input_shape"]) == ["batch", 1, 8, 8]


def test_an_out_path_with_the_format_extension_is_the_file_itself(run_dir, tmp_path, capsys):
    out = tmp_path / "models"
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--node",
                NODE,
                "--format",
                "onnx",
                "--no-latency",
                "--out",
                str(out / "digits.onnx"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--node",
                NODE,
                "--format",
                "safetensors",
                "--no-latency",
                "--out",
                str(out / "digits.safetensors"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["digits.export.json", "digits.onnx", "digits.safetensors"]
    session = onnxruntime.InferenceSession(str(out / "digits.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert load_file(out / "digits.safetensors").keys() == load_model(run_dir / "nodes" / NODE)[0].state_dict().keys()
    summary = json.loads((out / "digits.export.json").read_text())  # one summary for both, as in a directory
    assert {fmt: entry["files"] for fmt, entry in summary["formats"].items()} == {
        "onnx": ["digits.onnx"],
        "safetensors": ["digits.safetensors"],
    }
    assert "digits.onnx" in capsys.readouterr().out
    assert not (run_dir / "export").exists()

    # Any other path is a directory, as it always was.
    export(run_dir, "safetensors", node=NODE, out=out / "v2", measure_latency=False)
    assert sorted(p.name for p in (out / "v2").iterdir()) == ["export.json", "model.safetensors"]


@pytest.mark.parametrize(
    "fmt, out, expected",
    [
        ("safetensors", "digits.onnx", "ends in .onnx but --format is safetensors"),
        ("onnx", "made-by-an-older-ikd.onnx", "is a directory"),
        ("onnx", "a-file/model.onnx", "a-file is not a directory"),
        ("onnx", "half.onnx", "cannot write " + "{tmp}/half.export.json: it is a directory"),
    ],
)
def test_an_out_path_that_cannot_be_the_file_exits_2_with_one_line(run_dir, tmp_path, capsys, fmt, out, expected):
    (tmp_path / "made-by-an-older-ikd.onnx").mkdir()
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "half.export.json").mkdir()  # the summary's place is taken: nothing may be written at all
    before = RunDir(run_dir).lineage_path.read_bytes()
    assert main(["export", str(run_dir), "--node", NODE, "--format", fmt, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "digits.onnx").exists() and not any((tmp_path / "made-by-an-older-ikd.onnx").iterdir())
    assert not (tmp_path / "half.onnx").exists() and RunDir(run_dir).lineage_path.read_bytes() == before


def test_the_onnx_check_refuses_data_whose_classes_are_in_another_order(run_dir):
    # it compared image shapes only: relabelled class folders scored a wrong agreement without a word
    from ikd.errors import ConfigError
    from ikd.export import verify_onnx

    model, metadata = load_model(run_dir / "nodes" / NODE)
    record = metadata["dataset"] | {"classes": list(reversed(metadata["dataset"]["classes"]))}
    with pytest.raises(ConfigError, match=r"class 0 = '9', the data has '0' there"):
        verify_onnx(b"", model, record, None)


def test_the_onnx_check_refuses_data_without_test_images(run_dir, monkeypatch):
    # with none it agreed on 0 of 0 and passed
    import dataclasses

    from ikd import export
    from ikd.errors import ConfigError

    model, metadata = load_model(run_dir / "nodes" / NODE)
    real = export.load_dataset

    def no_test_images(*args, **kwargs):
        data = real(*args, **kwargs)
        return dataclasses.replace(data, test=type(data.test)(data.test.images[:0], data.test.labels[:0]))

    monkeypatch.setattr(export, "load_dataset", no_test_images)
    with pytest.raises(ConfigError, match=r"has no test images to check the ONNX graph against"):
        export.verify_onnx(export.onnx_graph(model, metadata["dataset"], {}), model, metadata["dataset"], None)


def test_an_out_path_inside_the_runs_nodes_is_refused(run_dir, capsys):
    # it would replace the node's own weights (the same tensors, other bytes), breaking its checksum
    before = RunDir(run_dir).lineage_path.read_bytes()
    out = run_dir / "nodes" / NODE
    assert main(["export", str(run_dir), "--node", NODE, "--format", "safetensors", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the run's own nodes" in err and len(err.strip().splitlines()) == 1
    assert not (out / "export.json").exists() and RunDir(run_dir).lineage_path.read_bytes() == before
    assert RunDir(run_dir).verify(RunDir(run_dir).load()) == []


def test_a_root_that_cannot_be_timed_leaves_nothing_written(run_dir, capsys):
    # the model file used to be written before the root was loaded for the speed-up
    (run_dir / "nodes" / ROOT / "model.safetensors").unlink()
    before = RunDir(run_dir).lineage_path.read_bytes()
    assert main(["export", str(run_dir), "--node", NODE, "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "the root teacher, the reference of the speed-up" in err and "--no-latency" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run_dir / "export").exists() and RunDir(run_dir).lineage_path.read_bytes() == before


def test_latency_lands_in_the_lineage_for_node_and_root(run_dir, capsys):
    before = RunDir(run_dir).load()
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert (
            main(["export", str(run_dir), "--node", NODE, "--format", "onnx", "--repeats", "2", "--rounds", "3"]) == 0
        )
        assert torch.get_num_threads() == 2  # timed with one thread, the caller's threads given back
    finally:
        torch.set_num_threads(caller_threads)
    out = capsys.readouterr().out
    assert "speed-up" in out and ROOT in out and "256/256" in out

    run = RunDir(run_dir)
    lineage = run.load()  # still validates
    assert [n.id for n in lineage.nodes] == [n.id for n in before.nodes]
    assert run.verify(lineage) == []
    for node_id in (NODE, ROOT):
        latency = lineage.node(node_id).latency
        assert {(m.runtime, m.batch) for m in latency} == MEASURED and len(latency) == len(MEASURED)
        assert all(
            m.median_ms > 0 and m.repeats == 2 and m.rounds == 3 and m.threads == 1 and m.device for m in latency
        )
    summary = json.loads((run_dir / "export" / NODE / "export.json").read_text())
    speedups = summary["latency"]["speedup"]
    assert {(s["runtime"], s["batch"]) for s in speedups} == MEASURED
    assert all(s["speedup"] == pytest.approx(s["teacher_ms"] / s["node_ms"]) for s in speedups)


def test_a_campaign_run_without_a_node_exports_its_answer(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "safetensors", "--no-latency"]) == 0
    assert f"ikd export: {NODE} (accepted," in capsys.readouterr().out
    assert (run_dir / "export" / NODE / "model.safetensors").is_file()
    run = RunDir(run_dir)
    lineage = run.load()
    # stopped, then paused in its final distillation: the search's choice is not the answer yet
    config = lineage.config | {"student": lineage.config["student"] | {"final_epochs": 3}}
    run.save(lineage.model_copy(update={"config": config}))
    assert main(["export", str(run_dir), "--format", "safetensors", "--no-latency"]) == 2
    assert f"chose {NODE}, whose final distillation (3 epochs) has not finished" in capsys.readouterr().err
    for stop, expected in ((None, "has not finished, so it has no answer yet"), ("max_generations (1) reached", "")):
        rejected = lineage.node(NODE).model_copy(update={"status": "rejected"}) if stop else lineage.node(NODE)
        run.save(lineage.model_copy(update={"stop_reason": stop, "nodes": [lineage.root(), rejected]}))
        expected = expected or "accepted no student, its answer is its teacher"
        assert main(["export", str(run_dir), "--format", "safetensors", "--no-latency"]) == 2
        err = capsys.readouterr().err
        assert expected in err and f"--node ID (`ikd lineage {run_dir}`)" in err and len(err.strip().splitlines()) == 1


def test_a_node_that_is_not_the_answer_is_exported_with_a_note(run_dir):
    run = RunDir(run_dir)
    lineage = run.load()
    run.add_node(lineage, lineage.node(NODE).model_copy(update={"status": "rejected", "reason": "too far down"}))
    result = export(run_dir, "safetensors", node=NODE, measure_latency=False)
    assert f"{NODE} (rejected) is not the campaign's answer ({ROOT}): too far down" in result.notes
    assert f"note: {NODE} (rejected) is not" in result.summary()


def test_a_final_student_that_was_not_kept_is_exported_with_a_note(run_dir):
    from ikd.lineage import FINAL_NOT_KEPT

    run = RunDir(run_dir)
    lineage = run.load()
    assert export(run_dir, "safetensors", node=NODE, measure_latency=False).notes == []  # the answer
    assert export(run_dir, "safetensors", node=ROOT, measure_latency=False).notes == []  # the teacher, on purpose
    # the final distillation's student, below its answer's floor: the search's answer stays
    final = lineage.node(NODE).model_copy(update={"id": "final", "status": "final", "reason": f"{FINAL_NOT_KEPT} low"})
    run.save(lineage.model_copy(update={"nodes": [*lineage.nodes, final]}))
    shutil.copytree(run_dir / "nodes" / NODE, run_dir / "nodes" / "final")
    assert export(run_dir, "safetensors", node="final", measure_latency=False).notes == [
        f"final (final) is not the campaign's answer ({NODE}): {FINAL_NOT_KEPT} low"
    ]
    # the search's answer itself, once the final is kept, is no longer what the campaign answers
    run.save(lineage.model_copy(update={"nodes": [*lineage.nodes, final.model_copy(update={"reason": ""})]}))
    assert export(run_dir, "safetensors", node=NODE, measure_latency=False).notes == [
        f"{NODE} (accepted) is not the campaign's answer (final)"
    ]
    # an answer before the campaign has stopped is provisional
    run.save(lineage.model_copy(update={"stop_reason": None}))
    assert "the campaign has not finished" in export(run_dir, "safetensors", node=NODE, measure_latency=False).notes[0]


def test_a_repeated_export_replaces_latencies_instead_of_adding_them(run_dir):
    run = RunDir(run_dir)
    # The root was timed elsewhere: timed again here and that entry replaced.
    lineage = run.load()
    elsewhere = Latency(runtime="torch", batch=1, median_ms=9.0, repeats=5, threads=64, device="another CPU")
    run.add_node(lineage, lineage.node(ROOT).model_copy(update={"latency": [elsewhere]}))

    export(run_dir, "onnx", node=NODE, repeats=1)
    first = run.load()
    export(run_dir, "safetensors", node=NODE, repeats=2, rounds=4)
    second = run.load()
    assert "another CPU" not in {m.device for m in first.node(ROOT).latency}
    for lineage in (first, second):
        for node_id in (NODE, ROOT):
            assert len(lineage.node(node_id).latency) == len(MEASURED)
    assert {m.repeats for m in second.node(NODE).latency} == {2}
    # The root is timed again beside the node every time: a speed-up's two sides come from one moment.
    assert {m.repeats for m in second.node(ROOT).latency} == {2}
    assert {m.rounds for m in first.node(ROOT).latency} == {rounds for _, rounds in LATENCY_PLAN.values()}
    assert {m.rounds for m in second.node(ROOT).latency} == {4}
    summary = json.loads((run_dir / "export" / NODE / "export.json").read_text())
    assert set(summary["formats"]) == {"onnx", "safetensors"}  # both exports are described


def test_a_speed_up_keeps_the_teacher_time_measured_beside_it(run_dir):
    from ikd.report import speedup

    export(run_dir, "onnx", node=NODE, repeats=1)
    paired = {(m.runtime, m.batch): m for m in RunDir(run_dir).load().node(NODE).latency}
    assert all(m.teacher_ms is not None for m in paired.values())
    export(run_dir, "onnx", node=ROOT, repeats=1)  # the root re-timed alone, at another moment
    lineage = RunDir(run_dir).load()
    assert lineage.node(NODE).latency == list(paired.values())
    for (runtime, batch), m in paired.items():
        ratio = speedup(lineage.node(NODE), lineage.root(), runtime, batch)
        assert m.teacher_ms is not None and ratio == pytest.approx(m.teacher_ms / m.median_ms)


def test_an_external_root_is_not_timed_and_cannot_be_exported(run_dir, capsys):
    run = RunDir(run_dir)
    lineage = run.load()
    run.add_node(lineage, lineage.node(ROOT).model_copy(update={"arch": {"external": "UserNet"}}))
    result = export(run_dir, "safetensors", node=NODE, repeats=1, rounds=2)
    assert result.speedups() == [] and "module passed from Python: not timed" in " ".join(result.notes)
    assert run.load().node(ROOT).latency == []
    assert main(["export", str(run_dir), "--node", ROOT, "--format", "onnx"]) == 2
    assert "user-supplied module" in capsys.readouterr().err


def _add_node_without_weights(run_dir, node_id, status):
    run = RunDir(run_dir)
    lineage = run.load()
    run.add_node(lineage, lineage.node(NODE).model_copy(update={"id": node_id, "status": status, "sha256": None}))


@pytest.mark.parametrize(
    "node, fmt, expected",
    [
        ("nope", "onnx", "'nope' is not in"),
        ("../nodes/g1-width", "onnx", "'../nodes/g1-width' is not in"),  # not a path under the run
        ("g1-width", "tflite", "expected one of onnx, safetensors"),
        ("g1-broken", "onnx", "(failed) cannot be exported: it failed during training"),
        ("g1-gone", "safetensors", "(rejected) cannot be exported: "),
        ("g1-width-changed", "safetensors", "model.safetensors: differs from the sha256 recorded"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(run_dir, capsys, node, fmt, expected):
    _add_node_without_weights(run_dir, "g1-broken", "failed")
    _add_node_without_weights(run_dir, "g1-gone", "rejected")
    shutil.copytree(run_dir / "nodes" / NODE, run_dir / "nodes" / "g1-width-changed")  # not the recorded bytes
    run = RunDir(run_dir)
    lineage = run.load()
    changed = lineage.node(NODE).model_copy(update={"id": "g1-width-changed", "sha256": "0" * 64})
    run.save(lineage.model_copy(update={"nodes": [*lineage.nodes, changed]}))
    assert main(["export", str(run_dir), "--node", node, "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if node == "nope":
        assert ROOT in err and NODE in err  # it names ids that do exist
    assert not (run_dir / "export").exists()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--repeats", "expected a positive number"),
        ("--rounds", "expected a positive number"),
        ("--threads", "expected at least 1 thread"),
    ],
)
def test_a_timing_plan_of_zero_is_refused(run_dir, capsys, flag, expected):
    assert main(["export", str(run_dir), "--node", NODE, "--format", "onnx", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0: {expected}" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "export").exists()


def test_latency_is_timed_with_the_threads_asked_for(run_dir, monkeypatch):
    timed_on, sessions_on = [], []
    real_min_of_medians, real_cpu_session = latency.min_of_medians, latency.cpu_session

    def spy_timing(runners, repeats, rounds):
        timed_on.append(torch.get_num_threads())
        return real_min_of_medians(runners, repeats, rounds)

    def spy_session(graph, threads):
        sessions_on.append(threads)
        return real_cpu_session(graph, threads)

    monkeypatch.setattr(latency, "min_of_medians", spy_timing)
    monkeypatch.setattr(latency, "cpu_session", spy_session)
    export(run_dir, "safetensors", node=NODE, repeats=1, rounds=1, threads=2)
    assert set(timed_on) == {2} and set(sessions_on) == {2}  # PyTorch and onnxruntime both on 2 threads
    assert {m.threads for m in RunDir(run_dir).load().node(NODE).latency} == {2}


def test_the_callers_threads_come_back_when_timing_fails(monkeypatch):
    caller_threads = torch.get_num_threads()

    def fail(*args):
        raise RuntimeError("timing failed")

    monkeypatch.setattr(latency, "_measure", fail)
    with pytest.raises(RuntimeError, match="timing failed"):
        latency.measure_latencies({}, threads=caller_threads + 1)
    assert torch.get_num_threads() == caller_threads


def test_a_directory_without_lineage_is_refused(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--node", NODE, "--format", "onnx"]) == 2
    assert "lineage.json: not found" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()  # nothing created in a directory that is not a run


def test_export_refuses_while_a_campaign_holds_the_run_dir(run_dir, capsys):
    with RunDir(run_dir).locked("a running `ikd compress`"):
        assert main(["export", str(run_dir), "--node", NODE, "--format", "onnx"]) == 2
    assert "in use by a running `ikd compress`" in capsys.readouterr().err
    assert not (run_dir / "export").exists()
    assert main(["export", str(run_dir), "--node", NODE, "--format", "safetensors", "--no-latency"]) == 0


def test_models_are_timed_interleaved_and_a_slow_round_is_dropped(monkeypatch):
    calls: list[str] = []
    slow_rounds = {"teacher": {1}}  # the teacher is hit by something else during its second round
    clock = [0.0]  # a clock only the runs move: the result cannot depend on this machine's load
    monkeypatch.setattr("ikd.latency.time.perf_counter", lambda: clock[0])

    def runner(name: str):
        def run_once() -> None:
            calls.append(name)
            done = sum(1 for c in calls if c == name) - 3  # after its 3 warm-up calls
            in_round = max(done - 1, 0) // 4
            clock[0] += 0.02 if in_round in slow_rounds.get(name, ()) else 0.002 + 0.001 * (name == "student")

        return run_once

    ms = min_of_medians({"teacher": runner("teacher"), "student": runner("student")}, repeats=4, rounds=2)
    # warm-up of each, then rounds in turn, the order rotating: teacher x4, student x4, student x4, teacher x4
    assert calls == ["teacher"] * 3 + ["student"] * 3 + ["teacher"] * 4 + ["student"] * 8 + ["teacher"] * 4
    # the 20 ms round did not count (a mean or median of the two would)
    assert ms == {"teacher": pytest.approx(2.0), "student": pytest.approx(3.0)}


def test_timed_onnxruntime_sessions_do_not_busy_wait():
    # a spinning session's idle threads would slow whichever model is timed next on the same cores
    model = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[4]]), seed=0).eval()
    dataset = {"mean": [0.0], "std": [1.0]}
    session = cpu_session(onnx_graph(model, dataset, {}), threads=2)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


# --- a model directory of `ikd train` / `ikd distill`, exported without a campaign -------------------


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_teacher):
    """A student `ikd distill` wrote from the tiny teacher (whose directory its model.json records)."""
    out = tmp_path_factory.mktemp("distilled") / "student"
    args = ["distill", str(tiny_teacher), "--arch", "8x1-16x1", "--epochs", "1", "--batch-size", "64"]
    assert main([*args, "--precision", "fp32", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture
def student(distilled, tmp_path):
    return shutil.copytree(distilled, tmp_path / "student")


def test_a_distilled_model_is_exported_checked_and_timed_beside_its_recorded_teacher(student, tiny_teacher, capsys):
    capsys.readouterr()
    timing = ["--repeats", "1", "--rounds", "2"]
    assert main(["export", str(student), "--format", "onnx", *timing]) == 0
    out = capsys.readouterr().out
    teacher_params = json.loads((tiny_teacher / "model.json").read_text())["size"]["params"]
    model, metadata = load_model(student)
    fewer = f"{teacher_params / model.spec.num_params():.1f}x fewer than its teacher"
    assert f"ikd export: {student} ({model.spec.num_params():,} params, {fewer}) as onnx" in out
    assert "256/256" in out and str(tiny_teacher) in out and "note:" not in out

    path = student / "export" / "model.onnx"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["ikd.model"] == str(student) and "ikd.node" not in props
    assert json.loads(props["ikd.mean"]) == metadata["dataset"]["mean"]
    summary = json.loads((student / "export" / "export.json").read_text())
    assert summary["model"] == str(student) and summary["latency"]["teacher"] == str(tiny_teacher)
    assert summary["sha256"] == hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest()
    speedups = summary["latency"]["speedup"]
    assert {(s["runtime"], s["batch"]) for s in speedups} == MEASURED
    assert all(s["speedup"] == pytest.approx(s["teacher_ms"] / s["node_ms"]) for s in speedups)
    assert sorted(p.name for p in student.iterdir()) == ["export", "model.json", "model.safetensors"]


def test_a_trained_model_exports_as_safetensors_that_load_back_with_a_note_of_no_teacher(tiny_teacher, tmp_path):
    model_dir = shutil.copytree(tiny_teacher, tmp_path / "teacher")
    out = tmp_path / "shipped" / "teacher.safetensors"
    result = export(model_dir, "safetensors", out=out, repeats=1, rounds=2)
    assert result.files == [out, tmp_path / "shipped" / "teacher.export.json"]
    assert result.teacher_id is None and {(m.runtime, m.batch) for m in result.latency} == MEASURED
    assert result.notes == [
        f"{model_dir / 'model.json'} records no teacher (trained, not distilled): no speed-up to report"
    ]
    model, _ = load_model(model_dir)
    with safe_open(str(out), "pt") as f:
        spec = ArchSpec.model_validate(json.loads(f.metadata()["ikd.arch"]))
        assert f.metadata()["ikd.model"] == str(model_dir)
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(load_file(str(out)))
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_a_teacher_that_moved_or_changed_is_no_reference_and_says_so(student, tiny_teacher, tmp_path):
    meta = json.loads((student / "model.json").read_text())
    recorded = meta["teacher"]
    assert recorded["path"] == str(tiny_teacher.resolve()) and len(recorded["sha256"]) == 64

    def export_with(**teacher):
        (student / "model.json").write_text(json.dumps(meta | {"teacher": recorded | teacher}))
        return export(student, "safetensors", repeats=1, rounds=2)

    # a relative path read from another directory: found where it was
    assert export_with(dir="elsewhere/teacher").teacher_id == str(tiny_teacher.resolve())
    moved = export_with(dir=str(tmp_path / "moved"), path=str(tmp_path / "moved"))
    assert moved.teacher_id is None and "is not there: no speed-up" in moved.notes[0]
    changed = export_with(dir=str(student), path=None)  # now holds another model than the one recorded
    assert changed.teacher_id is None and "now holds other weights than the teacher recorded" in changed.notes[0]
    older = export_with(dir=str(student), path=None, sha256=None)  # a record without the teacher's sha256
    assert older.teacher_id is None and "-parameter model, not the teacher recorded" in older.notes[0]

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text((tiny_teacher / "model.json").read_text())  # no weights
    with pytest.raises(CheckpointError, match=r"its teacher, the reference of the speed-up: .* \(--no-latency"):
        export_with(dir=str(tmp_path / "broken"), path=None)
    assert export(student, "safetensors", measure_latency=False).latency == []


@pytest.mark.parametrize(
    ("where", "flags", "expected"),
    [
        ("student", ("--out", "{student}/model.safetensors"), "would replace a file of the trained model in"),
        ("student", ("--out", "{student}"), "would replace a file of the trained model in"),  # its weights by name
        ("student", ("--out", "{other}"), "would replace a file of the trained model in"),  # another model's
        ("student", ("--node", "g1-width"), "is a model directory, not a campaign run; drop --node"),
        ("student", ("--out", "{student}/.train-state"), "is inside"),
        # a campaign's nodes: the file would pass for a node's
        ("student", ("--out", "{run}/nodes/new/x.safetensors"), "lies in the nodes of the campaign in"),
        ("node", (), "is a node of the campaign in"),
        ("empty", (), "neither a model directory (model.json"),
        ("unfinished", (), "its training has not finished"),
    ],
)
def test_model_directory_mistakes_exit_2_with_one_line(student, run_dir, tmp_path, capsys, where, flags, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished" / ".train-state").mkdir(parents=True)
    source = {
        "student": student,
        "node": run_dir / "nodes" / NODE,
        "run": run_dir,
        "empty": tmp_path / "empty",
        "unfinished": tmp_path / "unfinished",
    }[where]
    before = {p: p.read_bytes() for p in student.iterdir()}
    capsys.readouterr()
    other = shutil.copytree(student, tmp_path / "other")
    args = [flag.format(student=student, other=other, run=run_dir) for flag in flags]
    assert main(["export", str(source), "--format", "safetensors", "--no-latency", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p: p.read_bytes() for p in student.iterdir()} == before and not (run_dir / "export").exists()
    assert (other / "model.safetensors").read_bytes() == before[student / "model.safetensors"]
    if where == "node":
        assert f"--node {NODE} --format safetensors" in err


def test_a_model_of_several_teachers_is_timed_beside_the_first_and_says_so(student, tiny_teacher):
    meta = json.loads((student / "model.json").read_text())
    meta["teachers"] = [meta.pop("teacher"), {"dir": str(student), "params": 1}]
    (student / "model.json").write_text(json.dumps(meta))
    result = export(student, "safetensors", repeats=1, rounds=2)
    assert result.teacher_id == str(tiny_teacher) and "its first teacher" in result.subject.headline
    assert result.notes == [f"distilled from 2 teachers: timed beside the first, {tiny_teacher}"]


def test_a_model_being_trained_again_is_not_exported_until_that_ends(student, capsys):
    with held(student, "ikd train"):  # `ikd train --force --out STUDENT`, replacing its files
        assert main(["export", str(student), "--format", "safetensors", "--no-latency"]) == 2
    assert f"in use by ikd train (pid {os.getpid()}); wait for it to finish" in capsys.readouterr().err
    assert not (student / "export").exists()
    assert main(["export", str(student), "--format", "safetensors", "--no-latency"]) == 0
    assert sorted(p.name for p in student.iterdir()) == ["export", "model.json", "model.safetensors"]
