"""The paper's results table: memory reduction and accuracy drop of ikd's campaigns, beside published anchors.

One row per (dataset, teacher, operators): MNIST and CIFAR-10 (JPEG-Q75), VGG-16 and VGG-19,
shrinking by depth only, width only, or both; and a `<dataset>-<teacher>-slim` row where
`configs/<dataset>-<teacher>-slim.yaml` ships that recipe (uneven steps and a final distillation).
Each row is a campaign run with the shipped config (`configs/<dataset>-<teacher>.yaml`, or that
recipe's) under the budget given here, stated in the output. A row's run
directory is resumed, so an interrupted table continues where it stopped, and `--reuse ROW=DIR`
takes a campaign already run (its own budget is read from its lineage and printed). A row with no
`--teacher` imports the teacher a sibling row (same dataset and architecture) trained in `--out`,
so one teacher serves its three rows. The final student is exported to ONNX, checked against
PyTorch and timed beside its teacher (`ikd export`).

    python benchmarks/paper.py --rows 'mnist-vgg16-*' --data-dir mnist=../shared/data/mnist \
        --teacher mnist-vgg16=runs/mnist-vgg16 --markdown benchmarks/results/paper.md
    python benchmarks/paper.py --collect-only --reuse mnist-vgg16-depth+width=runs/mnist-campaign ...
    python benchmarks/paper.py --quick      # digits, a small VGG, two rows, a tiny budget: a smoke run

With `--markdown PATH`, the table is kept as records too (`PATH` with `.json`, one per row: its
numbers, the command that made it and where): a run replaces the records of the rows it ran and keeps
the others, so the table grows row by row across runs and machines, and `make paper` on a few rows
does not wipe the rest. Text from a `## Notes` heading on in PATH is hand-written and carried over.
Rows with no record are listed as not run. Last line: `RESULT row_x=... row_drop=... ...`.

`--time-limit 1h10m` stops a row's campaign at the next epoch boundary once that long has passed (each row
counts from its own start), keeps its state and exits 75; the same command without it, or with a new one,
resumes the row. A long CPU row spans sessions so.

`--seed S` runs a row again with seed S (students' initialisation and data order) into `<row>-seedS`,
recorded beside seed 0; rows with several seeds get a mean and spread below the table. The teacher is the
one imported or shared (a sibling row's or another seed's in `--out`), so seeds of a row compare students of
one teacher; with neither, the run trains its own teacher with seed S, a replicate of the whole row.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ikd.atomic import atomic_write_json
from ikd.campaign import CampaignPaused, compress
from ikd.checkpoint import WEIGHTS_FILE
from ikd.cli import EXIT_TEMPFAIL
from ikd.config import load_config
from ikd.errors import IkdError
from ikd.export import export
from ikd.lineage import ROOT_ID, Lineage, NodeKind, RunDir
from ikd.report import arch_name, latency_of, speedup

# benchmarks/common.py: a script's own directory is on sys.path
from common import (
    QUICK_ARCH,
    ROOT,
    TIMED_BATCHES,
    command_line,
    machine_line,
    mean_spread,
    print_result,
    write_record,
)

DATASETS = ("mnist", "cifar10")
TEACHERS = ("vgg16", "vgg19")
OPERATORS = (("depth",), ("width",), ("depth", "width"))
# configs/<dataset>-<teacher>-slim.yaml: uneven steps and a final distillation (the recipe iterating_pays measured)
RECIPE_OPERATORS = ("slim",)
NOTES_HEADING = "## Notes"  # from here on a table's file is hand-written, carried over when rewritten
DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10 (JPEG-Q75)", "digits": "digits"}
# Published results, quoted for orientation; none is reproduced here (full CIFAR-10 or MNIST,
# GPU budgets of hundreds of epochs, other architectures' heads).
ANCHORS = [
    ("Network Slimming (Liu et al. 2017)", "VGG-19", "CIFAR-10", "88.5% fewer params", "+0.14 (accuracy up)"),
    ("Pruning Filters (Li et al. 2017)", "VGG-16", "CIFAR-10", "64% fewer params", "+0.15 (accuracy up)"),
    ("HRank (Lin et al. 2020)", "VGG-16", "CIFAR-10", "82.9% fewer params", "-0.53"),
    ("Deep Compression (Han et al. 2016)", "LeNet-5", "MNIST", "39x smaller (pruning + quantisation + coding)", "0.00"),
]


@dataclass(frozen=True)
class Row:
    dataset: str
    teacher: str
    operators: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.teacher}-{'+'.join(self.operators)}"

    @property
    def config(self) -> Path:
        name = "digits-demo" if self.dataset == "digits" else f"{self.dataset}-{self.teacher}"
        if self.operators == RECIPE_OPERATORS:  # a recipe of its own, not the paper's steps
            name += "-" + "+".join(RECIPE_OPERATORS)
        return ROOT / "configs" / f"{name}.yaml"


def all_rows() -> list[Row]:
    """The paper's steps for every dataset and teacher, and the slim recipe where a config ships it."""
    paper = [Row(d, t, ops) for d in DATASETS for t in TEACHERS for ops in OPERATORS]
    recipe = [Row(d, t, RECIPE_OPERATORS) for d in DATASETS for t in TEACHERS]
    return paper + [row for row in recipe if row.config.is_file()]


