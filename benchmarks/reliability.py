"""Reliability audit: bad input is refused cleanly, and no fault loses finished work.

Every case runs `ikd` as a real subprocess in a scratch directory, faults injected through
benchmarks/fault_injection.py (a wrapper; ikd has no test hooks):

1. Bad inputs -- the catalogue below: broken dataset files, hostile pickles, broken configs and
   flags, broken teacher directories, foreign, tampered, read-only, full or busy run directories.
   Each must exit 2 with exactly one line on stderr, starting `ikd: error:` and naming the problem,
   no traceback, and leave every file in the scratch directory exactly as it was.
2. kill -9 at many points of a tiny digits campaign: during each lineage.json write (temporary file
   half written, before and after the rename), during weight writes, mid-epoch, at random moments
   (fixed seed), and during a resume. After each: lineage.json is valid and every checksum in it
   matches its file; a rerun exits 0, keeps every finished node byte for byte, leaves no temporary
   file, and ends with exactly the lineage of an uninterrupted run.
3. SIGTERM at several points: exit 130 with one line, no temporary file left; then as 2.
4. Disk faults mid-campaign (no space left, a file size limit): exit 2 with one line; then as 2.
5. NaN / inf injected into one candidate's loss at a chosen epoch: that node is `failed` with the
   epoch in its reason, the campaign goes on with the other candidates (or stops saying why),
   exit 0, and a rerun changes nothing.
6. Determinism: the same campaign twice gives identical lineage metrics and weights.

    python benchmarks/reliability.py --markdown benchmarks/results/reliability.md
    python benchmarks/reliability.py --quick      # a few of each (about a minute)
Last line: `RESULT name=value ...`; `failures=0` is the verdict.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import pickle
import random
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# benchmarks/common.py: a script's own directory is on sys.path
from common import machine_line, print_result, write_record

INJECTOR = Path(__file__).resolve().parent / "fault_injection.py"
TIMEOUT_S = 600
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130
KILLED = -signal.SIGKILL  # Popen's return code for a process killed by SIGKILL
INTERRUPTED_LINE = "ikd: interrupted (SIGTERM)"


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


def run_ikd(args: list[str], env: dict[str, str], cwd: Path, *, fault: str | None = None,
            file_size_limit: int | None = None, signal_after: tuple[int, float, Path | None] | None = None,
            watch: Path | None = None) -> Run:
    """Run ikd to the end. `signal_after` = (signal, delay s, wait for this file first or None):
    an external signal, as a user or a scheduler sends it. `watch`: note when this file appears."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    started = time.perf_counter()
    process = subprocess.Popen(ikd_command(args, fault), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=cwd, preexec_fn=limit_file_size if file_size_limit else None)
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
    return [f"{what} {path}" for what, paths in (("added", added), ("removed", removed), ("modified", modified))
            for path in paths]


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


# --- shared fixtures: a tiny teacher, a finished reference campaign ------------------------------

@dataclass
class Shared:
    work: Path
    teacher: Path
    env: dict[str, str]
    generations: int
    reference_run: Path | None = None
    reference: list | None = None  # fingerprint of the uninterrupted campaign
    reference_seconds: float = 0.0
    reference_lineage_at: float = 0.0  # seconds until its lineage.json appeared (after start-up, the teacher)
    writes: list[str] = field(default_factory=list)  # names of the atomic writes, in order

    def campaign(self, run_dir: Path, *extra: str) -> list[str]:
        """The tiny campaign every fault case runs: the teacher imported, 1 epoch per child."""
        return ["compress", "--teacher", str(self.teacher), "--dataset", "digits", "--run-dir", str(run_dir),
                "--epochs", "1", "--max-drop", "100", "--max-step-drop", "100",
                "--max-generations", str(self.generations), "--precision", "fp32", "--device", "cpu",
                "--quiet", *extra]


def make_teacher(out: Path) -> None:
    """A small CNN trained briefly on digits and saved as `ikd train` saves (tests' tiny_teacher)."""
    import torch

    from ikd.arch import ArchSpec
    from ikd.checkpoint import save_model, training_metadata
    from ikd.data import load_dataset
    from ikd.model import build_model
    from ikd.runtime import resolve_precision
    from ikd.train import TrainConfig, evaluate, train_model

    torch.set_num_threads(1)
    digits = load_dataset("digits")
    spec = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[16, 16], [32], [32]])
    model = build_model(spec, seed=0)
    config = TrainConfig(epochs=3, batch_size=32, precision="fp32", device="cpu")
    result = train_model(model, digits, config, progress=False)
    cpu = torch.device("cpu")
    test = evaluate(model, digits.test, mean=digits.mean, std=digits.std, device=cpu,
                    precision=resolve_precision("fp32", cpu))
    save_model(out, model, training_metadata(data=digits, val_fraction=0.1, split_seed=0, spec=spec,
                                             config=config, result=result, test=test))


def fingerprint(lineage) -> list:
    """What must not depend on interruptions: every node's outcome, metrics and weights."""
    nodes = [(n.id, n.status, n.reason, n.val_accuracy, n.val_accuracy_last, n.test_accuracy, n.best_epoch,
              n.sha256) for n in lineage.nodes]
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


# --- 1. the catalogue of bad inputs ----------------------------------------------------------------

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


IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def idx_files(n_train: int = 60, n_test: int = 20, size: int = 6) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        IDX_NAMES[0]: idx_bytes(rng.integers(0, 256, (n_train, size, size))),
        IDX_NAMES[1]: idx_bytes(np.arange(n_train) % 10),
        IDX_NAMES[2]: idx_bytes(rng.integers(0, 256, (n_test, size, size))),
        IDX_NAMES[3]: idx_bytes(np.arange(n_test) % 10),
    }


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def idx_case(edit: Callable[[dict[str, bytes]], None], *, command: str = "compress") -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        files = idx_files()
        edit(files)
        data = write_files(case / "data", files)
        if command == "train-mnist":  # the official name: checked against MNIST's md5 sums
            return ["train", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "1", "--out",
                    str(case / "model"), "--quiet"]
        return ["compress", "--dataset", "idx", "--data-dir", str(data), "--run-dir", str(case / "run"),
                "--epochs", "1", "--quiet"]
    return make


def cifar_batch(n: int = 4, seed: int = 0, **changes) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    for key, value in changes.items():
        if value is None:
            batch.pop(key.encode())
        else:
            batch[key.encode()] = value
    return pickle.dumps(batch, protocol=2)  # how the official (Python 2) files are written


def cifar_case(replace: dict[str, bytes | None]) -> Maker:
    """A cifar-10-batches-py directory with some files replaced (None: removed)."""
    def make(case: Path, shared: Shared) -> list[str]:
        files = {f"data_batch_{i}": cifar_batch(seed=i) for i in range(1, 6)}
        files["test_batch"] = cifar_batch(seed=6)
        files["batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
        for name, data in replace.items():
            if data is None:
                files.pop(name)
            else:
                files[name] = data.replace(b"MARKER", str(case / "pwned").encode())
        data_dir = write_files(case / "data" / "cifar-10-batches-py", files)
        return ["compress", "--dataset", "cifar10", "--data-dir", str(data_dir), "--run-dir", str(case / "run"),
                "--epochs", "1", "--quiet"]
    return make


def cifar_archive_case(content: bytes) -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        data_dir = write_files(case / "data", {"cifar-10-python.tar.gz": content})
        return ["compress", "--dataset", "cifar10", "--data-dir", str(data_dir), "--run-dir", str(case / "run"),
                "--epochs", "1", "--quiet"]
    return make


def global_call(module: str, name: str, *args: str) -> bytes:
    """A protocol-0 pickle that calls module.name(*args) when loaded: what a hostile file does."""
    quoted = b"".join(b"S'" + a.encode() + b"'\n" for a in args)
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + quoted + b"tR."


def config_case(text: str | bytes, *flags: str) -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        config = case / "campaign.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        data = text if isinstance(text, bytes) else text.replace("MARKER", str(case / "pwned")).encode()
        config.write_bytes(data)
        return ["compress", "--config", str(config), "--run-dir", str(case / "run"), "--quiet", *flags]
    return make


def flags_case(*flags: str) -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        return [*shared.campaign(case / "run"), *flags]
    return make


def teacher_case(edit: Callable[[Path], None]) -> Maker:
    """A copy of the shared teacher, broken by `edit`, as teacher.dir of the tiny campaign."""
    def make(case: Path, shared: Shared) -> list[str]:
        teacher = case / "teacher"
        shutil.copytree(shared.teacher, teacher)
        edit(teacher)
        args = shared.campaign(case / "run")
        args[args.index("--teacher") + 1] = str(teacher)
        return args
    return make


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def edit_weights(teacher: Path, change: Callable[[dict], dict]) -> None:
    from safetensors.torch import load_file, save_file

    path = teacher / "model.safetensors"
    save_file(change(load_file(path)), path)


def with_nan(state: dict) -> dict:
    first = next(k for k, t in state.items() if t.is_floating_point())
    state[first].view(-1)[0] = float("nan")
    return state


def run_case(edit: Callable[[Path], None] | None, *flags: str, command: str = "compress") -> Maker:
    """A copy of the finished reference campaign, changed by `edit`, resumed (or shown, exported)."""
    def make(case: Path, shared: Shared) -> list[str]:
        run = case / "run"
        shutil.copytree(shared.reference_run, run)
        if edit is not None:
            edit(run)
        if command == "export":
            return ["export", str(run), *flags]
        return [*shared.campaign(run), *flags]
    return make


def set_node(index: int, key: str, value) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        edit_json(run / "lineage.json", lambda d: d["nodes"][index].__setitem__(key, value))
    return edit


def pop(files: dict, name: str) -> None:
    files.pop(name)


def eval_corrupt_model(case: Path, shared: Shared) -> list[str]:
    teacher_case(lambda t: (t / "model.safetensors").write_bytes(b"x" * 64))(case, shared)
    return ["eval", str(case / "teacher")]


def run_dir_is_a_file(case: Path, shared: Shared) -> list[str]:
    case.mkdir(parents=True)
    (case / "file").write_text("not a directory")
    return shared.campaign(case / "file")


def catalogue() -> list[BadInput]:
    images, labels, test_images, test_labels = IDX_NAMES
    rng = random.Random(0)

    def idx(**kw):
        return idx_files(**kw)

    cases = [
        # --- IDX (MNIST format) ---
        BadInput("idx-wrong-magic", "dataset (IDX)", "wrong magic number", quick=True, make=idx_case(
            lambda f: f.__setitem__(images, b"\x00\x00\x08\x01" + f[images][4:]))),
        BadInput("idx-wrong-dtype", "dataset (IDX)", "dtype byte", make=idx_case(
            lambda f: f.__setitem__(images, f[images][:2] + b"\x0d" + f[images][3:]))),
        BadInput("idx-truncated-data", "dataset (IDX)", "truncated", make=idx_case(
            lambda f: f.__setitem__(images, f[images][:-5]))),
        BadInput("idx-truncated-header", "dataset (IDX)", "truncated", make=idx_case(
            lambda f: f.__setitem__(labels, f[labels][:6]))),
        BadInput("idx-extra-bytes", "dataset (IDX)", "extra bytes", make=idx_case(
            lambda f: f.__setitem__(images, f[images] + b"xyz"))),
        BadInput("idx-empty-file", "dataset (IDX)", "too short", make=idx_case(
            lambda f: f.__setitem__(test_images, b""))),
        BadInput("idx-corrupt-gzip", "dataset (IDX)", "not a valid gzip", make=idx_case(
            lambda f: (f.pop(images), f.__setitem__(images + ".gz", b"\x1f\x8b\x08\x00garbage")))),
        BadInput("idx-gzip-truncated", "dataset (IDX)", "not a valid gzip", make=idx_case(
            lambda f: f.__setitem__(images, gzip.compress(f.pop(images))[:50]))),
        BadInput("idx-count-mismatch", "dataset (IDX)", "expected the same count", make=idx_case(
            lambda f: f.__setitem__(labels, idx_bytes(np.arange(59) % 10)))),
        BadInput("idx-label-out-of-range", "dataset (IDX)", "out of range", make=idx_case(
            lambda f: f.__setitem__(test_labels, idx_bytes(np.array([0, 1, 200] + [2] * 17))))),
        BadInput("idx-image-shape-mismatch", "dataset (IDX)", "expected the same size", make=idx_case(
            lambda f: f.__setitem__(test_images, idx(size=5)[test_images]))),
        BadInput("idx-zero-size-images", "dataset (IDX)", "image size", make=idx_case(
            lambda f: f.__setitem__(images, idx_bytes(np.zeros((60, 6, 0)))))),
        BadInput("idx-labels-where-images-belong", "dataset (IDX)", "wrong magic number", make=idx_case(
            lambda f: f.__setitem__(images, f[labels]))),
        BadInput("idx-missing-file", "dataset (IDX)", "files not found", make=idx_case(
            lambda f: pop(f, test_labels))),
        BadInput("mnist-wrong-checksum", "dataset (IDX)", "md5", make=idx_case(lambda f: None, command="train-mnist")),
        # --- CIFAR-10 pickles ---
        BadInput("cifar-pickle-calls-os-system", "dataset (CIFAR pickle)", "pickle tries to load", quick=True,
                 make=cifar_case({"data_batch_1": global_call("os", "system", "touch MARKER")})),
        BadInput("cifar-pickle-calls-eval", "dataset (CIFAR pickle)", "pickle tries to load builtins.eval",
                 make=cifar_case({"data_batch_2": global_call("builtins", "eval", "open('MARKER', 'w')")})),
        BadInput("cifar-pickle-calls-numpy-load", "dataset (CIFAR pickle)", "pickle tries to load numpy.load",
                 make=cifar_case({"test_batch": global_call("numpy", "load", "/etc/passwd")})),
        BadInput("cifar-pickle-getattr-chain", "dataset (CIFAR pickle)", "pickle tries to load builtins.getattr",
                 make=cifar_case({"data_batch_1": global_call("builtins", "getattr", "os", "system")})),
        BadInput("cifar-pickle-codecs-not-latin1", "dataset (CIFAR pickle)", "latin1",
                 make=cifar_case({"data_batch_1": global_call("_codecs", "encode", "abc", "rot13")})),
        BadInput("cifar-not-a-dict", "dataset (CIFAR pickle)", "expected a dict",
                 make=cifar_case({"data_batch_1": pickle.dumps([1, 2, 3], protocol=2)})),
        BadInput("cifar-missing-labels", "dataset (CIFAR pickle)", "no 'labels' key",
                 make=cifar_case({"data_batch_3": cifar_batch(labels=None)})),
        BadInput("cifar-wrong-image-shape", "dataset (CIFAR pickle)", "expected a uint8 array of shape",
                 make=cifar_case({"data_batch_1": cifar_batch(data=np.zeros((4, 1000), np.uint8))})),
        BadInput("cifar-wrong-dtype", "dataset (CIFAR pickle)", "expected a uint8 array",
                 make=cifar_case({"data_batch_1": cifar_batch(data=np.zeros((4, 3072), np.float32))})),
        BadInput("cifar-label-out-of-range", "dataset (CIFAR pickle)", "expected 0..9",
                 make=cifar_case({"data_batch_4": cifar_batch(labels=[0, 1, 10, 2])})),
        BadInput("cifar-count-mismatch", "dataset (CIFAR pickle)", "expected the same count",
                 make=cifar_case({"test_batch": cifar_batch(labels=[0, 1, 2])})),
        BadInput("cifar-truncated-pickle", "dataset (CIFAR pickle)", "not a readable pickle",
                 make=cifar_case({"data_batch_5": cifar_batch()[:2000]})),
        BadInput("cifar-random-bytes", "dataset (CIFAR pickle)", "not a readable pickle",
                 make=cifar_case({"data_batch_1": rng.randbytes(300)})),
        BadInput("cifar-missing-batch", "dataset (CIFAR pickle)", "missing", make=cifar_case({"data_batch_3": None})),
        BadInput("cifar-bad-label-names", "dataset (CIFAR pickle)", "label_names",
                 make=cifar_case({"batches.meta": pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2)})),
        BadInput("cifar-corrupt-archive", "dataset (CIFAR pickle)", "not a readable tar archive",
                 make=cifar_archive_case(b"\x1f\x8b\x08\x00" + rng.randbytes(200))),
        # --- campaign config and flags ---
        BadInput("config-unknown-key", "config", "unknown key 'search.max_dorp'", quick=True,
                 make=config_case("search:\n  max_dorp: 1\n")),
        BadInput("config-wrong-type", "config", "student.epochs", make=config_case("student:\n  epochs: five\n")),
        BadInput("config-negative-epochs", "config", "student.epochs", make=config_case("student:\n  epochs: -3\n")),
        BadInput("config-max-drop-above-100", "config", "search.max_drop", make=config_case("search:\n  max_drop: 150\n")),
        BadInput("config-max-drop-negative", "config", "search.max_drop", make=config_case("search:\n  max_drop: -1\n")),
        BadInput("config-max-drop-nan", "config", "search.max_drop", make=config_case("search:\n  max_drop: .nan\n")),
        BadInput("config-unknown-strategy", "config", "search.strategy",
                 make=config_case("search:\n  strategy: teacher-everything\n")),
        BadInput("config-unknown-operator", "config", "search.operators",
                 make=config_case("search:\n  operators: [depth, prune]\n")),
        BadInput("config-section-not-a-mapping", "config", "search", make=config_case("search: 3\n")),
        BadInput("config-rule-across-keys", "config", "needs a *-children strategy",
                 make=config_case("search:\n  select: tree\n")),
        BadInput("config-not-yaml", "config", "not valid YAML", make=config_case("search: [1, 2\n")),
        BadInput("config-not-a-mapping", "config", "expected a mapping", make=config_case("- a\n- b\n")),
        BadInput("config-binary-file", "config", "not UTF-8", make=config_case(gzip.compress(b"seed: 1\n"))),
        BadInput("config-deep-nesting", "config", "not valid YAML", make=config_case("[" * 100_000)),
        BadInput("config-5000-digit-number", "config", "not valid YAML", make=config_case("seed: " + "9" * 5000)),
        BadInput("config-python-tag", "config", "not valid YAML",
                 make=config_case("seed: !!python/object/apply:os.system ['touch MARKER']\n")),
        BadInput("config-missing-file", "config", "cannot read",
                 make=lambda case, shared: ["compress", "--config", str(case / "nope.yaml"), "--run-dir",
                                            str(case / "run"), "--quiet"]),
        BadInput("flag-negative-epochs", "config", "student.epochs", make=flags_case("--epochs", "-1")),
        BadInput("flag-max-drop-out-of-range", "config", "search.max_drop", make=flags_case("--max-drop", "101")),
        BadInput("flag-unknown-strategy", "config", "invalid choice", make=flags_case("--strategy", "bogus")),
        BadInput("flag-unknown-operator", "config", "search.operators", make=flags_case("--operators", "depth,prune")),
        BadInput("flag-not-a-number", "config", "invalid float value", make=flags_case("--max-drop", "lots")),
        BadInput("train-zero-epochs", "config", "--epochs",
                 make=lambda case, shared: ["train", "--dataset", "digits", "--epochs", "0", "--out", str(case / "m")]),
        # --- teacher directory ---
        BadInput("teacher-dir-missing", "teacher", "model.json: not found",
                 make=teacher_case(lambda t: shutil.rmtree(t))),
        BadInput("teacher-no-weights", "teacher", "model.safetensors: not found",
                 make=teacher_case(lambda t: (t / "model.safetensors").unlink())),
        BadInput("teacher-no-model-json", "teacher", "model.json: not found",
                 make=teacher_case(lambda t: (t / "model.json").unlink())),
        BadInput("teacher-model-json-not-json", "teacher", "not valid JSON",
                 make=teacher_case(lambda t: (t / "model.json").write_bytes(b"{\"arch\": [1, 2"))),
        BadInput("teacher-model-json-a-list", "teacher", "expected a JSON object",
                 make=teacher_case(lambda t: (t / "model.json").write_text("[]"))),
        BadInput("teacher-model-json-deep-nesting", "teacher", "not valid JSON",
                 make=teacher_case(lambda t: (t / "model.json").write_text("[" * 100_000 + "]" * 100_000))),
        BadInput("teacher-spec-not-matching-weights", "teacher", "do not match the spec", make=teacher_case(
            lambda t: edit_json(t / "model.json", lambda d: d["arch"].__setitem__("blocks", [[8, 8], [32], [32]])))),
        BadInput("teacher-spec-asking-for-terabytes", "teacher", "do not match the spec", make=teacher_case(
            lambda t: edit_json(t / "model.json", lambda d: d["arch"].__setitem__("blocks", [[200_000, 200_000]])))),
        BadInput("teacher-spec-invalid", "teacher", "invalid arch.blocks", make=teacher_case(
            lambda t: edit_json(t / "model.json", lambda d: d["arch"].__setitem__("blocks", [[-4]])))),
        BadInput("teacher-corrupt-safetensors", "teacher", "not a readable safetensors", quick=True, make=teacher_case(
            lambda t: (t / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"))),
        BadInput("teacher-truncated-safetensors", "teacher", "not a readable safetensors", make=teacher_case(
            lambda t: (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:30_000]))),
        BadInput("teacher-weights-are-a-pickle", "teacher", "not a readable safetensors", make=teacher_case(
            lambda t: (t / "model.safetensors").write_bytes(
                global_call("os", "system", f"touch {t.parent / 'pwned'}").replace(b"c", b"\x80\x02c", 1)))),
        BadInput("teacher-weights-fp16", "teacher", "do not match the spec", make=teacher_case(
            lambda t: edit_weights(t, lambda s: {k: v.half() if v.is_floating_point() else v for k, v in s.items()}))),
        BadInput("teacher-weights-fp64", "teacher", "wrong dtype", make=teacher_case(
            lambda t: edit_weights(t, lambda s: {k: v.double() if v.is_floating_point() else v for k, v in s.items()}))),
        BadInput("teacher-weights-nan", "teacher", "NaN or infinite", make=teacher_case(
            lambda t: edit_weights(t, with_nan))),
        BadInput("teacher-from-another-split", "teacher", "split_seed", make=teacher_case(
            lambda t: edit_json(t / "model.json", lambda d: d["dataset"].__setitem__("split_seed", 5)))),
        BadInput("eval-corrupt-model", "teacher", "not a readable safetensors", make=eval_corrupt_model),
        # --- run directory ---
        BadInput("run-from-another-config", "run directory", "search.max_drop: 100.0 -> 0.5", quick=True,
                 make=run_case(None, "--max-drop", "0.5")),
        BadInput("run-lineage-not-json", "run directory", "not readable JSON",
                 make=run_case(lambda r: (r / "lineage.json").write_text("{\"nodes\": ["))),
        BadInput("run-lineage-wrong-schema", "run directory", "invalid nodes",
                 make=run_case(lambda r: edit_json(r / "lineage.json", lambda d: d.__setitem__("nodes", "x")))),
        BadInput("run-node-id-escapes", "run directory", "invalid nodes.1.id",
                 make=run_case(set_node(1, "id", "../../escape"))),
        BadInput("run-parent-id-escapes", "run directory", "invalid nodes.1.parent",
                 make=run_case(set_node(1, "parent", "/etc"))),
        BadInput("run-tampered-weights", "run directory", "grew from them", make=run_case(
            lambda r: (r / "nodes" / "g1-width" / "model.safetensors").write_bytes(b"changed"))),
        BadInput("run-read-only", "run directory", "Read-only file system", make=run_case(None),
                 fault="erofs:{case}/run"),
        BadInput("run-new-on-read-only-disk", "run directory", "Read-only file system",
                 make=lambda case, shared: shared.campaign(case / "new-run"), fault="erofs:{case}"),
        BadInput("run-disk-full-on-resume", "run directory", "No space left on device", make=run_case(None),
                 fault="enospc:write:lineage.json:1"),
        BadInput("run-in-use", "run directory", "in use by", make=run_case(None), hold_lock=True),
        BadInput("run-dir-is-a-file", "run directory", "cannot open the run directory", make=run_dir_is_a_file),
        BadInput("export-node-id-escapes", "run directory", "is not in",
                 make=run_case(None, "--node", "../../etc", "--format", "safetensors", "--no-latency",
                               command="export")),
        BadInput("lineage-of-no-run", "run directory", "not found",
                 make=lambda case, shared: ["lineage", str(case / "nothing")]),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def run_bad_input(case: BadInput, shared: Shared) -> dict:
    directory = shared.work / "cases" / case.name
    args = case.make(directory, shared)
    directory.mkdir(parents=True, exist_ok=True)
    before = snapshot(shared.work)
    fault = case.fault.format(case=directory) if case.fault else None
    lock = None
    if case.hold_lock:  # as a running `ikd compress` holds it
        lock = open(directory / "run" / ".lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("another campaign (pid 12345)")
        lock.flush()
        before = snapshot(shared.work)
    try:
        result = run_ikd(args, shared.env, shared.work, fault=fault)
    finally:
        if lock is not None:
            lock.close()
    changed = changes(before, snapshot(shared.work))
    problems = check_refusal(result.returncode, result.stderr, case.expect, changed)
    lines = error_lines(result.stderr)
    return {"name": case.name, "group": case.group, "command": shorten(shlex.join(["ikd", *args]), directory, shared),
            "fault": shorten(fault, directory, shared) if fault else "", "exit": result.returncode,
            "line": shorten(lines[0] if len(lines) == 1 else " / ".join(lines[-3:]), directory, shared),
            "changed": changed, "problems": problems, "seconds": result.seconds}


def shorten(text: str, case: Path | None, shared: Shared) -> str:
    """Paths as the report shows them: CASE for the case's directory, W for the audit's."""
    if case is not None:
        text = text.replace(str(case), "CASE")
    return text.replace(str(shared.work), "W")


# --- 2-4. interruptions and disk faults ---------------------------------------------------------------

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
    run_dir = shared.work / "faults" / case.name / "run"
    args = shared.campaign(run_dir)
    problems, exits, finished, stopped_with, labels, delivered = [], [], {}, [], [], 0
    for stop in case.stops:
        result = run_ikd(args, shared.env, shared.work, fault=stop.fault, file_size_limit=stop.file_size_limit,
                         signal_after=(stop.signal, stop.delay, run_dir / "lineage.json" if stop.after_lineage else None)
                         if stop.signal is not None else None)
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
        changed = [i for i, sha in finished.items() if (n := lineage.node(i)) is None or n.sha256 != sha]
        kept = len(finished) - len(changed)
        if changed:
            problems.append(f"finished nodes lost or changed: {', '.join(changed)}")
        if fingerprint(lineage) != shared.reference:
            problems.append("the final lineage differs from the uninterrupted run's")
    if temp_files(run_dir):
        problems.append(f"temporary files left after the rerun: {', '.join(temp_files(run_dir))}")
    return {"name": case.name, "kind": case.kind, "stops": labels, "exits": exits,
            "nodes_at_stop": stopped_with, "finished": len(finished), "kept": kept, "problems": problems,
            "signals": delivered}


def fault_cases(shared: Shared, quick: bool, seed: int, random_kills: int, wanted: bool = True) -> list[FaultCase]:
    if not wanted:
        return []
    lineage_writes = shared.writes.count("lineage.json")
    cases: list[FaultCase] = []

    def kill(name, fault, quick=False):
        cases.append(FaultCase(name, "kill", [Stop(fault, fault=fault)], quick))

    for k in range(1, lineage_writes + 1):
        for phase in ("mid-write", "before-rename", "after-rename"):
            kill(f"kill-lineage-write-{k}-{phase}", f"kill:write:lineage.json:{k}:{phase}",
                 quick=(k, phase) == (2, "mid-write"))
    kill("kill-weights-write-2-mid-write", "kill:write:model.safetensors:2:mid-write")
    kill("kill-after-weights-before-metadata", "kill:write:model.safetensors:2:after-rename")
    kill("kill-after-node-files-before-lineage", "kill:write:model.json:2:after-rename")
    kill("kill-mid-epoch-g1", "kill:step:g1-width:5", quick=True)
    if shared.generations > 1:
        kill("kill-mid-epoch-g2", "kill:step:g2-width:8")
    cases.append(FaultCase("kill-mid-epoch-then-kill-the-resume-at-its-first-lineage-write", "kill", [
        Stop("kill:step:g1-width:5", fault="kill:step:g1-width:5"),
        Stop("kill:write:lineage.json:1:mid-write", fault="kill:write:lineage.json:1:mid-write")]))
    rng = random.Random(seed)
    working = shared.reference_seconds - shared.reference_lineage_at  # training the children
    for i in range(random_kills):
        if i % 2 == 0:  # start-up and the teacher
            delay = round(rng.uniform(0.3, 1.0) * shared.reference_lineage_at, 2)
            stop = Stop(f"SIGKILL {delay} s after the start", signal=signal.SIGKILL, delay=delay)
        else:
            delay = round(rng.uniform(0.0, 0.9) * working, 2)
            stop = Stop(f"SIGKILL {delay} s after lineage.json appears", signal=signal.SIGKILL, delay=delay,
                        after_lineage=True)
        cases.append(FaultCase(f"kill-at-random-{i + 1}", "kill", [stop]))

    def term(name, fault, quick=False):
        cases.append(FaultCase(name, "term", [Stop(fault, fault=fault, expect="terminated")], quick))

    term("term-mid-epoch-g1", "term:step:g1-width:5", quick=True)
    term("term-lineage-write-2-before-rename", "term:write:lineage.json:2:before-rename")
    term("term-lineage-write-3-mid-write", "term:write:lineage.json:3:mid-write")
    term("term-weights-write-2-mid-write", "term:write:model.safetensors:2:mid-write")
    if shared.generations > 1:
        term("term-mid-epoch-g2", "term:step:g2-width:8")
    for i in range(2):
        delay = round(rng.uniform(0.0, 0.9) * working, 2)
        cases.append(FaultCase(f"term-at-random-{i + 1}", "term", [
            Stop(f"SIGTERM {delay} s after lineage.json appears", signal=signal.SIGTERM, delay=delay,
                 after_lineage=True, expect="terminated")]))

    def disk(name, stop):
        cases.append(FaultCase(name, "disk", [stop]))

    for name, k in (("model.safetensors", 2), ("model.json", 2), ("lineage.json", 3)):
        disk(f"disk-full-at-{name}-write-{k}", Stop(f"enospc:write:{name}:{k}", fault=f"enospc:write:{name}:{k}",
                                                   expect="refused", message="No space left on device"))
    disk("file-size-limit-32k", Stop("RLIMIT_FSIZE 32 KiB (real, not simulated)", file_size_limit=32 << 10,
                                     expect="refused", message="File too large"))
    return [c for c in cases if c.quick or not quick]


# --- 5. NaN / inf --------------------------------------------------------------------------------

@dataclass
class NanCase:
    name: str
    node: str
    epoch: int
    value: str  # nan | inf
    flags: list[str]
    stops_campaign: bool = False  # no other candidate: the campaign must stop and say why
    quick: bool = False


def nan_cases(shared: Shared, quick: bool) -> list[NanCase]:
    cases = [
        NanCase("nan-g1-width-epoch-1", "g1-width", 1, "nan", [], quick=True),
        NanCase("nan-g1-width-epoch-2-of-2", "g1-width", 2, "nan", ["--epochs", "2"]),
        NanCase("nan-parent-children-g1-width", "g1-width", 1, "nan", ["--strategy", "parent-children"]),
        NanCase("nan-only-candidate", "g1-width", 1, "nan", ["--operators", "width"], stops_campaign=True),
    ]
    if shared.generations > 1:
        cases.insert(1, NanCase("inf-g2-width-epoch-1", "g2-width", 1, "inf", []))
    return [c for c in cases if c.quick or not quick]


def run_nan_case(case: NanCase, shared: Shared, rerun: bool = True) -> dict:
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
        node, stop = lineage.node(case.node), lineage.stop_reason or ""
        reason = node.reason if node else ""
        if node is None or node.status != "failed":
            problems.append(f"{case.node} is {node.status if node else 'missing'}, expected failed")
        elif f"epoch {case.epoch}" not in reason or case.value not in reason:
            problems.append(f"the reason {reason!r} does not name {case.value} and epoch {case.epoch}")
        generation = node.generation if node else 0
        others = [n for n in lineage.nodes if n.generation == generation and n.id != case.node
                  and n.status in ("accepted", "rejected", "candidate")]
        if case.stops_campaign and reason and reason not in stop:
            problems.append(f"the stop reason {stop!r} does not give the failure")
        if not case.stops_campaign and not others:
            problems.append(f"no other candidate of generation {generation} was trained")
        if not stop:
            problems.append("the campaign did not finish")
        if rerun:  # the failed node stays failed: finished work, not retried
            again = run_ikd(args, shared.env, shared.work)
            after, found = inspect_run(run_dir)
            problems += [f"after a rerun: {p}" for p in found]
            if again.returncode != 0 or after is None or fingerprint(after) != fingerprint(lineage):
                problems.append("a rerun changed the lineage (or failed)")
    return {"name": case.name, "fault": f"{case.value} in {case.node}'s loss from epoch {case.epoch}",
            "flags": " ".join(case.flags), "exit": result.returncode, "reason": reason, "stop": stop,
            "problems": problems}


# --- the audit ---------------------------------------------------------------------------------------

def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:5.0f} s] {message}", file=sys.stderr, flush=True)


SECTIONS = ("bad-inputs", "faults", "nan", "determinism")
DETERMINISM = {True: "identical lineage metrics and weights", False: "DIFFERENT lineages",
               None: "not run separately (--quick); every rerun above is compared with the reference run"}


def write_markdown(path: Path, report: dict) -> None:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    bad, faults, nans = report["bad_inputs"], report["faults"], report["nan"]
    counts = report["counts"]
    lines = [
        f"Machine: {machine_line()}; {os.cpu_count()} cores, every ikd process with OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '1')}. {report['seconds']:.0f} s in all. {report['note']}".rstrip(), "",
        "## Summary", "",
        f"- Bad inputs tried: **{counts['bad_inputs']}**; refused as required (exit 2, one `ikd: error:` line "
        f"naming the problem, no traceback, no file added, removed or changed): {counts['bad_inputs'] - counts['bad_input_failures']}.",
        f"- kill -9 points: **{counts['kill_points']}** in {counts['kill_cases']} cases "
        f"({counts['lineage_write_kills']} during lineage.json writes, the rest during weight writes, mid-epoch, "
        f"at random moments and during a resume); failures: {counts['kill_failures']}.",
        f"- SIGTERM points: **{counts['sigterm_points']}**; failures: {counts['sigterm_failures']}.",
        f"- Disk faults mid-campaign: **{counts['disk_faults']}**; failures: {counts['disk_failures']}.",
        f"- NaN/inf injections: **{counts['nan_injections']}**; failures: {counts['nan_failures']}.",
        f"- Determinism (the same campaign twice, CPU fp32): {DETERMINISM[report['deterministic']]}.",
        f"- Finished nodes across all interruptions: {counts['finished_nodes']} recorded when stopped, "
        f"{counts['kept_nodes']} kept byte for byte by the rerun"
        f"{' -- nothing lost' if counts['finished_nodes'] == counts['kept_nodes'] else ' -- NODES LOST'}.",
        f"- **Failures: {counts['failures']}.**", "",
        "Each interrupted campaign is the tiny digits campaign "
        f"(`{report['campaign']}`); after every stop, lineage.json must load and every checksum in it "
        "must match its file; the rerun must exit 0, keep every finished node's weights byte for byte, "
        "leave no temporary file and end with exactly the lineage (ids, statuses, reasons, metrics, "
        "sha256) of an uninterrupted run. CASE is the case's scratch directory, W the audit's.", "",
        f"## Bad inputs ({len(bad)})", "",
        "| # | kind | case | command | exit | the error line | outcome |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(bad, 1):
        command = r["command"] + (f" (fault: `{r['fault']}`)" if r["fault"] else "")
        lines.append(f"| {i} | {cell(r['group'])} | {cell(r['name'])} | `{cell(command)}` | {r['exit']} | "
                     f"{cell(r['line'])} | {cell('; '.join(r['problems']) or 'ok')} |")
    lines += ["", f"## Interruptions and disk faults ({len(faults)} cases)", "",
              "| # | kind | case | stopped by | exits (stops, rerun) | nodes in lineage at each stop | "
              "finished / kept by the rerun | outcome |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(faults, 1):
        lines.append(f"| {i} | {r['kind']} | {cell(r['name'])} | {cell('; then '.join(r['stops']))} | "
                     f"{', '.join(map(str, r['exits']))} | {', '.join(map(str, r['nodes_at_stop']))} | "
                     f"{r['finished']} / {r['kept']} | {cell('; '.join(r['problems']) or 'ok')} |")
    lines += ["", "Exit -9: killed by SIGKILL; 130: stopped by SIGTERM; 2: refused with one line; 0: completed.", "",
              f"## NaN / inf injections ({len(nans)})", "",
              "| # | case | injected | extra flags | exit | the node's reason | stop reason | outcome |",
              "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(nans, 1):
        lines.append(f"| {i} | {cell(r['name'])} | {cell(r['fault'])} | {cell(r['flags'] or '-')} | {r['exit']} | "
                     f"{cell(r['reason'])} | {cell(r['stop'])} | {cell('; '.join(r['problems']) or 'ok')} |")
    lines += ["", "## Determinism", "",
              f"The reference campaign run twice: {DETERMINISM[report['deterministic']]} (ids, statuses, reasons, "
              "validation and test accuracies, best epochs, weight checksums).", "", f"`{report['result']}`"]
    write_record(path, "Reliability audit", "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few bad inputs, 2 kill points, 1 SIGTERM, 1 NaN (about a minute)")
    parser.add_argument("--markdown", help="write the report here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--random-kills", type=int, default=8,
                        help="kill -9 at this many random moments (half of them once lineage.json exists)")
    parser.add_argument("--work", help="scratch directory (default: a new temporary one, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--note", default="", help="a remark for the report (e.g. what else was running)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--only: expected sections from {', '.join(SECTIONS)}")

    started = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ikd-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "IKD_DATA_DIR": str(work / "no-data"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    shared = Shared(work=work, teacher=work / "teacher", env=env, generations=1 if args.quick else 2)
    try:
        log(started, "training the tiny teacher")
        make_teacher(shared.teacher)
        # The reference: an uninterrupted campaign, traced to learn its sequence of atomic writes.
        shared.reference_run = work / "reference" / "run"
        trace = work / "reference" / "writes.txt"
        trace.parent.mkdir(parents=True)
        first = run_ikd(shared.campaign(shared.reference_run), env, work, fault=f"trace:{trace}",
                        watch=shared.reference_run / "lineage.json")
        lineage, problems = inspect_run(shared.reference_run)
        if first.returncode != 0 or lineage is None or problems:
            raise SystemExit(f"the reference campaign failed: {first.stderr[-2000:]} {problems}")
        shared.reference, shared.reference_seconds = fingerprint(lineage), first.seconds
        shared.reference_lineage_at = first.appeared or 0.0
        shared.writes = trace.read_text().split()
        deterministic = None  # --quick: every rerun is still compared with the reference
        if not args.quick and "determinism" in sections:
            again = run_ikd(shared.campaign(work / "reference" / "again"), env, work)
            second, _ = inspect_run(work / "reference" / "again")
            deterministic = again.returncode == 0 and second is not None and fingerprint(second) == shared.reference

        bad = []
        for case in (c for c in catalogue() if (c.quick or not args.quick) and "bad-inputs" in sections):
            bad.append(run_bad_input(case, shared))
            log(started, f"bad input {case.name}: {'; '.join(bad[-1]['problems']) or 'ok'}")
        faults = []
        for case in fault_cases(shared, args.quick, args.seed, 0 if args.quick else args.random_kills,
                                "faults" in sections):
            faults.append(run_fault_case(case, shared))
            log(started, f"{case.name}: {'; '.join(faults[-1]['problems']) or 'ok'}")
        nans = []
        for case in (c for c in nan_cases(shared, args.quick) if "nan" in sections):
            nans.append(run_nan_case(case, shared, rerun=not args.quick))
            log(started, f"{case.name}: {'; '.join(nans[-1]['problems']) or 'ok'}")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)

    def of(kind):
        return [r for r in faults if r["kind"] == kind]

    def failed(rows):
        return sum(1 for r in rows if r["problems"])

    counts = {
        "bad_inputs": len(bad), "bad_input_failures": failed(bad),
        "kill_cases": len(of("kill")), "kill_points": sum(r["signals"] for r in of("kill")),
        "lineage_write_kills": sum(1 for r in of("kill") for s in r["stops"] if ":lineage.json:" in s),
        "kill_failures": failed(of("kill")),
        "sigterm_points": sum(r["signals"] for r in of("term")), "sigterm_failures": failed(of("term")),
        "disk_faults": len(of("disk")), "disk_failures": failed(of("disk")),
        "nan_injections": len(nans), "nan_failures": failed(nans),
        "finished_nodes": sum(r["finished"] for r in faults), "kept_nodes": sum(r["kept"] for r in faults),
    }
    counts["failures"] = (counts["bad_input_failures"] + counts["kill_failures"] + counts["sigterm_failures"]
                          + counts["disk_failures"] + counts["nan_failures"] + (deterministic is False))
    result = {k: counts[k] for k in (
        "bad_inputs", "bad_input_failures", "kill_points", "kill_failures", "sigterm_points", "sigterm_failures",
        "disk_faults", "disk_failures", "nan_injections", "nan_failures")}
    result |= {"deterministic": "skipped" if deterministic is None else int(deterministic),
               "failures": counts["failures"]}
    if args.markdown:
        write_markdown(Path(args.markdown), {
            "seconds": time.perf_counter() - started, "note": args.note, "counts": counts,
            "deterministic": deterministic,
            "campaign": shorten(shlex.join(["ikd", *shared.campaign(Path("RUN"))]), None, shared),
            "bad_inputs": bad, "faults": faults, "nan": nans,
            "result": "RESULT " + " ".join(f"{k}={v}" for k, v in result.items())})
    print_result(result)
    return 0 if counts["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
