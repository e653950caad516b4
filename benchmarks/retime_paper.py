"""Re-time the paper table's speed-ups: every row's teacher and student on this machine, one protocol.

The table's speed-ups were measured when each row ran, on different machines (one on a GPU host's
CPU) and with older protocols, so they could not be set beside each other. Speed depends on the
shapes, not the weights, so each row's teacher and final student are rebuilt from the architectures
its lineage records (`results/lineages/<table>/<row>/`; fresh weights) and timed with ikd's
interleaved protocol (ikd.latency), a teacher and all its rows' students in one process, in
`--processes` fresh processes; a row's speed-up is the median over processes of teacher ms /
student ms in the same process. Each architecture is checked against the parameter count the
table records.

    python benchmarks/retime_paper.py --markdown benchmarks/results/paper.md --threads 1 --processes 3
    python benchmarks/retime_paper.py --quick --markdown /tmp/paper.md   # two rows of a copy, 1 process

Writes the new speed-ups into the table's records (`paper.json`) with how they were timed, and
remakes the table. Last line: `RESULT <row>_ort=... <row>_torch=...`.
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
from common import COMMITTED_LINEAGES, ROOT, command_line, machine_line, print_result, spec_latencies
from paper import load_records, records_path, save_table

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


def time_group(specs: dict[str, ArchSpec], args: argparse.Namespace) -> list[dict[str, dict[str, float]]]:
    """ms per model and runtime, once per fresh process (a child of this script, all models interleaved)."""
    with tempfile.TemporaryDirectory(prefix="ikd-retime-") as scratch:
        path = Path(scratch) / "specs.json"
        path.write_text(json.dumps({name: spec.model_dump() for name, spec in specs.items()}))
        child = [sys.executable, __file__, "--one", str(path), "--threads", str(args.threads)]
        child += ["--repeats", str(args.repeats)] if args.repeats else []
        child += ["--rounds", str(args.rounds)] if args.rounds else []
        return [
            json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.processes)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="the table (its records beside it, as .json)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (fixed)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per teacher; median speed-up")
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
        measured = spec_latencies(specs, args.repeats, args.rounds, args.threads)
        print(json.dumps({n: {m.runtime: m.median_ms for m in entries} for n, entries in measured.items()}))
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
        f"median of {args.processes} processes"
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
            for runtime, key in zip(RUNTIMES, ("speedup_ort", "speedup_torch"), strict=True):
                ratios = (run["teacher"][runtime] / run[f"student:{i}"][runtime] for run in runs)
                record[key] = None if same else statistics.median(ratios)
                values[f"{name}_{key.removeprefix('speedup_')}"] = "-" if same else f"{record[key]:.2f}"
            record["timed_by"] = how
            print(f"{name}: ORT {values[f'{name}_ort']}x, torch {values[f'{name}_torch']}x", file=sys.stderr)
    save_table(load_records(records_path(args.markdown)) | {n: records[n] for n in names}, args.markdown, quick=False)
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
