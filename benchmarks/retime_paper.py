"""Re-time the paper table's speed-ups: every row's teacher and student on this machine, one protocol.

The table's speed-ups were measured when each row ran, on different machines (one on a GPU host's
CPU) and with older protocols, so they could not be set beside each other. Speed depends on the
shapes, not the weights, so each row's teacher and final student are rebuilt from the architectures
its lineage records (`results/lineages/<table>/<row>/`; fresh weights) and timed with ikd's
interleaved protocol (ikd.latency), a teacher and all its rows' students in one process, in
`--processes` fresh processes, at batch 1 and 64; a row's speed-up is the median over processes of
teacher ms / student ms in the same process, and its spread (the largest over the smallest of
those ratios) says how far two runs of the same models can disagree. Each architecture is checked
against the parameter count the table records.

    python benchmarks/retime_paper.py --markdown benchmarks/results/paper.md --threads 1 --processes 3
    python benchmarks/retime_paper.py --quick --markdown /tmp/paper.md   # two rows of a copy, 1 process

Writes the new speed-ups into the table's records (`paper.json`) with how they were timed and their
spreads, and remakes the table. Last line: `RESULT <row>_ort=... <row>_torch=...` (batch 1) and
`<row>_ort_b64=...` (batch 64).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ikd.arch import ArchSpec
from ikd.latency import RUNTIMES
from ikd.lineage import RunDir

# benchmarks/common.py and paper.py: a script's own directory is on sys.path
from common import COMMITTED_LINEAGES, ROOT, TIMED_BATCHES, command_line, machine_line, print_result, spec_latencies
from paper import load_records, records_path, save_table, speedup_key

COMMITTED_TABLE = ROOT / "benchmarks" / "results" / "paper.md"
# two rows of one teacher architecture, so one process
QUICK_ROWS = ["mnist-vgg16-width", "mnist-vgg16-depth"]


def row_archs(name: str, record: dict, lineages: Path) -> tuple[ArchSpec, ArchSpec]:
    """A row's teacher and final student, from its lineage under `lineages`."""
    if not (lineages / name / "lineage.json").is_file():
        raise SystemExit(f"retime_paper.py: error: row {name!r}: no lineage under {lineages}")
    lineage = RunDir(lineages / name).load()
    teacher, student = (ArchSpec.model_validate(node.arch) for node in (lineage.root(), lineage.final()))
    for spec, params in ((teacher, record.get("root_params")), (student, record["params"])):
        if params is not None and spec.num_params() != params:
            raise SystemExit(
                f"retime_paper.py: error: row {name!r}: the architecture has {spec.num_params():,} params, "
                f"the record {params:,}"
            )
    return teacher, student


Timings = dict[str, dict[str, dict[str, float]]]  # model -> runtime -> batch (as a JSON key) -> ms


def time_group(specs: dict[str, ArchSpec], args: argparse.Namespace) -> list[Timings]:
    """ms per model, runtime and batch, once per fresh process (a child of this script, all models interleaved)."""
    with tempfile.TemporaryDirectory(prefix="ikd-retime-") as scratch:
        path = Path(scratch) / "specs.json"
        path.write_text(json.dumps({name: spec.model_dump() for name, spec in specs.items()}))
        child = [sys.executable, __file__, "--one", str(path), "--threads", str(args.threads)]
        child += ["--batches", *map(str, args.batches)]
        child += ["--repeats", str(args.repeats)] if args.repeats else []
        child += ["--rounds", str(args.rounds)] if args.rounds else []
        return [
            json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.processes)
        ]


