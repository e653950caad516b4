"""Resumable training: epoch-level state, bit-identical continuation, damaged states, time limits."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
import torch
from conftest import SMALL_ARCH, campaign_args, write_idx_set
from safetensors.torch import load_file

import ikd.train as train_module
from ikd.arch import ArchSpec
from ikd.cli import EXIT_TEMPFAIL, EXIT_USAGE, main, parse_duration
from ikd.distributed import Group
from ikd.errors import CheckpointError, ConfigError
from ikd.lineage import RunDir
from ikd.model import build_model
from ikd.train import EpochRecord, TrainConfig, TrainingPaused, train_model, train_models
from ikd.train_state import _read

EPOCHS = 3
# The teacher recipe's moving parts (EMA, linear schedule, label smoothing) are all in what must resume.
CONFIG = TrainConfig(
    epochs=EPOCHS,
    batch_size=32,
    precision="fp32",
    device="cpu",
    seed=1,
    max_steps_per_epoch=6,
    schedule="linear",
    ema_epochs=1.0,
    label_smoothing=0.1,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def spec(data) -> ArchSpec:
    # dropout, so the global random stream matters too
    return ArchSpec(
        in_channels=data.in_channels,
        image_size=data.image_size,
        num_classes=data.num_classes,
        blocks=[[8], [16]],
        head=[16],
        dropout=0.2,
    )


def comparable(history: list[EpochRecord]) -> list[dict]:
    # timings differ from run to run; everything learnt must not
    return [{k: v for k, v in dataclasses.asdict(r).items() if k not in ("seconds", "images_per_s")} for r in history]


class Interrupt(Exception):
    pass


def stop_after(epoch: int):
    def on_epoch(description: str, record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise Interrupt

    return on_epoch


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture(scope="module")
def straight(digits):
    model = build_model(spec(digits), seed=1)
    result = train_model(model, digits, CONFIG, progress=False)
    return model, result


@pytest.mark.parametrize("stop", [1, 2])
def test_resume_after_an_interrupted_epoch_is_bit_identical(digits, straight, tmp_path, stop):
    state_dir = tmp_path / "state"
    with pytest.raises(Interrupt):
        train_model(
            build_model(spec(digits), seed=1),
            digits,
            CONFIG,
            progress=False,
            state_dir=state_dir,
            on_epoch=stop_after(stop),
        )
    # a fresh model with other initial weights: everything must come from the state
    model = build_model(spec(digits), seed=99)
    result = train_model(model, digits, CONFIG, progress=False, state_dir=state_dir)
    assert_same_weights(model, straight[0])
    assert comparable(result.history) == comparable(straight[1].history)
    assert result.best_epoch == straight[1].best_epoch


def test_a_resumed_run_shows_on_epoch_the_epochs_it_resumes_after(digits, straight, tmp_path):
    # TensorBoard, fed by on_epoch, started a resumed node's curve afresh at the first new epoch
    with pytest.raises(Interrupt):
        train_model(
            build_model(spec(digits), seed=1), digits, CONFIG, progress=False,
            state_dir=tmp_path, on_epoch=stop_after(1),
        )  # fmt: skip
    seen: list[EpochRecord] = []
    train_model(
        build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=tmp_path,
        on_epoch=lambda description, record: seen.append(record),
    )  # fmt: skip
    assert comparable(seen) == comparable(straight[1].history)


def flat(tree, prefix: str = "") -> dict:
    """Every leaf of a saved state, by path."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def test_the_last_state_of_a_resumed_run_equals_an_uninterrupted_ones_in_every_tensor(digits, tmp_path):
    # Beyond the final weights: the EMA, optimiser, schedule, RNG streams must all have been carried over.
    def final_state(state_dir: Path, interrupt_at: int | None) -> dict:
        if interrupt_at:
            with pytest.raises(Interrupt):
                train_model(
                    build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=state_dir,
                    on_epoch=stop_after(interrupt_at),
                )  # fmt: skip
        train_model(build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=state_dir)
        return flat(_read(state_dir / f"epoch-{EPOCHS:05d}.pt"))

    straight, resumed = final_state(tmp_path / "a", None), final_state(tmp_path / "b", 1)
    assert (straight["/sessions"], resumed["/sessions"]) == (1, 2)
    assert straight.keys() == resumed.keys() and any("/ema/" in key for key in straight)
    for key, value in straight.items():
        if key.endswith(("seconds", "images_per_s", "sessions")):  # bookkeeping of the run, not of the training
            continue
        same = torch.equal(value, resumed[key]) if isinstance(value, torch.Tensor) else value == resumed[key]
        assert same, key


