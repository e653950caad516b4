"""Train -> score on the test split -> write a model directory: the sequence `ikd train`, a
campaign's root teacher and every distilled student end with, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ikd.checkpoint import save_model, training_metadata
from ikd.data import DataSplits
from ikd.model import VGG
from ikd.runtime import resolve_device, resolve_precision
from ikd.train import EpochCallback, TrainConfig, TrainResult, evaluate, train_model
from ikd.train_state import remove_state


def save_trained(
    out: Path,
    model: VGG,
    data: DataSplits,
    *,
    config: TrainConfig,
    result: TrainResult,
    val_fraction: float,
    split_seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Score `model` (holding its best-by-validation weights) on the test split, reported only, and
    write `out/model.safetensors` + `model.json`; returns the test metrics."""
    device = resolve_device(config.device)
    test = evaluate(
        model.to(device),
        data.test,
        mean=data.mean,
        std=data.std,
        device=device,
        precision=resolve_precision(config.precision, device),
    )
    save_model(
        out,
        model,
        training_metadata(
            data=data,
            val_fraction=val_fraction,
            split_seed=split_seed,
            spec=model.spec,
            config=config,
            result=result,
            test=test,
            extra=extra,
        ),
    )
    return test


def fit(
    model: VGG,
    data: DataSplits,
    config: TrainConfig,
    *,
    out: Path,
    val_fraction: float,
    split_seed: int,
    progress: bool = True,
    description: str = "train",
    on_epoch: EpochCallback | None = None,
    state_dir: Path | None = None,
    discard_foreign_state: bool = False,
    deadline: float | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """Train from scratch with cross-entropy, then `save_trained`: (result, test metrics).

    With `state_dir` the training resumes from (and keeps) its state there until the model is
    saved, then removes it; `deadline` as in train_model (TrainingPaused)."""
    result = train_model(
        model,
        data,
        config,
        progress=progress,
        description=description,
        on_epoch=on_epoch,
        state_dir=state_dir,
        discard_foreign_state=discard_foreign_state,
        deadline=deadline,
    )
    tested = save_trained(
        out, model, data, config=config, result=result, val_fraction=val_fraction, split_seed=split_seed
    )
    if state_dir is not None:
        remove_state(state_dir)
    return result, tested
