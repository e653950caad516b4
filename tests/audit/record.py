"""The audit's markdown record (`pytest tests/audit --audit-record FILE`): every case's row with its
outcome, counts per kind of fault, and a RESULT line. Rows are kept whether a case passed or not."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

DETERMINISM = {
    True: "identical lineage metrics and weights",
    False: "DIFFERENT lineages",
    None: "not run (tests/audit/test_determinism.py); every rerun above is compared with the reference run",
}


@dataclass
class AuditRecord:
    started: float = field(default_factory=time.perf_counter)
    campaign: str = ""  # the tiny campaign's command, as the record shows it
    bad_inputs: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)  # kill, term and disk cases
    nan: list[dict] = field(default_factory=list)
    deterministic: bool | None = None  # None: not run
    note: str = ""  # a remark for the record (e.g. what else was running)

    def empty(self) -> bool:
        return not (self.bad_inputs or self.faults or self.nan or self.deterministic is not None)

    def counts(self) -> dict[str, int]:
        def of(kind):
            return [r for r in self.faults if r["kind"] == kind]

        def failed(rows):
            return sum(1 for r in rows if r["problems"])

        counts = {
            "bad_inputs": len(self.bad_inputs),
            "bad_input_failures": failed(self.bad_inputs),
            "kill_cases": len(of("kill")),
            "kill_points": sum(r["signals"] for r in of("kill")),
            "lineage_write_kills": sum(1 for r in of("kill") for s in r["stops"] if ":lineage.json:" in s),
            "kill_failures": failed(of("kill")),
            "sigterm_points": sum(r["signals"] for r in of("term")),
            "sigterm_failures": failed(of("term")),
            "disk_faults": len(of("disk")),
            "disk_failures": failed(of("disk")),
            "nan_injections": len(self.nan),
            "nan_failures": failed(self.nan),
            "finished_nodes": sum(r["finished"] for r in self.faults),
            "kept_nodes": sum(r["kept"] for r in self.faults),
        }
        counts["failures"] = (
            counts["bad_input_failures"]
            + counts["kill_failures"]
            + counts["sigterm_failures"]
            + counts["disk_failures"]
            + counts["nan_failures"]
            + (self.deterministic is False)
        )
        return counts

    def result_line(self) -> str:
        counts = self.counts()
        result: dict[str, object] = {
            k: counts[k]
            for k in (
                "bad_inputs",
                "bad_input_failures",
                "kill_points",
                "kill_failures",
                "sigterm_points",
                "sigterm_failures",
                "disk_faults",
                "disk_failures",
                "nan_injections",
                "nan_failures",
            )
        }
        result |= {
            "deterministic": "skipped" if self.deterministic is None else int(self.deterministic),
            "failures": counts["failures"],
        }
        return "RESULT " + " ".join(f"{k}={v}" for k, v in result.items())


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_record(path: Path, record: AuditRecord, command: list[str]) -> None:
    from ikd.atomic import atomic_write_bytes
    from ikd.runtime import describe_machine

    counts = record.counts()
    seconds = time.perf_counter() - record.started
    lines = [
        "# Reliability audit",
        "",
        f"Command: `{shlex.join(command)}`",
        "",
        f"Machine: {describe_machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} "
        f"cores, every ikd process with OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}. "
        f"{seconds:.0f} s in all. {record.note}".rstrip(),
        "",
        "## Summary",
        "",
        f"- Bad inputs tried: **{counts['bad_inputs']}**; refused as required (exit 2, one `ikd: error:` line "
        f"naming the problem, no traceback, no file added, removed or changed): "
        f"{counts['bad_inputs'] - counts['bad_input_failures']}.",
        f"- kill -9 points: **{counts['kill_points']}** in {counts['kill_cases']} cases "
        f"({counts['lineage_write_kills']} during lineage.json writes, the rest during weight writes, mid-epoch, "
        f"at random moments and during a resume); failures: {counts['kill_failures']}.",
        f"- SIGTERM points: **{counts['sigterm_points']}**; failures: {counts['sigterm_failures']}.",
        f"- Disk faults mid-campaign: **{counts['disk_faults']}**; failures: {counts['disk_failures']}.",
        f"- NaN/inf injections: **{counts['nan_injections']}**; failures: {counts['nan_failures']}.",
        f"- Determinism (the same campaign twice, CPU fp32): {DETERMINISM[record.deterministic]}.",
        f"- Finished nodes across all interruptions: {counts['finished_nodes']} recorded when stopped, "
        f"{counts['kept_nodes']} kept byte for byte by the rerun"
        f"{' -- nothing lost' if counts['finished_nodes'] == counts['kept_nodes'] else ' -- NODES LOST'}.",
        f"- **Failures: {counts['failures']}.**",
        "",
        "Each interrupted campaign is the tiny digits campaign "
        f"(`{record.campaign}`); after every stop, lineage.json must load and every checksum in it "
        "must match its file; the rerun must exit 0, keep every finished node's weights byte for byte, "
        "leave no temporary file and end with exactly the lineage (ids, statuses, reasons, metrics, "
        "sha256) of an uninterrupted run. CASE is the case's scratch directory, W the audit's.",
        "",
        f"## Bad inputs ({len(record.bad_inputs)})",
        "",
        "| # | kind | case | command | exit | the error line | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(record.bad_inputs, 1):
        command_text = r["command"] + (f" (fault: `{r['fault']}`)" if r["fault"] else "")
        lines.append(
            f"| {i} | {cell(r['group'])} | {cell(r['name'])} | `{cell(command_text)}` | {r['exit']} | "
            f"{cell(r['line'])} | {cell('; '.join(r['problems']) or 'ok')} |"
        )
    lines += [
        "",
        f"## Interruptions and disk faults ({len(record.faults)} cases)",
        "",
        "| # | kind | case | stopped by | exits (stops, rerun) | nodes in lineage at each stop | "
        "finished / kept by the rerun | outcome |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(record.faults, 1):
        lines.append(
            f"| {i} | {r['kind']} | {cell(r['name'])} | {cell('; then '.join(r['stops']))} | "
            f"{', '.join(map(str, r['exits']))} | {', '.join(map(str, r['nodes_at_stop']))} | "
            f"{r['finished']} / {r['kept']} | {cell('; '.join(r['problems']) or 'ok')} |"
        )
    lines += [
        "",
        "Exit -9: killed by SIGKILL; 130: stopped by SIGTERM; 2: refused with one line; 0: completed.",
        "",
        f"## NaN / inf injections ({len(record.nan)})",
        "",
        "| # | case | injected | extra flags | exit | the node's reason | stop reason | outcome |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(record.nan, 1):
        lines.append(
            f"| {i} | {cell(r['name'])} | {cell(r['fault'])} | {cell(r['flags'] or '-')} | {r['exit']} | "
            f"{cell(r['reason'])} | {cell(r['stop'])} | {cell('; '.join(r['problems']) or 'ok')} |"
        )
    lines += [
        "",
        "## Determinism",
        "",
        f"The reference campaign run twice: {DETERMINISM[record.deterministic]} (ids, statuses, reasons, "
        "validation and test accuracies, best epochs, weight checksums).",
        "",
        f"`{record.result_line()}`",
    ]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
