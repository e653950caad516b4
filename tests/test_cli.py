"""The `ikd` command end to end: success paths, error lines and exit codes, through `ikd.cli.main` in
this process (a subprocess per call added about 2 s of interpreter start each, and nothing else), with
`python -m ikd` itself run as a process where the process is the point (its entry point, a traceback
behind --debug, the same one line from a fresh interpreter); and the `compress` parser generated from
the config models, in-process."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import SMALL_ARCH, Ran, in_process

from ikd.arch import preset_for
from ikd.cli import main
from ikd.data import mnist
from ikd.dirlock import held
from ikd.errors import ConfigError


def _environment(env_extra: dict[str, str] | None) -> dict[str, str]:
    return {"IKD_DATA_DIR": os.environ.get("IKD_TEST_EMPTY_ROOT", "/nonexistent-ikd-root"), **(env_extra or {})}


def ikd(*args, env_extra=None, cwd=None) -> Ran:
    """`ikd ARGS` as main() runs it, as a fresh interpreter would show it (conftest.in_process)."""
    return in_process(lambda: main([str(arg) for arg in args]), cwd=cwd, env=_environment(env_extra))


def ikd_process(*args, env_extra=None) -> subprocess.CompletedProcess:
    """`python -m ikd ARGS` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "ikd", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **_environment(env_extra)},
        timeout=300,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits-small"
    result = ikd(
        "train",
        "--dataset",
        "digits",
        "--arch",
        SMALL_ARCH,
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--precision",
        "fp32",
        "--quiet",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_help_lists_the_commands():
    result = ikd_process("--help")  # the installed entry point, not only main()
    assert result.returncode == 0
    for command in ("train", "eval", "arch"):
        assert command in result.stdout


def test_train_writes_weights_and_metadata(trained):
    meta = json.loads((trained / "model.json").read_text())
    assert (trained / "model.safetensors").is_file()
    assert meta["dataset"]["name"] == "digits" and len(meta["dataset"]["mean"]) == 1
    assert meta["metrics"]["best"]["epoch"] in (1, 2) and meta["metrics"]["last"]["epoch"] == 2
    assert meta["training"]["seed"] == 0 and meta["training"]["epochs"] == 2
    assert meta["size"]["params"] > 0 and meta["ikd_version"]
    assert len(meta["history"]) == 2
    training = meta["training"]
    assert "torch threads" in training["machine"] and training["augment_used"] == "none"  # digits' own
    assert training["momentum_used"] == [0.95, 0.85, 0.95]  # the one-cycle default cycles it
    assert meta["command"].startswith(f"ikd train --dataset digits --arch {SMALL_ARCH} --epochs 2")


def recorded_as_flipped(trained, directory):
    """A copy of the trained model's weights recorded as trained with flips: (its directory, its model.json)."""
    directory.mkdir()
    meta = json.loads((trained / "model.json").read_text())
    meta["training"]["augment_used"] = "crop-flip"
    (directory / "model.json").write_text(json.dumps(meta))
    (directory / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
    return directory, meta


def test_distill_trains_the_chosen_student_on_the_teachers_data_and_split(trained, tmp_path):
    teacher = json.loads((trained / "model.json").read_text())
    out = tmp_path / "student"
    args = ("distill", trained, "--arch", "8x1-16x1-16x2", "--epochs", "1", "--batch-size", "64", "--out", out)
    result = ikd(*args, "--precision", "fp32", "--kd", "dkd", "--gamma", "0.5", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "fewer params than the teacher" in result.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["command"].startswith(f"ikd distill {trained} --arch 8x1-16x1-16x2")
    assert meta["size"]["summary"] == "8x1-16x1-16x2" and meta["size"]["params"] < teacher["size"]["params"]
    for key in ("name", "val_fraction", "split_seed", "sizes"):  # the teacher's validation split, not another
        assert meta["dataset"][key] == teacher["dataset"][key], key
    assert meta["teacher"]["dir"] == str(trained) and meta["teacher"]["params"] == teacher["size"]["params"]
    assert meta["teacher"]["val_accuracy"] == teacher["metrics"]["best"]["val_accuracy"]
    assert meta["loss"]["kd"] == "dkd" and meta["loss"]["gamma"] == 0.5 and meta["loss"]["teacher_views"] == "none"
    assert meta["training"]["label_smoothing"] == 0.0  # the loss's CE term is unsmoothed: no value it did not use
    assert meta["history"][0]["train"]["kd"] > 0 and meta["history"][0]["train"]["hint"] > 0  # taught, not just CE
    refused = ikd(*args, "--quiet")  # the model is there: one line, as for `ikd train`
    assert refused.returncode == 2 and "already holds a trained model" in refused.stderr


def test_train_and_distill_never_write_into_a_campaign_even_with_force(trained, tmp_path):
    # a model there would sit beside the lineage (export took it for the run's), or replace an answer's weights
    run = tmp_path / "run"
    (run / "nodes" / "g1-width").mkdir(parents=True)
    (run / "lineage.json").write_text("{}")
    nodes = run / "nodes"
    for out, words in (
        (run, "is a campaign run directory"),
        (nodes / "g1-width", "lies in the nodes of the campaign"),
        (nodes, "lies in the nodes of the campaign"),
        (nodes / "g1-width" / "sub", "lies in the nodes of the campaign"),
    ):
        for command in (
            ("train", "--dataset", "digits", "--arch", SMALL_ARCH, "--epochs", "1"),
            ("distill", trained, "--arch", SMALL_ARCH, "--epochs", "1"),
        ):
            refused = ikd(*command, "--out", out, "--force", "--quiet")
            assert refused.returncode == 2 and words in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in run.rglob("*")) == ["g1-width", "lineage.json", "nodes"]  # nothing written


def test_distill_refuses_to_write_its_student_over_its_teacher_even_with_force(trained):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    for out in (trained, f"{trained}/", trained / ".." / trained.name):
        refused = ikd("distill", trained, "--arch", SMALL_ARCH, "--epochs", "1", "--out", out, "--force", "--quiet")
        assert refused.returncode == 2 and "is one of the TEACHER_DIRs" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before  # the teacher is intact


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--teacher-views", "flip"), ("--teacher-views flip", "augmentation 'none'", "--teacher-views none")),
        (("--temperature", "0"), ("--temperature 0.0", "greater than 0")),
        # each overflowed inside the optimiser or the loss: an internal error, not a refusal of the value
        (("--temperature", "1e308"), ("--temperature", "less than or equal to 1000")),
        (("--lr", "1e308"), ("--lr", "less than or equal to 100")),
        (("--weight-decay", "1e308"), ("--weight-decay", "less than or equal to 1")),
        (("--alpha", "0", "--beta", "0", "--gamma", "0"), ("expected at least one term",)),
    ],
)
def test_distill_refuses_bad_settings_in_one_line_before_training(trained, tmp_path, flags, words):
    out = tmp_path / "student"
    result = ikd("distill", trained, "--arch", "8x1-16x1-16x2", "--epochs", "1", "--out", out, *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert all(word in line for word in words), line
    assert not out.exists() or not any(out.iterdir())
    missing = ikd("distill", tmp_path / "nowhere", "--arch", "8x1", "--epochs", "1", "--out", out)
    assert missing.returncode == 2 and "nowhere/model.json: not found" in missing.stderr, missing.stderr
    _, meta = recorded_as_flipped(trained, tmp_path / "other-data")  # a record of other images than digits'
    meta["dataset"]["sizes"]["train"] += 1
    (tmp_path / "other-data" / "model.json").write_text(json.dumps(meta))
    other = ikd("distill", tmp_path / "other-data", "--arch", "8x1", "--epochs", "1", "--out", out)
    assert other.returncode == 2 and "saw other images" in other.stderr, other.stderr


def test_distill_from_mirrored_views_of_a_teacher_trained_on_mirror_images(trained, tmp_path):
    flipped, _ = recorded_as_flipped(trained, tmp_path / "flipped")
    out = tmp_path / "student"
    result = ikd(
        *("distill", flipped, "--arch", "8x1-16x1-16x2", "--epochs", "1", "--out", out, "--augment", "crop-flip"),
        *("--teacher-views", "flip", "--precision", "fp32", "--quiet"),
    )
    assert result.returncode == 0, result.stderr
    student = json.loads((out / "model.json").read_text())
    assert student["loss"]["teacher_views"] == "flip" and student["training"]["augment_used"] == "crop-flip"


def another_teacher(trained, directory, *, nudged=False, **dataset):
    """The trained model's files in another directory, as a second teacher (its dataset record updated by `dataset`;
    `nudged`: its floating-point weights moved a little, so it is another model)."""
    from safetensors.torch import load_file, save_file

    directory.mkdir()
    meta = json.loads((trained / "model.json").read_text())
    meta["dataset"] |= dataset
    (directory / "model.json").write_text(json.dumps(meta))
    state = load_file(trained / "model.safetensors")
    if nudged:
        state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, directory / "model.safetensors")
    return directory


