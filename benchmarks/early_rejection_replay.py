"""Replay early-rejection rules on recorded campaigns: what each would have stopped, and at what cost.

Every candidate that trained all its epochs is replayed in the order its campaign trained it, so the
rule sees only the candidates recorded before it (as it would have in the run). A stop is counted
once, at the first epoch the rule fires; a stopped candidate that the run accepted is a decision
the rule would have changed. Three rules: ikd's (`rules.hopeless`: the candidate's validation error
cut by the larger of its own best epoch's ratio and the most the campaign's fully trained
candidates cut theirs after the same epoch, once two have), `points`, the rule it replaced (the
same reasoning in accuracy points, from one fully trained candidate on), and `own-gain`, the rule
before that (points, the candidate's own best epoch gain only).

    python benchmarks/early_rejection_replay.py --markdown benchmarks/results/early_rejection_replay.md
    python benchmarks/early_rejection_replay.py --quick        # one committed lineage, slack 2

Last line: `RESULT <rule>_slack<s>_changed=... ...`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ikd import rules
from ikd.config import CampaignConfig
from ikd.lineage import Lineage, Status

from common import COMMITTED_LINEAGES, load_lineages, print_result, publish

QUICK = COMMITTED_LINEAGES / "iterating-pays" / "noearly-from-g4-seed0" / "lineage.json"

# (curve so far, epochs, floor, slack, the campaign's nodes trained before it) -> why it stops, or None
Rule = Callable[[list[float], int, float, float, Lineage], str | None]


def points_rule(curve: list[float], epochs: int, needed: float, slack: float, gains: tuple[float, ...]) -> str | None:
    """The rule before the error-ratio one (shipped cbe27f5 to 2026-12-03): max so far + slack x the larger
    of (its best single-epoch gain x epochs left) and the most a fully trained candidate gained after
    the same epoch (`gains`), in accuracy points."""
    done, left = len(curve), epochs - len(curve)
    if done < 2 or left <= 0 or len(gains) < done:
        return None
    expected = max(max(0.0, *(b - a for a, b in pairwise(curve))) * left, gains[done - 1])
    return "stop" if rules.falls_short(100 * (max(curve) + slack * expected), 100 * needed, 0.0) else None


def points(curve: list[float], epochs: int, needed: float, slack: float, earlier: Lineage) -> str | None:
    curves = rules.fully_trained_curves(earlier, epochs)
    gains = tuple(max(max(c[e:]) - c[e - 1] for c in curves) for e in range(1, epochs)) if curves else ()
    return points_rule(curve, epochs, needed, slack, gains)


def own_gain(curve: list[float], epochs: int, needed: float, slack: float, earlier: Lineage) -> str | None:
    """The rule before cbe27f5: max so far + slack x its best single-epoch gain x epochs left, which is
    the points rule told that no candidate ever gained anything late."""
    return points_rule(curve, epochs, needed, slack, (0.0,) * (epochs - 1))


def ikd(curve: list[float], epochs: int, needed: float, slack: float, earlier: Lineage) -> str | None:
    return rules.hopeless(curve, epochs, needed, slack, rules.late_error_ratios(earlier, epochs))


RULES: dict[str, Rule] = {"ikd": ikd, "points": points, "own-gain": own_gain}


@dataclass
class Tally:
    replayed: int = 0
    minutes_saved: float = 0.0
    stops: list[str] = field(default_factory=list)  # "<run> <node> <status> @<epoch>/<epochs>"
    changed: int = 0


def replay(lineages: dict[str, Lineage], rule: Rule, slack: float) -> Tally:
    """`rule` at `slack` on every fully trained candidate of `lineages` (name -> lineage)."""
    tally = Tally()
    for name, lineage in lineages.items():
        search = CampaignConfig.model_validate(lineage.config).search
        students = {n.id for n in lineage.students()}
        for i, node in enumerate(lineage.nodes):
            parent = lineage.find(node.parent) if node.parent else None
            if node.id not in students or parent is None or len(node.val_curve) != node.epochs:
                continue
            if rules.STOPPED_EARLY in node.reason:
                continue  # stopped in the run: its full curve is unknown
            # as the campaign judges: a retry against its floor, a first training against it less retry_within
            judged_by = rules.floor if node.operator == rules.RETRY else rules.early_floor
            floor = judged_by(parent, lineage.root(), search)
            earlier = lineage.model_copy(update={"nodes": lineage.nodes[:i]})
            tally.replayed += 1
            for done in range(2, node.epochs):
                if rule(node.val_curve[:done], node.epochs, floor, slack, earlier):
                    tally.stops.append(f"{name} {node.id} {node.status} @{done}/{node.epochs}")
                    tally.changed += node.status == Status.ACCEPTED
                    tally.minutes_saved += node.seconds * (node.epochs - done) / node.epochs / 60
                    break
    return tally


def replay_table(lineages: dict[str, Lineage], slacks: list[float], rule_names: list[str]) -> tuple[str, dict]:
    """The markdown table of every rule x slack, and the RESULT values."""
    lines = [
        "| rule | slack | candidates replayed | would stop | of them accepted (decision changed) | minutes saved |"
        " stopped (run, node, status, at epoch) |",
        "|---|---|---|---|---|---|---|",
    ]
    values: dict[str, object] = {}
    for name in rule_names:
        for slack in slacks:
            t = replay(lineages, RULES[name], slack)
            lines.append(
                f"| {name} | {slack:g} | {t.replayed} | {len(t.stops)} | {t.changed} | {t.minutes_saved:.1f} "
                f"| {'; '.join(t.stops) or '-'} |"
            )
            values[f"{name}_slack{slack:g}_changed"] = t.changed
    return "\n".join(lines), values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lineages", nargs="*", type=Path, help="lineage.json files (default: every committed one)")
    parser.add_argument("--slacks", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[], help="a line added to the record")
    parser.add_argument("--quick", action="store_true", help="one committed lineage, slack 2")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    slacks = [2.0] if args.quick else args.slacks
    lineages = load_lineages([QUICK] if args.quick else args.lineages, "early_rejection_replay.py")
    table, values = replay_table(lineages, slacks, list(RULES))
    text = "\n\n".join(
        [
            f"Lineages replayed ({len(lineages)}): " + ", ".join(f"`{n}`" for n in lineages) + ".",
            "Each fully trained candidate replayed in its campaign's training order; minutes saved are the "
            "node's recorded seconds pro rata of the epochs it would not have trained.",
            table,
            *(f"- {note}" for note in args.note),
        ]
    )
    publish(text, args.markdown, "Early rejection replayed on recorded campaigns")
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
