"""Finished campaigns of one teacher under other search settings (`search.objective` params and macs,
`search.cut_sites`, ...), side by side.

What each search kept, what its answer costs (parameters, MACs, batch-1 and batch-64 latency on
onnxruntime, all timed together in this process with ikd's interleaved protocol) and how it scores
(validation and test, and an exact McNemar test of two answers on each split: every run against the
first, or the `--pairs` named):

    python benchmarks/objective_compare.py --runs params=runs/objective/params macs=runs/objective/macs \
        --data-dir /work/shared/data/mnist --markdown benchmarks/results/objective_macs_mnist.md

`--quick` runs two tiny campaigns on digits first (a smoke run of this script, its numbers say nothing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import ikd
from ikd.checkpoint import load_model
from ikd.cli import format_lineage
from ikd.compare import compare_predictions
from ikd.config import load_config
from ikd.lineage import Lineage, NodeRecord, RunDir
from ikd.runtime import Precision
from ikd.train import predict

from common import TIMED_BATCHES, machine_line, print_result, publish, spec_latencies

SPLITS = ("val", "test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", metavar="NAME=DIR", help="two or more finished run directories, named")
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="A:B",
        help="the runs whose answers are tested against each other (default: every run against the first)",
    )
    parser.add_argument("--title", default="search.objective: params against macs, one teacher")
    parser.add_argument("--data-dir", help="the dataset's directory (data.dir), for the paired tests")
    parser.add_argument("--markdown", help="write the record here")
    parser.add_argument("--note", default="", help="a paragraph added to the record")
    parser.add_argument("--quick", action="store_true", help="two tiny digits campaigns first: a smoke run")
    parser.add_argument("--quiet", action="store_true", help="no progress from the --quick campaigns")
    args = parser.parse_args()
    if not args.quick and not args.runs:
        parser.error("--runs NAME=DIR NAME=DIR is needed (or --quick)")
    if args.runs is not None and len(args.runs) < 2:
        parser.error("--runs: expected two or more NAME=DIR")
    return args


def quick_runs(scratch: Path, progress: bool) -> list[str]:
    """Two one-generation digits campaigns of one small teacher, one per objective."""
    keys = {"data.name": "digits", "teacher.arch": "16x1-32x1-64x1", "teacher.epochs": 1, "student.epochs": 1}
    keys |= {"search.operators": ["depth", "block"], "search.max_generations": 1, "search.candidates": "all"}
    keys |= {"search.max_drop": 100.0, "search.max_step_drop": 100.0, "precision": "fp32", "device": "cpu"}
    first = ikd.compress(keys | {"run_dir": str(scratch / "params")}, progress=progress)
    teacher = RunDir(scratch / "params").node_dir(first.root().id)
    ikd.compress(
        keys | {"run_dir": str(scratch / "macs"), "search.objective": "macs", "teacher.dir": str(teacher)},
        progress=progress,
    )
    return [f"params={scratch / 'params'}", f"macs={scratch / 'macs'}"]


def answers_compared(
    runs: dict[str, tuple[RunDir, Lineage]], pairs: list[tuple[str, str]], data_dir: str | None
) -> list[str]:
    """Per pair and split, the two answers' exact McNemar test on the same images."""
    first = next(iter(runs.values()))[1]
    config = load_config(None, {"data": first.config["data"] | ({"dir": data_dir} if data_dir else {})})
    data = config.data.load()
    fp32, cpu = Precision("fp32", "cpu", None), torch.device("cpu")
    predicted = {}
    for name, (run, lineage) in runs.items():
        model, metadata = load_model(run.node_dir(lineage.final().id))
        stats = metadata["dataset"]
        for split in SPLITS:
            images = getattr(data, split)
            predicted[name, split] = predict(
                model, images, mean=stats["mean"], std=stats["std"], device=cpu, precision=fp32
            )[0]
    lines = []
    for name_a, name_b in pairs:
        for split in SPLITS:
            labels = getattr(data, split).labels
            paired = compare_predictions(predicted[name_a, split], predicted[name_b, split], labels)
            lines.append(
                f"- {split}: {name_a} {paired.a_correct:,} right, {name_b} {paired.b_correct:,} of {paired.n:,} "
                f"({paired.difference:+.2f} points); only {name_a} right on {paired.only_a}, only {name_b} on "
                f"{paired.only_b}; exact McNemar p = {paired.p_value:.3g}"
            )
    return lines


