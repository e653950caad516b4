"""Does a speed-up hold still? The same teacher and student timed in several separate processes.

Each run is a fresh process that loads the root teacher and one node of a run directory (and their
ONNX graphs, exported once before the first run) and times them two ways at batch 1 (or `--batch`),
with onnxruntime and PyTorch, one thread unless `--threads`:
  interleaved  ikd's protocol (ikd.latency): both models in one call, `--rounds` interleaved turns of
               `--repeats` calls each after a warm-up, the smallest turn median kept;
  one-by-one   the old way: each model timed alone, one median of 30 calls, the teacher
               first, then the student.
With `--processes K` a run is K fresh processes and its speed-up the median of theirs, for machines
where much of the spread is between processes (on a 2-core VM the same student took 0.75 ms in one
and 1.07 in the next).
The record gives every run's teacher ms / student ms and, per protocol, the largest speed-up over
the smallest across runs (goal: <= 1.10 for the interleaved protocol, issue 19), and each side's ms,
to show which of the two moved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ikd.checkpoint import load_model
from ikd.export import onnx_graph
from ikd.latency import LATENCY_PLAN, LATENCY_THREADS, OTHER_BATCH_PLAN, RUNTIMES, measure_latencies
from ikd.lineage import RunDir

from common import QUICK_ARCH, machine_line, print_result, publish

GOAL = 1.10
OLD_REPEATS = 30  # the one-by-one protocol's single median, as ikd timed before the interleaved one


def save_graphs(run_dir: Path, node_id: str, graphs: Path) -> None:
    """The root's and the node's ONNX graphs, exported once into `graphs`, so every run times the same graphs
    (and no run spends seconds exporting them again)."""
    run = RunDir(run_dir)
    lineage = run.load()
    graphs.mkdir(parents=True, exist_ok=True)
    for node in (lineage.root(), lineage.node(node_id)):
        model, meta = load_model(run.node_dir(node.id))
        (graphs / f"{node.id}.onnx").write_bytes(onnx_graph(model.eval(), meta["dataset"], {}))


def time_once(
    run_dir: Path, node_id: str, repeats: int, rounds: int, threads: int, batch: int, graphs: Path
) -> dict[str, dict[str, float]]:
    """Speed-ups at `batch` per protocol and runtime, measured in this process with `threads` threads, and the
    interleaved protocol's ms of each side ("teacher ms", "student ms"): which of the two moved."""
    run = RunDir(run_dir)
    lineage = run.load()
    timed = {}
    for node in (lineage.root(), lineage.node(node_id)):
        model, meta = load_model(run.node_dir(node.id))
        timed[node.id] = (model.eval(), meta["dataset"], (graphs / f"{node.id}.onnx").read_bytes())
    teacher_id = lineage.root().id

    def milliseconds(measured, node: str) -> dict[str, float]:
        return {m.runtime: m.median_ms for m in measured[node]}

    def speedups(measured) -> dict[str, float]:
        teacher, student = milliseconds(measured, teacher_id), milliseconds(measured, node_id)
        return {runtime: teacher[runtime] / student[runtime] for runtime in RUNTIMES}

    together = measure_latencies(timed, repeats, rounds, batches=(batch,), threads=threads)
    one_by_one = speedups(
        {
            name: measure_latencies({name: timed[name]}, OLD_REPEATS, 1, batches=(batch,), threads=threads)[name]
            for name in timed
        }
    )
    return {
        "interleaved": speedups(together),
        "one-by-one": one_by_one,
        "teacher ms": milliseconds(together, teacher_id),
        "student ms": milliseconds(together, node_id),
    }


