"""A model directory: `model.safetensors` (weights only) + `model.json` (spec, data, metrics).

Weights are only ever read from safetensors and metadata only from JSON: nothing is unpickled.
Files are written to a temporary name and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from ikd._version import __version__
from ikd.arch import ArchSpec
from ikd.atomic import atomic_write_bytes, atomic_write_json
from ikd.data.splits import check_split_seed, check_val_fraction
from ikd.errors import CheckpointError, DataError, first_validation_error
from ikd.model import VGG, build_model

if TYPE_CHECKING:
    from ikd.data import DataSplits
    from ikd.train import TrainConfig, TrainResult

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as safetensors can write it: on the host, each tensor contiguous."""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}


def save_model(directory: Path, model: VGG, metadata: dict[str, Any]) -> None:
    """Write weights then metadata; `metadata["arch"]` is filled from the model's spec."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / WEIGHTS_FILE, safetensors.torch.save(cpu_state_dict(model)))
    atomic_write_json(directory / META_FILE, {**metadata, "arch": model.spec.to_json_dict()})


def describe_dataset(data: DataSplits, val_fraction: float, split_seed: int) -> dict[str, Any]:
    """What a model was trained on, including the normalisation it expects and the split it used."""
    return {
        "name": data.name,
        "source": data.source,
        "classes": list(data.classes),
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "mean": list(data.mean),
        "std": list(data.std),
        "augment": data.augment,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        **({"decoder": data.decoder} if data.decoder else {}),
    }


def recorded_data_dir(record: dict[str, Any]) -> str | None:
    """Where a model's image folder was read (its dataset record's `source`): the default data
    directory for an `imagefolder` model, which has no place of its own to be looked for."""
    source = record.get("source")
    return str(source) if record.get("name") == "imagefolder" and source else None


def other_shape(spec: ArchSpec, data: DataSplits) -> str | None:
    """Why `data` cannot go through a model built as `spec` (None: it can)."""
    expects = (spec.in_channels, spec.image_size, spec.num_classes)
    has = (data.in_channels, data.image_size, data.num_classes)
    if expects == has:
        return None
    return (
        f"expects {spec.in_channels}x{spec.image_size}x{spec.image_size} images and {spec.num_classes} classes; "
        f"the data has {data.in_channels}x{data.image_size}x{data.image_size} and {data.num_classes}"
    )


def other_classes(record: dict[str, Any], data: DataSplits) -> str | None:
    """Why `data` is not labelled as the model's dataset record says (None: it is, or the record
    names no classes): the same count of classes in another order would score as a worse model."""
    recorded = [str(c) for c in record.get("classes") or []]
    if not recorded or recorded == [str(c) for c in data.classes]:
        return None
    if len(recorded) != len(data.classes):
        return f"was trained on {len(recorded)} classes, the data has {len(data.classes)}"
    i = next(i for i, (a, b) in enumerate(zip(recorded, data.classes, strict=True)) if a != str(b))
    return (
        f"was trained with class {i} = {recorded[i]!r}, the data has {str(data.classes[i])!r} there; "
        "its labels would not line up (same class folders expected)"
    )


def other_images(record: dict[str, Any], data: DataSplits) -> str | None:
    """Why `data` is not the split of images a model's dataset record describes (None: it is, as far as the
    record says): other split sizes or normalisation statistics mean other files, so images the model
    trained on could sit in this validation split."""
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    was = (record.get("sizes", sizes), list(record.get("mean", data.mean)), list(record.get("std", data.std)))
    if was == (sizes, list(data.mean), list(data.std)):
        return None
    return (
        f"saw other images (split sizes {was[0]}, mean {was[1]}); the data loaded now has {sizes}, mean "
        f"{list(data.mean)}: --data-dir points at other files?"
    )


def misfit(spec: ArchSpec, record: dict[str, Any], data: DataSplits) -> str | None:
    """Why `data` cannot be scored by a model built as `spec` whose dataset record is `record`: other
    image shapes or class count, or its classes in another order (None: it fits)."""
    return other_shape(spec, data) or other_classes(record, data)


def recorded_split(record: dict[str, Any]) -> tuple[float, int, int | None]:
    """(val_fraction, split_seed, image_size) of a model's dataset record: the split and size to load its
    data with (ikd's defaults where a record older than them has none)."""
    return record.get("val_fraction", 0.1), record.get("split_seed", 0), record.get("image_size")


def trained_augmentation(metadata: dict[str, Any]) -> str | None:
    """The augmentation a model was trained with, from its model.json (None: not on record). Records older than
    `augment_used` name the requested one, or none, meaning the dataset's own, which training used."""
    training = metadata.get("training", {})
    return training.get("augment_used") or training.get("augment") or metadata.get("dataset", {}).get("augment")


def recorded_teachers(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The teachers a distilled model's model.json records (`ikd distill`: `teacher` for one, `teachers` for
    several, the first giving the hint); [] for a model trained alone."""
    teachers = metadata.get("teachers") if "teachers" in metadata else [metadata.get("teacher")]
    return [t for t in teachers or [] if isinstance(t, dict)]


def dataset_record(metadata: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A model's dataset record, which every evaluation and export normalises and checks with."""
    record = metadata.get("dataset")
    if not isinstance(record, dict) or not record:
        raise CheckpointError(
            f"{Path(directory) / META_FILE}: has no 'dataset' record; expected a model trained by ikd"
        )
    return record


def describe_size(spec: ArchSpec) -> dict[str, Any]:
    return {
        "params": spec.num_params(),
        "live_params": spec.live_params(),
        "size_bytes_fp32": spec.size_bytes_fp32(),
        "stored_tensor_bytes": spec.stored_tensor_bytes(),
        "macs": spec.macs(),
        "summary": spec.summary(),
    }


def training_metadata(
    *,
    data: DataSplits,
    val_fraction: float,
    split_seed: int,
    spec: ArchSpec,
    config: TrainConfig,
    result: TrainResult,
    test: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model.json document of a trained model (the spec itself is added by save_model)."""
    history = result.to_json_dict()["history"]
    best, last = history[result.best_epoch - 1], history[-1]
    return {
        "ikd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": describe_dataset(data, val_fraction, split_seed),
        "size": describe_size(spec),
        "training": config.model_dump()
        | {
            "resolved_device": result.device,
            "resolved_precision": result.precision,
            "augment_used": result.augment,
            "momentum_used": config.momentum_used(),  # the one-cycle schedules cycle it, overriding `momentum`
            "seconds": round(result.seconds, 2),  # training and validation, summed over its sessions
            "sessions": result.sessions,
            "machine": result.machine,  # where it finished
        },
        "metrics": {
            # the saved weights' own score: the EMA's when it was the better of the best epoch's two
            "best": {
                "epoch": best["epoch"],
                "val_accuracy": result.best_val_accuracy,
                "weights": result.best_weights,
                "val_loss": best["val_loss" if result.best_weights == "raw" else "ema_val_loss"],
            },
            "last": {"epoch": last["epoch"], "val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"]},
            "test_of_saved_weights": {"accuracy": test["accuracy"], "n": test["n"]},
        },
        "history": history,
        **(extra or {}),
    }


def read_metadata(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a model directory written by `ikd train`")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, JSON or a huge number
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or "arch" not in document:
        raise CheckpointError(f"{path}: expected a JSON object with an 'arch' key")
    if (why := _shape_problem(document) or _dataset_problem(document.get("dataset", {}), document["arch"])) is not None:
        raise CheckpointError(f"{path}: {why}")
    return document


# the sections every command reads as objects (or, history, as a list of epochs) when they are there
_OBJECT_KEYS = ("arch", "dataset", "size", "training", "metrics", "teacher", "loss")


def _shape_problem(document: dict[str, Any]) -> str | None:
    for key in _OBJECT_KEYS:
        if key in document and not isinstance(document[key], dict):
            return f"'{key}' is {type(document[key]).__name__}; expected an object"
    if "history" in document and not isinstance(document["history"], list):
        return f"'history' is {type(document['history']).__name__}; expected a list of epochs"
    return None


def _dataset_problem(record: Any, arch: dict[str, Any]) -> str | None:
    """What is wrong with a model's dataset record, whose mean and std every evaluation and export
    normalises with and whose class names label its outputs (None: nothing, or it is absent); a std
    of 0 would divide by zero."""
    if not isinstance(record, dict):
        return f"'dataset' is {type(record).__name__}; expected an object"
    if "name" in record and not isinstance(record["name"], str):
        return f"dataset.name is {record['name']!r}; expected the dataset's name"
    if "classes" in record:
        classes, outputs = record["classes"], arch.get("num_classes")
        names = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        if not names or len(set(classes)) != len(classes) or (isinstance(outputs, int) and len(classes) != outputs):
            return (
                f"dataset.classes is {str(classes)[:80]}; expected a list of distinct class names, one per output "
                f"of the model (arch.num_classes {outputs})"
            )
    size = record.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        return f"dataset.image_size is {size!r}; expected a positive number of pixels"
    for key in ("mean", "std"):
        if key not in record:
            continue
        values = record[key]
        numbers = (
            isinstance(values, list)
            and values
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        )
        if not numbers or (key == "std" and min(values) <= 0):
            limit = " above 0" if key == "std" else ""
            return f"dataset.{key} is {values!r}; expected a list of finite numbers{limit}, one per channel"
    try:  # the split every evaluation reloads (absent in records older than it: the defaults)
        check_val_fraction(record.get("val_fraction", 0.1))
        check_split_seed(record.get("split_seed", 0))
    except DataError as exc:
        return f"dataset.{exc}"
    return None


def load_model(directory: Path, map_location: str | torch.device = "cpu") -> tuple[VGG, dict[str, Any]]:
    """Rebuild the model from its spec and load its weights; any disagreement is a CheckpointError."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    try:
        spec = ArchSpec.model_validate(metadata["arch"])
    except ValidationError as exc:
        where, first = first_validation_error(exc)
        raise CheckpointError(f"{directory / META_FILE}: invalid arch.{where}: {first['msg']}") from None
    record = metadata.get("dataset", {})
    for key in ("mean", "std"):
        if key in record and len(record[key]) != spec.in_channels:
            raise CheckpointError(
                f"{directory / META_FILE}: dataset.{key} has {len(record[key])} values for a model of "
                f"{spec.in_channels} input channel(s); expected one per channel"
            )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found")
    try:
        state = load_file(weights, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    needed, stored = spec.stored_tensor_bytes(), sum(t.numel() * t.element_size() for t in state.values())
    if needed > stored:  # checked before the model is built: a spec alone could ask for terabytes
        raise CheckpointError(
            f"{weights}: weights do not match the spec in {META_FILE} (the spec needs "
            f"{needed:,} bytes of tensors, the file holds {stored:,})"
        )
    model = build_model(spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    wrong_dtype = [k for k in expected if k in state and state[k].dtype != expected[k].dtype]
    if missing or unexpected or wrong_shape or wrong_dtype:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
                ("wrong dtype", wrong_dtype),
            )
            if keys
        )
        raise CheckpointError(f"{weights}: weights do not match the spec in {META_FILE} ({detail})")
    not_finite = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not_finite:  # ikd never saves a diverged model, so these bytes were damaged
        raise CheckpointError(
            f"{weights}: NaN or infinite values in {', '.join(not_finite[:3])}"
            f"{' ...' if len(not_finite) > 3 else ''}; expected finite weights"
        )
    model.load_state_dict(state)
    return model.to(map_location), metadata
