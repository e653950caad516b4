"""A disk that fills up mid-campaign (no space left at a chosen write; a real file size limit):
ikd exits 2 with one line naming the file and leaves no temporary file; once there is space, the
rerun keeps every finished node and ends with exactly the lineage of an uninterrupted run."""

from __future__ import annotations

import pytest

from audit.harness import FaultCase, Stop, assert_ok, params, run_fault_case


def no_space(name: str, k: int) -> FaultCase:
    fault = f"enospc:write:{name}:{k}"
    return FaultCase(
        f"disk-full-at-{name}-write-{k}",
        "disk",
        [Stop(fault, fault=fault, expect="refused", message="No space left on device")],
    )


FAULTS = [
    no_space("model.safetensors", 2),
    no_space("model.json", 2),
    no_space("lineage.json", 3),
    FaultCase(
        "file-size-limit-32k",
        "disk",
        [
            Stop(
                "RLIMIT_FSIZE 32 KiB (real, not simulated)",
                file_size_limit=32 << 10,
                expect="refused",
                message="File too large",
            )
        ],
    ),
]


@pytest.mark.parametrize("case", params(FAULTS))
def test_a_full_disk_mid_campaign_is_refused_and_loses_no_finished_work(case, shared, record):
    row = run_fault_case(case, shared)
    record.faults.append(row)
    assert_ok(row)
