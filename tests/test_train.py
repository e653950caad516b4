"""Training on the real (bundled) digits set, best-by-validation bookkeeping, and checkpoints."""

import json
import math
from typing import Any

import pytest
import torch

from ikd.arch import ArchSpec
from ikd.checkpoint import load_model, save_model
from ikd.data import ImageSet, load_dataset
from ikd.errors import CheckpointError, ConfigError
from ikd.model import build_model
from ikd.runtime import resolve_precision
from ikd.train import TrainConfig, TrainResult, cross_entropy_objective, evaluate, predict, train_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small_spec(data) -> ArchSpec:
    return ArchSpec(
        in_channels=data.in_channels,
        image_size=data.image_size,
        num_classes=data.num_classes,
        blocks=[[16], [32], [64]],
    )


def test_tiny_training_run_on_digits_learns(digits):
    model = build_model(small_spec(digits), seed=0)
    config = TrainConfig(epochs=6, batch_size=32, lr=0.05, precision="fp32", device="cpu", seed=0)
    result = train_model(model, digits, config, progress=False)
    assert result.best_val_accuracy > 0.90
    assert len(result.history) == 6
    assert result.best_val_accuracy == max(r.val_accuracy for r in result.history)
    assert set(result.history[0].train) >= {"loss", "accuracy"}
    # the model is left holding the best epoch's weights
    again = evaluate(
        model,
        digits.val,
        mean=digits.mean,
        std=digits.std,
        device=torch.device("cpu"),
        precision=resolve_precision("fp32", torch.device("cpu")),
    )
    assert again["accuracy"] == pytest.approx(result.best_val_accuracy)


def test_same_seed_same_result(digits):
    config = TrainConfig(epochs=1, batch_size=64, precision="fp32", device="cpu", seed=3, max_steps_per_epoch=5)
    runs = []
    for _ in range(2):
        model = build_model(small_spec(digits), seed=3)
        runs.append(train_model(model, digits, config, progress=False).history[0])
    assert runs[0].train == runs[1].train and runs[0].val_accuracy == runs[1].val_accuracy


def test_checkpoint_round_trip_and_mismatch(tmp_path, digits):
    model = build_model(small_spec(digits)).eval()
    save_model(tmp_path / "m", model, {"note": "x"})
    loaded, meta = load_model(tmp_path / "m")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), loaded.eval()(x))
    assert meta["note"] == "x" and ArchSpec.model_validate(meta["arch"]) == model.spec

    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["arch"]["blocks"] = [[16], [32], [128]]
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="do not match the spec"):
        load_model(tmp_path / "m")

    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "m")


def test_training_config_is_validated():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig(epochs=1, unknown=3)  # type: ignore[call-arg]  # the unknown key is the point


def test_a_training_set_smaller_than_one_batch_still_trains(digits):
    from ikd.data import DataSplits, ImageSet

    tiny = DataSplits(
        name="tiny",
        train=ImageSet(digits.train.images[:20], digits.train.labels[:20]),
        val=digits.val,
        test=digits.test,
        classes=digits.classes,
        mean=digits.mean,
        std=digits.std,
        augment="none",
        source="test",
    )
    model = build_model(small_spec(digits), seed=0)
    result = train_model(
        model, tiny, TrainConfig(epochs=1, batch_size=128, device="cpu", precision="fp32"), progress=False
    )
    assert result.history[0].train["loss"] > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_models_trained_together_end_with_the_weights_they_get_alone(digits, precision):
    """One pass over the data for k students sharing one teacher forward per batch changes nothing
    about any student's training: same batches, own optimiser, own dropout stream -- and, in bf16,
    its own memory layout (the narrow first student trains NCHW, the other channels-last)."""
    from ikd.objective import (
        LiveTeacher,
        LossWeights,
        build_objective,
        teacher_hint_block,
    )
    from ikd.train import train_models

    teacher = build_model(small_spec(digits), seed=9)
    specs = [
        ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[4], [16]], dropout=0.3),
        ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[12], [12], [12]], dropout=0.5),
    ]
    config = TrainConfig(epochs=2, batch_size=64, precision=precision, device="cpu", seed=4, max_steps_per_epoch=6)
    weights = LossWeights()

    def objectives(students, shared):
        blocks = {teacher_hint_block(s.spec, teacher, weights) for s in students}
        sources = [LiveTeacher(teacher, blocks)] if shared else None  # one teacher forward for all
        return [build_objective(s, teacher, weights, sources=sources, seed=i) for i, s in enumerate(students)]

    alone = []
    for i, spec in enumerate(specs):
        student = build_model(spec, seed=i)
        train_models(
            [student], digits, config, objectives=[build_objective(student, teacher, weights, seed=i)], progress=False
        )
        alone.append(student)
    together = [build_model(spec, seed=i) for i, spec in enumerate(specs)]
    calls = []
    first_conv = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda *args: calls.append(1))
    results = train_models(together, digits, config, objectives=objectives(together, True), progress=False)
    assert len(calls) == 2 * 6  # one teacher forward per batch, not one per student
    for a, b, result in zip(alone, together, results, strict=True):
        assert isinstance(result, TrainResult) and result.best_epoch in (1, 2)
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name


