"""Determinism: the tiny campaign run a second time gives the reference run's lineage exactly --
the ground every other case's "ends as an uninterrupted run would" stands on."""

from __future__ import annotations

from audit.harness import fingerprint, inspect_run, run_ikd


def test_the_same_campaign_twice_gives_identical_metrics_and_weights(shared, record):
    run_dir = shared.work / "reference" / "again"
    again = run_ikd(shared.campaign(run_dir), shared.env, shared.work)
    second, problems = inspect_run(run_dir)
    record.deterministic = (
        again.returncode == 0 and second is not None and not problems and fingerprint(second) == shared.reference
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert record.deterministic, problems or "the lineages differ (ids, statuses, reasons, metrics or sha256)"
