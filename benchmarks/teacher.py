"""Train a teacher on real data with `ikd train` and write a markdown record of what happened.

    python benchmarks/teacher.py --dataset mnist --data-dir ../shared/data/mnist --epochs 3 \
        --out runs/mnist-vgg16 --markdown benchmarks/results/teacher_mnist_vgg16.md [-- extra ikd train flags]

The record holds the exact command, the machine, wall time, per-epoch validation accuracy (of the
weights and of their moving average, when the recipe keeps one) and the test accuracy of the saved
(best-by-validation) weights, read back from model.json. With --existing the training is not run:
the record is written from the model.json a finished run of the same command left in --out (long
runs go in the background, resumed across sessions with --time-limit).
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ikd.checkpoint import trained_augmentation
from ikd.config import TeacherConfig
from ikd.runtime import cpu_name
from ikd.views import VIEW_PASSES, fitting_views

# benchmarks/common.py: a script's own directory is on sys.path
from common import command_line, print_result


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


def trained_on(history: list[dict]) -> str:
    """Which machine trained which epochs, as model.json's history records them (ikd >= 2026-12-07)."""
    spans: list[list] = []  # [first epoch, last epoch, machine]
    for record in history:
        where = record.get("machine") or "not recorded"
        if spans and spans[-1][2] == where:
            spans[-1][1] = record["epoch"]
        else:
            spans.append([record["epoch"], record["epoch"], where])
    return "; ".join(f"epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}: {where}" for a, b, where in spans)


def recorded_flags(training: dict) -> list[tuple[str, str]]:
    """`ikd train` flags that reproduce a model.json's `training` settings, beside the defaults."""
    recipe = TeacherConfig.model_fields
    defaults = {name: recipe[name].default for name in TRAIN_FLAGS if name in recipe}
    defaults |= {"seed": 0, "precision": "auto", "augment": None, "bn_sparsity": 0.0}
    flags = []
    for name in TRAIN_FLAGS:
        value = training.get(name, defaults[name])
        if value != defaults[name]:
            flags.append((f"--{name.replace('_', '-')}", str(value)))
    return flags


