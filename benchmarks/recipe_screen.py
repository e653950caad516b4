"""Screen training-recipe changes on a small proxy network: variants x seeds of `ikd train`, one table.

With `--teacher MODEL_DIR [MODEL_DIR ...]` every run is `ikd distill MODEL_DIR ...` instead: a screen of
distillation settings (`--teacher-views flip`, `--kd dkd`, `--aggregate mean-probs` ...) for one set of
teachers and one student architecture.

Each variant is `ikd train`'s defaults plus some flags; every variant trains the same architecture for the
same epochs on the same seeded split, once per seed. The record gives, per run, the saved weights'
validation and test accuracy, plain and with the test-time views its training taught it (`ikd eval --tta
flip` and `flip-shift`, for runs trained with flips and crops), and per variant the mean and spread over
seeds with its change against the first variant (the reference). Decisions read validation; test is
reported. A finished run of the same command in `--out` is reused (one of another command there is
refused), so an interrupted screen goes on where it stopped (an unfinished run resumes from its last
epoch, as `ikd train` does).

    python benchmarks/recipe_screen.py --dataset cifar10 --data-dir .cache/data/cifar-10-batches-py \\
        --arch 16x2-32x2-64x3-128x3-128x3 --epochs 30 --seeds 0 1 --parallel 2 --out runs/proxy \\
        --variant default= --variant 'b128=--batch-size 128 --lr 0.05' --markdown results/recipe_screen.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from ikd.checkpoint import load_model, recorded_split, trained_augmentation
from ikd.data import DataSplits, load_dataset
from ikd.runtime import resolve_precision
from ikd.train import predict, score
from ikd.views import VIEWS, fitting_views

from common import QUICK_ARCH, machine_line, mean_spread, print_result, write_record


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name or any(c in name for c in "/ "):
        raise SystemExit(
            f"recipe_screen.py: --variant {text!r}: expected NAME=FLAGS, e.g. 'ls0.2=--label-smoothing 0.2'"
        )
    return name, shlex.split(flags)


def train_command(args: argparse.Namespace, flags: list[str], seed: int, out: Path) -> list[str]:
    # with a teacher every run is distilled from it, on its dataset and split
    command = ["ikd", "distill", *args.teacher] if args.teacher else ["ikd", "train", "--dataset", args.dataset]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    command += ["--arch", args.arch, "--epochs", str(args.epochs)]
    return [*command, "--seed", str(seed), "--out", str(out), "--quiet", *flags]


def finished(command: list[str], run: Path) -> bool:
    """Whether `run` holds this command's finished run (a finished run of another command: refused)."""
    if not (run / "model.json").is_file():
        return False
    recorded = json.loads((run / "model.json").read_text()).get("command")
    if recorded != shlex.join(command):
        raise SystemExit(
            f"recipe_screen.py: {run} holds a run of `{recorded}`, not `{shlex.join(command)}`: "
            "give the variant another name, or another --out"
        )
    return True