def test_grouped_students_with_a_hint_objective_resume_bit_identically(digits, tmp_path):
    class Hinted(torch.nn.Module):  # an objective with weights of its own, like hint regressors
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, model, x, y, index):
            logits = model(x) * self.scale
            return logits, {"loss": torch.nn.functional.cross_entropy(logits, y)}

    def run(state_dir, on_epoch=None, seed=1):
        models = [build_model(spec(digits), seed=seed), build_model(spec(digits), seed=seed + 1)]
        objectives = [Hinted(), None]
        results = train_models(
            models, digits, CONFIG, objectives=objectives, progress=False, state_dir=state_dir, on_epoch=on_epoch
        )
        return models, objectives, results

    straight_models, straight_objectives, straight_results = run(None)
    with pytest.raises(Interrupt):
        run(tmp_path / "state", stop_after(2))
    models, objectives, results = run(tmp_path / "state", seed=50)
    for a, b in zip(models, straight_models, strict=True):
        assert_same_weights(a, b)
    assert torch.equal(objectives[0].scale, straight_objectives[0].scale)
    for a, b in zip(results, straight_results, strict=True):
        assert comparable(a.history) == comparable(b.history)


def interrupted_state(digits, state_dir: Path, stop: int) -> list[Path]:
    with pytest.raises(Interrupt):
        train_model(
            build_model(spec(digits), seed=1),
            digits,
            CONFIG,
            progress=False,
            state_dir=state_dir,
            on_epoch=stop_after(stop),
        )
    return sorted(state_dir.glob("epoch-*.pt"))


