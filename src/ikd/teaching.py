"""The teachers of one distillation step (`ikd distill`): each loaded from the directory `ikd train` or
`ikd distill` wrote, checked to have trained on the student's own split, combined into one objective as
a campaign's ensemble is (config.EnsembleConfig), and recorded in the student's model.json."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ikd.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    load_model,
    misfit,
    other_images,
    read_metadata,
    recorded_data_dir,
    recorded_split,
    trained_augmentation,
)
from ikd.config import EnsembleConfig
from ikd.data import DataSplits, load_dataset
from ikd.data.paths import same_place
from ikd.errors import ConfigError
from ikd.external import module_digest
from ikd.lineage import file_sha256
from ikd.model import VGG
from ikd.objective import DistillationObjective, LossWeights, build_objective
from ikd.runtime import resolve_device
from ikd.views import unfitting_views

# what a student's record keeps of how several teachers combined (the ancestors/experts keys are a campaign's)
RECORDED_ENSEMBLE_KEYS = {"aggregate", "weighting", "drop", "hints"}


def named_twice(directories: Sequence[str | Path]) -> str | Path | None:
    """The first of `directories` that names the same place as another (`d/`, `d/../d` and a link to d are one)."""
    places = [same_place(d) for d in directories]
    return next((d for d, place in zip(directories, places, strict=True) if places.count(place) > 1), None)


@dataclass
class Teacher:
    """One teacher: its directory, the model and its model.json."""

    directory: Path
    model: VGG
    metadata: dict[str, Any]

    @functools.cached_property
    def digest(self) -> str:
        """Its weights' SHA-256: a training resumed under a retrained teacher would be another job."""
        return module_digest(self.model)

    @classmethod
    def load(cls, directory: Path, *, views: str, device: str) -> Teacher:
        """`views`: the test-time views it teaches from (`--teacher-views`), refused unless it trained on them."""
        metadata = read_metadata(directory)
        if why := unfitting_views(views, trained_augmentation(metadata), str(directory), "--teacher-views"):
            raise ConfigError(why)
        model, _ = load_model(directory, map_location=resolve_device(device))
        return cls(directory, model, metadata)

    def split(self) -> tuple[Any, ...]:
        """(dataset, val_fraction, split_seed, image_size): which images it trained on and was validated on."""
        record = self.metadata.get("dataset", {})
        return (record.get("name"), *recorded_split(record))

    def val_accuracy(self) -> float | None:
        return self.metadata.get("metrics", {}).get("best", {}).get("val_accuracy")

    def record(self) -> dict[str, Any]:
        """What the student's model.json keeps of it."""
        return {
            "dir": str(self.directory),
            "path": str(self.directory.resolve()),  # found again from another working directory
            "sha256": file_sha256(self.directory / WEIGHTS_FILE),  # and known for the same weights
            "arch": self.metadata.get("size", {}).get("summary"),
            "params": self.metadata.get("size", {}).get("params"),
            "val_accuracy": self.val_accuracy(),
            "test_accuracy": self.metadata.get("metrics", {}).get("test_of_saved_weights", {}).get("accuracy"),
        }


@dataclass
class Teaching:
    """The teachers (the first gives the data, the split and, by default, the hint) and the loss they teach with."""

    teachers: list[Teacher]
    loss: LossWeights
    ensemble: EnsembleConfig

    @classmethod
    def load(
        cls, directories: list[Path], loss: LossWeights, ensemble: EnsembleConfig, *, views: str, device: str
    ) -> Teaching:
        if twice := named_twice(directories):
            raise ConfigError(f"teacher {twice}: named twice; expected each TEACHER_DIR once")
        return cls([Teacher.load(d, views=views, device=device) for d in directories], loss, ensemble)

    def data(self, data_dir: str | None) -> tuple[DataSplits, float, int]:
        """The first teacher's dataset with its validation split, and that split's (val_fraction, split_seed):
        images a teacher trained on must not decide anything about the student, so every teacher must have
        trained on this split."""
        first = self.teachers[0]
        record = first.metadata.get("dataset", {})
        if not record.get("name"):
            raise ConfigError(f"{first.directory / META_FILE}: names no dataset; expected a model trained by ikd")
        name, val_fraction, split_seed, image_size = first.split()
        data = load_dataset(
            name,
            data_dir or recorded_data_dir(record),
            val_fraction=val_fraction,
            split_seed=split_seed,
            image_size=image_size,
        )
        for teacher in self.teachers:
            if teacher.split()[:3] == first.split()[:3] and teacher.split()[3] != first.split()[3]:
                raise ConfigError(
                    f"teacher {teacher.directory}: takes {teacher.split()[3]}-pixel images, teacher {first.directory} "
                    f"{first.split()[3]}-pixel ones; the teachers must see the student's images at one size"
                )
            if teacher.split() != first.split():
                raise ConfigError(
                    f"teacher {teacher.directory}: trained on dataset/val_fraction/split_seed/image_size "
                    f"{teacher.split()}, teacher {first.directory} on {first.split()}; the student's validation images "
                    "would include some a teacher trained on"
                )
            teacher_record = teacher.metadata.get("dataset", {})
            if why := misfit(teacher.model.spec, teacher_record, data) or other_images(teacher_record, data):
                raise ConfigError(f"teacher {teacher.directory}: {why}")
        return data, val_fraction, split_seed

    def weights(self) -> list[float]:
        return self.ensemble.teacher_weights([t.val_accuracy() for t in self.teachers])

    def objective(self, student: VGG, *, seed: int, steps_per_epoch: int) -> DistillationObjective:
        return build_objective(
            student,
            [t.model for t in self.teachers],
            self.loss,
            teacher_weights=self.weights(),
            hints=self.ensemble.hints,
            aggregate=self.ensemble.aggregate,
            drop=self.ensemble.drop,
            seed=seed,
            steps_per_epoch=steps_per_epoch,
            teacher_digests=[t.digest for t in self.teachers],
        )

    def record(self) -> dict[str, Any]:
        """What the student's model.json keeps of its teachers and loss: `teacher` for one, `teachers` and
        `ensemble` for several."""
        if len(self.teachers) == 1:
            return {"teacher": self.teachers[0].record(), "loss": self.loss.model_dump()}
        return {
            "teachers": [t.record() for t in self.teachers],
            "loss": self.loss.model_dump(),
            "ensemble": self.ensemble.model_dump(include=RECORDED_ENSEMBLE_KEYS) | {"teacher_weights": self.weights()},
        }
