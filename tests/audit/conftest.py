"""The audit's fixtures: one scratch directory, the uninterrupted reference campaign, the record.

pytest tests/audit                  every case: some 180 short ikd runs
pytest tests/audit -m quick         a few of each kind
pytest tests/audit --audit-record benchmarks/results/reliability.md
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from audit.harness import Shared, fingerprint, inspect_run, run_ikd
from audit.record import AuditRecord, write_record

RECORD = pytest.StashKey[AuditRecord]()


def pytest_addoption(parser):
    group = parser.getgroup("audit", "the reliability audit (tests/audit)")
    group.addoption("--audit-record", metavar="FILE", help="write the audit's markdown record to FILE")
    group.addoption("--audit-note", default="", help="a remark for the record (e.g. what else was running)")


def pytest_configure(config):
    config.stash[RECORD] = AuditRecord(note=config.getoption("audit_note"))


def pytest_sessionfinish(session):
    record, path = session.config.stash[RECORD], session.config.getoption("audit_record")
    if path and not record.empty():
        write_record(Path(path), record, ["pytest", *session.config.invocation_params.args])


@pytest.fixture(scope="session")
def record(pytestconfig) -> AuditRecord:
    return pytestconfig.stash[RECORD]


@pytest.fixture(scope="session")
def shared(tmp_path_factory, tiny_teacher, record) -> Shared:
    """The scratch directory with the tests' tiny teacher, and the tiny campaign run once without
    interruption, traced to learn its sequence of atomic writes."""
    work = tmp_path_factory.mktemp("audit")
    shutil.copytree(tiny_teacher, work / "teacher")
    env = {
        **os.environ,
        "IKD_DATA_DIR": str(work / "no-data"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    shared = Shared(work=work, teacher=work / "teacher", env=env, reference_run=work / "reference" / "run")
    trace = work / "reference" / "writes.txt"
    trace.parent.mkdir(parents=True)
    first = run_ikd(
        shared.campaign(shared.reference_run),
        env,
        work,
        fault=f"trace:{trace}",
        watch=shared.reference_run / "lineage.json",
    )
    lineage, problems = inspect_run(shared.reference_run)
    assert first.returncode == 0 and lineage is not None and not problems, (
        f"the reference campaign failed: {first.stderr[-2000:]} {problems}"
    )
    shared.reference, shared.reference_seconds = fingerprint(lineage), first.seconds
    shared.reference_lineage_at = first.appeared or 0.0
    shared.writes = trace.read_text().split()
    record.campaign = shared.shorten(shlex.join(["ikd", *shared.campaign(Path("RUN"))]))
    return shared
