"""The `ikd` command end to end, through a subprocess: success paths, error lines and exit codes."""

import json
import os
import subprocess
import sys

import pytest


def ikd(*args, env_extra=None, cwd=None):
    env = {**os.environ, "IKD_DATA_DIR": os.environ.get("IKD_TEST_EMPTY_ROOT", "/nonexistent-ikd-root")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ikd", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits-vgg11"
    result = ikd("train", "--dataset", "digits", "--arch", "vgg11", "--epochs", "2", "--batch-size", "64",
                 "--precision", "fp32", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_help_lists_the_commands():
    result = ikd("--help")
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


def test_eval_json_reports_accuracy_and_count(trained):
    result = ikd("eval", trained, "--split", "test", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 359 and 0.0 <= report["accuracy"] <= 1.0
    val = json.loads(ikd("eval", trained, "--dataset", "digits", "--split", "val", "--json").stdout)
    meta = json.loads((trained / "model.json").read_text())
    assert val["accuracy"] == pytest.approx(meta["metrics"]["best"]["val_accuracy"])


def test_refuses_to_overwrite_a_model(trained):
    result = ikd("train", "--dataset", "digits", "--epochs", "1", "--out", trained)
    assert result.returncode == 2
    assert "--force" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args,expected", [
    (["train", "--dataset", "digits", "--epochs", "-1", "--out", "{tmp}/x"], "--epochs"),
    (["train", "--dataset", "nope", "--epochs", "1", "--out", "{tmp}/x"], "--dataset"),
    (["train", "--dataset", "digits", "--epochs", "1", "--val-fraction", "1.5", "--out", "{tmp}/x"], "1.5"),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/empty", "--epochs", "1", "--out", "{tmp}/x"], "empty"),
    (["eval", "{tmp}/missing"], "model.json"),
    (["arch", "vgg16", "--input", "axb"], "--input"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, args, expected):
    (tmp_path / "empty").mkdir()
    result = ikd(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert expected in lines[-1]


def test_corrupt_weights_are_a_clear_error_and_debug_shows_traceback(trained, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((trained / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    result = ikd("eval", broken)
    assert result.returncode == 2 and "model.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    debug = ikd("eval", broken, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_arch_reports_vgg16_size():
    result = ikd("arch", "vgg16", "--input", "3x32", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["params"] == 14_724_042
