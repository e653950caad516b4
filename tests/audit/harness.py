"""What the audit's modules share: `ikd` run as a real subprocess (a fault injected through
fault_injection.py, a wrapper: ikd has no test hooks), the scratch directory's state before and
after, and the two rules every case is held to -- a bad input is refused in one line and changes
nothing; an interrupted campaign loses no finished work and, rerun, ends as if never interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import campaign_args

INJECTOR = Path(__file__).with_name("fault_injection.py")
TIMEOUT_S = 600
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
KILLED = -signal.SIGKILL  # Popen's return code for a process killed by SIGKILL
INTERRUPTED_LINE = "ikd: interrupted (SIGTERM); finished work is kept: rerun the same command to resume"
GENERATIONS = 2  # of the tiny campaign every interruption case runs


# --- running ikd --------------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stderr: str
    seconds: float
    signalled: bool = False  # an external signal was sent before the process ended
    appeared: float | None = None  # seconds until the watched file existed


def ikd_command(args: list[str], fault: str | None = None) -> list[str]:
    if fault is None:
        return [sys.executable, "-m", "ikd", *args]
    return [sys.executable, str(INJECTOR), fault, "--", *args]


def run_ikd(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    *,
    fault: str | None = None,
    file_size_limit: int | None = None,
    signal_after: tuple[int, float, Path | None] | None = None,
    watch: Path | None = None,
) -> Run:
    """Run ikd to the end. `signal_after` = (signal, delay s, wait for this file first or None):
    an external signal, as a user or a scheduler sends it. `watch`: note when this file appears."""

    def limit_file_size():
        assert file_size_limit is not None  # set as preexec_fn only with a limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    started = time.perf_counter()
    process = subprocess.Popen(
        ikd_command(args, fault),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=limit_file_size if file_size_limit else None,
    )
    signalled = False
    if signal_after is not None:
        signum, delay, wait_for = signal_after
        while wait_for is not None and not wait_for.exists() and process.poll() is None:
            time.sleep(0.02)
        deadline = time.perf_counter() + delay
        while process.poll() is None and time.perf_counter() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signum)
            signalled = True
    appeared = None
    while watch is not None and process.poll() is None and not watch.exists():
        time.sleep(0.02)
    if watch is not None and watch.exists():
        appeared = time.perf_counter() - started
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    return Run(process.returncode, stderr, time.perf_counter() - started, signalled, appeared)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --- the scratch directory ---------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its content ('dir' for directories)."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        state[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [
        f"{what} {path}"
        for what, paths in (("added", added), ("removed", removed), ("modified", modified))
        for path in paths
    ]


def check_refusal(returncode: int, stderr: str, expect: str, changed: list[str]) -> list[str]:
    """What is wrong with how ikd refused a bad input (empty: nothing). The rule of the catalogue:
    exit 2, exactly one stderr line, starting `ikd: error:` and mentioning `expect`, no traceback,
    no file added, removed or modified."""
    problems = []
    lines = error_lines(stderr)
    if returncode != EXIT_USAGE:
        problems.append(f"exit {returncode}, expected {EXIT_USAGE}")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr, expected 1")
    if lines and not lines[0].startswith("ikd: error:"):
        problems.append("stderr does not start with 'ikd: error:'")
    if lines and expect.lower() not in lines[0].lower():
        problems.append(f"the error does not mention {expect!r}")
    if changed:
        problems.append(f"files changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    return problems


def params(cases: list) -> list:
    """Cases as pytest parameters, named by their `name`; `quick` ones marked for `-m quick`."""
    return [pytest.param(case, id=case.name, marks=[pytest.mark.quick] if case.quick else []) for case in cases]


def assert_ok(row: dict) -> None:
    """A case passes when its row (as the record shows it) lists no problem."""
    assert not row["problems"], "; ".join(row["problems"])


# --- the tiny campaign and its uninterrupted reference run ---------------------------------------


@dataclass
class Shared:
    """The audit's scratch directory `work`, its teacher, and the uninterrupted reference campaign
    (see the `shared` fixture) every interrupted one must end up equal to."""

    work: Path
    teacher: Path
    env: dict[str, str]
    reference_run: Path
    reference: list | None = None  # fingerprint of the uninterrupted campaign
    reference_seconds: float = 0.0
    reference_lineage_at: float = 0.0  # seconds until its lineage.json appeared (after start-up, the teacher)
    writes: list[str] = field(default_factory=list)  # names of its atomic writes, in order

    def campaign(self, run_dir: Path, *extra: str) -> list[str]:
        """The tiny campaign every fault case runs: the teacher imported, 1 epoch per child."""
        return campaign_args(self.teacher, run_dir, *extra, generations=GENERATIONS)

    def shorten(self, text: str, case: Path | None = None) -> str:
        """Paths as the record shows them: CASE for the case's directory, W for the audit's."""
        if case is not None:
            text = text.replace(str(case), "CASE")
        return text.replace(str(self.work), "W")


def fingerprint(lineage) -> list:
    """What must not depend on interruptions: every node's outcome, metrics and weights."""
    nodes = [
        (n.id, n.status, n.reason, n.val_accuracy, n.val_accuracy_last, n.test_accuracy, n.best_epoch, n.sha256)
        for n in lineage.nodes
    ]
    return [nodes, lineage.stop_reason]