def train(command: list[str], threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("w") as sink:
        done = subprocess.run([sys.executable, "-m", "ikd", *command[1:]], stdout=sink, stderr=sink, env=env)
    if done.returncode != 0:
        raise SystemExit(f"recipe_screen.py: {' '.join(command)} failed (exit {done.returncode}); see {log}")


def measure(run: Path, data_dir: str | None, loaded: dict[tuple, DataSplits]) -> dict:
    """The saved weights' accuracies on val and test (fp32), with every test-time view its training taught it
    (`loaded`: the data splits loaded so far, by what selects them)."""
    meta = json.loads((run / "model.json").read_text())
    record = meta["dataset"]
    key = (record["name"], *recorded_split(record))
    if key not in loaded:
        name, val_fraction, split_seed, image_size = key
        loaded[key] = load_dataset(
            name, data_dir, val_fraction=val_fraction, split_seed=split_seed, image_size=image_size
        )
    data = loaded[key]
    model, _ = load_model(run, map_location="cpu")
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    row = {"best": meta["metrics"]["best"], "minutes": meta["training"]["seconds"] / 60}
    for split_name, split in (("val", data.val), ("test", data.test)):
        for views in fitting_views(trained_augmentation(meta)):
            predicted, loss = predict(
                model, split, mean=record["mean"], std=record["std"], device=torch.device("cpu"), precision=fp32,
                views=views,
            )  # fmt: skip
            row[f"{split_name}_{views}"] = 100 * score(predicted, loss, split.labels)["accuracy"]
    return row


def mean_sd(values: list[float]) -> str:
    return mean_spread(values) if values else "-"


def cell(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="16x2-32x2-64x3-128x3-128x3", help="the proxy network")
    parser.add_argument(
        "--teacher",
        nargs="+",
        metavar="MODEL_DIR",
        help="distil every run from this model, or these (`ikd distill`, the first's dataset; variants then add "
        "its flags)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=FLAGS for `ikd train` or, with --teacher, `ikd distill` (repeatable; the first is the reference)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs side by side (the torch threads are shared out)")
    parser.add_argument("--out", default="runs/recipe-screen")
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="digits, a tiny net, 2 epochs: a smoke run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.data_dir, args.arch, args.epochs, args.seeds = "digits", None, QUICK_ARCH, 2, [0]
        flips = "--augment crop-flip"  # digits' own augmentation has none: the flipped views need them
        args.variant = args.variant or [f"flips={flips}", f"flips-ls0.2={flips} --label-smoothing 0.2"]
    variants = [parse_variant(v) for v in args.variant or ["default="]]
    if len({name for name, _ in variants}) < len(variants):
        raise SystemExit("recipe_screen.py: two --variant entries share a name")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, flags, seed, out / f"{name}-s{seed}") for name, flags in variants for seed in args.seeds]
    pending = [job for job in jobs if not finished(train_command(args, job[1], job[2], job[3]), job[3])]
    threads = max(1, torch.get_num_threads() // max(1, args.parallel))

    def run(job: tuple[str, list[str], int, Path]) -> None:
        _, flags, seed, run_dir = job
        train(train_command(args, flags, seed, run_dir), threads, Path(f"{run_dir}.log"))

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for future in as_completed([pool.submit(run, job) for job in pending]):
            if future.exception() is not None:  # stop at the first failure, not after every queued run
                pool.shutdown(cancel_futures=True)
                future.result()

    data: dict[tuple, DataSplits] = {}  # loaded once per split of the data
    rows = {(name, seed): measure(run, args.data_dir, data) for name, _, seed, run in jobs}
    dataset = next(iter(data))[0]  # the one the runs recorded (the teacher's, with --teacher)
    taught = f", distilled from {', '.join(f'`{t}`' for t in args.teacher)}" if args.teacher else ""
    lines = [
        f"Proxy: `{args.arch}` on {dataset}{taught}, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}; "
        f"{len(pending)} of {len(jobs)} runs trained by this invocation, {args.parallel} side by side.",
        f"Machine: {machine_line()}",
        "",
        "Each run: " + f"`{shlex.join(train_command(args, ['FLAGS'], 0, out / 'NAME-sSEED'))}` (seed as listed).",
        "",
        "| variant | flags | seed | kept | val % | val %, flip | val %, flip-shift | test % | test %, flip | "
        "test %, flip-shift | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, flags, seed, _ in jobs:
        row = rows[name, seed]
        kept = f"{row['best']['epoch']}/{args.epochs} {row['best'].get('weights', 'raw')}"
        accuracies = " | ".join(cell(row, f"{split}_{views}") for split in ("val", "test") for views in VIEWS)
        flags_shown = shlex.join(flags) or "(defaults)"
        lines.append(f"| {name} | `{flags_shown}` | {seed} | {kept} | {accuracies} | {row['minutes']:.1f} |")
    reference = variants[0][0]

    def column(name: str, key: str) -> list[float]:
        return [rows[name, s][key] for s in args.seeds if key in rows[name, s]]

    def change(name: str, key: str) -> str:
        ours, theirs = column(name, key), column(reference, key)
        if name == reference or len(ours) != len(theirs) or not ours:
            return "-"
        return f"{statistics.mean(ours) - statistics.mean(theirs):+.2f}"

    lines += [
        "",
        f"Mean ± standard deviation over seeds (points); change against `{reference}`, by validation (what "
        "decides) and test; the test-time views' gain over the plain view (`ikd eval --tta`: flip 2x the compute, "
        "flip-shift 6x):",
        "",
        "| variant | val % | test % | val change | test change | flip gain, val | flip gain, test | "
        "flip-shift gain, val | flip-shift gain, test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    result = {}

    def gain(name: str, split: str, views: str) -> str:
        of_seeds = [rows[name, s] for s in args.seeds]
        return mean_sd([r[f"{split}_{views}"] - r[f"{split}_none"] for r in of_seeds if f"{split}_{views}" in r])

    for name, _ in variants:
        lines.append(
            f"| {name} | {mean_sd(column(name, 'val_none'))} | {mean_sd(column(name, 'test_none'))} | "
            f"{change(name, 'val_none')} | {change(name, 'test_none')} | {gain(name, 'val', 'flip')} | "
            f"{gain(name, 'test', 'flip')} | {gain(name, 'val', 'flip-shift')} | {gain(name, 'test', 'flip-shift')} |"
        )
        result[f"{name}_val"] = f"{statistics.mean(column(name, 'val_none')):.2f}"
    lines += ["", *(f"- {note}" for note in args.note)]
    text = "\n".join(lines)
    if not args.quiet:
        print(text)
    if args.markdown:
        title = "Distillation screen on a proxy student" if args.teacher else "Recipe screen on a proxy network"
        write_record(args.markdown, title, text)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
