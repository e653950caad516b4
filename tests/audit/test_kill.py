"""kill -9 at many points of the tiny campaign: during each lineage.json write (the temporary file
half written, before and after the rename), during weight writes, mid-epoch, during a resume and at
random moments (fixed seed). After each: lineage.json is valid and every checksum in it matches its
file; the rerun exits 0, keeps every finished node byte for byte, leaves no temporary file and ends
with exactly the lineage of an uninterrupted run."""

from __future__ import annotations

import random
import signal

import pytest

from audit.harness import FaultCase, Stop, assert_ok, params, run_fault_case

LINEAGE_WRITES = 8  # lineage.json writes of the uninterrupted campaign: a kill case for each
PHASES = ("mid-write", "before-rename", "after-rename")
RANDOM_KILLS, SEED = 8, 0


def kill(name: str, fault: str, quick: bool = False) -> FaultCase:
    return FaultCase(name, "kill", [Stop(fault, fault=fault)], quick)


FAULTS = [
    *(
        kill(
            f"kill-lineage-write-{k}-{phase}",
            f"kill:write:lineage.json:{k}:{phase}",
            quick=(k, phase) == (2, PHASES[0]),
        )
        for k in range(1, LINEAGE_WRITES + 1)
        for phase in PHASES
    ),
    kill("kill-weights-write-2-mid-write", "kill:write:model.safetensors:2:mid-write"),
    kill("kill-after-weights-before-metadata", "kill:write:model.safetensors:2:after-rename"),
    kill("kill-after-node-files-before-lineage", "kill:write:model.json:2:after-rename"),
    kill("kill-mid-epoch-g1", "kill:step:g1-width:5", quick=True),
    kill("kill-mid-epoch-g2", "kill:step:g2-width:8"),
    FaultCase(
        "kill-mid-epoch-then-kill-the-resume-at-its-first-lineage-write",
        "kill",
        [
            Stop("kill:step:g1-width:5", fault="kill:step:g1-width:5"),
            Stop("kill:write:lineage.json:1:mid-write", fault="kill:write:lineage.json:1:mid-write"),
        ],
    ),
]


def test_every_lineage_write_has_its_kill_cases(shared):
    assert shared.writes.count("lineage.json") == LINEAGE_WRITES, (
        "the campaign's lineage.json writes changed: set LINEAGE_WRITES to their number"
    )


@pytest.mark.parametrize("case", params(FAULTS))
def test_a_kill_at_a_chosen_point_loses_no_finished_work(case, shared, record):
    row = run_fault_case(case, shared)
    record.faults.append(row)
    assert_ok(row)


@pytest.mark.parametrize("i", range(RANDOM_KILLS))
def test_a_kill_at_a_random_moment_loses_no_finished_work(i, shared, record):
    """Even cases: during start-up and the teacher; odd: while the children train. A kill that
    comes after the campaign finished is reported as missed, not as a stop point."""
    rng = random.Random(SEED)
    for _ in range(i):  # the i-th draw of one seeded stream: the same moments on every run
        rng.random()
    if i % 2 == 0:
        delay = round(rng.uniform(0.3, 1.0) * shared.reference_lineage_at, 2)
        stop = Stop(f"SIGKILL {delay} s after the start", signal=signal.SIGKILL, delay=delay)
    else:
        working = shared.reference_seconds - shared.reference_lineage_at  # training the children
        delay = round(rng.uniform(0.0, 0.9) * working, 2)
        stop = Stop(
            f"SIGKILL {delay} s after lineage.json appears", signal=signal.SIGKILL, delay=delay, after_lineage=True
        )
    row = run_fault_case(FaultCase(f"kill-at-random-{i + 1}", "kill", [stop]), shared)
    record.faults.append(row)
    assert_ok(row)
