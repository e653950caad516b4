"""What every step of a campaign needs: its config, run directory, device, precision, data (read
once, on first use), the executor its passes run on (started on first use) and a way to say what
it is doing."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ikd.config import CampaignConfig, OptimConfig, TeacherConfig, parse_duration
from ikd.data import DataSplits, ImageSet
from ikd.executor import LocalExecutor, RayExecutor
from ikd.lineage import RunDir
from ikd.runtime import Precision, resolve_device, resolve_precision
from ikd.train import EpochRecord, TrainConfig, evaluate
from ikd.train_state import STATE_DIR


class EpochLog(Protocol):
    """An EpochCallback (it sees each finished epoch) that the campaign closes when it ends."""

    def __call__(self, description: str, record: EpochRecord, /) -> None: ...

    def close(self) -> None: ...


@dataclass
class CampaignContext:
    config: CampaignConfig
    run: RunDir
    progress: bool = True
    on_epoch: EpochLog | None = None
    device: torch.device = field(init=False)
    precision: Precision = field(init=False)
    deadline: float | None = field(init=False)  # wall-clock end of `time_limit`, counted from here
    _data: DataSplits | None = field(default=None, init=False)
    _executor: LocalExecutor | RayExecutor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)
        limit = self.config.time_limit
        self.deadline = time.time() + parse_duration(limit, "time_limit") if limit is not None else None

    @property
    def state_root(self) -> Path:
        """Where unfinished training jobs keep their state, one directory each, removed once saved."""
        return self.run.path / STATE_DIR

    def time_is_up(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def log(self, message: str) -> None:
        if self.progress:
            print(f"ikd: {message}", file=sys.stderr)

    def warn(self, message: str) -> None:
        """What the user must see even under --quiet."""
        print(f"ikd: warning: {message}", file=sys.stderr)

    @property
    def data(self) -> DataSplits:
        if self._data is None:
            self._data = self.config.data.load()
        return self._data

    def executor(self) -> LocalExecutor | RayExecutor:
        if self._executor is None:
            chosen = self.config.executor
            if chosen.kind == "ray":
                self._executor = RayExecutor(
                    self.data,
                    address=chosen.ray_address,
                    cpus_per_job=chosen.cpus_per_job,
                    gpus_per_job=chosen.gpus_per_job,
                    precision=self.config.precision,
                    on_epoch=self.on_epoch,
                    log=self.log,
                )
            else:
                self._executor = LocalExecutor(
                    self.data, self.device, progress=self.progress, on_epoch=self.on_epoch, log=self.log
                )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
        if self.on_epoch is not None:
            self.on_epoch.close()

    def accuracy(self, model: torch.nn.Module, split: ImageSet) -> float:
        data = self.data
        return evaluate(model, split, mean=data.mean, std=data.std, device=self.device, precision=self.precision)[
            "accuracy"
        ]

    def train_config(self, section: OptimConfig, epochs: int | None = None, seed_offset: int = 0) -> TrainConfig:
        """A job's optimiser settings from a config section, on the resolved device and precision."""
        return section_train_config(
            section, epochs or section.epochs, self.precision, self.device, self.config.seed + seed_offset
        )


def section_train_config(
    section: OptimConfig, epochs: int, precision: Precision, device: torch.device, seed: int
) -> TrainConfig:
    """The optimiser settings of a `teacher:` or `student:` section as one training job's config."""
    return TrainConfig(
        epochs=epochs,
        batch_size=section.batch_size,
        lr=section.lr,
        weight_decay=section.weight_decay,
        schedule=section.schedule,
        augment=section.augment,
        ema_epochs=section.ema_epochs,
        bn_sparsity=section.bn_sparsity,
        # students' cross-entropy belongs to their distillation objective
        label_smoothing=section.label_smoothing if isinstance(section, TeacherConfig) else 0.0,
        precision=precision.name,
        device=device.type,
        seed=seed,
    )
