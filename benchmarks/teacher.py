"""Train a teacher on real data with `ikd train` and write a markdown record of what happened.

    python benchmarks/teacher.py --dataset mnist --data-dir ../shared/data/mnist --epochs 3 \
        --out runs/mnist-vgg16 --markdown benchmarks/results/teacher_mnist_vgg16.md [-- extra ikd train flags]

The record holds the exact command, the machine, wall time, per-epoch validation accuracy and
the test accuracy of the saved (best-by-validation) weights, read back from model.json.
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

from ikd.runtime import cpu_name

# benchmarks/common.py: a script's own directory is on sys.path
from common import print_result


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--label", help="dataset label for the record, e.g. 'CIFAR-10 (JPEG-Q75)'")
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
        "--force",
    ]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    command += extra
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started

    meta = json.loads((Path(args.out) / "model.json").read_text())
    metrics, training = meta["metrics"], meta["training"]
    sizes = meta["dataset"]["sizes"]
    best, last, tested = metrics["best"], metrics["last"], metrics["test_of_saved_weights"]
    precision, device = training["resolved_precision"], training["resolved_device"]
    augment = training["augment"] or meta["dataset"]["augment"]
    shown = ["ikd", *command[3:]]
    rows = "\n".join(
        f"| {r['epoch']} | {r['train']['loss']:.4f} | {r['train']['accuracy']:.4f} | {r['val_accuracy']:.4f} "
        f"| {r['images_per_s']:.0f} | {r['seconds']:.0f} |"
        for r in meta["history"]
    )
    label = args.label or args.dataset
    text = f"""# Teacher: {args.arch} on {label}

Command: `{shlex.join(shown)}`
(through `python {shlex.join(sys.argv)}`)

Machine: {machine()}
Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
Precision: {precision}, device {device}, batch {training["batch_size"]}, peak lr {training["lr"]}, \
{training["schedule"]} schedule, seed {training["seed"]}
Data: {sizes["train"]} train / {sizes["val"]} val (seeded split) / {sizes["test"]} test, augmentation `{augment}`

| epoch | train loss | train acc | val acc | images/s | seconds |
|---|---|---|---|---|---|
{rows}

- Saved weights: epoch {best["epoch"]} (best validation accuracy {best["val_accuracy"]:.4f}; \
last epoch {last["val_accuracy"]:.4f})
- **Test accuracy of the saved weights: {tested["accuracy"] * 100:.2f}%** on {tested["n"]} images
- Wall time: {wall / 60:.1f} min in all ({training["seconds"] / 60:.1f} min training + validation; \
the rest is start-up, data loading and the test pass)
- Model: {meta["size"]["params"]:,} parameters, {meta["size"]["macs"] / 1e6:.1f} M MACs/image
"""
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(text)
    print(text)
    print_result(
        {
            "dataset": args.dataset,
            "arch": args.arch,
            "epochs": args.epochs,
            "test_accuracy": f"{metrics['test_of_saved_weights']['accuracy']:.4f}",
            "best_val_accuracy": f"{metrics['best']['val_accuracy']:.4f}",
            "wall_s": f"{wall:.0f}",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