# ikd train's flags that set a training key of the same name
TRAIN_FLAGS = (
    "batch_size",
    "lr",
    "weight_decay",
    "schedule",
    "augment",
    "label_smoothing",
    "ema_epochs",
    "bn_sparsity",
    "precision",
    "seed",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--label", help="dataset label for the record, e.g. 'CIFAR-10 (JPEG-Q75)'")
    parser.add_argument("--existing", action="store_true", help="record the finished run in --out; train nothing")
    parser.add_argument("--note", action="append", default=[], help="a line for the record's notes (repeatable)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `ikd train` flags")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    command = [
        sys.executable,
        "-m",
        "ikd",
        "train",
        "--dataset",
        args.dataset,
        "--arch",
        args.arch,
        "--epochs",
        str(args.epochs),
        "--out",
        args.out,
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    command += extra
    wall = None
    if not args.existing:
        started = time.perf_counter()
        subprocess.run([*command, "--force"], check=True)
        wall = time.perf_counter() - started

    meta = json.loads((Path(args.out) / "model.json").read_text())
    metrics, training = meta["metrics"], meta["training"]
    sizes = meta["dataset"]["sizes"]
    best, last, tested = metrics["best"], metrics["last"], metrics["test_of_saved_weights"]
    precision, device = training["resolved_precision"], training["resolved_device"]
    augment = trained_augmentation(meta)
    shown = ["ikd", *command[3:]]
    if args.existing:  # the run's own settings, where they differ from ikd train's defaults
        shown += [token for flag in recorded_flags(training) if flag[0] not in extra for token in flag]

    def ema(record: dict) -> str:
        value = record.get("ema_val_accuracy")
        return "-" if value is None else f"{value:.4f}"

    rows = "\n".join(
        f"| {r['epoch']} | {r['lr']:.4f} | {r['train']['loss']:.4f} | {r['train']['accuracy']:.4f} "
        f"| {r['val_accuracy']:.4f} | {ema(r)} | {r['images_per_s']:.0f} | {r['seconds']:.0f} |"
        for r in meta["history"]
    )
    wall_line = (
        f"{wall / 60:.1f} min in all ({training['seconds'] / 60:.1f} min training + validation; the rest is "
        "start-up, data loading and the test pass)"
        if wall is not None
        else f"{training['seconds'] / 60:.1f} min training + validation (summed over the sessions it took)"
    )
    # Which of the best epoch's two was kept: recorded by ikd >= this version, else read off the history.
    epoch_record = meta["history"][best["epoch"] - 1]
    ema_accuracy = epoch_record.get("ema_val_accuracy")
    kept = best.get("weights") or (
        "EMA" if ema_accuracy is not None and ema_accuracy > epoch_record["val_accuracy"] else "raw"
    )
    kept = "EMA weights" if kept.lower() == "ema" else "raw weights"
    kept_accuracy = max(epoch_record["val_accuracy"], ema_accuracy or 0.0)
    how = "written from its model.json" if args.existing else "run"
    # the test-time views the model has learnt (ikd eval --tta), on the device and at the precision of the
    # test line above, so each change is the views' alone
    viewed = ""
    for views in fitting_views(augment)[1:]:
        command_tta = [sys.executable, "-m", "ikd", "eval", args.out, "--split", "test", "--tta", views, "--json"]
        command_tta += ["--precision", precision, "--device", device]
        if args.data_dir:
            command_tta += ["--data-dir", args.data_dir]
        done = subprocess.run(command_tta, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"teacher.py: {shlex.join(command_tta[2:])} failed: {why}")
        accuracy = json.loads(done.stdout)["accuracy"]
        viewed += (
            f"- Test accuracy of the saved weights with test-time views `--tta {views}` ({VIEW_PASSES[views]}x the "
            f"compute): {accuracy * 100:.2f}% ({(accuracy - tested['accuracy']) * 100:+.2f})\n"
        )
    notes = "".join(f"- {line}\n" for line in args.note)
    label = args.label or args.dataset
    text = f"""# Teacher: {args.arch} on {label}

Command: `{shlex.join(shown)}`
({how} by `{command_line()}`)

Machine: {machine()} (this record's)
Trained on: {trained_on(meta["history"])}
Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
Precision: {precision}, device {device}, batch {training["batch_size"]}, peak lr {training["lr"]}, \
{training["schedule"]} schedule, label smoothing {training.get("label_smoothing", 0)}, weight decay \
{training["weight_decay"]}, EMA horizon {training.get("ema_epochs", 0)} epochs, seed {training["seed"]}
Data: {sizes["train"]} train / {sizes["val"]} val (seeded split) / {sizes["test"]} test, augmentation `{augment}`

| epoch | lr (end) | train loss | train acc | val acc | val acc, EMA | images/s | seconds |
|---|---|---|---|---|---|---|---|
{rows}

- Saved weights: epoch {best["epoch"]}, {kept} (validation accuracy {kept_accuracy:.4f}; \
last epoch's raw weights {last["val_accuracy"]:.4f})
- **Test accuracy of the saved weights: {tested["accuracy"] * 100:.2f}%** on {tested["n"]} images
{viewed}- Wall time: {wall_line}
- Model: {meta["size"]["params"]:,} parameters, {meta["size"]["macs"] / 1e6:.1f} M MACs/image
{notes}"""
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(text)
    print(text)
    print_result(
        {
            "dataset": args.dataset,
            "arch": args.arch,
            "epochs": args.epochs,
            "test_accuracy": f"{metrics['test_of_saved_weights']['accuracy']:.4f}",
            "best_val_accuracy": f"{kept_accuracy:.4f}",
            "wall_s": f"{wall if wall is not None else training['seconds']:.0f}",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