def run_name(row: Row, seed: int) -> str:
    """A row's run directory and record key: its name for seed 0 (as before seeds), else `<name>-seed<S>`."""
    return row.name if seed == 0 else f"{row.name}-seed{seed}"


def row_of(record: dict) -> str:
    """The table row a record belongs to, whatever its seed."""
    return re.sub(r"-seed\d+$", "", record["row"])


def pairs(values: list[str], flag: str) -> dict[str, str]:
    """KEY=VALUE arguments as a dict; a malformed one is a usage error."""
    parsed = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise SystemExit(f"paper.py: error: {flag} {value!r}: expected KEY=VALUE")
        parsed[key] = rest
    return parsed


def teacher_source(config: dict) -> str:
    """Where an imported teacher came from: the row whose run trained it, else its directory."""
    source = Path(config["teacher"]["dir"])
    run_dir = source.parents[1] if len(source.parents) > 1 else source
    return run_dir.name if RunDir(run_dir).node_dir(ROOT_ID) == source else source.as_posix()


def shared_teacher(row: Row, own: str, out: Path, teacher_epochs: int) -> str | None:
    """A teacher another row of this table trained for the same dataset and architecture, with the
    same epochs: rows that differ only in their operators then share one teacher instead of each
    training its own (the costliest node of a campaign), and compare students of the same teacher;
    so do the seeds of a row. `own`: this run's directory name, never its own sibling."""
    for run_dir in sorted(out.glob(f"{row.dataset}-{row.teacher}-*")):
        sibling = RunDir(run_dir)
        if run_dir.name == own or not sibling.exists():
            continue
        root, teacher_dir = sibling.load().find(ROOT_ID), sibling.node_dir(ROOT_ID)
        # a sibling paused in its teacher's training has a lineage but no root yet
        if root is not None and root.epochs == teacher_epochs and teacher_dir.is_dir():
            return str(teacher_dir)
    return None


def budget_of(lineage: Lineage) -> str:
    """The row's budget as it ran, read back from its lineage (so a reused run is labelled by its own)."""
    config = lineage.config
    root = lineage.root()
    students = lineage.students()
    teacher = f"teacher {root.epochs} ep" if root.epochs else f"teacher imported from {teacher_source(config)}"
    final = next((n for n in lineage.nodes if n.kind is NodeKind.FINAL), None)
    return (
        f"{teacher}; {config['student']['epochs']} ep/child, {len(students)} children "
        + (f"+ final distillation {final.epochs} ep " if final is not None else "")
        + f"({lineage.epochs_spent()} child-epochs), max_drop {config['search']['max_drop']}"
    )


def measure(
    run_dir: Path, lineage: Lineage, data_dir: str | None, repeats: int | None, rounds: int | None
) -> tuple[Lineage, str | None]:
    """Export the final student to ONNX (verified against PyTorch) and time it beside the teacher.

    A lineage whose weights are not here (brought back from another machine without them) is
    tabulated as it is, with a note saying so instead of latencies.
    """
    final = lineage.final()
    if final is lineage.root() or latency_of(final, "onnxruntime", 1):
        return lineage, None
    run = RunDir(run_dir)
    if absent := [n.id for n in (lineage.root(), final) if not (run.node_dir(n.id) / WEIGHTS_FILE).is_file()]:
        return lineage, (
            f"tabulated from its lineage alone: no weights of {', '.join(absent)} here, so not exported or timed"
        )
    export(run_dir, "onnx", node=final.id, data_dir=data_dir, repeats=repeats, rounds=rounds)
    return run.load(), None