def nan_after(steps: int):
    """A cross-entropy objective whose loss turns NaN after `steps` steps."""
    taken = []

    def objective(model, x, y, index):
        taken.append(1)
        logits = model(x)
        scale = 1.0 if len(taken) <= steps else math.nan
        return logits, {"loss": torch.nn.functional.cross_entropy(logits, y) * scale}

    return objective


def test_a_diverging_model_is_dropped_and_the_others_finish(digits):
    from ikd.train import TrainingDiverged, train_models

    config = TrainConfig(epochs=3, batch_size=64, precision="fp32", device="cpu", max_steps_per_epoch=10)
    models = [build_model(small_spec(digits), seed=s) for s in (0, 1)]
    results = train_models(
        models, digits, config, objectives=[None, nan_after(10)], progress=False, descriptions=["fine", "nan"]
    )  # fine for the first epoch's 10 steps
    assert isinstance(results[0], TrainResult) and len(results[0].history) == 3
    assert isinstance(results[1], TrainingDiverged)
    assert "nan" in str(results[1]) and "epoch 2" in str(results[1])
    assert results[1].epochs == 2  # what it cost (the campaign records it): not the 3 planned


def test_a_training_that_diverged_leaves_no_state_to_resume(digits, tmp_path):
    # resumed, it diverged again at once; and `ikd train` refused the advised lower --lr as another job
    from ikd.train import TrainingDiverged

    config = TrainConfig(epochs=3, batch_size=64, precision="fp32", device="cpu", max_steps_per_epoch=10)
    with pytest.raises(TrainingDiverged):
        train_model(
            build_model(small_spec(digits), seed=0), digits, config, objective=nan_after(10), progress=False,
            state_dir=tmp_path / "state",
        )  # fmt: skip
    assert not (tmp_path / "state").exists()  # epoch 1's state was saved, then removed


def test_the_kept_weights_are_the_ones_whose_validation_accuracy_is_reported(digits):
    # With an EMA each epoch has two candidates; whichever is kept, the model must score what was recorded.
    model = build_model(small_spec(digits), seed=0)
    config = TrainConfig(epochs=4, batch_size=32, lr=0.05, precision="fp32", device="cpu", ema_epochs=1.0)
    result = train_model(model, digits, config, progress=False)
    assert all(r.ema_val_accuracy is not None for r in result.history)
    best = result.history[result.best_epoch - 1]
    expected = best.ema_val_accuracy if result.best_weights == "ema" else best.val_accuracy
    assert result.best_val_accuracy == expected == max(best.val_accuracy, best.ema_val_accuracy or 0.0)
    again = evaluate(
        model,
        digits.val,
        mean=digits.mean,
        std=digits.std,
        device=torch.device("cpu"),
        precision=resolve_precision("fp32", torch.device("cpu")),
    )
    assert again["accuracy"] == pytest.approx(result.best_val_accuracy)
    assert again["loss"] == pytest.approx(best.ema_val_loss if result.best_weights == "ema" else best.val_loss)


def test_the_ema_differs_from_the_weights_and_follows_them():
    from ikd.train import _ema, _update_ema

    model = torch.nn.Linear(3, 1)
    ema = _ema(model)
    expected = 0.0
    with torch.no_grad():
        for step in range(50):
            model.weight.fill_(float(step))
            _update_ema(ema, model, decay=0.9)
            # by hand: the first step copies, then each mixes in (1 - min(0.9, (1+n)/(10+n))) of the new value
            mix = 1.0 if step == 0 else 1.0 - min(0.9, (1.0 + step) / (10.0 + step))
            expected += mix * (step - expected)
    averaged = ema.module.get_parameter("weight")
    assert 40.0 < averaged.mean().item() < 49.0  # behind the last value (49), far from the first
    assert averaged.detach() == pytest.approx(torch.full((1, 3), expected), rel=1e-6)
    # the update count stays on the host, so reading it never waits for a GPU
    assert int(ema.n_averaged) == 50 and ema.n_averaged.device.type == "cpu"


