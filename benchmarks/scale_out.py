"""Scale-out: one Parent->Children generation of k=4 candidates with the local executor vs the Ray
executor with 2 workers, measured side by side in one run, and what the measured per-job times say
about N workers (GPUs).

Both runs distil the same four children (depth, width 0.25 / 0.5 / 0.75) of the same teacher for the
same epochs and must reach the same decision. The local executor trains the four together in this
process (one pass over the data, the teacher's cached outputs shared, torch on all cores); Ray runs
each as its own job on a worker with `--cpus-per-job` cores (each worker caches the teacher's outputs
itself). Wall times exclude the root teacher's import, which both runs do alike; Ray's start-up
(`ray.init`) is timed separately, the workers' start-up is inside Ray's wall time.

    python benchmarks/scale_out.py --data-dir ../shared/data/mnist --teacher runs/campaign-benchmark/g4-width \
        --markdown benchmarks/results/scale_out.md
    python benchmarks/scale_out.py --quick      # digits, a 1-epoch teacher, 1 epoch per child
Last line: `RESULT ray_over_local=... local_s=... ray_s=... ray_init_s=... same_decision=...`.
"""

from __future__ import annotations

import argparse
import heapq
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ikd.campaign import compress
from ikd.config import load_config

# benchmarks/common.py: a script's own directory is on sys.path
from common import QUICK_ARCH, machine_line, print_result, publish

WIDTHS = [0.25, 0.5, 0.75]


def generation_config(args, run_dir: Path, executor: str, teacher: str):
    return load_config(
        None,
        {
            "run_dir": str(run_dir),
            "data.name": args.dataset,
            "data.dir": args.data_dir,
            "teacher.dir": teacher,
            "student.epochs": args.epochs,
            "search.strategy": "parent-children",
            "search.operators": ["depth", "width"],
            "search.width_factor": WIDTHS,
            "search.max_generations": 1,
            "search.max_drop": 100.0,
            "search.max_step_drop": 100.0,
            "executor.kind": executor,
            "executor.cpus_per_job": args.cpus_per_job,
            "precision": "fp32",
            "device": "cpu",
        },
    )


def run_generation(config, quiet: bool):
    """(seconds of the generation, lineage): compress's wall time less the root teacher's import."""
    started = time.perf_counter()
    lineage = compress(config, progress=not quiet)
    return time.perf_counter() - started - lineage.root().seconds, lineage


def makespan(job_seconds: list[float], workers: int) -> float:
    """Longest-job-first onto the least loaded worker: the time k jobs take on `workers` workers."""
    loads = [0.0] * workers
    for seconds in sorted(job_seconds, reverse=True):
        heapq.heapreplace(loads, loads[0] + seconds)
    return max(loads)