def speedup_key(runtime: str, batch: int) -> str:
    """A record's key for the speed-up in `runtime` at `batch`: speedup_ort, speedup_torch_b64, ..."""
    short = "ort" if runtime == "onnxruntime" else runtime
    return f"speedup_{short}" + ("" if batch == 1 else f"_b{batch}")


def row_result(row: Row, name: str, lineage: Lineage) -> dict:
    """The record of one run of a row (`name`: its key, `run_name(row, seed)`)."""
    root, final = lineage.root(), lineage.final()
    speedups = {
        speedup_key(runtime, batch): speedup(final, root, runtime, batch)
        for runtime in ("onnxruntime", "torch")
        for batch in TIMED_BATCHES
    }
    # one left by an interrupted --redecide or --force was made for another answer
    baselines = {
        n.id: n.test_accuracy for n in lineage.nodes if n.kind is NodeKind.BASELINE and lineage.is_current_baseline(n)
    }
    return {
        "row": name,
        "seed": lineage.config.get("seed", 0),
        "dataset": DATASET_LABELS.get(row.dataset, row.dataset),
        "teacher": arch_name(root),
        "operators": "+".join(row.operators),
        "budget": budget_of(lineage),
        "teacher_test": 100 * root.test_accuracy,
        "params": final.params,
        "root_params": root.params,
        "reduction": 100 * (1 - final.size_bytes_fp32 / root.size_bytes_fp32),
        "x": final.compression,
        "test": 100 * final.test_accuracy,
        "drop": 100 * (root.test_accuracy - final.test_accuracy),
        "val_drop": 100 * (root.val_accuracy - final.val_accuracy),
        "generations": final.generation,
        **speedups,
        "scratch": baselines.get("baseline-scratch"),
        "oneshot": baselines.get("baseline-oneshot-kd"),
        "train_minutes": sum(n.seconds for n in lineage.nodes) / 60,
        "stop": lineage.stop_reason,
    }


# what the markdown shows of a row, so what a record read back must hold
RECORD_KEYS = {
    "row",
    "dataset",
    "teacher",
    "operators",
    "budget",
    "teacher_test",
    "params",
    "reduction",
    "x",
    "drop",
    "val_drop",
    "generations",
    "speedup_ort",
    "speedup_torch",
    "scratch",
    "oneshot",
    "train_minutes",
    "command",
    "machine",
}


def records_path(markdown: str | Path) -> Path:
    return Path(markdown).with_suffix(".json")


def load_records(path: Path) -> dict[str, dict]:
    """The rows a table already holds, by row name (none when `path` does not exist)."""
    if not path.exists():
        return {}
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"paper.py: error: {path}: not a readable table record ({exc})") from None
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise SystemExit(f"paper.py: error: {path}: expected an object of row records, keyed by row name")
    for name, record in records.items():
        if lacking := sorted(RECORD_KEYS - record.keys()):
            raise SystemExit(f"paper.py: error: {path}: row {name!r} lacks {', '.join(lacking)}")
    return records


def ordered(records: dict[str, dict]) -> list[dict]:
    """The paper's rows in table order, then any others (the smoke run's digits rows) as recorded; a
    row's seeds together, by seed."""
    rows = list(dict.fromkeys([r.name for r in all_rows()] + [row_of(r) for r in records.values()]))
    return sorted(records.values(), key=lambda r: (rows.index(row_of(r)), r.get("seed", 0)))


