"""Resumable training: epoch-level state, bit-identical continuation, damaged states, time limits."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ikd.arch import ArchSpec

from ikd.data import load_dataset
from ikd.errors import CheckpointError, ConfigError
from ikd.model import build_model
from ikd.train import EpochRecord, TrainConfig, TrainingPaused, train_model, train_models
from ikd.train_state import StateStore

EPOCHS = 3
CONFIG = TrainConfig(epochs=EPOCHS, batch_size=32, precision="fp32", device="cpu", seed=1, max_steps_per_epoch=6)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def spec(data) -> ArchSpec:
    # dropout, so the global random stream matters too
    return ArchSpec(
        in_channels=data.in_channels,
        image_size=data.image_size,
        num_classes=data.num_classes,
        blocks=[[8], [16]],
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
        train_model(build_model(spec(digits), seed=1), digits, CONFIG, progress=False, state_dir=state_dir,
                    on_epoch=stop_after(stop))
    # a fresh model with other initial weights: everything must come from the state
    model = build_model(spec(digits), seed=99)
    result = train_model(model, digits, CONFIG, progress=False, state_dir=state_dir)
    assert_same_weights(model, straight[0])
    assert comparable(result.history) == comparable(straight[1].history)
    assert result.best_epoch == straight[1].best_epoch