def inspect_run(run_dir: Path):
    """(lineage or None, problems): lineage.json valid, checksums matching, metadata readable."""
    from ikd.checkpoint import read_metadata
    from ikd.errors import IkdError
    from ikd.lineage import RunDir

    run = RunDir(run_dir)
    if not run.exists():
        return None, []
    try:
        lineage = run.load()
    except IkdError as exc:
        return None, [f"lineage.json invalid: {exc}"]
    problems = []
    bad = run.verify(lineage)
    if bad:
        problems.append(f"weights differ from their checksum: {', '.join(bad)}")
    for node in lineage.nodes:
        if node.sha256 is not None:
            try:
                read_metadata(run.node_dir(node.id))
            except IkdError as exc:
                problems.append(f"{node.id}: {exc}")
    return lineage, problems


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.tmp")) if run_dir.exists() else []


# --- bad inputs ------------------------------------------------------------------------------------

Maker = Callable[[Path, Shared], list[str]]


@dataclass
class BadInput:
    name: str
    group: str
    expect: str  # the error line must mention this
    make: Maker  # writes the bad input under the case directory; returns ikd's arguments
    fault: str | None = None  # "{case}" stands for the case directory
    hold_lock: bool = False  # another process holds the run directory while ikd runs
    quick: bool = False


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def global_call(module: str, name: str, *args: str) -> bytes:
    """A protocol-0 pickle that calls module.name(*args) when loaded: what a hostile file does."""
    quoted = b"".join(b"S'" + a.encode() + b"'\n" for a in args)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + quoted + b"tR."


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def run_bad_input(case: BadInput, shared: Shared) -> dict:
    """Make the bad input in its own directory, run ikd on it, hold it to the refusal rule."""
    directory = shared.work / "cases" / case.name
    args = case.make(directory, shared)
    directory.mkdir(parents=True, exist_ok=True)
    before = snapshot(shared.work)
    fault = case.fault.format(case=directory) if case.fault else None
    with contextlib.ExitStack() as held:
        if case.hold_lock:  # as a running `ikd compress` holds it
            lock = held.enter_context(open(directory / "run" / ".lock", "a+"))
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.write("another campaign (pid 12345)")
            lock.flush()
            before = snapshot(shared.work)
        result = run_ikd(args, shared.env, shared.work, fault=fault)
    changed = changes(before, snapshot(shared.work))
    lines = error_lines(result.stderr)
    return {
        "name": case.name,
        "group": case.group,
        "command": shared.shorten(shlex.join(["ikd", *args]), directory),
        "fault": shared.shorten(fault, directory) if fault else "",
        "exit": result.returncode,
        "line": shared.shorten(lines[0] if len(lines) == 1 else " / ".join(lines[-3:]), directory),
        "changed": changed,
        "problems": check_refusal(result.returncode, result.stderr, case.expect, changed),
        "seconds": result.seconds,
    }


# --- interruptions and disk faults ---------------------------------------------------------------


@dataclass
class Stop:
    """One way a run is stopped: an injected fault, an external signal after a delay, or a limit."""

    label: str
    fault: str | None = None
    signal: int | None = None
    delay: float = 0.0
    after_lineage: bool = False  # the delay counts from the moment lineage.json exists
    file_size_limit: int | None = None
    expect: str = "killed"  # killed | terminated | refused (a clean exit 2)
    message: str = ""  # for refused: the error line mentions this