def quick_run(directory: Path) -> tuple[Path, str]:
    """A digits run with one accepted student, made by `ikd compress` (1 epoch each)."""
    config = directory / "quick.yaml"
    config.write_text(
        "data: {name: digits}\nprecision: fp32\n"
        f"teacher: {{arch: {QUICK_ARCH}, epochs: 1, batch_size: 64, ema_epochs: 0}}\n"
        "student: {epochs: 1}\nsearch: {operators: [width], max_generations: 1, max_drop: 100, max_step_drop: 100}\n"
    )
    run_dir = directory / "run"
    command = [sys.executable, "-m", "ikd", "compress", "--config", str(config), "--run-dir", str(run_dir), "--quiet"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run_dir, "g1-width"


def median_of_processes(child: list[str], processes: int) -> dict[str, dict[str, float]]:
    """Speed-ups per protocol and runtime: the median over `processes` fresh runs of `child`."""
    runs = [subprocess.run(child, check=True, capture_output=True, text=True) for _ in range(processes)]
    each = [json.loads(run.stdout) for run in runs]
    return {
        protocol: {runtime: statistics.median(e[protocol][runtime] for e in each) for runtime in RUNTIMES}
        for protocol in each[0]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", metavar="DIR", help="a run directory holding the weights of the root and --node")
    parser.add_argument("--node", help="the student to time against the root (default: the run's answer)")
    parser.add_argument("--runs", type=int, default=3, help="separate processes, one after the other")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--repeats", type=int, help="timed calls per turn (median; default: ikd.latency's plan)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per process (default: ikd.latency's plan)")
    parser.add_argument(
        "--processes", type=int, default=1, help="fresh processes per run; a run's speed-up is their median"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=LATENCY_THREADS,
        help=f"torch and onnxruntime threads (default {LATENCY_THREADS})",
    )
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="a tiny digits run of its own, 2 runs of 2 rounds")
    parser.add_argument("--quiet", action="store_true", help="(prints only the record)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one run, JSON out
    parser.add_argument("--graphs", help=argparse.SUPPRESS)  # a child's: the graphs the parent exported
    args = parser.parse_args()
    planned_repeats, planned_rounds = LATENCY_PLAN.get(args.batch, OTHER_BATCH_PLAN)
    args.repeats, args.rounds = args.repeats or planned_repeats, args.rounds or planned_rounds
    if args.one:
        timed = time_once(
            Path(args.run), args.node, args.repeats, args.rounds, args.threads, args.batch, Path(args.graphs)
        )
        print(json.dumps(timed))
        return 0

    with tempfile.TemporaryDirectory(prefix="ikd-latency-") as scratch:
        if args.quick:
            (run_dir, node_id), args.runs, args.repeats, args.rounds = quick_run(Path(scratch)), 2, 5, 2
        elif args.run:
            run_dir = Path(args.run)
            node_id = args.node or RunDir(run_dir).load().final().id
        else:
            parser.error("--run is required (or --quick)")
        save_graphs(run_dir, node_id, graphs := Path(scratch) / "graphs")
        child = [sys.executable, __file__, "--one", "--run", str(run_dir), "--node", node_id, "--graphs", str(graphs)]
        child += ["--repeats", str(args.repeats), "--rounds", str(args.rounds)]
        child += ["--threads", str(args.threads), "--batch", str(args.batch)]
        results = [median_of_processes(child, args.processes) for _ in range(args.runs)]

    lines = [
        f"Machine: {machine_line()}; timed with {args.threads} thread(s) (torch and onnxruntime).",
        f"Models: the root teacher of `{run_dir if not args.quick else 'quick'}` and `{node_id}`, batch {args.batch}, "
        f"{args.rounds} interleaved turns of {args.repeats} timed calls (one-by-one: one median of {OLD_REPEATS}); "
        f"{args.runs} runs one after the other, "
        + (
            f"each the median of {args.processes} separate processes."
            if args.processes > 1
            else "each a separate process."
        ),
        "",
        "| protocol | runtime | "
        + " | ".join(f"run {i + 1}" for i in range(args.runs))
        + " | largest / smallest | goal |",
        "|---|---|" + "---|" * args.runs + "---|---|",
    ]
    values = {}
    for protocol in ("interleaved", "one-by-one"):
        for runtime in RUNTIMES:
            speedups = [r[protocol][runtime] for r in results]
            spread = max(speedups) / min(speedups)
            values[f"{protocol}_{runtime}_spread"] = f"{spread:.3f}"
            goal = f"<= {GOAL:.2f}: {'met' if spread <= GOAL else 'missed'}" if protocol == "interleaved" else ""
            lines.append(
                f"| {protocol} | {runtime} | "
                + " | ".join(f"{s:.2f}x" for s in speedups)
                + f" | {spread:.3f} | {goal} |"
            )
    for side in ("teacher ms", "student ms"):
        for runtime in RUNTIMES:
            ms = [r[side][runtime] for r in results]
            lines.append(
                f"| {side}, interleaved | {runtime} | "
                + " | ".join(f"{m:.4g}" for m in ms)
                + f" | {max(ms) / min(ms):.3f} |  |"
            )
    lines += [f"- {note}" for note in args.note]
    publish("\n".join(lines), args.markdown, "Latency: do speed-ups hold still across runs?")
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
