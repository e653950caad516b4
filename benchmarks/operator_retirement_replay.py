"""Replay "retire an operator step once it keeps failing" on recorded campaigns: time saved, decisions changed.

The rule, not in ikd: a candidate made by an operator step (`width`, `width25`, `depth`, `slim50`, ...:
the node id after its generation) is not trained when that step was rejected in each of the last K
generations of its chain that tried it. Late MNIST generations spend much of their time on width
candidates that fail one generation after another, so the rule looks like free time; whether it is
depends on whether a step that failed can succeed again further down the chain (after depth steps
have changed the parent). A replayed skip of a candidate the run accepted is a decision the rule
would have changed (and the rest of that campaign would have gone differently).

    python benchmarks/operator_retirement_replay.py --markdown benchmarks/results/operator_retirement_replay.md
    python benchmarks/operator_retirement_replay.py --quick      # one committed lineage, K = 1

Last line: `RESULT k<K>_changed=... k<K>_minutes=... ...`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ikd.lineage import Lineage, NodeRecord, Status

from common import COMMITTED_LINEAGES, load_lineages, print_result, publish

QUICK = COMMITTED_LINEAGES / "campaign" / "quarter-width-seed0" / "lineage.json"


def step(node: NodeRecord) -> str:
    """The operator step that made a candidate: its id without the generation (`g5-width25` -> `width25`)."""
    return re.sub(r"^g\d+-", "", node.id)


def failures_above(lineage: Lineage, node: NodeRecord) -> list[bool]:
    """For each earlier generation of `node`'s chain, nearest first, that tried `node`'s step: was it rejected?"""
    history, ancestor = [], lineage.find(node.parent) if node.parent else None
    while ancestor is not None and ancestor.parent:
        tried = [n for n in lineage.nodes if n.parent == ancestor.parent and step(n) == step(node)]
        if tried:
            history.append(tried[0].status == Status.REJECTED)
        ancestor = lineage.find(ancestor.parent)
    return history


@dataclass
class Tally:
    skipped: int = 0
    minutes_saved: float = 0.0
    changed: list[str] = field(default_factory=list)  # "<run> <node> <status>"


def replay(lineages: dict[str, Lineage], k: int) -> Tally:
    tally = Tally()
    for name, lineage in lineages.items():
        for node in lineage.students():
            history = failures_above(lineage, node)[:k]
            if len(history) == k and all(history):
                tally.skipped += 1
                tally.minutes_saved += node.seconds / 60
                if node.status != Status.REJECTED:
                    tally.changed.append(f"{name} {node.id} {node.status}")
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lineages", nargs="*", type=Path, help="lineage.json files (default: every committed one)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3], help="consecutive failures that retire a step")
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[], help="a line added to the record")
    parser.add_argument("--quick", action="store_true", help="one committed lineage, K = 1")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if any(k < 1 for k in args.k):
        raise SystemExit(f"operator_retirement_replay.py: error: --k {args.k}: expected counts >= 1")
    ks = [1] if args.quick else args.k
    lineages = load_lineages([QUICK] if args.quick else args.lineages, "operator_retirement_replay.py")
    trained = sum(len(lineage.students()) for lineage in lineages.values())
    minutes = sum(n.seconds for lineage in lineages.values() for n in lineage.students()) / 60
    lines = [
        "| K (failures in a row that retire a step) | candidates not trained | minutes saved "
        "| of them accepted in the run (decision changed) |",
        "|---|---|---|---|",
    ]
    values: dict[str, object] = {}
    for k in ks:
        t = replay(lineages, k)
        lines.append(f"| {k} | {t.skipped} | {t.minutes_saved:.1f} | {len(t.changed)}: {'; '.join(t.changed) or '-'} |")
        values |= {f"k{k}_changed": len(t.changed), f"k{k}_minutes": f"{t.minutes_saved:.1f}"}
    text = "\n\n".join(
        [
            f"Lineages replayed ({len(lineages)}): " + ", ".join(f"`{n}`" for n in lineages) + ".",
            f"They trained {trained} candidates (baselines and final distillations not counted) in "
            f"{minutes:.1f} minutes of recorded node time; a skipped candidate saves its recorded seconds "
            "(under *-children strategies its share of its pass).",
            "\n".join(lines),
            *(f"- {note}" for note in args.note),
        ]
    )
    publish(text, args.markdown, "Operator retirement replayed on recorded campaigns")
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