@pytest.mark.parametrize("schedule", ["onecycle", "linear", "cosine"])
def test_every_schedule_runs_however_few_the_steps(schedule):
    # one epoch of scikit-learn's digits at batch 256 is 5 steps: OneCycleLR with a 20% warm-up
    # divided by zero there (`ikd train --dataset digits --epochs 1` crashed)
    from ikd.train import _scheduler

    for total in range(1, 41):
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        scheduler = _scheduler(optimizer, TrainConfig(epochs=1, lr=0.1, schedule=schedule), total_steps=total)
        lrs = []
        for _ in range(total):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert all(0 < lr <= 0.1 + 1e-9 for lr in lrs), (total, lrs)


def test_linear_schedule_warms_up_then_decays_to_almost_zero():
    from ikd.train import _scheduler

    config = TrainConfig(epochs=1, lr=0.2, schedule="linear")
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=config.lr)
    scheduler = _scheduler(optimizer, config, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.02) and max(lrs) == pytest.approx(0.2, rel=0.02)
    assert 15 <= lrs.index(max(lrs)) <= 21 and lrs[-1] < 0.003


def test_training_layout_is_channels_last_where_it_was_measured_faster():
    from ikd.runtime import training_layout

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bf16, fp32 = torch.bfloat16, None
    wide = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[8], [4]]))
    narrow = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[4], [64]]))
    assert training_layout(wide, cpu, bf16) == torch.channels_last
    assert training_layout(narrow, cpu, bf16) == torch.contiguous_format  # judged by its first convolution
    assert training_layout(wide, cpu, fp32) == training_layout(narrow, cpu, fp32) == torch.contiguous_format
    assert training_layout(narrow, cuda, bf16) == torch.channels_last


def test_bf16_training_returns_a_contiguous_model_that_can_be_saved(digits, tmp_path):
    # bf16 trains in the channels-last layout; saving (safetensors) needs the standard one back.
    model = build_model(small_spec(digits), seed=0)
    config = TrainConfig(epochs=1, batch_size=64, precision="bf16", device="cpu", max_steps_per_epoch=2)
    train_model(model, digits, config, progress=False)
    assert all(t.is_contiguous() for t in model.state_dict().values())
    save_model(tmp_path / "m", model, {})


def test_give_up_stops_one_model_early_and_the_others_train_on_as_if_alone(digits):
    from ikd.train import train_models

    config = TrainConfig(epochs=4, batch_size=64, precision="fp32", device="cpu", seed=2, max_steps_per_epoch=4)

    def give_up(description, history):
        return "hopeless" if description == "quitter" and len(history) == 2 else None

    models = [build_model(small_spec(digits), seed=1), build_model(small_spec(digits), seed=2)]
    reported: list[str] = []
    quitter, stayer = train_models(
        models, digits, config, progress=False, descriptions=["quitter", "stayer"], give_up=give_up,
        on_epoch=lambda description, record: reported.append(description),
    )  # fmt: skip
    assert isinstance(quitter, TrainResult) and isinstance(stayer, TrainResult)
    assert quitter.stopped_early == "hopeless" and len(quitter.history) == 2 and quitter.best_epoch <= 2
    assert reported.count("quitter") == 2  # its last epoch too (TensorBoard showed it only after a resume)
    assert stayer.stopped_early is None and len(stayer.history) == 4
    alone = build_model(small_spec(digits), seed=2)
    train_model(alone, digits, config, progress=False)
    for name, tensor in alone.state_dict().items():
        assert torch.equal(tensor, models[1].state_dict()[name]), name


def test_an_ema_horizon_under_one_step_is_the_weights_themselves(digits):
    # 0.1 epochs of 5 steps gave a decay of -1: an EMA extrapolating 2 x weights - previous average
    config = TrainConfig(epochs=1, batch_size=64, precision="fp32", device="cpu", max_steps_per_epoch=5, ema_epochs=0.1)
    [record] = train_model(build_model(small_spec(digits), seed=0), digits, config, progress=False).history
    assert record.ema_val_accuracy == record.val_accuracy and record.ema_val_loss == pytest.approx(record.val_loss)


