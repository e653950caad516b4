"""NaN or +inf injected into one candidate's loss from a chosen epoch: that node is `failed` with
the value and the epoch in its reason, the campaign goes on with the other candidates (or, with
none left, stops saying why), exits 0, and a rerun changes nothing (finished work is not retried)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from audit.harness import Shared, assert_ok, error_lines, fingerprint, inspect_run, params, run_ikd


@dataclass
class NanCase:
    name: str
    node: str
    epoch: int
    value: str  # nan | inf
    flags: list[str]
    stops_campaign: bool = False  # no other candidate: the campaign must stop and say why
    quick: bool = False


CASES = [
    NanCase("nan-g1-width-epoch-1", "g1-width", 1, "nan", [], quick=True),
    NanCase("inf-g2-width-epoch-1", "g2-width", 1, "inf", []),
    NanCase("nan-g1-width-epoch-2-of-2", "g1-width", 2, "nan", ["--epochs", "2"]),
    NanCase("nan-parent-children-g1-width", "g1-width", 1, "nan", ["--strategy", "parent-children"]),
    NanCase("nan-only-candidate", "g1-width", 1, "nan", ["--operators", "width"], stops_campaign=True),
]


def run_nan_case(case: NanCase, shared: Shared) -> dict:
    run_dir = shared.work / "nan" / case.name / "run"
    args = [*shared.campaign(run_dir), *case.flags]
    result = run_ikd(args, shared.env, shared.work, fault=f"{case.value}:{case.node}:{case.epoch}")
    problems = [] if result.returncode == 0 else [f"exit {result.returncode}: {error_lines(result.stderr)[-1:]}"]
    lineage, found = inspect_run(run_dir)
    problems += found
    reason = stop = ""
    if lineage is None:
        problems.append("no lineage.json")
    else:
        node, stop = lineage.find(case.node), lineage.stop_reason or ""
        reason = node.reason if node else ""
        if node is None or node.status != "failed":
            problems.append(f"{case.node} is {node.status if node else 'missing'}, expected failed")
        elif f"epoch {case.epoch}" not in reason or case.value not in reason:
            problems.append(f"the reason {reason!r} does not name {case.value} and epoch {case.epoch}")
        generation = node.generation if node else 0
        others = [
            n
            for n in lineage.nodes
            if n.generation == generation and n.id != case.node and n.status in ("accepted", "rejected", "candidate")
        ]
        if case.stops_campaign and reason and reason not in stop:
            problems.append(f"the stop reason {stop!r} does not give the failure")
        if not case.stops_campaign and not others:
            problems.append(f"no other candidate of generation {generation} was trained")
        if not stop:
            problems.append("the campaign did not finish")
        again = run_ikd(args, shared.env, shared.work)  # the failed node stays failed: finished work
        after, found = inspect_run(run_dir)
        problems += [f"after a rerun: {p}" for p in found]
        if again.returncode != 0 or after is None or fingerprint(after) != fingerprint(lineage):
            problems.append("a rerun changed the lineage (or failed)")
    return {
        "name": case.name,
        "fault": f"{case.value} in {case.node}'s loss from epoch {case.epoch}",
        "flags": " ".join(case.flags),
        "exit": result.returncode,
        "reason": reason,
        "stop": stop,
        "problems": problems,
    }


@pytest.mark.parametrize("case", params(CASES))
def test_a_diverged_candidate_fails_alone(case, shared, record):
    row = run_nan_case(case, shared)
    record.nan.append(row)
    assert_ok(row)