def pairs_asked(asked: list[str] | None, names: list[str]) -> list[tuple[str, str]]:
    """`--pairs A:B ...` as name pairs (each name a run's), or every run against the first."""
    if not asked:
        return [(names[0], other) for other in names[1:]]
    pairs = [tuple(item.split(":")) for item in asked]
    for item, pair in zip(asked, pairs, strict=True):
        if len(pair) != 2 or not set(pair) <= set(names):
            raise SystemExit(f"objective_compare.py: --pairs {item!r}: expected A:B, two of {', '.join(names)}")
    return [(a, b) for a, b in pairs]


def summary_row(
    name: str, lineage: Lineage, answer: NodeRecord, ms: dict[int, float], root_ms: dict[int, float]
) -> str:
    trained = [n for n in lineage.students() if n.val_accuracy is not None]
    minutes = sum(n.seconds or 0.0 for n in trained) / 60
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    speed = " | ".join(f"{ms[b]:.3f} ({root_ms[b] / ms[b]:.1f}x)" for b in TIMED_BATCHES)
    return (
        f"| {name} | {answer.id} | {answer.arch_summary()} | {answer.params:,} | {answer.macs / 1e6:.2f} | "
        f"{pct(answer.val_accuracy)} | {pct(answer.test_accuracy)} | {speed} | {len(trained)} | {minutes:.1f} |"
    )


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        named = quick_runs(Path(scratch), not args.quiet) if args.quick else args.runs
        runs = {}
        for item in named:
            name, _, directory = item.partition("=")
            run = RunDir(Path(directory))
            if not name or not run.exists():
                raise SystemExit(f"objective_compare.py: {item!r}: expected NAME=DIR of a campaign's run directory")
            runs[name] = (run, run.load())
        roots = {lineage.root().sha256 for _, lineage in runs.values()}
        if len(roots) != 1:
            raise SystemExit("objective_compare.py: the runs grew from different teachers; compare runs of one")
        pairs = pairs_asked(args.pairs, list(runs))
        answers = {name: lineage.final() for name, (_, lineage) in runs.items()}
        root = next(iter(runs.values()))[1].root()
        specs = {"teacher": root.spec(), **{name: node.spec() for name, node in answers.items()}}
        plan = {"repeats": 3, "rounds": 1} if args.quick else {}
        timed = spec_latencies(specs, batches=TIMED_BATCHES, **plan)
        ms = {name: {t.batch: t.median_ms for t in ts if t.runtime == "onnxruntime"} for name, ts in timed.items()}
        paired = answers_compared(runs, pairs, args.data_dir)
    batches = " | ".join(f"ORT ms, batch {b} (x teacher)" for b in TIMED_BATCHES)
    lines = [
        f"Machine: {machine_line()}",
        "",
        f"Teacher: {root.arch_summary()}, {root.params:,} parameters, {root.macs / 1e6:.1f} M MACs, "
        f"val {100 * (root.val_accuracy or 0):.2f}%, test {100 * (root.test_accuracy or 0):.2f}%; "
        + ", ".join(f"ORT {ms['teacher'][b]:.3f} ms at batch {b}" for b in TIMED_BATCHES)
        + ".",
        "",
        f"| run | answer | arch | params | M MACs | val % | test % | {batches} | trained | train min |",
        "|" + "---|" * (9 + len(TIMED_BATCHES)),
        *[summary_row(n, runs[n][1], a, ms[n], ms["teacher"]) for n, a in answers.items()],
        "",
        "Answers compared on the same images:",
        "",
        *paired,
    ]
    for name, (_, lineage) in runs.items():
        lines += ["", f"{name}:", "", "```", format_lineage(lineage).rstrip(), "```"]
    if args.note:
        lines += ["", args.note]
    publish("\n".join(lines) + "\n", args.markdown, args.title)
    values = {}
    for name, node in answers.items():
        values |= {f"{name}_params": node.params, f"{name}_macs": node.macs, f"{name}_test": node.test_accuracy}
    print_result(values)


if __name__ == "__main__":
    main()