def test_distill_from_several_teachers_records_them_and_how_they_combine(trained, tmp_path):
    second = another_teacher(trained, tmp_path / "second")
    out = tmp_path / "student"
    result = ikd(
        *("distill", trained, second, "--arch", "8x1-16x1-16x2", "--epochs", "1", "--out", out),
        *("--aggregate", "mean-probs", "--weighting", "val-accuracy", "--hints", "each", "--precision", "fp32"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert "fewer params than the first teacher" in result.stdout
    meta = json.loads((out / "model.json").read_text())
    val = json.loads((trained / "model.json").read_text())["metrics"]["best"]["val_accuracy"]
    assert "teacher" not in meta and [t["dir"] for t in meta["teachers"]] == [str(trained), str(second)]
    assert meta["ensemble"] == {
        "aggregate": "mean-probs",
        "weighting": "val-accuracy",
        "drop": 0.0,
        "hints": "each",
        "teacher_weights": [val, val],
    }


def test_several_teachers_make_one_objective_with_every_teacher_in_its_job(trained, tmp_path):
    from ikd.cli import ENSEMBLE_FLAGS, _teaching, build_parser
    from ikd.model import build_model
    from ikd.teaching import RECORDED_ENSEMBLE_KEYS

    assert set(ENSEMBLE_FLAGS.values()) == RECORDED_ENSEMBLE_KEYS  # every flag's setting is recorded

    second = another_teacher(trained, tmp_path / "second", nudged=True)
    flags = ["--arch", "8x1-16x1-16x2", "--epochs", "1", "--out", str(tmp_path / "s"), "--teacher-drop", "0.25"]
    args = build_parser().parse_args(["distill", str(trained), str(second), *flags, "--hints", "each"])
    teaching = _teaching(args)
    data, _, _ = teaching.data(None)
    student = build_model(preset_for("8x1-16x1-16x2", data))
    job = teaching.objective(student, seed=0, steps_per_epoch=10).job_description()
    assert job["drop"] == 0.25 and job["aggregate"] == "mean-kd" and len(job["teacher_digests"]) == 2
    assert [weight for weight, *_ in job["teachers"]] == [1.0, 1.0]  # uniform
    assert all(hint_block is not None for _, hint_block, _ in job["teachers"])  # each teacher gives a hint
    reordered = _teaching(build_parser().parse_args(["distill", str(second), str(trained), *flags, "--hints", "each"]))
    assert reordered.objective(student, seed=0, steps_per_epoch=10).job_description() != job  # another job: not resumed
    parent_only = _teaching(build_parser().parse_args(["distill", str(trained), str(second), *flags]))
    hints = [
        hint for _, hint, _ in parent_only.objective(student, seed=0, steps_per_epoch=10).job_description()["teachers"]
    ]
    assert hints[0] is not None and hints[1] is None


@pytest.mark.parametrize(
    ("several", "flags", "words"),
    [
        (False, ("--aggregate", "mean-probs"), ("--aggregate: combines several teachers", "got one")),
        (False, ("--teacher-drop", "0.5"), ("--teacher-drop: combines several teachers",)),
        (True, ("--teacher-drop", "1.5"), ("--teacher-drop 1.5", "less than 1")),
        ("twice", (), ("named twice",)),
        ("other-split", (), ("trained on dataset/val_fraction/split_seed/image_size", "would include some")),
        ("other-size", (), ("takes 16-pixel images", "at one size")),
        (True, ("--aggregate", "mean-probs", "--alpha", "0"), ("--aggregate: combines the teachers' KD terms",)),
        (True, ("--hints", "each", "--gamma", "0"), ("--hints each", "--gamma 0 leaves no hint term")),
    ],
)
def test_distill_refuses_teachers_that_cannot_teach_together_in_one_line(
    trained, tmp_path, capsys, several, flags, words
):

    teachers = {
        False: lambda: [trained],
        True: lambda: [trained, another_teacher(trained, tmp_path / "second")],
        "twice": lambda: [trained, trained],
        "other-split": lambda: [trained, another_teacher(trained, tmp_path / "second", split_seed=1)],
        "other-size": lambda: [trained, another_teacher(trained, tmp_path / "second", image_size=16)],
    }[several]()
    out = tmp_path / "student"
    assert main(["distill", *map(str, teachers), "--arch", "8x1", "--epochs", "1", "--out", str(out), *flags]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert all(word in line for word in words) and "Traceback" not in line, line
    assert not out.exists() or not any(out.iterdir())


def test_eval_json_reports_accuracy_and_count(trained):
    result = ikd("eval", trained, "--split", "test", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 359 and 0.0 <= report["accuracy"] <= 1.0
    val = json.loads(ikd("eval", trained, "--dataset", "digits", "--split", "val", "--json").stdout)
    meta = json.loads((trained / "model.json").read_text())
    assert val["accuracy"] == pytest.approx(meta["metrics"]["best"]["val_accuracy"])


def test_eval_of_several_models_scores_their_mean_probabilities(trained, tmp_path, capsys):

    assert main(["eval", str(trained), "--split", "val", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    copy = another_teacher(trained, tmp_path / "copy")
    assert main(["eval", str(trained), str(copy), "--split", "val", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_dir"] == str(trained) and report["model_dirs"] == [str(trained), str(copy)]
    # two copies of one model: their mean distribution is the model's own
    assert report["accuracy"] == single["accuracy"] and report["loss"] == pytest.approx(single["loss"], rel=1e-5)
    nudged = another_teacher(trained, tmp_path / "nudged", nudged=True)
    assert main(["eval", str(trained), str(nudged), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] != pytest.approx(single["loss"], rel=1e-5)  # both count
    other_split = another_teacher(trained, tmp_path / "other-split", split_seed=1)
    for models, words in (((trained, other_split), "split_seed/image_size"), ((trained, f"{trained}/"), "named twice")):
        assert main(["eval", *map(str, models), "--split", "val"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert words in line and "Traceback" not in line, line


def test_eval_with_flipped_views_only_for_a_model_trained_on_mirror_images(trained, tmp_path):
    refused = ikd("eval", trained, "--tta", "flip")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "--tta flip" in line and "augmentation 'none'" in line and "--tta none" in line
    flipped, meta = recorded_as_flipped(trained, tmp_path / "flipped")
    result = ikd("eval", flipped, "--tta", "flip", "--json", "--against", flipped)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plain = json.loads(ikd("eval", flipped, "--json").stdout)
    assert report["tta"] == "flip" and plain["tta"] == "none" and report["n"] == plain["n"] == 359
    assert report["loss"] != plain["loss"]  # the mirrored views changed the logits
    assert report["against"]["accuracy"] == pytest.approx(report["accuracy"])  # same weights, same views
    refused = ikd("eval", flipped, "--tta", "flip", "--against", trained)  # the other model is checked too
    assert refused.returncode == 2 and str(trained) in refused.stderr
    # a record older than `augment_used`: the augmentation it asked for is the one it used
    del meta["training"]["augment_used"]
    meta["training"]["augment"] = "reflect-crop-flip"
    (flipped / "model.json").write_text(json.dumps(meta))
    older = ikd("eval", flipped, "--tta", "flip", "--json")
    assert older.returncode == 0 and json.loads(older.stdout)["accuracy"] == report["accuracy"], older.stderr
    shifted = ikd("eval", flipped, "--tta", "flip-shift", "--json")
    assert shifted.returncode == 0 and json.loads(shifted.stdout)["tta"] == "flip-shift", shifted.stderr
    meta["training"]["augment"] = "crop"  # shifted crops, never mirrored
    (flipped / "model.json").write_text(json.dumps(meta))
    refused = ikd("eval", flipped, "--tta", "flip-shift")
    assert refused.returncode == 2 and "flip and crop needed" in refused.stderr and "--tta none" in refused.stderr


def test_eval_on_data_of_another_shape_is_one_line(trained, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    rgb, other = (rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    labels = np.arange(40) % 10
    # test images apart from the training ones: a copy in both would add the overlap warning's line
    np.savez(data := tmp_path / "rgb.npz", x_train=rgb, x_test=other, y_train=labels, y_test=labels)
    result = ikd("eval", trained, "--dataset", "npz", "--data-dir", data)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "expects 1x8x8 images and 10 classes; the data has 3x8x8 and 10" in line and "image_size" not in line


def test_eval_against_another_model_pairs_them_on_the_same_images(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    worse = tmp_path / "worse"
    worse.mkdir()
    (worse / "model.json").write_text((trained / "model.json").read_text())
    weights = load_file(trained / "model.safetensors")
    last = max(k for k in weights if k.startswith("head") and k.endswith("weight"))
    weights[last] = -weights[last]  # a model that now disagrees with the original on most images
    save_file(weights, worse / "model.safetensors")
    result = ikd("eval", trained, "--against", worse, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    alone = json.loads(ikd("eval", worse, "--json").stdout)
    assert report["against"]["accuracy"] == pytest.approx(alone["accuracy"])
    paired, n = report["paired"], report["n"]
    assert paired["only_this"] - paired["only_against"] == round((report["accuracy"] - alone["accuracy"]) * n)
    assert paired["only_this"] > 100 and paired["p_value"] < 1e-6
    text = ikd("eval", trained, "--against", trained)
    assert "0 images only this gets right, 0 only against; McNemar p = 1" in text.stdout, text.stderr
    meta = json.loads((worse / "model.json").read_text())
    meta["dataset"]["split_seed"] = 1
    (worse / "model.json").write_text(json.dumps(meta))
    refused = ikd("eval", trained, "--against", worse, "--split", "val")
    assert refused.returncode != 0 and "same images" in refused.stderr and "Traceback" not in refused.stderr


def test_eval_against_a_model_of_another_image_size_gives_it_its_own_images(trained, tmp_path):
    # it ran the other model on this one's 8x8 images (its global pooling took any size without a word)
    larger = tmp_path / "larger"
    made = ikd(*("train", "--dataset", "digits", "--arch", SMALL_ARCH, "--image-size", "16", "--epochs", "1"),
               *("--batch-size", "64", "--precision", "fp32", "--quiet", "--out", larger))  # fmt: skip
    assert made.returncode == 0, made.stderr
    paired = ikd("eval", trained, "--against", larger, "--json")
    assert paired.returncode == 0, paired.stderr
    alone = json.loads(ikd("eval", larger, "--json").stdout)
    assert json.loads(paired.stdout)["against"]["accuracy"] == pytest.approx(alone["accuracy"])


@pytest.mark.parametrize("flags", [("--device", "cuda"), ("--device", "cpu", "--precision", "fp16")])
def test_train_refuses_a_missing_device_or_precision_before_it_loads_the_data(tmp_path, monkeypatch, flags):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the device was checked")

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the refusal a CPU machine gives, on any machine
    monkeypatch.setattr("ikd.cli.load_dataset", no_data)
    result = ikd("train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "m", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert flags[-2] in line and flags[-1] in line, line
    assert not (tmp_path / "m").exists()


def test_refuses_to_overwrite_a_model(trained, tmp_path):
    kept = shutil.copytree(trained, tmp_path / "kept", ignore=shutil.ignore_patterns(".lock"))
    result = ikd("train", "--dataset", "digits", "--epochs", "1", "--out", kept)
    assert result.returncode == 2
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(kept)) == ["model.json", "model.safetensors"]  # refused before taking the directory


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_model_directory_another_command_is_writing_is_refused_and_left_to_it(trained, tmp_path, command):
    out = tmp_path / "model"
    source = ["--dataset", "digits"] if command == "train" else [trained]
    args = [command, *source, "--arch", "8x1", "--epochs", "1", "--precision", "fp32", "--quiet", "--out", out]
    with held(out, "ikd train"):  # as a first `ikd train --out` holds it while it trains
        refused = ikd(*args)
        assert os.listdir(out) == [".lock"]  # nothing of the refused command's
    said = f"ikd: error: {out}: in use by ikd train (pid {os.getpid()}); wait for it to finish\n"
    assert refused.returncode == 2 and refused.stderr == said
    assert not out.exists()  # the holder made the directory and wrote nothing: it is gone with it
    assert ikd(*args).returncode == 0  # free again
    assert sorted(os.listdir(out)) == ["model.json", "model.safetensors"]  # the lock went with its holder


def test_a_refusal_inside_the_model_directory_leaves_it_as_it_was(trained, tmp_path):
    (out := tmp_path / "existing").mkdir()
    (out / "notes.txt").write_text("mine")
    flags = ["--arch", "8x1", "--out", out]
    for args, said in (
        (["train", "--dataset", "digits", "--epochs", "0"], "--epochs"),  # a flag: refused before the lock
        (
            ["distill", trained, trained / "x", "--alpha", "0", "--teacher-drop", "0.5", "--epochs", "1"],
            "--teacher-drop",
        ),
        (["distill", tmp_path / "no-teacher", "--epochs", "1"], "model.json"),  # the teacher: inside the lock
        (["train", "--dataset", "npz", "--data-dir", tmp_path / "none.npz", "--epochs", "1"], "none.npz"),  # the data
    ):
        refused = ikd(*args, *flags)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert os.listdir(out) == ["notes.txt"], args


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "--dataset", "digits", "--epochs", "-1", "--out", "{tmp}/x"], "--epochs"),
        (["train", "--dataset", "nope", "--epochs", "1", "--out", "{tmp}/x"], "--dataset"),
        (["train", "--dataset", "digits", "--epochs", "1", "--val-fraction", "1.5", "--out", "{tmp}/x"], "1.5"),
        (["train", "--dataset", "digits", "--epochs", "1", "--lr", "inf", "--out", "{tmp}/x"], "--lr inf"),
        (["train", "--dataset", "mnist", "--data-dir", "{tmp}/empty", "--epochs", "1", "--out", "{tmp}/x"], "empty"),
        (["eval", "{tmp}/missing"], "model.json"),
        (["arch", "vgg16", "--input", "axb"], "--input"),
        (["arch", "16x2-32x0"], "'16x2-32x0': expected a preset (vgg11, vgg13, vgg16, vgg19) or a layout such as"),
        (["arch", "16x2-32x0"], "'16x2-32x2-64/48/32' ('0' is not a number of convs (a whole number from 1 to 100))"),
        (["train", "--dataset", "digits", "--arch", "vgg12", "--epochs", "1", "--out", "{tmp}/x"], "'vgg12'"),
        (["compress", "--arch", "16/0", "--run-dir", "{tmp}/r"], "teacher.arch = '16/0'"),
        # refused before the data or the training: the first save failed after an epoch
        (["train", "--dataset", "digits", "--epochs", "1", "--out", "{tmp}/afile"], "afile is not a directory"),
        (["train", "--dataset", "digits", "--epochs", "1", "--out", ""], "--out '': expected a directory"),
        (["compress", "--config", ""], "--config '': expected a YAML file"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, monkeypatch, args, expected):
    # a closed port: the empty MNIST folder must fail as it would offline, not download on a machine online
    monkeypatch.setitem(mnist.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("")
    result = ikd(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and expected in lines[0], lines


def test_a_fresh_interpreter_gives_the_same_lines_as_main(tmp_path):
    """The in-process runs above stand for the installed command: no import-time warning, traceback or
    other program name changes what a user sees."""
    for args in (
        ["eval", tmp_path / "missing"],
        ["arch", "vgg16", "--input", "3x0"],
        ["train", "--dataset", "nope", "--epochs", "1", "--out", tmp_path / "x"],  # argparse's own refusal
    ):
        fresh, here = ikd_process(*args), ikd(*args)
        assert (fresh.returncode, fresh.stdout, fresh.stderr) == (here.returncode, here.stdout, here.stderr)
        assert fresh.returncode == 2 and fresh.stderr.startswith(("ikd: error: ", "usage: ikd"))


def test_corrupt_weights_are_a_clear_error_and_debug_shows_traceback(trained, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((trained / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = ikd("eval", broken)
    assert result.returncode == 2 and "model.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    debug = ikd_process("eval", broken, "--debug")  # the interpreter prints the traceback main() lets through
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_layout_trains_and_reports_like_a_preset(tmp_path):
    sized = json.loads(ikd("arch", SMALL_ARCH, "--input", "1x8", "--json").stdout)
    done = ikd("train", "--dataset", "digits", "--arch", SMALL_ARCH, "--epochs", "1", "--out", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    size = json.loads((tmp_path / "m" / "model.json").read_text())["size"]
    assert size["summary"] == SMALL_ARCH and size["params"] == sized["params"] < 600_000


def test_arch_reports_vgg16_size():
    result = ikd("arch", "vgg16", "--input", "3x32", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["params"] == 14_724_042
    assert json.loads(result.stdout)["live_params"] == 14_724_042
    mnist = ikd("arch", "vgg16", "--input", "1x28")  # the last block on 1x1 maps: 8 of 9 taps meet only padding
    assert mnist.returncode == 0 and "6,291,456 of the parameters (42.7%) never meet a pixel" in mnist.stdout


@pytest.mark.parametrize(("flags", "named"), [(["--input", "3x0"], "--input"), (["--classes", "1"], "--classes")])
def test_arch_refuses_an_impossible_input_in_one_line(flags, named):
    result = ikd("arch", "vgg16", *flags)
    assert result.returncode == 2 and result.stderr.startswith(f"ikd: error: {named}")
    assert len(result.stderr.strip().splitlines()) == 1


# `ikd compress` flags are generated from the config models (ikd.config.cli_flag); these check the
# generated parser in-process, without training anything.


def compress_config(*flags, config_file=None):
    from ikd.cli import build_parser, compress_overrides
    from ikd.config import load_config

    args = build_parser().parse_args(["compress", *flags])
    return load_config(config_file, compress_overrides(args))


def test_compress_flags_set_their_config_keys():
    config = compress_config(
        "--dataset",
        "mnist",
        "--data-dir",
        "d",
        "--teacher",
        "t",
        "--arch",
        "vgg11",
        "--epochs",
        "3",
        "--operators",
        "width",
        "--width-factors",
        "0.5,0.75",
        "--strategy",
        "ancestors-children",
        "--select",
        "tree",
        "--beam",
        "3",
        "--seeds",
        "2",
        "--max-drop",
        "0.5",
        "--max-step-drop",
        "2",
        "--accept-margin",
        "0.1",
        "--max-generations",
        "4",
        "--ancestors",
        "2",
        "--teachers",
        "e1",
        "e2",
        "--aggregate",
        "mean-probs",
        "--run-dir",
        "r",
        "--seed",
        "7",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--baselines",
        "--log",
        "tensorboard",
        "--executor",
        "ray",
        "--ray-address",
        "auto",
        "--cpus-per-job",
        "2",
        "--gpus-per-job",
        "0.5",
    )
    assert (config.data.name, config.data.dir, config.teacher.dir, config.teacher.arch) == ("mnist", "d", "t", "vgg11")
    assert config.student.epochs == 3 and config.teacher.epochs == 10  # --epochs is the students'
    search = config.search
    assert search.operators == ["width"] and search.width_factor == [0.5, 0.75]
    assert (search.strategy, search.select, search.beam, search.seeds) == ("ancestors-children", "tree", 3, 2)
    assert (search.max_drop, search.max_step_drop, search.max_generations) == (0.5, 2.0, 4)
    assert search.accept_margin == 0.1
    assert (config.ensemble.ancestors, config.ensemble.experts, config.ensemble.aggregate) == (
        2,
        ["e1", "e2"],
        "mean-probs",
    )
    assert (config.run_dir, config.seed, config.precision, config.device) == ("r", 7, "fp32", "cpu")
    assert config.baselines is True and config.log == "tensorboard"
    assert config.executor.model_dump() == {
        "kind": "ray",
        "ray_address": "auto",
        "cpus_per_job": 2.0,
        "gpus_per_job": 0.5,
    }


def test_compress_flags_not_given_leave_the_config_file_alone(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("baselines: true\nsearch: {max_drop: 3.0, operators: [depth]}\nensemble: {ancestors: 1}\n")
    config = compress_config("--max-generations", "2", config_file=path)
    assert config.baselines is True  # a switch not given must not reset the file's true
    assert (config.search.max_drop, config.search.operators, config.ensemble.ancestors) == (3.0, ["depth"], 1)
    assert config.search.max_generations == 2
    assert compress_config("--ancestors", "all", config_file=path).ensemble.ancestors == "all"


def test_compress_takes_exactly_the_declared_flags():
    from ikd.cli import build_parser
    from ikd.config import command_line_flags

    flags = command_line_flags()
    names = [flag.name for flag in flags]
    assert len(set(names)) == len(names) == 44
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    compress = commands.choices["compress"]
    by_name = {action.option_strings[-1]: action for action in compress._actions}
    assert set(by_name) == {*names, "--help", "--debug", "--config", "--force", "--redecide", "--quiet"}
    for flag in flags:  # each flag's help starts with the key it sets and says what it means
        assert by_name[flag.name].help.startswith(f"{flag.key}: {flag.description}")


@pytest.mark.parametrize("argv", [["--debug", "compress"], ["compress", "--debug"]])
def test_debug_goes_before_or_after_the_command(argv):
    from ikd.cli import build_parser

    assert build_parser().parse_args(argv).debug is True


@pytest.mark.parametrize(
    "flag,value,expected",
    [
        ("--ancestors", "some", "--ancestors: expected 'all' or a count, got 'some'"),
        ("--width-factors", "0.5,x", "--width-factors: expected comma-separated numbers, got '0.5,x'"),
        ("--strategy", "nope", "--strategy: invalid choice: 'nope'"),
        ("--max-generations", "2.5", "--max-generations: invalid int value: '2.5'"),
    ],
)
def test_bad_compress_flag_is_one_line_and_exit_2(capsys, flag, value, expected):

    with pytest.raises(SystemExit) as exit_:
        main(["compress", flag, value])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_commands_reference_lists_every_command_and_the_config_reference_every_flag():
    from ikd.cli import commands_reference
    from ikd.config import command_line_flags, config_reference

    table = commands_reference()
    for command in ("train", "eval", "compress", "lineage", "export", "report", "config-reference", "arch"):
        assert f"| `ikd {command}" in table
    assert "| `ikd export DIR --format FORMAT` |" in table  # required arguments shown
    assert "| `ikd distill TEACHER_DIR ... --arch ARCH --epochs N --out DIR` |" in table  # one or more
    keys = config_reference()
    for flag in command_line_flags():
        assert f"| `{flag.key}` | `{flag.name}` |" in keys
    assert "| `ensemble.experts` | `--teachers` |" in keys
    assert "| `search.width_factor` | `--width-factors` |" in keys
    assert "| `ensemble.weighting` | - |" in keys  # a key without a flag says so


def test_an_image_folder_model_is_evaluated_on_its_own_folder_and_refused_on_relabelled_classes(tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "shapes"
    for split in ("train", "test"):
        for c in ("circle", "square"):
            (data / split / c).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(data / split / c / f"{i}.png")
    out = tmp_path / "model"
    common = ("--precision", "fp32", "--quiet")
    trained = ikd("train", "--dataset", "imagefolder", "--data-dir", data, "--image-size", "8", "--arch", SMALL_ARCH,
                  "--epochs", "1", "--batch-size", "8", "--out", out, *common)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    import PIL

    assert json.loads((out / "model.json").read_text())["dataset"]["decoder"] == f"Pillow {PIL.__version__}"
    evaluated = ikd("eval", out, "--json", *common[:2])  # no --data-dir: the folder it was trained on
    assert evaluated.returncode == 0, evaluated.stderr
    relabelled = tmp_path / "relabelled"
    shutil.copytree(data, relabelled)
    for split in ("train", "test"):
        (relabelled / split / "square").rename(relabelled / split / "box")  # sorts first: labels swap
    refused = ikd("eval", out, "--data-dir", relabelled, *common[:2])
    assert refused.returncode == 2 and "class 0 = 'circle', the data has 'box' there" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_compress_takes_its_data_from_the_teachers_record_unless_the_dataset_is_named(tmp_path, make_idx_set):
    from ikd.lineage import RunDir

    make_idx_set(tmp_path / "idx", n_train=80, size=8)
    teacher, data = tmp_path / "teacher", ("--data-dir", tmp_path / "idx")
    split = ("--val-fraction", "0.2", "--split-seed", "3", "--image-size", "16")
    made = ikd("train", "--dataset", "idx", *data, "--arch", SMALL_ARCH, "--epochs", "1", *split, "--out", teacher)
    assert made.returncode == 0, made.stderr
    search = ("--epochs", "1", "--max-generations", "1", "--max-drop", "100", "--max-step-drop", "100")
    flags = (*search, "--operators", "width", "--precision", "fp32", "--device", "cpu")  # not quiet: the note
    command = ("compress", "--teacher", teacher, *data, "--run-dir", tmp_path / "run", *flags)
    taught = ikd(*command)
    assert taught.returncode == 0, taught.stderr
    said = "note: data.name idx, data.val_fraction 0.2, data.split_seed 3, data.image_size 16"
    assert f"{said}: as teacher.dir {teacher} was trained" in taught.stderr
    recorded = RunDir(tmp_path / "run").load().config["data"]
    assert (recorded["name"], recorded["val_fraction"], recorded["split_seed"], recorded["image_size"]) == (
        "idx",
        0.2,
        3,
        16,
    )
    # the same command once the teacher's directory is gone: the run's own record says what it was trained on
    teacher.rename(tmp_path / "moved")
    again = ikd(*command)
    assert again.returncode == 0 and f"{said}: as run {tmp_path / 'run'} recorded" in again.stderr, again.stderr
    (tmp_path / "moved").rename(teacher)
    # the teacher's dataset named (as a shipped config names it): the keys left unset are still the teacher's
    named = ikd("compress", "--teacher", teacher, "--dataset", "idx", *data, "--run-dir", tmp_path / "n", *flags)
    assert named.returncode == 0 and "note: data.val_fraction 0.2, data.split_seed 3" in named.stderr, named.stderr
    # a key set is the user's: here 8x8 images, refused, saying what to set
    sized = ("--dataset", "idx", "--image-size", "8", "--run-dir", tmp_path / "sized")
    resized = ikd("compress", "--teacher", teacher, *data, *sized, *flags)
    assert resized.returncode == 2 and "model expects 1x16x16 images" in resized.stderr
    assert "(set data.image_size, --image-size 16)" in resized.stderr
    # another dataset is named as the thing to fix (it said "set data.image_size", which would not have helped)
    refused = ikd("compress", "--teacher", teacher, "--dataset", "digits", "--run-dir", tmp_path / "other", *flags)
    assert refused.returncode == 2 and "trained on idx, the campaign's data is digits" in refused.stderr
    assert "(set data.name, --dataset idx)" in refused.stderr and "image_size" not in refused.stderr


def exported(path, digits, *, batch=None, train=False, seed=0, dropout=False):
    """A small logits module trained a little on digits, saved by torch.export.save: any architecture."""
    import torch
    from torch import nn

    from ikd.train import TrainConfig, train_model

    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten()
    )
    if dropout:
        module.append(nn.Dropout(0.5))
    module.append(nn.Linear(12 * 16, 10))
    train_model(module, digits, TrainConfig(epochs=2, batch_size=32, precision="fp32", device="cpu"), progress=False)
    module.train(train)
    example = torch.zeros(2, 1, 8, 8)
    dynamic = None if batch else ({0: torch.export.Dim("batch")},)
    program = torch.export.export(module, (torch.zeros(batch, 1, 8, 8) if batch else example,), dynamic_shapes=dynamic)
    torch.export.save(program, path)
    return path


def test_a_program_of_any_architecture_is_the_root_from_the_command_line(tmp_path, digits):
    from ikd.lineage import RunDir

    program = exported(tmp_path / "mine.pt2", digits)
    search = ("--epochs", "1", "--max-generations", "2", "--max-drop", "100", "--max-step-drop", "100")
    flags = (*search, "--operators", "width", "--precision", "fp32", "--device", "cpu", "--quiet")

    def command(program, hint="2"):
        root = ("--teacher-program", program, "--hint-layer", hint, "--first-student", "8x1-8x1")
        return ("compress", "--dataset", "digits", *root, "--run-dir", tmp_path / "run", *flags)

    ran = ikd(*command(program))
    assert ran.returncode == 0, ran.stderr
    lineage = RunDir(tmp_path / "run").load()
    assert [n.id for n in lineage.nodes] == ["g0-teacher", "g1-student", "g2-width"]
    assert lineage.root().arch["external"] == "mine.pt2 (torch.export)" and lineage.root().arch["hint_layer"] == "2"
    assert lineage.root().macs == 12 * 9 * 64 + 12 * 16 * 10 and lineage.node("g1-student").arch_summary() == "8x1-8x1"
    # the same command resumes (nothing trains again); the file moved, its weights are what is checked
    moved = tmp_path / "moved.pt2"
    program.rename(moved)
    again = ikd(*command(moved))
    assert again.returncode == 0, again.stderr
    assert RunDir(tmp_path / "run").load().nodes == lineage.nodes
    other = exported(tmp_path / "other.pt2", digits, seed=1)  # the same architecture, other weights
    refused = ikd(*command(other))
    assert refused.returncode == 2 and "its weights differ" in refused.stderr
    hint = ikd(*command(moved, hint="0"))
    assert hint.returncode == 2 and "hint_layer" in hint.stderr, hint.stderr


def program_root_keys(tmp_path, program) -> dict:
    return {
        "data.name": "digits",
        "run_dir": str(tmp_path / "run"),
        "teacher.program": str(program),
        "teacher.hint_layer": "2",
        "student.first_arch": "8x1-8x1",
        "student.epochs": 1,
        "precision": "fp32",
        "device": "cpu",
        "search.operators": ["width"],
        "search.max_drop": 100.0,
        "search.max_step_drop": 100.0,
        "search.max_generations": 1,
        "search.target_speedup": 1.01,  # a program root is timed too (a module passed from Python cannot be)
    }


def test_a_program_root_is_timed_beside_its_students_by_export_and_by_target_speedup(tmp_path, digits, monkeypatch):
    import ikd as package
    from ikd.export import export
    from ikd.lineage import RunDir

    program = exported(tmp_path / "mine.pt2", digits)
    monkeypatch.chdir(tmp_path)  # given as spelt from here; recorded where it is
    lineage = package.compress(overrides=program_root_keys(tmp_path, "mine.pt2"), progress=False)
    assert lineage.config["teacher"]["program"] == str(program.resolve())
    monkeypatch.chdir(tmp_path.parent)
    student = lineage.node("g1-student")
    assert student.speedup_timing is not None and student.speedup_timing.teacher_ms is not None
    result = export(tmp_path / "run", "safetensors", node="g1-student", repeats=1, rounds=2)
    assert result.teacher_id == "g0-teacher" and {s["runtime"] for s in result.speedups()} == {"onnxruntime", "torch"}
    assert RunDir(tmp_path / "run").load().root().latency  # the root's own timings, beside the student's
    # the file the run names holds other weights, or is gone: said, and nothing timed against it
    exported(program, digits, seed=1)
    other = export(tmp_path / "run", "safetensors", node="g1-student", repeats=1, rounds=2)
    assert other.speedups() == [] and "now holds other weights than the root recorded" in " ".join(other.notes)
    program.unlink()
    gone = export(tmp_path / "run", "safetensors", node="g1-student", repeats=1, rounds=2)
    assert gone.speedups() == [] and f"its program {program.resolve()} (teacher.program" in " ".join(gone.notes)


def unconvertible_program(path):
    """A program torch.export saves but torch.onnx cannot convert (no ONNX function for matrix_exp)."""
    import torch
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.mix, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Parameter(torch.eye(4)), nn.Linear(4, 10)

        def forward(self, x):
            return self.head(self.conv(x).mean(dim=(2, 3)) @ torch.linalg.matrix_exp(self.mix))

    example = torch.zeros(2, 1, 8, 8)
    torch.export.save(torch.export.export(Odd().eval(), (example,), dynamic_shapes=({0: torch.export.Dim("b")},)), path)
    return path


def test_a_program_root_onnx_cannot_convert_is_a_note_for_export_and_refused_up_front_by_target_speedup(tmp_path):
    import ikd as package
    from ikd.export import export
    from ikd.lineage import RunDir

    program = unconvertible_program(tmp_path / "odd.pt2")
    keys = program_root_keys(tmp_path, program) | {"teacher.hint_layer": "conv", "search.max_generations": 1}
    with pytest.raises(
        ConfigError, match=r"search\.target_speedup 1\.01: the root cannot be timed .*aten\.linalg_matrix"
    ):
        package.compress(overrides=keys, progress=False)
    assert not RunDir(tmp_path / "run").exists()  # refused before anything was recorded
    keys.pop("search.target_speedup")
    package.compress(overrides=keys, progress=False)
    result = export(tmp_path / "run", "safetensors", node="g1-student", repeats=1, rounds=2)
    notes = " ".join(result.notes)
    assert result.speedups() == [] and "cannot be converted to ONNX to be timed" in notes and "\x1b" not in notes
    assert result.files and result.latency  # the student is exported and timed alone


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "teacher.program {path}: no such file"),
        ("not a program", "teacher.program {path}: not a program saved by torch.export.save"),
        ("fixed batch", "teacher.program {path}: exported for batches of exactly 4 images; export it with a dynamic"),
        ("training mode", "teacher.program {path}: exported in training mode (aten.batch_norm.default)"),
        ("dropout on", "teacher.program {path}: exported in training mode (aten.batch_norm.default, aten.dropout"),
    ],
)
def test_a_program_ikd_cannot_use_is_one_line_and_exit_2(tmp_path, digits, case, expected):
    path = tmp_path / "bad.pt2"
    if case == "not a program":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif case == "fixed batch":
        exported(path, digits, batch=4)
    elif case in ("training mode", "dropout on"):
        exported(path, digits, train=True, dropout=case == "dropout on")
    flags = ("--dataset", "digits", "--hint-layer", "2", "--run-dir", tmp_path / "run", "--quiet")
    ran = ikd("compress", "--teacher-program", path, *flags)
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert expected.format(path=path) in ran.stderr
    assert not (tmp_path / "run").exists()
    both = ikd("compress", "--teacher-program", path, "--teacher", tmp_path, *flags)
    assert both.returncode == 2 and "teacher.program and teacher.dir: expected one root" in both.stderr
