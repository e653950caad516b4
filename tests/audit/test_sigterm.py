"""SIGTERM (what a scheduler sends) at several points of the tiny campaign: ikd stops cleanly --
exit 130, `ikd: interrupted (SIGTERM); finished work is kept: ...` as its last line, no temporary
file left -- and the rerun keeps every finished node and ends with exactly the lineage of an uninterrupted run."""

from __future__ import annotations

import random
import signal

import pytest

from audit.harness import FaultCase, Stop, assert_ok, params, run_fault_case

RANDOM_TERMS, SEED = 2, 1


def term(name: str, fault: str, quick: bool = False) -> FaultCase:
    return FaultCase(name, "term", [Stop(fault, fault=fault, expect="terminated")], quick)


FAULTS = [
    term("term-mid-epoch-g1", "term:step:g1-width:5", quick=True),
    term("term-lineage-write-2-before-rename", "term:write:lineage.json:2:before-rename"),
    term("term-lineage-write-3-mid-write", "term:write:lineage.json:3:mid-write"),
    term("term-weights-write-2-mid-write", "term:write:model.safetensors:2:mid-write"),
    term("term-mid-epoch-g2", "term:step:g2-width:8"),
]


@pytest.mark.parametrize("case", params(FAULTS))
def test_sigterm_at_a_chosen_point_stops_cleanly(case, shared, record):
    row = run_fault_case(case, shared)
    record.faults.append(row)
    assert_ok(row)


@pytest.mark.parametrize("i", range(RANDOM_TERMS))
def test_sigterm_at_a_random_moment_stops_cleanly(i, shared, record):
    rng = random.Random(SEED)
    for _ in range(i):  # the i-th draw of one seeded stream
        rng.random()
    working = shared.reference_seconds - shared.reference_lineage_at  # training the children
    delay = round(rng.uniform(0.0, 0.9) * working, 2)
    stop = Stop(
        f"SIGTERM {delay} s after lineage.json appears",
        signal=signal.SIGTERM,
        delay=delay,
        after_lineage=True,
        expect="terminated",
    )
    row = run_fault_case(FaultCase(f"term-at-random-{i + 1}", "term", [stop]), shared)
    record.faults.append(row)
    assert_ok(row)