def test_a_truncated_newest_state_is_passed_over_for_the_one_before(digits, straight, tmp_path, capsys):
    files = interrupted_state(digits, tmp_path / "state", stop=2)
    assert [f.name for f in files] == ["epoch-00001.pt", "epoch-00002.pt"]
    files[1].write_bytes(files[1].read_bytes()[: files[1].stat().st_size // 2])
    model = build_model(spec(digits), seed=99)
    train_model(model, digits, CONFIG, progress=False, state_dir=tmp_path / "state")
    assert_same_weights(model, straight[0])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "epoch-00002.pt: unreadable" in lines[0] and "passed over" in lines[0]
    assert lines[1].startswith("resuming after epoch 1/")  # said without progress bars too


def test_a_kill_inside_a_state_write_leaves_nothing_that_matters(digits, straight, tmp_path, capsys):
    state_dir = tmp_path / "state"
    interrupted_state(digits, state_dir, stop=1)
    # what SIGKILL inside atomic_write_bytes leaves: a partial temporary file, never a partial epoch file
    partial = state_dir / ".epoch-00002.pt.x1y2z3.tmp"
    partial.write_bytes(b"0" * 100)
    model = build_model(spec(digits), seed=99)
    train_model(model, digits, CONFIG, progress=False, state_dir=state_dir)
    assert_same_weights(model, straight[0])
    assert not partial.exists()
    assert capsys.readouterr().err.splitlines() == [
        f"resuming after epoch 1/{CONFIG.epochs} from {state_dir}/epoch-00001.pt"
    ]


def test_no_intact_state_starts_over_with_one_line(digits, straight, tmp_path, capsys):
    for path in interrupted_state(digits, tmp_path / "state", stop=2):
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped bit: the checksum, not torch.load, must notice
        path.write_bytes(bytes(raw))
    model = build_model(spec(digits), seed=1)
    train_model(model, digits, CONFIG, progress=False, state_dir=tmp_path / "state")
    assert_same_weights(model, straight[0])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "starting from epoch 1" in err
    assert err.count("checksum mismatch") == 2, err  # each kept state passed over for its checksum


def test_damaged_newer_states_do_not_crowd_out_the_new_ones(digits, tmp_path, capsys):
    # Both kept states damaged (epochs 2 and 3): the run starts over, and its epoch-1 state must
    # survive; left in place, the damaged ones would outrank it and it would be deleted on writing.
    state_dir = tmp_path / "state"
    for path in interrupted_state(digits, state_dir, stop=3):
        path.write_bytes(path.read_bytes()[:100])
    interrupted_state(digits, state_dir, stop=1)
    assert [p.name for p in state_dir.glob("epoch-*.pt")] == ["epoch-00001.pt"]
    assert "starting from epoch 1" in capsys.readouterr().err


class GroupOfOne:
    """The collectives of ikd.distributed.Group as rank 0 of a group sees them when every rank agrees."""

    rank, is_main = 0, True

    def main_values(self, values, device):
        return values

    def every(self, flags, device):
        return flags


ONE_RANK = cast(Group, GroupOfOne())


def test_a_rank_resumes_the_newest_epoch_intact_everywhere_with_its_own_random_streams(tmp_path):
    from ikd.train import _agreed_state
    from ikd.train_state import StateStore

    shared, own = StateStore(tmp_path, "job"), StateStore(tmp_path / "rank-0", "job", keep=3)
    for epoch in (1, 2, 3):  # a rank writes its streams first: epoch 3's shared state was never written
        own.save(epoch, {"torch_rng": torch.tensor([epoch]), "cuda_rng": None})
    for epoch in (1, 2):
        shared.save(epoch, {"torch_rng": torch.tensor([-1]), "cuda_rng": None, "weights": torch.tensor([epoch])})
    cpu = torch.device("cpu")
    saved, skipped = _agreed_state(shared, own, ONE_RANK, cpu)
    assert saved is not None and (saved.epoch, saved.path) == (2, shared.path(2))
    assert saved.state["weights"].item() == 2 and saved.state["torch_rng"].item() == 2  # this rank's, not rank 0's
    assert skipped == []
    own.path(2).write_bytes(b"damaged")  # one rank's streams unreadable: every rank falls back together
    saved, skipped = _agreed_state(shared, own, ONE_RANK, cpu)
    assert saved is not None and saved.epoch == 1 and saved.state["torch_rng"].item() == 1
    assert len(skipped) == 1 and "rank-0/epoch-00002.pt" in skipped[0] and "passed over" in skipped[0]
    own.path(1).unlink()
    assert _agreed_state(shared, own, ONE_RANK, cpu) == (
        None,
        [
            f"{own.path(2)}: unreadable (checksum mismatch: truncated or damaged); passed over",
            f"{own.path(1)}: missing; passed over",
        ],
    )


def test_every_rank_trains_in_rank_0s_precision(monkeypatch):
    # "auto" on a CPU times bf16 against fp32; ranks timing at once can disagree, rank 0 decides
    from ikd import runtime
    from ikd.train import agreed_precision

    class RankOne(GroupOfOne):
        rank, is_main = 1, False

        def main_values(self, values, device):
            return [runtime.PRECISIONS.index("fp32")]  # rank 0's verdict, whatever this rank measured

    monkeypatch.setattr(runtime, "cpu_has_bf16_instructions", lambda: True)
    monkeypatch.setattr(runtime, "cpu_bf16_pays", lambda: True)
    cpu = torch.device("cpu")
    assert agreed_precision("auto", cpu, None).name == "bf16"  # alone: its own verdict
    assert agreed_precision("auto", cpu, ONE_RANK).name == "bf16"
    assert agreed_precision("auto", cpu, cast(Group, RankOne())).name == "fp32"


def test_only_the_newest_two_states_are_kept(digits, tmp_path):
    state_dir = tmp_path / "state"
    train_model(build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=state_dir)
    assert sorted(p.name for p in state_dir.iterdir()) == ["epoch-00002.pt", "epoch-00003.pt"]


def test_the_state_of_another_job_is_refused_in_one_line(digits, tmp_path):
    interrupted_state(digits, tmp_path / "state", stop=1)
    other = CONFIG.model_copy(update={"lr": 0.01})
    with pytest.raises(CheckpointError, match=r"different job \(config\.lr differ\)") as error:
        train_model(build_model(spec(digits), seed=1), digits, other, progress=False, state_dir=tmp_path / "state")
    assert "\n" not in str(error.value)


def test_what_auto_resolved_to_decides_whether_a_state_is_this_jobs(digits, straight, tmp_path, monkeypatch):
    import ikd.train
    from ikd.runtime import resolve_precision

    interrupted_state(digits, tmp_path / "state", stop=1)  # fp32
    auto = CONFIG.model_copy(update={"precision": "auto"})
    # `auto` on a machine where bf16 autocast pays (an AMX or Zen 4 CPU): not continued in bf16
    monkeypatch.setattr(ikd.train, "resolve_precision", lambda name, device: resolve_precision("bf16", device))
    with pytest.raises(CheckpointError) as error:
        train_model(build_model(spec(digits), seed=1), digits, auto, progress=False, state_dir=tmp_path / "state")
    assert "saved on cpu in fp32; this run would continue it on cpu in bf16; pass --precision fp32" in str(error.value)
    assert "\n" not in str(error.value)
    # where auto resolves to what the state was saved in, it is the same job: resumed, bit-identical
    monkeypatch.setattr(ikd.train, "resolve_precision", lambda name, device: resolve_precision("fp32", device))
    model = build_model(spec(digits), seed=99)
    train_model(model, digits, auto, progress=False, state_dir=tmp_path / "state")
    assert_same_weights(model, straight[0])


def test_a_state_an_older_ikd_saved_with_auto_settings_resumes(digits, straight, tmp_path, monkeypatch):
    import json

    import ikd.train
    from ikd.runtime import resolve_precision
    from ikd.train_state import StateStore, job_fingerprint

    monkeypatch.setattr(ikd.train, "resolve_precision", lambda name, device: resolve_precision("fp32", device))
    auto = CONFIG.model_copy(update={"precision": "auto", "device": "auto"})
    state_dir = tmp_path / "state"
    with pytest.raises(Interrupt):
        train_model(
            build_model(spec(digits), seed=1), digits, auto, progress=False, state_dir=state_dir, on_epoch=stop_after(1)
        )
    # as ikd before 2026-12-05 saved it: the job's settings as given, not what they resolved to (augment
    # too: the resolved one was the data's last entry), and no objectives
    state = _read(state_dir / "epoch-00001.pt")
    old_job = json.loads(state["job"])
    old_job.pop("objectives")
    old_job["data"].append(old_job["config"]["augment"])
    old_job["config"] |= {"device": "auto", "precision": "auto", "augment": auto.augment}
    kept = {k: v for k, v in state.items() if k not in ("format", "fingerprint", "epoch", "job")}
    StateStore(state_dir, job_fingerprint(old_job), job=old_job).save(1, kept)
    model = build_model(spec(digits), seed=99)
    train_model(model, digits, auto, progress=False, state_dir=state_dir)
    assert_same_weights(model, straight[0])


def test_the_state_of_another_job_is_discarded_when_asked(digits, tmp_path, capsys):
    interrupted_state(digits, tmp_path / "state", stop=2)
    other = CONFIG.model_copy(update={"lr": 0.01})
    model = build_model(spec(digits), seed=1)
    train_model(model, digits, other, progress=False, state_dir=tmp_path / "state", discard_foreign_state=True)
    err = capsys.readouterr().err
    assert err.count("another job") == 2 and "starting from epoch 1" in err  # both files passed over
    unresumed = build_model(spec(digits), seed=1)
    train_model(unresumed, digits, other, progress=False)
    assert_same_weights(model, unresumed)


def test_only_a_state_no_command_could_resume_is_discarded(tmp_path):
    from ikd.train_state import StateStore, job_fingerprint

    def job(**config):
        return {"config": {"lr": 0.1, "device": "cpu", "precision": "fp32", **config}, "models": [], "data": []}

    def saved(directory, document, with_job=True):
        store = StateStore(directory, job_fingerprint(document), job=document if with_job else None)
        store.save(1, {"weights": torch.zeros(2)})

    def load(directory, document):
        return StateStore(directory, job_fingerprint(document), discard_foreign=True, job=document).load_latest()

    saved(tmp_path / "lr", job())
    state, skipped = load(tmp_path / "lr", job(lr=0.01))  # --force moved the campaign to another lr
    assert state is None and "config.lr differ); discarded" in skipped[0]
    saved(tmp_path / "moved", job(device="cuda"))
    with pytest.raises(CheckpointError, match=r"saved on cuda in fp32; .* resume it on a machine with cuda"):
        load(tmp_path / "moved", job())
    saved(tmp_path / "old", job(lr=0.5), with_job=False)
    with pytest.raises(CheckpointError, match="other settings, architecture or data"):  # nothing to tell by
        load(tmp_path / "old", job())


def test_a_deadline_stops_at_an_epoch_boundary_and_the_rerun_finishes(digits, straight, tmp_path):
    state_dir = tmp_path / "state"
    with pytest.raises(TrainingPaused) as paused:
        train_model(
            build_model(spec(digits), seed=1),
            digits,
            CONFIG,
            progress=False,
            state_dir=state_dir,
            deadline=time.monotonic() + 1e-3,
        )
    assert (paused.value.epoch, paused.value.epochs) == (1, EPOCHS)
    assert [p.name for p in state_dir.glob("epoch-*.pt")] == ["epoch-00001.pt"]
    model = build_model(spec(digits), seed=99)
    train_model(model, digits, CONFIG, progress=False, state_dir=state_dir)
    assert_same_weights(model, straight[0])


def test_a_deadline_is_checked_after_the_last_epoch_when_another_stage_follows(digits, tmp_path):
    # hint pre-training then distillation: the distillation's first epoch would pass the limit
    one_epoch = CONFIG.model_copy(update={"epochs": 1})
    straight = build_model(spec(digits), seed=1)
    train_model(straight, digits, one_epoch, progress=False)
    last = build_model(spec(digits), seed=1)
    train_models([last], digits, one_epoch, progress=False, state_dir=tmp_path / "last", deadline=time.monotonic())
    assert_same_weights(last, straight)  # the job's end: nothing to pause for
    state_dir = tmp_path / "stage-0"
    with pytest.raises(TrainingPaused) as paused:
        train_models(
            [build_model(spec(digits), seed=1)],
            digits,
            one_epoch,
            progress=False,
            state_dir=state_dir,
            deadline=time.monotonic() + 1e-3,
            stage_follows=True,
        )
    assert (paused.value.epoch, paused.value.epochs) == (1, 1)
    resumed = build_model(spec(digits), seed=99)
    train_models([resumed], digits, one_epoch, progress=False, state_dir=state_dir, stage_follows=True)
    assert_same_weights(resumed, straight)


def test_a_deadline_needs_a_state_directory(digits):
    with pytest.raises(ConfigError, match="time limit"):
        train_model(build_model(spec(digits), seed=1), digits, CONFIG, progress=False, deadline=time.monotonic())


@pytest.mark.parametrize(
    "text,seconds",
    [
        *[("2h30m", 9000), ("90m", 5400), ("45s", 45), ("3600", 3600), ("1.5h", 5400), ("1h5s", 3605)],
        # SLURM's --time formats
        *[("2:30:00", 9000), ("90:00", 5400), ("1-00:00:00", 86400), ("1-2", 93600), ("1-2:30", 95400)],
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "-5", "0", "2x", "h", "inf", "nan", "0:00", "1:2:3:4", "1-", ":30", "1:75", "1:60:00", "1-24:00"],
)
def test_a_bad_time_limit_is_one_line_naming_the_flag(tmp_path, capsys, text):
    status = main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "x"), "--time-limit", text])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_USAGE and len(lines) == 1 and "--time-limit" in lines[0]