def row_speedups(runs: list[Timings], student: str, batches: list[int]) -> tuple[dict, dict]:
    """A student's speed-ups over the teacher timed beside it, by record key: the median over processes of
    each process's teacher ms / student ms; and, with two processes or more, their spread (largest / smallest)."""
    speedups, spreads = {}, {}
    for runtime in RUNTIMES:
        for batch in batches:
            key = speedup_key(runtime, batch)
            ratios = [run["teacher"][runtime][str(batch)] / run[student][runtime][str(batch)] for run in runs]
            speedups[key] = statistics.median(ratios)
            if len(ratios) > 1:
                spreads[key.removeprefix("speedup_")] = max(ratios) / min(ratios)
    return speedups, spreads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="the table (its records beside it, as .json)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (fixed)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per teacher; median speed-up")
    parser.add_argument(
        "--batches", type=int, nargs="+", choices=TIMED_BATCHES, default=list(TIMED_BATCHES), help="batch sizes"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per turn (default: ikd.latency's)")
    parser.add_argument("--rounds", type=int, help="interleaved turns (default: ikd.latency's)")
    parser.add_argument("--rows", nargs="*", help="only these rows (default: all recorded)")
    parser.add_argument("--quick", action="store_true", help="a copy of the committed table, two rows, 1 short process")
    parser.add_argument("--quiet", action="store_true", help="(prints only the RESULT line and a line per row)")
    parser.add_argument("--one", metavar="SPECS_JSON", help=argparse.SUPPRESS)  # a child: time these, JSON out
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        specs = {n: ArchSpec.model_validate(s) for n, s in json.loads(Path(args.one).read_text()).items()}
        measured = spec_latencies(specs, args.repeats, args.rounds, args.threads, tuple(args.batches))
        timings: Timings = {n: {runtime: {} for runtime in RUNTIMES} for n in measured}
        for name, entries in measured.items():
            for m in entries:
                timings[name][m.runtime][str(m.batch)] = m.median_ms
        print(json.dumps(timings))
        return 0

    if not args.markdown:
        parser.error("--markdown is required: the table to re-time")
    if args.quick:
        if Path(args.markdown).resolve() == COMMITTED_TABLE.resolve():
            raise SystemExit("retime_paper.py: error: --quick writes a copy: give --markdown another path")
        shutil.copyfile(COMMITTED_TABLE, args.markdown)
        shutil.copyfile(records_path(COMMITTED_TABLE), records_path(args.markdown))
        args.rows, args.processes, args.repeats, args.rounds = QUICK_ROWS, 1, 2, 2
    records = load_records(records_path(args.markdown))
    names = [n for n in records if not args.rows or n in args.rows]
    # the lineages committed for this table: results/lineages/<the committed table's name>/
    lineages = COMMITTED_LINEAGES / (COMMITTED_TABLE.stem if args.quick else Path(args.markdown).stem)
    archs = {name: row_archs(name, records[name], lineages) for name in names}
    groups: dict[str, list[str]] = {}  # one process times a teacher with all its rows' students
    for name, (teacher, _) in archs.items():
        groups.setdefault(teacher.model_dump_json(), []).append(name)
    how = (
        f"re-timed by `{command_line()}` -- {machine_line()}; {args.threads} thread(s), "
        f"median of {args.processes} processes, batch {' and '.join(map(str, args.batches))}"
    )
    values = {}
    for rows in groups.values():
        teacher = archs[rows[0]][0]
        # a row whose search accepted no child has the teacher as its student: nothing to time
        shrunk = [i for i, n in enumerate(rows) if archs[n][1] != teacher]
        specs = {"teacher": teacher} | {f"student:{i}": archs[rows[i]][1] for i in shrunk}
        runs = time_group(specs, args) if shrunk else []
        for i, name in enumerate(rows):
            record = records[name]
            same = i not in shrunk
            speedups, spreads = ({}, {}) if same else row_speedups(runs, f"student:{i}", args.batches)
            shown = []
            for key in (speedup_key(runtime, batch) for runtime in RUNTIMES for batch in args.batches):
                record[key] = speedups.get(key)
                short = key.removeprefix("speedup_")
                values[f"{name}_{short}"] = "-" if same else f"{record[key]:.2f}"
                shown.append(f"{short} {values[f'{name}_{short}']}x")
            record["timed_by"] = how
            record["timing_spread"] = spreads
            print(f"{name}: {', '.join(shown)}", file=sys.stderr)
    save_table(load_records(records_path(args.markdown)) | {n: records[n] for n in names}, args.markdown, quick=False)
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