def across_seeds(results: list[dict]) -> list[str]:
    """Mean and spread of the rows run with more than one seed (markdown lines; none when no row was)."""
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(row_of(r), []).append(r)
    groups = [seeds for seeds in by_row.values() if len(seeds) > 1]
    if not groups:
        return []
    lines = [
        "",
        "Rows run with several seeds (mean ± standard deviation over the seeds above; chain test = teacher test "
        "- test drop; a baseline difference only where every seed has that baseline):",
        "",
        "| dataset | teacher | operators | seeds | teacher test % | compression x | student params | test drop (pts) "
        "| val drop (pts) | chain - scratch, test (pts) | chain - one-shot KD, test (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seeds in groups:

        def of_seeds(key: str, spec: str, seeds=seeds) -> str:
            return mean_spread([r[key] for r in seeds], spec=spec)

        first = seeds[0]
        teachers = sorted({f"{r['teacher_test']:.2f}" for r in seeds})
        chain = [r["teacher_test"] - r["drop"] for r in seeds]
        versus = []
        for key in ("scratch", "oneshot"):
            scores = [r[key] for r in seeds]
            ok = all(v is not None for v in scores)
            versus.append(
                mean_spread([c - 100 * b for c, b in zip(chain, scores, strict=True)], spec="+.2f") if ok else "-"
            )
        lines.append(
            f"| {first['dataset']} | {first['teacher']} | {first['operators']}{' (a)' if mixed(seeds) else ''} | "
            f"{', '.join(str(r.get('seed', 0)) for r in seeds)} | {' / '.join(teachers)} | "
            f"{of_seeds('x', '.1f')} | {of_seeds('params', ',.0f')} | "
            f"{of_seeds('drop', '.2f')} | {of_seeds('val_drop', '.2f')} | "
            f"{versus[0]} | {versus[1]} |"
        )
    if mixed_groups := [seeds for seeds in groups if mixed(seeds)]:
        lines += ["", "(a) The seeds' teachers differ, so the spread includes the teacher's, not only the seed's:"]
        for seeds in mixed_groups:
            lines.append(
                f"{row_of(seeds[0])}: " + "; ".join(f"seed {r.get('seed', 0)} {teacher_of(r)}" for r in seeds) + "."
            )
    return lines


def teacher_of(record: dict) -> str:
    """Where a record's teacher came from, as its budget says ("teacher 3 ep", "teacher imported from ...")."""
    return record["budget"].partition(";")[0]


def mixed(seeds: list[dict]) -> bool:
    """Whether a row's seeds learnt from teachers of different sources (not one teacher, nor one recipe)."""
    sources = {teacher_of(r) for r in seeds}
    # seed S > 0 importing the teacher its sibling seed trained is that sibling's recipe
    trained = {t for t in sources if not t.startswith("teacher imported from ")}
    imported = {t.removeprefix("teacher imported from ") for t in sources - trained}
    siblings = {row_of(r) for r in seeds} | {r["row"] for r in seeds}
    return len(trained) + len(imported - siblings) > 1


def spread_text(spreads: dict[str, float] | None) -> str:
    """How far the processes that timed a row disagreed: the largest over the smallest speed-up, per key."""
    if not spreads:
        return ""
    return "; spread between processes " + ", ".join(f"{key} {value:.3f}" for key, value in spreads.items())


def markdown(results: list[dict], missing: list[str]) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        "Every row states the budget it ran with, and below the table the command that made it and where; "
        "CIFAR-10 here is the JPEG-Q75 variant. Accuracy drop = teacher test % - student test %; the student is "
        "the smallest accepted by validation (test never used to choose). Latency speed-up: teacher ms / student "
        "ms at batch 1 and at batch 64, same runtime, same machine, the threads the row's timing names (a "
        "re-timed row also gives how far the processes that timed it disagreed). Drops are points lost (negative: "
        "the student scored higher). "
        "Training min: the nodes' recorded training time, teacher and baselines included.",
        "",
        "| dataset | teacher | operators | seed | budget | teacher test % | student params | memory reduction % | "
        "compression x | test drop (pts) | val drop (pts) | generations | speed-up ORT b1 | speed-up torch b1 | "
        "speed-up ORT b64 | speed-up torch b64 | scratch test % | one-shot KD test % | training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['teacher']} | {r['operators']} | {r.get('seed', 0)} | {r['budget']} | "
            f"{r['teacher_test']:.2f} | "
            f"{r['params']:,} | {r['reduction']:.2f} | {r['x']:.1f} | {r['drop']:.2f} | {r['val_drop']:.2f} | "
            f"{r['generations']} | {fmt(r['speedup_ort'], '.1f')} | {fmt(r['speedup_torch'], '.1f')} | "
            f"{fmt(r.get('speedup_ort_b64'), '.1f')} | {fmt(r.get('speedup_torch_b64'), '.1f')} | "
            f"{pct(r['scratch'])} | {pct(r['oneshot'])} | {r['train_minutes']:.1f} |"
        )
    lines += across_seeds(results)
    if missing:
        lines += ["", "Not run in this table (budget): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += [
        "",
        "How each row was made (the command that tabulated it, the machine and time; for a row tabulated "
        "from a campaign run before, the runs its lineage records):",
        "",
    ]
    lines += [
        f"- `{r['row']}`: `{r['command']}` -- {r['machine']}"
        + (f" ({r['source']})" if "source" in r else "")
        + (f"; trained by {r['trained_by']}" if "trained_by" in r else "")
        + (f"; speed-ups {r['timed_by']}" if "timed_by" in r else "")
        + spread_text(r.get("timing_spread"))
        for r in results
    ]
    lines += [
        "",
        "Published anchors (quoted from the papers, not reproduced here; full datasets, their own "
        "training budgets; accuracy change as reported, positive = better than the baseline):",
        "",
        "| method | network | dataset | size reduction | accuracy change (pts) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {n} | {d} | {s} | {a} |" for m, n, d, s, a in ANCHORS]
    return "\n".join(lines) + "\n"