# `ikd train` end to end: a real process, killed or stopped, then rerun with the same command. A tiny
# IDX set and a small VGG keep its epochs short (one step of 12 images each).


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("idx")
    write_idx_set(directory, n_train=20, n_test=4, size=8)
    return directory


def ikd_train(idx_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "ikd", "train", "--dataset", "idx", "--data-dir", str(idx_dir), "--arch", SMALL_ARCH),
        *("--epochs", "3", "--batch-size", "12", "--precision", "fp32", "--quiet", "--out", str(out), *extra),
    ]


INJECTOR = Path(__file__).parent / "audit" / "fault_injection.py"
ENV = {**os.environ, "IKD_DATA_DIR": "/nonexistent-ikd-root", "OMP_NUM_THREADS": "1"}


def run_ikd(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def cli_straight(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "straight"
    result = run_ikd(ikd_train(idx_dir, out))
    assert result.returncode == 0, result.stderr
    assert not (out / ".train-state").exists()  # removed once the model is saved
    return load_file(out / "model.safetensors")


def assert_same_saved_weights(out: Path, expected: dict[str, torch.Tensor]) -> None:
    weights = load_file(out / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in weights:
        assert torch.equal(weights[name], expected[name]), name


def killed_after_saving(command: list[str], state_file: str) -> subprocess.CompletedProcess:
    """`command` (python -m ikd ...) SIGKILLed by itself the moment its first `state_file` is in place: a kill
    the test cannot miss, as one sent from outside can when the process finishes first."""
    fault = [sys.executable, str(INJECTOR), f"kill:write:{state_file}:1:after-rename", "--"]
    assert command[1:3] == ["-m", "ikd"]
    return run_ikd([*fault, *command[3:]])


def test_ikd_train_killed_with_sigkill_resumes_bit_identically(idx_dir, cli_straight, tmp_path):
    out = tmp_path / "killed"
    first_state = out / ".train-state" / "epoch-00001.pt"
    killed = killed_after_saving(ikd_train(idx_dir, out), first_state.name)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert first_state.exists() and not (out / "model.safetensors").exists()
    result = run_ikd(ikd_train(idx_dir, out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_same_saved_weights(out, cli_straight)
    assert not (out / ".train-state").exists()


def test_ikd_train_time_limit_stops_with_exit_75_and_the_same_command_finishes(idx_dir, cli_straight, tmp_path):
    out = tmp_path / "limited"
    command = ikd_train(idx_dir, out, "--time-limit", "0.01s")
    for epoch in (1, 2):  # each run gets at least one epoch; the limit is passed after it
        stopped = run_ikd(command)
        assert stopped.returncode == EXIT_TEMPFAIL == 75, stopped.stderr
        last = stopped.stderr.strip().splitlines()[-1]
        assert f"after epoch {epoch}/3" in last and "rerun the same command" in last
        assert not (out / "model.safetensors").exists()
    finished = run_ikd(command)  # after the last epoch there is nothing left to stop for
    assert finished.returncode == 0, finished.stderr
    assert_same_saved_weights(out, cli_straight)
    assert json.loads((out / "model.json").read_text())["training"]["sessions"] == 3


def test_ikd_distill_time_limit_resumes_bit_identically_and_another_loss_is_another_job(idx_dir, tmp_path):
    teacher = tmp_path / "teacher"
    assert run_ikd(ikd_train(idx_dir, teacher)).returncode == 0

    def distill(out: Path, *extra: str) -> list[str]:  # the teacher's dataset and split, ikd_train's recipe
        return [
            *(sys.executable, "-m", "ikd", "distill", str(teacher), "--data-dir", str(idx_dir), "--arch", "8x1-16x1"),
            *("--epochs", "3", "--batch-size", "12", "--precision", "fp32", "--quiet", "--out", str(out), *extra),
        ]

    straight = tmp_path / "straight"
    assert run_ikd(distill(straight)).returncode == 0
    out = tmp_path / "limited"
    stopped = run_ikd(distill(out, "--time-limit", "0.01s"))
    assert stopped.returncode == EXIT_TEMPFAIL and "after epoch 1/3" in stopped.stderr, stopped.stderr
    other = run_ikd(distill(out, "--temperature", "2", "--kd", "dkd"))  # named: it said "a loss or ensemble flag"
    assert other.returncode == 2 and "other settings (--kd, --temperature);" in other.stderr, other.stderr
    assert run_ikd(distill(out)).returncode == 0
    assert_same_saved_weights(out, load_file(straight / "model.safetensors"))
    # the teacher retrained with other weights, same architecture: a stopped training is not continued under it
    again = tmp_path / "again"
    assert run_ikd(distill(again, "--time-limit", "0.01s")).returncode == EXIT_TEMPFAIL
    assert run_ikd(ikd_train(idx_dir, teacher, "--lr", "0.01", "--force")).returncode == 0
    retrained = run_ikd(distill(again))
    assert retrained.returncode == 2 and "the teachers' weights" in retrained.stderr, retrained.stderr


def test_ikd_train_force_with_a_time_limit_replaces_the_model_and_the_same_command_resumes(
    idx_dir, cli_straight, tmp_path
):
    out = tmp_path / "replaced"
    assert run_ikd(ikd_train(idx_dir, out, "--lr", "0.01")).returncode == 0  # another model there
    command = ikd_train(idx_dir, out, "--time-limit", "0.01s", "--force")
    stopped = run_ikd(command)
    assert stopped.returncode == EXIT_TEMPFAIL, stopped.stderr
    assert not (out / "model.json").exists()  # the model being replaced is no longer there to be read
    stopped = run_ikd(command)
    assert stopped.returncode == EXIT_TEMPFAIL and "after epoch 2/3" in stopped.stderr  # resumed, not restarted
    finished = run_ikd(command)
    assert finished.returncode == 0, finished.stderr
    assert_same_saved_weights(out, cli_straight)


def test_ikd_train_force_discards_the_unfinished_training_of_another_job(idx_dir, cli_straight, tmp_path):
    out = tmp_path / "other-job"
    assert run_ikd(ikd_train(idx_dir, out, "--lr", "0.01", "--time-limit", "0.01s")).returncode == EXIT_TEMPFAIL
    refused = run_ikd(ikd_train(idx_dir, out))
    assert refused.returncode != 0 and "started with other settings (--lr); rerun with the flags" in refused.stderr
    forced = run_ikd(ikd_train(idx_dir, out, "--force"))
    assert forced.returncode == 0, forced.stderr
    assert "another job (config.lr differ); discarded" in forced.stderr and "Traceback" not in forced.stderr
    assert_same_saved_weights(out, cli_straight)


def test_ikd_train_resumes_when_augment_names_the_datasets_own(idx_dir, cli_straight, tmp_path):
    # --augment set to what the dataset uses anyway is the same job (it was refused as another one); another
    # augmentation is refused as --augment alone (it was also named a change of the data)
    out = tmp_path / "augment"
    assert run_ikd(ikd_train(idx_dir, out, "--time-limit", "0.01s")).returncode == EXIT_TEMPFAIL
    other = run_ikd(ikd_train(idx_dir, out, "--augment", "crop-flip"))
    assert other.returncode != 0 and "other settings (--augment); rerun" in other.stderr, other.stderr
    resumed = run_ikd(ikd_train(idx_dir, out, "--augment", "none"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_saved_weights(out, cli_straight)
    assert json.loads((out / "model.json").read_text())["training"]["sessions"] == 2


def as_saved_before_2026_12_06(state_dir: Path) -> None:
    """Rewrite every state file in `state_dir` as the ikd before 2026-12-06 wrote it: the resolved
    augmentation last in the job's data, config.augment as given (no --augment: None), no objectives."""
    import hashlib
    import io

    from ikd.train_state import job_fingerprint

    for path in state_dir.glob("epoch-*.pt"):
        state = _read(path)
        job = json.loads(state["job"])
        job.pop("objectives")  # not recorded then
        old = job | {"config": job["config"] | {"augment": None}, "data": [*job["data"], job["config"]["augment"]]}
        state |= {"job": json.dumps(old, sort_keys=True, default=str), "fingerprint": job_fingerprint(old)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.write_bytes(hashlib.sha256(buffer.getvalue()).hexdigest().encode() + b"\n" + buffer.getvalue())


def test_ikd_train_resumes_a_state_saved_by_the_ikd_before_the_augment_moved(idx_dir, cli_straight, tmp_path):
    out = tmp_path / "older"
    assert run_ikd(ikd_train(idx_dir, out, "--time-limit", "0.01s")).returncode == EXIT_TEMPFAIL
    as_saved_before_2026_12_06(out / ".train-state")
    other = run_ikd(ikd_train(idx_dir, out, "--lr", "0.01"))  # compared in today's layout: only --lr differs
    assert other.returncode != 0 and "other settings (--lr); rerun" in other.stderr, other.stderr
    resumed = run_ikd(ikd_train(idx_dir, out, "--time-limit", "0.01s"))
    assert resumed.returncode == EXIT_TEMPFAIL and "after epoch 2/3" in resumed.stderr, resumed.stderr
    assert run_ikd(ikd_train(idx_dir, out)).returncode == 0
    assert_same_saved_weights(out, cli_straight)


# --- campaigns: every node resumes, and `ikd compress --time-limit` -----------------------------


def compress_command(teacher: Path, run_dir: Path, *extra: str) -> list[str]:
    # 2 epochs per child, so a child can be stopped between its epochs; two generations, a pass each
    args = campaign_args(teacher, run_dir, "--epochs", "2", *extra, generations=2)
    return [sys.executable, "-m", "ikd", *args]


def node_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {d.name: load_file(d / "model.safetensors") for d in sorted((run_dir / "nodes").iterdir())}


def lineage_results(run_dir: Path) -> list[tuple]:
    lineage = RunDir(run_dir).load()
    return [(n.id, n.status, n.val_accuracy, n.test_accuracy, n.best_epoch) for n in lineage.nodes]


@pytest.fixture(scope="module")
def campaign_straight(tiny_teacher, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("campaign") / "straight"
    result = run_ikd(compress_command(tiny_teacher, run_dir))
    assert result.returncode == 0, result.stderr
    assert len(RunDir(run_dir).load().nodes) == 3, lineage_results(run_dir)  # the teacher, two generations
    return run_dir


def assert_same_campaign(run_dir: Path, expected: Path) -> None:
    assert lineage_results(run_dir) == lineage_results(expected)
    got, want = node_weights(run_dir), node_weights(expected)
    assert got.keys() == want.keys()
    for node in want:
        for name in want[node]:
            assert torch.equal(got[node][name], want[node][name]), (node, name)
    assert not (run_dir / ".train-state").exists()  # every job's state removed, and then their parent


def test_a_campaign_killed_inside_a_child_resumes_that_child_after_its_last_epoch(
    tiny_teacher, campaign_straight, tmp_path
):
    run_dir = tmp_path / "killed"
    command = compress_command(tiny_teacher, run_dir)
    killed = killed_after_saving(command, "epoch-00001.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(run_dir.glob(".train-state/*/stage-0/epoch-00001.pt")), "killed elsewhere than in a child's training"
    rerun = run_ikd(command)  # --quiet too: a resume is said even then (Ray workers run quiet)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after epoch 1/2" in rerun.stderr and "Traceback" not in rerun.stderr
    assert_same_campaign(run_dir, campaign_straight)


def test_compress_time_limit_exits_75_each_session_progresses_and_the_end_is_the_same(
    tiny_teacher, campaign_straight, tmp_path
):
    run_dir = tmp_path / "limited"
    command = compress_command(tiny_teacher, run_dir, "--time-limit", "0.01s")
    codes: list[int] = []
    trained: list[str] = []  # the students each pause counts as trained
    while not codes or codes[-1] == EXIT_TEMPFAIL:
        assert len(codes) < 8, f"no end after {codes}"
        result = run_ikd(command)
        codes.append(result.returncode)
        if result.returncode == EXIT_TEMPFAIL:
            last = result.stderr.strip().splitlines()[-1]
            assert "time limit reached" in last
            trained.append(last.split("time limit reached with ")[1].split()[0])
            assert "rerun the same command to resume" in result.stderr
    # every session trains an epoch, after which a 0.01 s limit has passed on any machine:
    # stop inside child 1, after it, inside child 2
    assert codes == [EXIT_TEMPFAIL, EXIT_TEMPFAIL, EXIT_TEMPFAIL, 0], [codes, result.stderr]
    assert trained == ["0", "1", "1"]
    assert_same_campaign(run_dir, campaign_straight)
    # every session is on record, the third too, though it only trained part of child 2
    assert len(RunDir(run_dir).load().sessions) == 4


def test_a_forced_change_of_config_discards_the_unfinished_training_of_the_old_one(tiny_teacher, tmp_path):
    run_dir = tmp_path / "forced"
    paused = run_ikd(compress_command(tiny_teacher, run_dir, "--time-limit", "0.01s"))
    assert paused.returncode == EXIT_TEMPFAIL, paused.stderr
    assert list(run_dir.glob(".train-state/*/stage-0/epoch-00001.pt")), "no child stopped inside its training"
    refused = run_ikd(compress_command(tiny_teacher, run_dir, "--epochs", "3"))
    assert refused.returncode == EXIT_USAGE and "another config" in refused.stderr
    forced = run_ikd(compress_command(tiny_teacher, run_dir, "--epochs", "3", "--force"))
    assert forced.returncode == 0, forced.stderr
    assert "another job" in forced.stderr and "Traceback" not in forced.stderr
    assert {n.epochs for n in RunDir(run_dir).load().students()} == {3}
    assert not (run_dir / ".train-state").exists()


def test_other_data_is_refused_even_with_force(tiny_teacher, campaign_straight, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(campaign_straight, run_dir)
    (config := tmp_path / "split.yaml").write_text("data:\n  split_seed: 1\n")
    result = run_ikd(compress_command(tiny_teacher, run_dir, "--config", str(config), "--force"))
    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.strip().splitlines()
    assert "other data (data.split_seed: 0 -> 1)" in line and "another run_dir" in line
    assert lineage_results(run_dir) == lineage_results(campaign_straight)


def test_another_teacher_is_refused_even_with_force(tiny_teacher, campaign_straight, tmp_path):
    # --force kept the recorded root while the lineage's config named the new teacher.dir
    run_dir = tmp_path / "copy"
    shutil.copytree(campaign_straight, run_dir)
    other = shutil.copytree(tiny_teacher, tmp_path / "other-teacher")
    command = compress_command(tiny_teacher, run_dir, "--force")
    command[command.index(str(tiny_teacher))] = str(other)
    result = run_ikd(command)
    assert result.returncode == EXIT_USAGE
    [line] = result.stderr.strip().splitlines()
    assert f"other settings (teacher.dir: '{tiny_teacher}' -> '{other}')" in line and "another run_dir" in line
    assert lineage_results(run_dir) == lineage_results(campaign_straight)


def test_the_datasets_own_image_size_written_out_is_the_same_data(tiny_teacher, campaign_straight, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(campaign_straight, run_dir)
    (same := tmp_path / "same.yaml").write_text("data:\n  image_size: 8\n")  # digits' own size
    result = run_ikd(compress_command(tiny_teacher, run_dir, "--config", str(same)))
    assert result.returncode == 0, result.stderr
    assert lineage_results(run_dir) == lineage_results(campaign_straight)
    (other := tmp_path / "other.yaml").write_text("data:\n  image_size: 16\n")
    result = run_ikd(compress_command(tiny_teacher, run_dir, "--config", str(other), "--force"))
    assert result.returncode == EXIT_USAGE and "other data (data.image_size: 8 -> 16)" in result.stderr


def test_a_finished_campaign_removes_training_state_no_job_will_resume(tiny_teacher, campaign_straight, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(campaign_straight, run_dir)
    # left by a pass interrupted locally whose candidates a Ray run then trained (Ray keeps no state here)
    stale = run_dir / ".train-state" / "g1-depth+g1-width" / "stage-0"
    stale.mkdir(parents=True)
    (stale / "epoch-00001.pt").write_bytes(b"state")
    result = run_ikd(compress_command(tiny_teacher, run_dir))
    assert result.returncode == 0, result.stderr
    assert not (run_dir / ".train-state").exists()
    assert lineage_results(run_dir) == lineage_results(campaign_straight)


def test_a_model_directory_is_no_run_directory(tiny_teacher, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher, model_dir)
    result = run_ikd(compress_command(tiny_teacher, model_dir))
    assert result.returncode == EXIT_USAGE and "holds a model from `ikd train`" in result.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in tiny_teacher.iterdir())


def test_a_node_state_saved_under_another_loss_is_not_resumed_after_force(tiny_teacher, tmp_path):
    # the job's fingerprint held names and tensor shapes only: a --force rerun with another temperature
    # resumed the old state, its first epoch under the old loss and the rest under the new one
    run_dir = tmp_path / "run"
    stopped = run_ikd(compress_command(tiny_teacher, run_dir, "--time-limit", "0.01s"))
    assert stopped.returncode == EXIT_TEMPFAIL and list(run_dir.glob(".train-state/*/*/epoch-*.pt")), stopped.stderr
    hotter = tmp_path / "hotter.yaml"
    hotter.write_text("loss:\n  temperature: 8.0\n")
    rerun = run_ikd(compress_command(tiny_teacher, run_dir, "--config", str(hotter), "--force"))
    assert rerun.returncode == 0, rerun.stderr
    assert "the state of another job (objectives.weights.temperature differ); discarded" in rerun.stderr, rerun.stderr


def test_a_time_limit_is_no_reason_to_refuse_resuming_a_campaign(tiny_teacher, campaign_straight, tmp_path):
    # the limit says how long this session may run, not what the campaign computes
    run_dir = tmp_path / "copy"
    shutil.copytree(campaign_straight, run_dir)
    result = run_ikd(compress_command(tiny_teacher, run_dir, "--time-limit", "2h"))
    assert result.returncode == 0, result.stderr
    assert lineage_results(run_dir) == lineage_results(campaign_straight)


def test_a_campaign_paused_before_its_first_node_keeps_its_sessions_only_under_the_same_config(tmp_path):
    from ikd.config import load_config
    from ikd.lineage import Lineage, Session
    from ikd.resume import open_campaign

    def config(epochs: int):
        return load_config(None, {"run_dir": str(tmp_path / "run"), "teacher.epochs": epochs})

    paused = Session(started="2026-12-07T00:00:00Z", command="ikd compress --time-limit 1h", machine="m")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save(Lineage(config=config(3).decision_fields(), sessions=[paused]))  # what a pause in the teacher leaves
    same = open_campaign(run, config(3), force=False, log=print)
    assert same.sessions == [paused] and not same.nodes
    other = open_campaign(run, config(4), force=False, log=print)  # its partial teacher is not this one's
    assert other.sessions == [] and other.config == config(4).decision_fields()


def test_a_resumed_run_records_the_machine_of_each_epoch(digits, tmp_path, monkeypatch):
    # a long teacher may start on one machine and finish on another: its record names both
    monkeypatch.setattr(train_module, "describe_machine", lambda device=None: "first machine")
    with pytest.raises(Interrupt):
        train_model(
            build_model(spec(digits), seed=1), digits, CONFIG, progress=False,
            state_dir=tmp_path, on_epoch=stop_after(1),
        )  # fmt: skip
    monkeypatch.setattr(train_module, "describe_machine", lambda device=None: "second machine")
    result = train_model(build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=tmp_path)
    assert [r.machine for r in result.history] == ["first machine"] + ["second machine"] * (CONFIG.epochs - 1)
    assert result.machine == "second machine"
