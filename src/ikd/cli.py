"""The `ikd` command. User mistakes print one line on stderr and exit 2; tracebacks only with --debug.

Exit codes: 0 done; 1 internal error (a bug) or a closed output pipe; 2 a user error (one line on
stderr); 75 stopped by --time-limit at an epoch boundary, state saved, or a campaign stopped on
candidates lost with their Ray workers: rerun the same command to resume; 130 interrupted (Ctrl-C or
SIGTERM): finished work is kept, the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import torch
from pydantic import ValidationError

from ikd import distributed, rules
from ikd._version import __version__
from ikd.arch import LAYOUT_EXAMPLE, PRESETS, check_arch, millions, preset, preset_for
from ikd.atomic import cannot_make_dir
from ikd.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    describe_size,
    load_model,
    misfit,
    read_metadata,
    recorded_data_dir,
    recorded_split,
    recorded_teachers,
    trained_augmentation,
)
from ikd.compare import compare_predictions
from ikd.config import (
    EnsembleConfig,
    Flag,
    TeacherConfig,
    command_line_flags,
    load_config,
    parse_duration,
    plain_type,
)
from ikd.data import AUGMENTATIONS, DATASETS, DataSplits, load_dataset
from ikd.data.paths import same_place
from ikd.dirlock import held
from ikd.errors import ConfigError, ForeignStateError, IkdError
from ikd.fit import save_trained
from ikd.lineage import LINEAGE_FILE, NO_NODE_YET, campaign_of_node
from ikd.model import VGG, Ensemble, build_model
from ikd.objective import LossWeights
from ikd.runtime import DEVICES, PRECISIONS, resolve_device, resolve_precision
from ikd.teaching import Teaching, named_twice
from ikd.train import (
    SCHEDULES,
    TrainConfig,
    TrainingPaused,
    TrainResult,
    near_chance,
    predict,
    score,
    steps_per_epoch,
    train_model,
)
from ikd.train_state import MOVED_KEYS, STATE_DIR, remove_state
from ikd.views import VIEWS, unfitting_views

EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits' EX_TEMPFAIL: stopped by --time-limit, the same command resumes
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 1  # what Python itself exits with on EPIPE


T = TypeVar("T", TrainConfig, LossWeights, EnsembleConfig)


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler, systemd) stops ikd the way Ctrl-C does: the node in training is
    abandoned, every finished one stays, and rerunning the command resumes."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are reported like every other ikd error: one line, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"ikd: error: {message} (see `{self.prog} --help`)\n")


def _validated(model: type[T], flags: dict[str, str] | None = None, **values) -> T:
    """A settings model built from command-line values; a bad value is named by its flag (`flags`: key -> flag,
    where it is not the key's own name)."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across values (no flag of its own): pydantic's message names them
            raise ConfigError(first["msg"].removeprefix("Value error, ")) from None
        key = str(first["loc"][0])
        flag = (flags or {}).get(key) or "--" + key.replace("_", "-")
        raise ConfigError(f"{flag} {first.get('input')!r}: {first['msg']}") from None


def cmd_train(args: argparse.Namespace) -> int:
    return _train(args)


def cmd_distill(args: argparse.Namespace) -> int:
    return _train(args, distilled=True)


# `ikd distill`'s flags for combining several teachers, and their config.EnsembleConfig keys
ENSEMBLE_FLAGS = {"--aggregate": "aggregate", "--weighting": "weighting", "--teacher-drop": "drop", "--hints": "hints"}


def _teaching_settings(args: argparse.Namespace) -> tuple[LossWeights, EnsembleConfig]:
    """`ikd distill`'s loss and the way its teachers combine, from its flags alone (no teacher loaded yet); a
    flag the loss or the number of teachers makes moot is refused rather than recorded as if it had been used."""
    directories = args.teachers
    loss = _validated(LossWeights, **{key: getattr(args, key) for key in LossWeights.model_fields})
    ensemble = _validated(
        EnsembleConfig,
        {key: flag for flag, key in ENSEMBLE_FLAGS.items()},
        **{key: getattr(args, flag.removeprefix("--").replace("-", "_")) for flag, key in ENSEMBLE_FLAGS.items()},
    )
    defaults = EnsembleConfig()
    given = [flag for flag, key in ENSEMBLE_FLAGS.items() if getattr(ensemble, key) != getattr(defaults, key)]
    if len(directories) == 1 and given:
        raise ConfigError(f"{given[0]}: combines several teachers; expected two or more TEACHER_DIRs, got one")
    if loss.alpha == 0 and (moot := [f for f in given if f in ("--aggregate", "--teacher-drop")]):
        raise ConfigError(f"{moot[0]}: combines the teachers' KD terms, and --alpha 0 leaves none; drop one of them")
    if loss.gamma == 0 and ensemble.hints == "each":
        raise ConfigError(
            "--hints each: gives every teacher a hint, and --gamma 0 leaves no hint term; drop one of them"
        )
    return loss, ensemble


def _teaching(args: argparse.Namespace, settings: tuple[LossWeights, EnsembleConfig] | None = None) -> Teaching:
    """`ikd distill`'s teachers, loaded, with the loss they teach with (`settings`: already read from the flags)."""
    loss, ensemble = settings or _teaching_settings(args)
    directories = [Path(d) for d in args.teachers]
    return Teaching.load(directories, loss, ensemble, views=args.teacher_views, device=args.device)


def _train(args: argparse.Namespace, distilled: bool = False) -> int:
    """`ikd train`, and `ikd distill` when `distilled` (its TEACHER_DIRs in args.teachers): the model directory
    held for this command alone (two would interleave their epochs and could mix their files)."""
    started = time.monotonic()  # the time limit counts data loading too
    out = Path(args.out)
    if not args.out.strip():  # an unset shell variable: Path('') would be the current directory
        raise ConfigError("--out '': expected a directory for the model, not an empty string")
    if why := cannot_make_dir(out):
        raise ConfigError(f"--out {args.out}: {why}; expected a directory for the model")
    time_limit = parse_duration(args.time_limit) if args.time_limit is not None else None
    config = _validated(
        TrainConfig,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        augment=args.augment,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        label_smoothing=getattr(args, "label_smoothing", 0.0),  # distill: its loss has its own CE term, unsmoothed
        ema_epochs=args.ema_epochs,
        bn_sparsity=args.bn_sparsity,
    )
    resolve_precision(config.precision, resolve_device(config.device))  # refused before minutes of data loading
    settings = _teaching_settings(args) if distilled else None  # a bad flag is refused as itself, not as "in use"
    _refuse_a_trained_model(out, args)
    # Rank 0 holds it under torchrun: it alone saves. The lock file goes with the lock, so a refusal after it
    # (another job's state, unfit teachers or data) leaves the directory as it was.
    hold = held(out, f"ikd {args.command}", what="model directory", leave_lock=False)
    with hold if distributed.saves_here() else contextlib.nullcontext():
        _refuse_a_trained_model(out, args)  # what another command may have finished meanwhile
        return _train_held(args, settings, config, out, started, time_limit)


def _refuse_a_trained_model(out: Path, args: argparse.Namespace) -> None:
    # a teacher is read while its student trains, and --force would clear it first: both would be lost
    if any(same_place(teacher) == same_place(out) for teacher in getattr(args, "teachers", None) or ()):
        raise ConfigError(f"--out {args.out}: is one of the TEACHER_DIRs; choose another --out for the student")
    # a campaign's files are its lineage's (checksums, decisions): never replaced from outside, even with --force
    if (out / LINEAGE_FILE).is_file():
        raise ConfigError(f"{out}: is a campaign run directory ({LINEAGE_FILE}); choose another --out")
    if (run := campaign_of_node(out)) is not None:
        raise ConfigError(f"{out}: lies in the nodes of the campaign in {run}; choose another --out")
    if (out / META_FILE).exists() and not args.force:
        raise ConfigError(f"{out}: already holds a trained model; choose another --out or pass --force")


def _train_held(
    args: argparse.Namespace,
    settings: tuple[LossWeights, EnsembleConfig] | None,
    config: TrainConfig,
    out: Path,
    started: float,
    time_limit: float | None,
) -> int:
    group = distributed.init_from_environment(args.device)  # started by torchrun: data-parallel
    try:
        teaching = _teaching(args, settings) if settings is not None else None
        if teaching is not None:
            data, val_fraction, split_seed = teaching.data(args.data_dir)
        else:
            val_fraction, split_seed = args.val_fraction, args.split_seed
            data = load_dataset(
                args.dataset,
                args.data_dir,
                val_fraction=args.val_fraction,
                split_seed=args.split_seed,
                image_size=args.image_size,
            )
        spec = preset_for(args.arch, data)
        model = build_model(spec, seed=args.seed)
        if group is None or group.is_main:
            taught = f", taught by {', '.join(args.teachers)}" if teaching is not None else ""
            print(
                f"ikd {args.command}: {args.arch} ({spec.num_params():,} params, {millions(spec.macs())} M MACs/image) "
                f"on {data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test){taught}"
                + (f", data-parallel over {group.world_size} processes" if group else ""),
                file=sys.stderr,
            )
        state_dir = out / STATE_DIR  # beside the model, so rerunning the same command resumes
        if args.force and (out / META_FILE).exists() and (group is None or group.is_main):
            # --force replaces the model: gone now, so nothing reads it beside the new training, and a
            # rerun of this command (a --time-limit) resumes that training instead of starting it again
            remove_state(state_dir)
            for name in (META_FILE, WEIGHTS_FILE):
                (out / name).unlink(missing_ok=True)
        deadline = started + time_limit if time_limit is not None else None

        def train(model: VGG) -> TrainResult:
            objective = None
            if teaching is not None:
                objective = teaching.objective(
                    model, seed=args.seed, steps_per_epoch=steps_per_epoch(len(data.train), config)
                )
            return train_model(
                model, data, config, objective=objective, progress=not args.quiet, description=args.arch,
                state_dir=state_dir, deadline=deadline,
                discard_foreign_state=args.force,  # every rank alike, under torchrun too
            )  # fmt: skip

        try:
            try:
                result = train(model)
            except ForeignStateError as foreign:
                if not args.force or group is not None:
                    raise _in_train_flags(foreign, state_dir, args.command) from None
                print(
                    f"ikd: --force: discarding the unfinished training in {state_dir}, which this run cannot continue",
                    file=sys.stderr,
                )
                remove_state(state_dir)
                model = build_model(spec, seed=args.seed)
                result = train(model)
        except TrainingPaused as paused:
            if group is not None and not group.is_main:
                return EXIT_TEMPFAIL
            print(
                f"ikd {args.command}: --time-limit reached after epoch {paused.epoch}/{paused.epochs}; state saved in "
                f"{paused.state_dir}; rerun the same command to resume",
                file=sys.stderr,
            )
            return EXIT_TEMPFAIL
    finally:
        distributed.shutdown()
    # Not fit(): under torchrun every rank trains, but only rank 0 scores and saves, once the
    # process group is shut down.
    if group is not None and not group.is_main:
        return 0
    # the command that made it, as typed (the last session's: a resumed run is rerun alike)
    extra: dict[str, Any] = {"command": shlex.join(["ikd", *getattr(args, "argv", [])])}
    if teaching is not None:
        extra |= teaching.record()
    if group:
        extra["distributed"] = {
            "world_size": group.world_size,
            "backend": group.backend,
            "batch_per_process": -(-config.batch_size // group.world_size),
        }
    test = save_trained(
        out,
        model,
        data,
        config=config,
        result=result,
        val_fraction=val_fraction,
        split_seed=split_seed,
        extra=extra,
    )
    remove_state(state_dir)  # the model is saved: its training state is no longer needed
    smaller = ""
    if teaching is not None and (teacher_params := recorded_teachers(extra)[0]["params"]):
        which = "the teacher" if len(teaching.teachers) == 1 else "the first teacher"
        ratio = teacher_params / spec.num_params()
        smaller = f", {ratio:.1f}x fewer params than {which}" if ratio >= 1 else f", {1 / ratio:.1f}x {which}'s params"
    print(
        f"best val acc {result.best_val_accuracy:.4f} (epoch {result.best_epoch}), "
        f"last {result.last_val_accuracy:.4f}, test acc {test['accuracy']:.4f}, {result.seconds:.0f} s{smaller} "
        f"-> {out}"
    )
    if warning := near_chance(result.best_val_accuracy, data.num_classes):
        print(f"ikd: warning: {warning}", file=sys.stderr)
    return 0


def _in_train_flags(foreign: ForeignStateError, state_dir: Path, command: str) -> ForeignStateError:
    """The refusal of another job's state worded in the flags of `ikd train` or `ikd distill` (config.lr -> --lr)."""
    keys = foreign.keys or []
    if not keys or set(keys) <= set(MOVED_KEYS):
        return foreign  # unknown, or saved on another machine: its own message says what to do
    distill = command == "distill"  # its dataset and split are the teacher's, its objective has a loss and a teacher
    named = {
        "data": "the data (--data-dir; the teacher's dataset and split)"
        if distill
        else "the data (--dataset, --data-dir, --val-fraction, --split-seed, --image-size)",
        "models": "--arch",
        "objectives": "--arch, the TEACHER_DIRs or their order, a loss or ensemble flag, or the teachers' weights"
        if distill
        else "--arch",
        "world_size": "the number of torchrun processes",
        # the objectives' settings one by one (train_state._objective_keys); a loss weight is its own flag
        "objectives.spec": "--arch",
        "objectives.aggregate": "--aggregate",
        "objectives.drop": "--teacher-drop",
        "objectives.teachers": "the TEACHER_DIRs or their order, --weighting or --hints",
        "objectives.teacher_digests": "the teachers' weights (a TEACHER_DIR retrained or replaced)",
    }
    flags = list(
        dict.fromkeys(
            named.get(k) or "--" + k.removeprefix("config.").removeprefix("objectives.weights.").replace("_", "-")
            for k in keys
        )
    )
    return ForeignStateError(
        f"{state_dir}: holds an unfinished training started with other settings ({', '.join(flags)}); rerun with the "
        "flags it was started with to resume it, or pass --force to discard it and start over",
        keys,
    )


def _load_evaluated(
    model_dir: str, args: argparse.Namespace, reuse: tuple[tuple[Any, ...], DataSplits] | None = None
) -> tuple[torch.nn.Module, dict[str, Any], DataSplits]:
    """A trained model, its dataset record and that dataset with the model's validation split (`reuse`:
    a dataset already loaded, taken when its (name, val_fraction, split_seed, image_size) is this model's)."""
    metadata = read_metadata(Path(model_dir))
    record = metadata.get("dataset", {})
    augment = trained_augmentation(metadata)
    if why := unfitting_views(args.tta, augment, model_dir, "--tta"):
        raise ConfigError(why)
    model, _ = load_model(Path(model_dir), map_location=resolve_device(args.device))
    name = args.dataset or record.get("name")
    if not name:
        raise ConfigError(f"{model_dir}: model.json names no dataset; pass --dataset")
    split_key = _split_key(record, args)
    if reuse is not None and reuse[0] == split_key:
        data = reuse[1]
    else:
        _, val_fraction, split_seed, size = split_key
        data_dir = args.data_dir or recorded_data_dir(record)
        data = load_dataset(name, data_dir, val_fraction=val_fraction, split_seed=split_seed, image_size=size)
    if why := misfit(model.spec, record, data):
        raise ConfigError(f"dataset {name!r}: the model in {model_dir} {why}")
    # The model's own normalisation, not the dataset's recomputed one: that is what it was trained with.
    normalisation = {"mean": record.get("mean", data.mean), "std": record.get("std", data.std)}
    return model, {"name": name, "split_key": split_key, **normalisation}, data


def _split_key(record: dict[str, Any], args: argparse.Namespace) -> tuple[Any, ...]:
    """(dataset, val_fraction, split_seed, image_size) a model is evaluated on: `--dataset`, else its own record's."""
    return (args.dataset or record.get("name"), *recorded_split(record))


def _load_ensemble(
    model_dirs: list[str], args: argparse.Namespace
) -> tuple[torch.nn.Module, dict[str, Any], DataSplits]:
    """`_load_evaluated` for one model; for several, their Ensemble, each checked to be of the first's dataset,
    split and normalisation (one batch of normalised images feeds them all)."""
    model, record, data = _load_evaluated(model_dirs[0], args)
    if len(model_dirs) == 1:
        return model, record, data
    if twice := named_twice(model_dirs):
        raise ConfigError(f"{twice}: named twice; expected each MODEL_DIR once in an ensemble")
    members = [model]
    for model_dir in model_dirs[1:]:
        # from its model.json first: another split's data is not loaded only to be refused
        member_record = read_metadata(Path(model_dir)).get("dataset", {})
        recorded = {
            "split_key": _split_key(member_record, args),
            "mean": member_record.get("mean", record["mean"]),
            "std": member_record.get("std", record["std"]),
        }
        for key, what in (
            ("split_key", "dataset/val_fraction/split_seed/image_size"),
            ("mean", "mean"),
            ("std", "std"),
        ):
            if recorded[key] != record[key]:
                raise ConfigError(
                    f"{model_dir}: {what} {recorded[key]}, {model_dirs[0]} has {record[key]}; an ensemble's "
                    "models must be of one dataset, split and normalisation"
                )
        members.append(_load_evaluated(model_dir, args, reuse=(record["split_key"], data))[0])
    return Ensemble(members), record, data


def cmd_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model, record, data = _load_ensemble(args.model_dirs, args)
    split = {"train": data.train, "val": data.val, "test": data.test}[args.split]

    labels, loss_sum = predict(
        model, split, mean=record["mean"], std=record["std"], device=device, precision=precision, views=args.tta
    )
    metrics = score(labels, loss_sum, split.labels)
    report: dict[str, Any] = {
        "model_dir": args.model_dirs[0],
        **({"model_dirs": args.model_dirs} if len(args.model_dirs) > 1 else {}),  # an ensemble's members
        "dataset": record["name"],
        "split": args.split,
        "tta": args.tta,
        **metrics,
    }
    paired = None
    if args.against:
        other, other_record, other_data = _load_evaluated(args.against, args, reuse=(record["split_key"], data))
        other_split = {"train": other_data.train, "val": other_data.val, "test": other_data.test}[args.split]
        # the same images, each model given them as it was trained (its own image_size): equal pixels when
        # the sizes agree, else the same files resized
        same_images = (
            torch.equal(other_split.images, split.images)
            if other_split.images.shape == split.images.shape
            else same_place(other_data.source) == same_place(data.source)
        )
        if (
            other_record["name"] != record["name"]
            or not torch.equal(other_split.labels, split.labels)
            or not same_images
        ):
            raise ConfigError(
                f"--against {args.against}: its {args.split} split ({other_record['name']}, {len(other_split)} "
                f"images from {other_data.source}) is not {args.model_dirs[0]}'s ({record['name']}, {len(split)} from "
                f"{data.source}): a paired comparison needs the same images (same dataset, files, val_fraction "
                "and split_seed)"
            )
        against = predict(
            other,
            other_split,
            mean=other_record["mean"],
            std=other_record["std"],
            device=device,
            precision=precision,
            views=args.tta,
        )
        paired = compare_predictions(labels, against[0], split.labels)
        report["against"] = {"model_dir": str(args.against), "accuracy": paired.b_correct / max(paired.n, 1)}
        report["paired"] = {"only_this": paired.only_a, "only_against": paired.only_b, "p_value": paired.p_value}
    if args.json:
        print(json.dumps(report))
        return 0
    views = f" with test-time views (--tta {args.tta})" if args.tta != "none" else ""
    if len(args.model_dirs) > 1:
        views += f", {len(args.model_dirs)} models' mean probabilities"
    print(
        f"{record['name']} {args.split}: accuracy {metrics['accuracy']:.4f} on {metrics['n']} images{views} "
        f"(loss {metrics['loss']:.4f})"
    )
    if paired is not None:
        print(f"against {args.against}: accuracy {paired.b_correct / max(paired.n, 1):.4f}")
        print(paired.summary("this", "against"))
    return 0


def cmd_arch(args: argparse.Namespace) -> int:
    try:
        channels, size = (int(part) for part in args.input.lower().split("x", 1))
    except ValueError:
        raise ConfigError(f"--input {args.input!r}: expected CHANNELSxSIZE, e.g. 3x32") from None
    if channels < 1 or size < 1:
        raise ConfigError(f"--input {args.input!r}: channels and size must be at least 1, e.g. 3x32")
    if args.classes < 2:
        raise ConfigError(f"--classes {args.classes}: a classifier needs at least 2 classes")
    spec = preset(args.arch, in_channels=channels, image_size=size, num_classes=args.classes)
    info = {
        "arch": args.arch,
        **describe_size(spec),
        "block_output_sizes": spec.block_output_sizes(),
        "spec": spec.to_json_dict(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(
            f"{args.arch} on {channels}x{size}x{size}: {spec.summary()}\n"
            f"  params {info['params']:,} | {info['size_bytes_fp32'] / 2**20:.2f} MiB fp32 | "
            f"{millions(info['macs'])} M MACs/image | block outputs {info['block_output_sizes']}"
        )
        if (dead := info["params"] - info["live_params"]) > 0:
            print(
                f"  {dead:,} of the parameters ({100 * dead / info['params']:.1f}%) never meet a pixel: 3x3 kernels "
                f"on 1x1 maps see the input only through their centre tap ({info['live_params']:,} live)"
            )
    return 0


ARCH_HELP = f"a preset ({', '.join(PRESETS)}) or a layout as `ikd lineage` shows one, e.g. '{LAYOUT_EXAMPLE}'"


def arch_argument(text: str) -> str:
    try:
        return check_arch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _comma_separated(item: type) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [item(part) for part in text.split(",")]
        except ValueError:
            noun = {int: "integers", float: "numbers"}.get(item, "values")
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None

    return parse


def _word_or(words: tuple[str, ...], number: type) -> Callable[[str], str | int | float]:
    def parse(text: str) -> str | int | float:
        if text in words:
            return text
        try:
            return number(text)
        except ValueError:
            expected = " or ".join(repr(word) for word in words) + (" or a count" if number is int else " or a number")
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


def _config_flag_settings(flag: Flag) -> dict[str, Any]:
    """argparse settings of a config key's flag, read off the key's annotation: bool is a switch,
    Literal gives the choices, a list is comma-separated (or separate words), int/float convert."""
    annotation = flag.annotation
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    members = tuple(plain_type(m) for m in members if m is not type(None))  # None means "unset", never typed in
    lists = [plain_type(get_args(m)[0]) for m in members if get_origin(m) is list]
    words = tuple(word for m in members if get_origin(m) is Literal for word in get_args(m))
    numbers = [m for m in members if m in (int, float)]
    if members == (bool,):
        return {"action": "store_true"}
    if lists and flag.words:
        return {"nargs": "+", "type": lists[0]}
    if lists:
        return {
            "type": _comma_separated(lists[0]),
            "metavar": flag.metavar or flag.dest.upper().removesuffix("S") + ",...",
        }
    if words and numbers:
        return {"type": _word_or(words, numbers[0]), "metavar": flag.metavar or "|".join(words) + "|N"}
    if words:
        return {"choices": words}
    if numbers:
        return {"type": numbers[0]}
    return {"choices": flag.choices} if flag.choices else {}


def _add_config_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    settings = _config_flag_settings(flag)
    switch = "action" in settings  # takes no value, so neither a metavar nor a default worth showing
    if not switch:
        settings = {"metavar": flag.metavar, **settings}
    shown = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
    default = "" if flag.default in (None, []) or switch else f" (default {shown})"
    # default None: a flag not given leaves the key to the --config file, or to the model's default
    parser.add_argument(
        flag.name,
        dest=flag.dest,
        default=None,
        **settings,
        help=f"{flag.key}: {flag.description}{default}".replace("%", "%%"),
    )


def compress_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys `ikd compress` was given flags for (None: not given, ignored by load_config)."""
    return {flag.key: getattr(args, flag.dest) for flag in command_line_flags()}


def cmd_compress(args: argparse.Namespace) -> int:
    from ikd.campaign import CampaignPaused, compress

    config = load_config(args.config, compress_overrides(args), from_flags=True)
    try:
        lineage = compress(config, progress=not args.quiet, force=args.force, redecide=args.redecide)
    except CampaignPaused as paused:
        print(format_lineage(paused.lineage))
        print(f"ikd compress: {paused}; rerun the same command to resume", file=sys.stderr)
        return EXIT_TEMPFAIL
    print(format_lineage(lineage))
    if not lineage.answered():
        print("ikd compress: stopped on lost workers; rerun the same command to train them again", file=sys.stderr)
        return EXIT_TEMPFAIL
    return 0


def format_lineage(lineage, *, why: bool = False) -> str:
    """The lineage as a tree-shaped table (children indented under their parent), with the
    teachers of each node when some have several, each node's reason when asked (last: it is
    long), and the stop reason underneath."""
    if not lineage.nodes:
        return NO_NODE_YET
    several = any(len(n.teachers) > 1 for n in lineage.nodes)
    timed = any(n.speedup_timing for n in lineage.nodes)  # under search.target_speedup
    header = (
        ("id", "gen", "arch", "params", "x", "M MACs")
        + (("faster",) if timed else ())
        + ("val %", "test %", "status")
        + (("teachers",) if several else ())
        + (("why",) if why else ())
    )
    rows = [header]
    for node, depth in lineage.tree_order():
        arch = node.arch_summary()
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        timing = node.speedup_timing
        faster = f"{timing.teacher_ms / timing.median_ms:.2f}x" if timing and timing.teacher_ms else "-"
        row = (
            "  " * depth + node.id,
            str(node.generation),
            arch,
            f"{node.params:,}",
            f"{node.compression:.1f}",
            millions(node.macs),
            *((faster,) if timed else ()),
            pct(node.val_accuracy),
            pct(node.test_accuracy),
            str(node.status),
        )
        teachers = ("+".join(node.teachers) or "-",) if several else ()
        rows.append(row + teachers + ((node.reason or "-",) if why else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if lineage.stop_reason:
        lines.append(f"stopped: {lineage.stop_reason}")
        answer = lineage.final()
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        lines.append(
            f"answer: {answer.id} ({answer.params:,} params, {answer.compression:.1f}x, "
            f"val {pct(answer.val_accuracy)}, test {pct(answer.test_accuracy)})"
            if answer.id != lineage.root().id
            else "answer: the teacher (no student was accepted)"
        )
    if (not_kept := rules.final_not_kept(lineage)) is not None:
        lines.append(f"final: not kept ({not_kept}); {lineage.final().id} stays the answer")
    elif (unjudged := rules.final_never_judged(lineage)) is not None:
        lines.append(
            f"final: by validation it fails the test its search answer passed ({unjudged}); the ikd that made "
            "this run kept it as the answer: rerun `ikd compress` on the run to decide"
        )
    return "\n".join(lines)


def cmd_lineage(args: argparse.Namespace) -> int:
    from ikd.lineage import open_run_dir

    lineage = open_run_dir(args.run_dir).load()
    print(json.dumps(lineage.model_dump(mode="json"), indent=2) if args.json else format_lineage(lineage, why=args.why))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ikd.export import export

    result = export(
        Path(args.source),
        args.format,
        node=args.node,
        out=Path(args.out) if args.out else None,
        data_dir=args.data_dir,
        repeats=args.repeats,
        rounds=args.rounds,
        threads=args.threads,
        measure_latency=not args.no_latency,
    )
    print(result.summary())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ikd.report import FIGURES, load_report, write_report

    if args.out is not None and not args.out.strip():  # an unset shell variable: not the default folder
        raise ConfigError("--out '': expected a directory for the report, not an empty string")
    if args.out and (why := cannot_make_dir(Path(args.out))):
        raise ConfigError(f"--out {args.out}: {why}")
    if args.out and (run := campaign_of_node(Path(args.out))) is not None:  # a node's folder is its model's
        raise ConfigError(f"--out {args.out}: lies in the nodes of the campaign in {run}; choose another --out")
    report = load_report(Path(args.run_dir))  # once: a campaign may be writing the run meanwhile
    out = write_report(Path(args.run_dir), Path(args.out) if args.out else None, report)
    print(report.headline())
    drawn = ", ".join(name for name in FIGURES if (out / name).exists())  # training.png needs the nodes' files
    print(f"report: {out / 'report.md'}, {out / 'report.html'} (figures: {drawn})")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from ikd.config import config_reference

    print(config_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand's default
    # from overwriting a flag given before it.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = _Parser(
        prog="ikd", parents=[common], description="Compress convolutional networks by iterative knowledge distillation."
    )
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, does: str) -> argparse.ArgumentParser:
        # `does` is its line in `ikd --help`, the top of `ikd NAME --help` and the README's commands table
        return commands.add_parser(name, parents=[common], help=does, description=does)

    def data_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
        p.add_argument(
            "--dataset", required=required, choices=DATASETS, metavar="NAME", help=f"one of: {', '.join(DATASETS)}"
        )
        p.add_argument("--data-dir", help="dataset directory or root (default: $IKD_DATA_DIR, else ~/.cache/ikd)")

    def recipe_flags(p: argparse.ArgumentParser, *, smoothing: bool = True) -> None:
        """The training recipe's flags, with the campaign teacher's defaults (config.TeacherConfig); label
        smoothing only where the loss is cross-entropy alone."""
        recipe = TeacherConfig.model_fields
        p.add_argument("--epochs", type=int, required=True, metavar="N")
        p.add_argument(
            "--out", required=True, metavar="DIR", help="output directory for model.safetensors + model.json"
        )
        p.add_argument("--batch-size", type=int, default=recipe["batch_size"].default)
        p.add_argument("--lr", type=float, default=recipe["lr"].default, help="peak learning rate")
        p.add_argument("--weight-decay", type=float, default=recipe["weight_decay"].default)
        p.add_argument("--schedule", default=recipe["schedule"].default, choices=SCHEDULES)
        p.add_argument("--augment", choices=AUGMENTATIONS, help="default: the dataset's own")
        if smoothing:
            p.add_argument("--label-smoothing", type=float, default=recipe["label_smoothing"].default)
        p.add_argument(
            "--ema-epochs",
            type=float,
            default=recipe["ema_epochs"].default,
            help="horizon of the weights' moving average, validated beside them; 0 = none",
        )
        p.add_argument(
            "--bn-sparsity",
            type=float,
            default=recipe["bn_sparsity"].default,
            help="weight of an L1 penalty on the BatchNorm scales (Network Slimming, e.g. 1e-4; for the slim operator)",
        )
        p.add_argument("--precision", default="auto", choices=PRECISIONS)
        p.add_argument("--device", default="auto", choices=DEVICES)
        p.add_argument("--seed", type=int, default=0)

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--force",
            action="store_true",
            help="start over: overwrite a model already in --out and drop an unfinished training there",
        )
        p.add_argument(
            "--time-limit",
            metavar="DURATION",
            help="stop at the last epoch boundary before this much time (2h30m, 90m, 45s, seconds, 2:30:00) has "
            f"passed, save the state and exit with code {EXIT_TEMPFAIL}; the same command resumes",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar, epoch lines or resume message")

    train = command("train", "train a VGG teacher from scratch")
    data_flags(train, required=True)
    train.add_argument("--arch", default="vgg16", type=arch_argument, metavar="ARCH", help=ARCH_HELP)
    recipe_flags(train)
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    train.add_argument(
        "--image-size",
        type=int,
        help="resize the images to this size, square (default: the dataset's own; imagefolder: 32)",
    )
    run_flags(train)
    train.set_defaults(func=cmd_train)

    di = command(
        "distill", "train a student of the architecture you choose from a trained teacher (or several), in one step"
    )
    di.add_argument(
        "teachers",
        nargs="+",
        metavar="TEACHER_DIR",
        help="model directories written by `ikd train` or `ikd distill`, trained on the same split; the first "
        "gives the data and the hint",
    )
    di.add_argument("--arch", required=True, type=arch_argument, metavar="ARCH", help=ARCH_HELP)
    di.add_argument(
        "--data-dir",
        help="where the teacher's dataset lives (default: $IKD_DATA_DIR, else ~/.cache/ikd); the student trains "
        "and is validated on the teacher's dataset and validation split",
    )
    recipe_flags(di, smoothing=False)
    loss = LossWeights.model_fields
    for name in ("temperature", "alpha", "beta", "gamma", "kd_warmup", "dkd_alpha", "dkd_beta"):  # the float keys
        di.add_argument(
            "--" + name.replace("_", "-"), type=float, default=loss[name].default, help=loss[name].description
        )
    di.add_argument(
        "--kd", default=loss["kd"].default, choices=get_args(loss["kd"].annotation), help=loss["kd"].description
    )
    di.add_argument("--standardize", action="store_true", help=loss["standardize"].description)
    di.add_argument(
        "--teacher-views",
        default=loss["teacher_views"].default,
        choices=VIEWS,
        help=loss["teacher_views"].description,
    )
    ensemble = EnsembleConfig.model_fields
    for option, key in ENSEMBLE_FLAGS.items():  # several teachers only
        field = ensemble[key]
        kind = {"type": float} if key == "drop" else {"choices": get_args(field.annotation)}
        described = "the hint from the first teacher only (parent) or from every teacher, one regressor each (each)"
        help_ = f"several teachers: {described if key == 'hints' else field.description}"  # a hint's parent: the first
        di.add_argument(option, default=field.default, help=help_, **kind)
    run_flags(di)
    di.set_defaults(func=cmd_distill)

    ev = command("eval", "accuracy of a trained model (or an ensemble of several) on a split")
    ev.add_argument(
        "model_dirs",
        nargs="+",
        metavar="MODEL_DIR",
        help="a model directory; several: their ensemble (the mean of their softmax probabilities)",
    )
    data_flags(ev, required=False)
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--device", default="auto", choices=DEVICES)
    ev.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--tta",
        default="none",
        choices=VIEWS,
        help="test-time augmentation: flip = average the logits of each image and its mirror image (2x the "
        "compute; for a model trained with flips); flip-shift = also the pair shifted by a pixel two ways (6x; "
        "for a model trained with crops and flips)",
    )
    ev.add_argument(
        "--against",
        metavar="MODEL_DIR",
        help="also evaluate this model on the same images, and test the difference (exact McNemar)",
    )
    ev.set_defaults(func=cmd_eval)

    co = command("compress", "run or resume a compression campaign (teacher -> smaller and smaller students)")
    co.add_argument("--config", metavar="PATH", help="campaign YAML (see configs/); the flags below override its keys")
    for flag in command_line_flags():
        _add_config_flag(co, flag)
    co.add_argument("--force", action="store_true", help="continue a run directory made with another config")
    co.add_argument(
        "--redecide",
        action="store_true",
        help="make every generation's decision again under this config's acceptance and proposal keys "
        "(max_drop, max_step_drop, accept_margin, select, beam, operators, width_factor, slim_fraction, ...: "
        "these may differ from the run's), reusing each trained candidate the new path reaches and training "
        "the others",
    )
    co.add_argument("--quiet", action="store_true", help="no progress output")
    co.set_defaults(func=cmd_compress)

    li = command("lineage", "print a campaign's lineage as a tree")
    li.add_argument("run_dir")
    li.add_argument("--json", action="store_true", help="the whole lineage.json")
    li.add_argument("--why", action="store_true", help="add each node's reason: why it was accepted, rejected or left")
    li.set_defaults(func=cmd_lineage)

    ex = command(
        "export",
        "export a trained model or a campaign's node as ONNX or safetensors, check it, time it beside its teacher",
    )
    ex.add_argument("source", metavar="DIR", help="a model directory (ikd train, ikd distill) or a campaign run")
    ex.add_argument(
        "--node",
        metavar="ID",
        help="the node of a campaign run to export, as `ikd lineage` lists them (default: the campaign's answer)",
    )
    # not argparse choices: an unknown format is reported like every other ikd error, on one line
    ex.add_argument("--format", required=True, metavar="FORMAT", help="onnx or safetensors")
    ex.add_argument(
        "--out",
        metavar="PATH",
        help="directory (default MODEL_DIR/export, RUN_DIR/export/ID), or the file: x.onnx, x.safetensors",
    )
    ex.add_argument(
        "--data-dir",
        help="where the model's dataset lives, for the ONNX check (default: $IKD_DATA_DIR, else ~/.cache/ikd; "
        "an image-folder model: the folder it read)",
    )
    ex.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="timed runs per interleaved turn (default 3 at batch 1, over 200 turns; 10 at batch 64, over 5)",
    )
    ex.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="interleaved turns, the fastest of whose medians is kept (default 200 at batch 1, 5 at batch 64)",
    )
    ex.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for the latency measurement (default 1: the per-core cost, whose speed-ups hold still on a "
        "shared machine; set your serving threads to see theirs)",
    )
    ex.add_argument("--no-latency", action="store_true", help="do not measure latency")
    ex.set_defaults(func=cmd_export)

    re_ = command("report", "write RUN_DIR/report/: report.md, a self-contained report.html and figures")
    re_.add_argument("run_dir")
    re_.add_argument("--out", help="report directory (default RUN_DIR/report)")
    re_.set_defaults(func=cmd_report)

    cr = command("config-reference", "print every campaign config key (markdown)")
    cr.set_defaults(func=cmd_config_reference)

    ar = command("arch", "size and cost of an architecture")
    ar.add_argument("arch", type=arch_argument, help=ARCH_HELP)
    ar.add_argument("--input", default="3x32", help="CHANNELSxSIZE (default 3x32)")
    ar.add_argument("--classes", type=int, default=10)
    ar.add_argument("--json", action="store_true")
    ar.set_defaults(func=cmd_arch)
    return parser


def _usage(action: argparse.Action) -> str:
    """How an argument is typed: `--node ID`, `RUN_DIR`, `--strategy a|b`, `--teachers DIR ...`."""
    value = (
        ""
        if action.nargs == 0
        else str(  # nargs 0: a switch, it takes no value
            action.metavar or ("|".join(map(str, action.choices)) if action.choices else action.dest.upper())
        )
    )
    if action.nargs == "+":
        value += " ..."
    return " ".join(part for part in [*action.option_strings[-1:], value] if part)


def commands_reference() -> str:
    """The README's commands table, rendered from the parsers so it cannot drift from them: each
    command with its required arguments, what it does and its options (`ikd compress`'s flags, one
    per config key, are in the config reference)."""

    def code(text: str) -> str:
        return "`" + text.replace("|", "\\|") + "`"

    config_flags = command_line_flags()
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["| command | does | options |", "|---|---|---|"]
    for name, sub in subparsers.choices.items():
        config_dests = {flag.dest for flag in config_flags} if name == "compress" else set()
        actions = [a for a in sub._actions if a.dest not in ("help", "debug")]
        needed = [a for a in actions if a.required or not a.option_strings]
        options = [
            code(a.option_strings[-1])
            for a in actions
            if a.option_strings and not a.required and a.dest not in config_dests
        ]
        if config_dests:
            options.append(
                "flags for the main config keys, the rest in `--config` ([configuration](docs/configuration.md))"
            )
        lines.append(
            f"| {code(' '.join(['ikd', name] + [_usage(a) for a in needed]))} | {sub.description} "
            f"| {', '.join(options) or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # signal handlers can only be set from the main thread; elsewhere (an embedding app) SIGTERM is theirs
    own_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if own_signals else None
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by ikd train
        return _run(args)
    finally:
        if own_signals:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is handled below
        return status
    except IkdError as exc:
        if debug:
            raise
        print(f"ikd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader left early (`ikd lineage RUN | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush cannot fail again (the Python docs' recipe).
        with contextlib.suppress(OSError, ValueError):  # stdout is no file (embedded, captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # unreadable input, read-only or full disk: the user's to fix
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ikd: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        resumable = getattr(args, "func", None) in (cmd_train, cmd_distill, cmd_compress)  # they save every epoch
        print(
            f"ikd: interrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}"
            + ("; finished work is kept: rerun the same command to resume" if resumable else ""),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not a user error: say so, keep the traceback behind --debug
        if debug:
            raise
        print(
            f"ikd: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