README_TABLES = (
    ROOT / "benchmarks" / "results" / "paper.json",
    ROOT / "benchmarks" / "results" / "paper_shipped_budget.json",
)


def readme_results(tables: tuple[Path, ...] = README_TABLES) -> str:
    """The results table of docs/results.md, made from the table records so that it cannot drift from them: every
    record of a row that shrinks width (`width` or `slim`) and whose student is smaller than its teacher
    (depth-only rows, MNIST 26-36x and CIFAR-10 3.4-5.0x, and the CIFAR-10 width-only rows, which accepted no
    child, are in paper.md), each seed on its own line; records from a table other than the first are marked as
    run at the config's own budget. Below it, how many lines' baselines matched or beat the chain by test."""
    lines = [
        "| dataset | teacher | operators, budget | seed | student params | smaller | test drop (val) | speed-up b1 / "
        "b64 | student / scratch / one-shot KD, test % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with_baselines = beaten = 0
    for index, table in enumerate(tables):
        for r in ordered(load_records(table)):
            if not any(op in r["operators"] for op in ("width", "slim")) or r["x"] <= 1.0:
                continue
            per_child = re.search(r"\d+ ep/child", r["budget"])
            budget = per_child.group(0) if per_child else r["budget"]
            budget += " (as shipped)" if index else ""
            baselines = "-"
            if r["scratch"] is not None and r["oneshot"] is not None:
                chain = round(r["teacher_test"] - r["drop"], 2)
                baselines = f"{chain:.2f} / {100 * r['scratch']:.2f} / {100 * r['oneshot']:.2f}"
                with_baselines += 1
                beaten += round(100 * max(r["scratch"], r["oneshot"]), 2) >= chain
            speedup = " / ".join(f"{r[k]:.1f}x" for k in ("speedup_ort", "speedup_ort_b64") if r.get(k) is not None)
            lines.append(
                f"| {r['dataset']} | {r['teacher']} | {r['operators']}, {budget} | {r.get('seed', 0)} | "
                f"{r['params']:,} | {r['x']:{'.0f' if r['x'] >= 50 else '.1f'}}x | "
                f"{r['drop']:.2f} ({r['val_drop']:.2f}) | {speedup or '-'} | {baselines} |"
            )
    lines += [
        "",
        f"Of the {with_baselines} lines with baselines, scratch or one-shot KD matched or beat the chain's student "
        f"by test on {beaten}.",
    ]
    return "\n".join(lines)


def hand_notes(markdown_path: Path) -> str:
    """The hand-written part of a table's file: from its `## Notes` heading to the end."""
    if not markdown_path.exists():
        return ""
    text = "\n" + markdown_path.read_text()
    start = text.find(f"\n{NOTES_HEADING}\n")
    return "" if start < 0 else text[start + 1 :]


def table_text(records: dict[str, dict], quick: bool) -> str:
    recorded = {row_of(r) for r in records.values()}
    missing = [] if quick else [r.name for r in all_rows() if r.name not in recorded]
    return markdown(ordered(records), missing)


def retimed(previous: dict | None, new: dict) -> dict:
    """The speed-ups retime_paper.py measured for a row's earlier record, when its teacher and student
    still have those parameter counts (the record keeps no shapes; retime_paper.py times architectures,
    not weights): a rewrite would put back the campaign's own timings, which it replaced."""
    if previous is None or "timed_by" not in previous:
        return {}
    if (previous["params"], previous.get("root_params")) != (new["params"], new["root_params"]):
        return {}
    return {k: v for k, v in previous.items() if k.startswith("speedup_") or k in ("timed_by", "timing_spread")}


def save_table(records: dict[str, dict], markdown_path: str, quick: bool) -> None:
    """The records (atomically, first: the markdown is made from them) and the markdown, notes kept."""
    atomic_write_json(records_path(markdown_path), records)
    notes = hand_notes(Path(markdown_path))
    body = (
        f"Made from the records in `{records_path(markdown_path).name}`; each row's own command is listed "
        f"below the table.\n\n{table_text(records, quick)}"
    )
    write_record(
        markdown_path,
        "The paper's table: ikd's campaigns beside published compression results",
        body + ("\n" + notes if notes else ""),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="*", help="glob over row names, e.g. 'mnist-*' or 'mnist-vgg16-width'")
    parser.add_argument("--data-dir", action="append", default=[], metavar="DATASET=DIR")
    parser.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="DATASET-ARCH=DIR",
        help="a trained teacher (`ikd train` output) to import instead of training one",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="ROW=RUN_DIR",
        help="take this finished campaign for the row (an unfinished one is not tabulated)",
    )
    parser.add_argument("--student-epochs", type=int, help="student.epochs (default: the config's)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher.epochs when one is trained (default: the config's)")
    parser.add_argument("--max-generations", type=int)
    parser.add_argument("--budget-epochs", type=int, help="search.budget_epochs per row")
    parser.add_argument(
        "--seed", type=int, default=0, help="the campaigns' seed; S > 0 runs into <row>-seedS, recorded beside seed 0"
    )
    parser.add_argument("--baselines", action="store_true", help="also train scratch and one-shot KD baselines")
    parser.add_argument(
        "--time-limit",
        metavar="DURATION",
        help="stop a row's campaign at the next epoch boundary after this long (e.g. 1h10m), exit 75; rerun to resume",
    )
    parser.add_argument("--collect-only", action="store_true", help="train nothing: tabulate the run dirs on disk")
    parser.add_argument("--out", default="runs/paper", help="one run directory per row is made here")
    parser.add_argument("--repeats", type=int, help="latency repeats (default: ikd export's)")
    parser.add_argument("--rounds", type=int, help="latency rounds (default: ikd export's)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument(
        "--quick", action="store_true", help="digits, a small VGG, width then depth (one teacher), tiny budget"
    )
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--readme-table", action="store_true", help="print docs/results.md's results table from the records"
    )
    args = parser.parse_args()
    if args.readme_table:
        print(readme_results())
        return 0
    data_dirs, teachers = pairs(args.data_dir, "--data-dir"), pairs(args.teacher, "--teacher")
    reuse = pairs(args.reuse, "--reuse")
    overrides = {
        "student.epochs": args.student_epochs,
        "teacher.epochs": args.teacher_epochs,
        "search.max_generations": args.max_generations,
        "search.budget_epochs": args.budget_epochs,
        "baselines": args.baselines or None,
        "seed": args.seed,
        "time_limit": args.time_limit,
    }
    rows = [r for r in all_rows() if fnmatch.fnmatch(r.name, args.rows)]
    if args.quick:  # two rows: the second imports the teacher the first trained
        rows = [Row("digits", QUICK_ARCH, ("width",)), Row("digits", QUICK_ARCH, ("depth",))]
        overrides |= {
            "teacher.epochs": 2,
            "student.epochs": 1,
            "search.max_generations": 2,
            "search.max_drop": 100.0,
            "search.max_step_drop": 100.0,
        }
        args.repeats = args.repeats or 3
        # a smoke run checks that rows get timed, not how fast: the batch-1 plan's 200 rounds were most of its time
        args.rounds = args.rounds or 5
    if args.seed < 0:
        raise SystemExit(f"paper.py: error: --seed {args.seed}: expected a seed >= 0")
    if not rows:
        raise SystemExit(
            f"paper.py: error: --rows {args.rows!r} matches none of: {', '.join(r.name for r in all_rows())}"
        )

    if args.markdown and Path(args.markdown).suffix == ".json":
        raise SystemExit(
            f"paper.py: error: --markdown {args.markdown}: expected a .md path (its records go beside it, as .json)"
        )
    # read now so a broken record file fails before any training; saves re-read it (see below)
    records = load_records(records_path(args.markdown)) if args.markdown else {}
    results = []

    def stopped(code: int) -> int:
        """`code`, after printing the table of the rows finished so far: without --markdown they are kept
        nowhere else, and a pause or an error in a later row must not lose them."""
        if records:
            print(table_text(records, args.quick))
        return code

    for row in rows:
        name = run_name(row, args.seed)
        run_dir = Path(reuse.get(name, Path(args.out) / name))
        data_dir = data_dirs.get(row.dataset)
        tabulated = args.collect_only or name in reuse  # a campaign run elsewhere, or before
        try:
            if tabulated:
                if not RunDir(run_dir).exists():
                    continue  # a row recorded earlier keeps its record
                lineage = RunDir(run_dir).load()
                if not lineage.answered():
                    # its final() is a provisional answer, without its final distillation or baselines
                    print(
                        f"paper.py: {name}: {run_dir} is unfinished; not tabulated (run it with ikd compress "
                        "first; a row recorded earlier keeps its record)",
                        file=sys.stderr,
                    )
                    continue
                if (seed := lineage.config.get("seed", 0)) != args.seed:
                    message = f"{run_dir} ran with seed {seed}, not --seed {args.seed}"
                    print(f"paper.py: error: {name}: {message}", file=sys.stderr)
                    return stopped(2)
            else:
                row_overrides = overrides | {
                    "run_dir": str(run_dir),
                    "search.operators": list(row.operators),
                    "data.dir": data_dir,
                    "teacher.dir": teachers.get(f"{row.dataset}-{row.teacher}"),
                    "teacher.arch": row.teacher,
                }
                config = load_config(row.config, row_overrides)
                if config.teacher.dir is None:
                    # a run dir already there resumes with the teacher it began with
                    resumed = RunDir(run_dir).exists()
                    shared = (
                        RunDir(run_dir).load().config["teacher"].get("dir")
                        if resumed
                        else shared_teacher(row, name, Path(args.out), config.teacher.epochs)
                    )
                    if shared:
                        source = "the teacher this run began with" if resumed else "the teacher a sibling row trained"
                        print(f"paper.py: {name}: importing {shared}, {source}", file=sys.stderr)
                        config = load_config(row.config, row_overrides | {"teacher.dir": shared})
                try:
                    lineage = compress(config, progress=not args.quiet)
                except CampaignPaused as paused:
                    print(f"paper.py: {name}: {paused}; rerun the same command to resume", file=sys.stderr)
                    return stopped(EXIT_TEMPFAIL)
                if not lineage.answered():  # stopped on lost Ray workers: the rerun trains them
                    print(f"paper.py: {name}: {lineage.stop_reason}; not tabulated, rerun", file=sys.stderr)
                    continue
            lineage, note = measure(run_dir, lineage, data_dir, args.repeats, args.rounds)
        except IkdError as exc:
            print(f"paper.py: {name}: error: {exc}", file=sys.stderr)
            return stopped(2)
        if note:
            print(f"paper.py: {name}: {note}", file=sys.stderr)
        trained_by = "; ".join(f"`{s.command}` -- {s.machine}, {s.started}" for s in lineage.sessions)
        results.append(
            row_result(row, name, lineage)
            | {"command": command_line(), "machine": machine_line()}
            | ({"source": note} if note else {})
            | ({"trained_by": trained_by} if tabulated and trained_by else {})
        )
        r = results[-1]
        if args.markdown:  # after every row: a later row's failure or a kill loses none of the finished ones
            # read again first: another paper.py may have added rows to the same table meanwhile
            records = load_records(records_path(args.markdown))
            r |= retimed(records.get(name), r)
            records |= {name: r}
            save_table(records, args.markdown, args.quick)
        else:
            records[name] = r
        print(f"{name}: {r['x']:.1f}x, test drop {r['drop']:.2f} points ({r['budget']})", file=sys.stderr)

    if args.markdown:  # also when no row ran: the file is remade from its records (new notes, new format)
        records = load_records(records_path(args.markdown))
        save_table(records, args.markdown, args.quick)
    print(table_text(records, args.quick))
    print_result(
        {
            key: value
            for r in results
            for key, value in ((f"{r['row']}_x", f"{r['x']:.1f}"), (f"{r['row']}_drop", f"{r['drop']:.2f}"))
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