def test_bn_sparsity_pulls_the_batchnorm_scales_towards_zero(digits):
    def scales_after(bn_sparsity: float) -> torch.Tensor:
        model = build_model(small_spec(digits), seed=0)
        config = TrainConfig(epochs=2, batch_size=32, precision="fp32", device="cpu", seed=0, bn_sparsity=bn_sparsity)
        train_model(model, digits, config, progress=False)
        bns = [m.weight.detach().abs() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        return torch.cat(bns)

    plain, sparse = scales_after(0.0), scales_after(0.05)
    assert sparse.mean() < 0.5 * plain.mean()
    # channels separate rather than shrink alike: the spread relative to the mean is what slim ranks by
    assert sparse.std() / sparse.mean() > 3 * plain.std() / plain.mean()


def test_a_model_near_chance_is_warned_about():
    from ikd.train import near_chance

    assert "near chance (0.100 for 10 classes)" in (near_chance(0.118, 10) or "")
    assert near_chance(0.5, 10) is None
    assert near_chance(0.55, 2) is not None and near_chance(0.56, 2) is None


@pytest.mark.parametrize("schedule", ["onecycle", "linear", "cosine"])
def test_recorded_momentum_is_what_sgd_used(schedule):
    # model.json's momentum_used: the one-cycle schedules override the configured momentum
    from ikd.train import _scheduler

    config = TrainConfig(epochs=1, lr=0.1, momentum=0.5, schedule=schedule)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=config.lr, momentum=config.momentum)
    scheduler = _scheduler(optimizer, config, total_steps=100)
    used = []
    for _ in range(100):
        group = optimizer.param_groups[0]
        used.append((group["lr"], group["momentum"]))
        optimizer.step()
        scheduler.step()
    at_peak = max(used)[1]
    assert [used[0][1], at_peak, used[-1][1]] == pytest.approx(config.momentum_used(), abs=1e-3)


def test_flipped_views_average_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 10)
    # a model that is not mirror-symmetric: its answer on an image and on its mirror differ
    model = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[4], [8]]), seed=0)
    with torch.no_grad():
        for parameter in model.parameters():  # larger weights: a fresh model barely tells the views apart
            parameter.normal_(0, 1)
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    kwargs: dict[str, Any] = {
        "mean": [0.5],
        "std": [0.25],
        "device": torch.device("cpu"),
        "precision": fp32,
        "batch_size": 16,
    }
    predicted, loss_sum = predict(model, images, views="flip", **kwargs)

    model.eval()
    x = (images.images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
    by_hand = (plain + mirrored) / 2
    assert torch.equal(predicted, by_hand.argmax(1))
    assert loss_sum == pytest.approx(torch.nn.functional.cross_entropy(by_hand, images.labels, reduction="sum").item())
    plain_loss = torch.nn.functional.cross_entropy(plain, images.labels, reduction="sum").item()
    assert abs(plain_loss - loss_sum) > 1.0  # else the check above could not fail
    assert torch.equal(predict(model, images, **kwargs)[0], plain.argmax(1))
    # flip-shift: that pair (weight 1/2) and the pairs one pixel up-left and down-right (1/4 each), reflect-padded
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():
        pairs = [(model(v) + model(v.flip(-1))) / 2 for v in (padded[..., :-2, :-2], padded[..., 2:, 2:])]
    shifted_by_hand = by_hand / 2 + (pairs[0] + pairs[1]) / 4
    predicted, shifted_loss = predict(model, images, views="flip-shift", **kwargs)
    assert torch.equal(predicted, shifted_by_hand.argmax(1))
    expected = torch.nn.functional.cross_entropy(shifted_by_hand, images.labels, reduction="sum").item()
    assert shifted_loss == pytest.approx(expected) and abs(shifted_loss - loss_sum) > 1.0
    with pytest.raises(ConfigError, match="views='rotate'"):
        predict(model, images, views="rotate", **kwargs)  # type: ignore[arg-type]


def test_label_smoothing_beside_an_objective_of_its_own_is_refused_not_recorded_unused(digits):
    # a distillation objective has its own, unsmoothed CE term: the setting would be recorded and never used
    model = build_model(small_spec(digits), seed=0)
    config = TrainConfig(epochs=1, batch_size=64, label_smoothing=0.1, precision="fp32", device="cpu")
    with pytest.raises(ConfigError, match=r"label_smoothing 0\.1: smooths the plain cross-entropy only.*expected 0"):
        train_model(model, digits, config, objective=cross_entropy_objective(), progress=False)
    train_model(model, digits, config, progress=False)  # without an objective it smooths, as asked