@dataclass
class FaultCase:
    name: str
    kind: str  # kill | term | disk
    stops: list[Stop]
    quick: bool = False


def too_late(stop: Stop, result: Run, run_dir: Path) -> bool:
    """An external signal that came after the campaign's work was done: either the process had
    already exited, or it was shutting down (ikd's SIGTERM handler is gone once main returns, so
    the default action ends it). Not a stop point; reported as missed."""
    if stop.signal is None:
        return False
    if not result.signalled:
        return True
    lineage, _ = inspect_run(run_dir)
    return result.returncode == -stop.signal and lineage is not None and lineage.stop_reason is not None


def check_stopped(stop: Stop, result: Run, run_dir: Path) -> list[str]:
    problems = []
    lines = error_lines(result.stderr)
    if too_late(stop, result, run_dir):
        return []
    if stop.expect == "killed" and result.returncode != KILLED:
        problems.append(f"exit {result.returncode}, expected to be killed (the fault never fired?)")
    if stop.expect == "terminated":
        if result.returncode != EXIT_INTERRUPTED:
            problems.append(f"exit {result.returncode}, expected {EXIT_INTERRUPTED}")
        if not lines or lines[-1] != INTERRUPTED_LINE:
            problems.append(f"last stderr line {lines[-1] if lines else ''!r}, expected {INTERRUPTED_LINE!r}")
    if stop.expect == "refused":
        problems += check_refusal(result.returncode, result.stderr, stop.message, [])
    if "Traceback" in result.stderr and stop.expect != "refused":
        problems.append("a traceback on stderr")
    if stop.expect in ("terminated", "refused") and temp_files(run_dir):  # a clean stop cleans up
        problems.append(f"temporary files left: {', '.join(temp_files(run_dir))}")
    return problems


def run_fault_case(case: FaultCase, shared: Shared) -> dict:
    """Stop the tiny campaign as `case` says (once or more), then rerun it: every stop must leave a
    valid lineage with matching checksums, and the rerun must keep every finished node byte for
    byte, leave no temporary file and end with exactly the reference lineage."""
    run_dir = shared.work / "faults" / case.name / "run"
    args = shared.campaign(run_dir)
    problems, exits, finished, stopped_with, labels, delivered = [], [], {}, [], [], 0
    for stop in case.stops:
        result = run_ikd(
            args,
            shared.env,
            shared.work,
            fault=stop.fault,
            file_size_limit=stop.file_size_limit,
            signal_after=(stop.signal, stop.delay, run_dir / "lineage.json" if stop.after_lineage else None)
            if stop.signal is not None
            else None,
        )
        exits.append(result.returncode)
        problems += check_stopped(stop, result, run_dir)
        missed = too_late(stop, result, run_dir)
        delivered += not missed
        labels.append(stop.label + (" (missed: the campaign had finished)" if missed else ""))
        lineage, found = inspect_run(run_dir)
        problems += [f"after the stop: {p}" for p in found]
        if lineage is not None:
            finished.update({n.id: n.sha256 for n in lineage.nodes if n.sha256})
            stopped_with.append(len(lineage.nodes))
        else:
            stopped_with.append(0)
    rerun = run_ikd(args, shared.env, shared.work)
    exits.append(rerun.returncode)
    if rerun.returncode != 0:
        problems.append(f"rerun: exit {rerun.returncode}: {error_lines(rerun.stderr)[-1:]}")
    lineage, found = inspect_run(run_dir)
    problems += [f"after the rerun: {p}" for p in found]
    kept = 0
    if lineage is None:
        problems.append("after the rerun: no lineage.json")
    else:
        changed = [i for i, sha in finished.items() if (n := lineage.find(i)) is None or n.sha256 != sha]
        kept = len(finished) - len(changed)
        if changed:
            problems.append(f"finished nodes lost or changed: {', '.join(changed)}")
        if fingerprint(lineage) != shared.reference:
            problems.append("the final lineage differs from the uninterrupted run's")
    if temp_files(run_dir):
        problems.append(f"temporary files left after the rerun: {', '.join(temp_files(run_dir))}")
    return {
        "name": case.name,
        "kind": case.kind,
        "stops": labels,
        "exits": exits,
        "nodes_at_stop": stopped_with,
        "finished": len(finished),
        "kept": kept,
        "problems": problems,
        "signals": delivered,
    }