def quick_teacher(directory: Path) -> str:
    out = directory / "teacher"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ikd",
            "train",
            "--dataset",
            "digits",
            "--arch",
            QUICK_ARCH,
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--quiet",
            "--out",
            str(out),
        ],
        check=True,
    )
    return str(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", help="data.dir, e.g. ../shared/data/mnist")
    parser.add_argument("--teacher", help="a trained model directory on the same split (e.g. a campaign's node)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per child")
    parser.add_argument(
        "--workers", type=int, default=2, help="Ray workers (the local Ray instance's CPUs / cpus-per-job)"
    )
    parser.add_argument("--cpus-per-job", type=float, default=1.0)
    parser.add_argument("--markdown", help="also write the record to this file")
    parser.add_argument("--quick", action="store_true", help="digits, a 1-epoch teacher, 1 epoch per child")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        raise SystemExit("scale_out.py: needs Ray: pip install 'ikd[ray]'") from None

    with tempfile.TemporaryDirectory(prefix="ikd-scale-out-") as scratch:
        if args.quick:
            args.dataset, args.data_dir, args.epochs = "digits", None, 1
            args.teacher = quick_teacher(Path(scratch))
        if not args.teacher:
            raise SystemExit("scale_out.py: pass --teacher DIR (a trained model on the same split), or --quick")
        local_s, local = run_generation(
            generation_config(args, Path(scratch) / "local", "local", args.teacher), args.quiet
        )
        started = time.perf_counter()
        ray.init(num_cpus=int(args.workers * args.cpus_per_job), include_dashboard=False, logging_level="WARNING")
        ray_init_s = time.perf_counter() - started
        try:
            ray_s, remote = run_generation(
                generation_config(args, Path(scratch) / "ray", "ray", args.teacher), args.quiet
            )
        finally:
            ray.shutdown()

    children = [n for n in remote.nodes if n.generation == 1]
    by_id = {n.id: n for n in local.nodes}
    same = [(n.id, n.status) for n in local.nodes] == [(n.id, n.status) for n in remote.nodes]
    jobs = [n.seconds for n in children]
    overhead = max(ray_s - makespan(jobs, args.workers), 0.0)
    rows = [
        f"| `{n.id}` | {n.params:,} | {100 * by_id[n.id].val_accuracy:.2f} | {100 * n.val_accuracy:.2f} | "
        f"{n.seconds:.1f} | {n.status} |"
        for n in children
    ]
    projection = [
        f"| {w} | {makespan(jobs, w) + overhead:.0f} | {local_s / (makespan(jobs, w) + overhead):.2f} |"
        for w in (1, 2, 4, 8)
    ]
    threads = torch.get_num_threads()
    gap = max(100 * abs(by_id[n.id].val_accuracy - n.val_accuracy) for n in children)
    text = "\n".join(
        [
            f"Machine: {machine_line()}.",
            f"Teacher `{args.teacher}` ({remote.root().params:,} params) on {args.dataset}; k={len(children)} children "
            f"(depth, width {', '.join(map(str, WIDTHS))}), {args.epochs} epoch(s) each, parent-children, fp32.",
            f"Local executor: the {len(children)} children in one pass in this process ({threads} torch threads). "
            f"Ray: a local instance with {int(args.workers * args.cpus_per_job)} CPUs, {args.workers} workers of "
            f"{args.cpus_per_job:g} CPU, one job per child.",
            "",
            "| executor | generation wall (s) | ratio to local |",
            "|---|---|---|",
            f"| local (one process, {threads} threads) | {local_s:.1f} | 1.00 |",
            f"| ray ({args.workers} workers x {args.cpus_per_job:g} CPU) | {ray_s:.1f} | {ray_s / local_s:.2f} |",
            f"| ray.init (not in the row above) | {ray_init_s:.1f} | |",
            "",
            "| child | params | val % local | val % ray | ray job s (in its worker) | status |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Same decision (every node's status) in both runs: {'yes' if same else 'NO'}.",
            f"Ray's own cost in this generation: {overhead:.1f} s = wall {ray_s:.1f} s less the {args.workers}-worker "
            f"schedule of the measured job times ({makespan(jobs, args.workers):.1f} s): worker start-up and shipping "
            "data and weights (a worker's teacher-output cache is inside its first job's time).",
            f"Validation accuracies differ by up to {gap:.2f} points between the two runs: torch sums in another "
            f"order with {threads} threads (local) than with 1 per job, and training amplifies it; with equal thread "
            "counts they are equal (tests/test_executor.py).",
            "",
            "Projected on paper for N workers (one GPU each, or N nodes), from the measured job times and that "
            "overhead, longest job first; jobs do not speed up, only run side by side:",
            "",
            "| N workers | generation s (projected) | local / projected |",
            "|---|---|---|",
            *projection,
        ]
    )
    publish(text, args.markdown, "Scale-out: a k=4 generation, local executor vs Ray")
    print_result(
        {
            "ray_over_local": f"{ray_s / local_s:.3f}",
            "local_s": f"{local_s:.1f}",
            "ray_s": f"{ray_s:.1f}",
            "ray_init_s": f"{ray_init_s:.1f}",
            "same_decision": "yes" if same else "no",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
