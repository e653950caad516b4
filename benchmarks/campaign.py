"""The whole MNIST campaign as a user runs it: wall time and peak memory of `ikd compress`, and its answer.

Runs `ikd compress --config configs/mnist-vgg16.yaml --data-dir DIR --run-dir DIR` as a child
process -- the root teacher trained first (unless `--teacher` imports one), then the search -- and
measures its wall time and its peak resident memory (`getrusage(RUSAGE_CHILDREN).ru_maxrss`: the
largest RSS the child reached). Then it reads the lineage: the final (smallest accepted) student's
compression, and its accuracy drop against the root teacher on the validation split (what
selection used) and on the test split (reported, never used). The issue's goals: >= 500x fewer
parameters at <= 0.3 points test drop, in <= 30 minutes and <= 6 GiB on a 2-core CPU.

The run directory must be new: a resumed campaign skips finished nodes, so its time means nothing.

    python benchmarks/campaign.py --data-dir ../shared/data/mnist --run-dir runs/campaign-benchmark \
        --markdown benchmarks/results/campaign.md
    python benchmarks/campaign.py --quick      # digits, 1-epoch teacher and child, 1 generation
Last line: `RESULT wall_min=... peak_rss_gib=... compression=... test_drop_points=... goals_met=...`.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ikd.lineage import Lineage, NodeRecord, RunDir, Status

# benchmarks/common.py: a script's own directory is on sys.path
from common import QUICK_ARCH, machine_line, print_result, publish, repo_path

GOALS = {"compression": 500.0, "test_drop_points": 0.3, "wall_min": 30.0, "peak_rss_gib": 6.0}


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def quick_config(directory: Path) -> Path:
    """configs/digits-demo.yaml cut to a smoke run: a small 1-epoch teacher, 1-epoch child, one generation, any
    drop accepted."""
    config = yaml.safe_load(repo_path("configs/digits-demo.yaml").read_text())
    config["teacher"] |= {"arch": QUICK_ARCH, "epochs": 1}
    config["student"]["epochs"] = 1
    config["search"] |= {"max_generations": 1, "max_drop": 100.0, "max_step_drop": 100.0}
    path = directory / "digits-quick.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def time_breakdown(lineage: Lineage, wall: float) -> list[str]:
    """Where the wall time went, from each node's own `seconds`: the root teacher, accepted and rejected
    candidates (how many stopped early), the final distillation and baselines, and the rest (loading,
    output caches outside a node, saving)."""
    planned = max((n.epochs for n in lineage.nodes if n.status == Status.ACCEPTED), default=0)
    parts: list[tuple[str, list[NodeRecord]]] = [
        ("root teacher", [lineage.root()]),
        ("accepted children", [n for n in lineage.nodes if n.status == Status.ACCEPTED]),
        ("rejected or failed children", [n for n in lineage.nodes if n.status in (Status.REJECTED, Status.FAILED)]),
        ("final distillation and baselines", [n for n in lineage.nodes if n.status in (Status.FINAL, Status.BASELINE)]),
    ]
    lines = ["| part | nodes | seconds | share of wall |", "|---|---|---|---|"]
    for name, nodes in parts:
        seconds = sum(n.seconds for n in nodes)
        early = sum(1 for n in nodes if n.status == Status.REJECTED and 0 < n.epochs < planned)
        count = f"{len(nodes)}" + (f" ({early} stopped early)" if early else "")
        lines.append(f"| {name} | {count} | {seconds:,.0f} | {seconds / wall:.0%} |")
    rest = wall - sum(n.seconds for n in lineage.nodes if n.status != Status.CANDIDATE)
    lines.append(f"| not in any node (start, loading, saving) | | {rest:,.0f} | {rest / wall:.0%} |")
    largest = sorted((n for n in lineage.nodes if n.id != lineage.root().id), key=lambda n: -n.seconds)[:3]
    costly = ", ".join(f"`{n.id}` {n.params:,} params {n.seconds:,.0f} s" for n in largest)
    return [*lines, "", f"Costliest nodes after the teacher: {costly}."]


def run_campaign(command: list[str]) -> tuple[float, float, str]:
    """Run `ikd compress`; its wall seconds, peak RSS in GiB, and the lineage table it prints."""
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # progress (stderr) shows as it goes
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"campaign.py: `{shlex.join(command)}` exited with {done.returncode}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return wall, peak_kib / 2**20, done.stdout.rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mnist-vgg16.yaml")
    parser.add_argument("--data-dir", help="data.dir, e.g. ../shared/data/mnist")
    parser.add_argument(
        "--teacher", metavar="DIR", help="import this teacher (teacher.dir) instead of training one (then untimed)"
    )
    parser.add_argument("--run-dir", default="runs/campaign-benchmark", help="a new directory for the campaign")
    parser.add_argument("--markdown", help="also write a record (command, machine, lineage, verdict) to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, 1-epoch teacher and child, one generation, in a temporary run directory",
    )
    parser.add_argument("--quiet", action="store_true", help="pass --quiet to ikd compress")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `ikd compress` flags")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    with tempfile.TemporaryDirectory(prefix="ikd-campaign-") as scratch:
        config, run_dir = repo_path(args.config), Path(args.run_dir)
        if args.quick:
            config, run_dir = quick_config(Path(scratch)), Path(scratch) / "run"
        # a campaign killed while its teacher trained has no lineage yet (one paused there has one without
        # nodes), but its training state resumes
        if RunDir(run_dir).exists() or (run_dir.is_dir() and any(run_dir.iterdir())):
            raise SystemExit(
                f"campaign.py: {run_dir} already holds a campaign (or one begun); a resumed run's time "
                "means nothing, so pass a new --run-dir"
            )
        command = [sys.executable, "-m", "ikd", "compress", "--config", str(config), "--run-dir", str(run_dir)]
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        command += ["--teacher", args.teacher] if args.teacher else []
        command += (["--quiet"] if args.quiet else []) + extra
        wall, peak_gib, table = run_campaign(command)
        lineage = RunDir(run_dir).load()

    root, final = lineage.root(), lineage.final()
    measured = {
        "compression": final.compression,
        "wall_min": wall / 60,
        "peak_rss_gib": peak_gib,
        "test_drop_points": 100 * (root.test_accuracy - final.test_accuracy),
    }
    met = {"compression": measured["compression"] >= GOALS["compression"]}
    met |= {key: measured[key] <= GOALS[key] for key in ("test_drop_points", "wall_min", "peak_rss_gib")}
    val_drop = 100 * (root.val_accuracy - final.val_accuracy)
    teacher_note = (
        f"imported from {args.teacher} (its training is not in the wall time)"
        if args.teacher
        else f"trained in the run ({root.epochs} epoch(s), {root.seconds / 60:.1f} min of the wall time)"
    )
    lines = [
        f"Machine: {machine_line()}.",
        f"Campaign: `ikd {shlex.join(command[3:])}`" + (" (quick: digits, smoke-sized)" if args.quick else "") + ".",
        f"Root teacher: {teacher_note}.",
        "",
        "```",
        table,
        "```",
        "",
        "| measure | value | goal | met |",
        "|---|---|---|---|",
        f"| final student | `{final.id}`, {final.params:,} params | | |",
        f"| compression (root params / final params) | {measured['compression']:.1f}x | "
        f">= {GOALS['compression']:g}x | {yes(met['compression'])} |",
        f"| accuracy drop, test (points) | {measured['test_drop_points']:.2f} | "
        f"<= {GOALS['test_drop_points']:g} | {yes(met['test_drop_points'])} |",
        f"| accuracy drop, validation (points; what selection saw) | {val_drop:.2f} | | |",
        f"| wall time (min) | {measured['wall_min']:.1f} | <= {GOALS['wall_min']:g} | {yes(met['wall_min'])} |",
        f"| peak RSS (GiB) | {peak_gib:.2f} | <= {GOALS['peak_rss_gib']:g} | {yes(met['peak_rss_gib'])} |",
    ]
    lines += ["", "Where the time went (each node's own seconds):", "", *time_breakdown(lineage, wall)]
    text = "\n".join(lines)
    publish(text, args.markdown, "Campaign: wall time and peak memory of a whole MNIST campaign")
    print_result(
        {
            "wall_min": f"{measured['wall_min']:.2f}",
            "peak_rss_gib": f"{peak_gib:.2f}",
            "compression": f"{measured['compression']:.1f}",
            "test_drop_points": f"{measured['test_drop_points']:.2f}",
            "val_drop_points": f"{val_drop:.2f}",
            "final_params": final.params,
            "goals_met": yes(all(met.values())),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
