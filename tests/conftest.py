"""Shared data fixtures: tiny IDX files written on the fly, and an environment isolated from the machine."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.metadata
import io
import os
import struct
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from ikd.arch import ArchSpec
from ikd.checkpoint import save_model, training_metadata
from ikd.data import load_dataset
from ikd.model import build_model
from ikd.runtime import resolve_precision
from ikd.train import TrainConfig, evaluate, train_model

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # appended: installed modules win
from common import QUICK_ARCH  # importable once the line above has run


@dataclasses.dataclass
class Ran:
    """What a command printed and exited with."""

    returncode: int
    stdout: str
    stderr: str


def in_process(
    run: Callable[[], int | None],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
    fresh_modules_under: Path | None = None,
) -> Ran:
    """`run()` as a fresh interpreter would show it, in this process (an interpreter start costs about 2 s a
    call): its exit code (SystemExit's, or 1 and the traceback for an uncaught error), its output, and the
    warnings an interpreter's default filters would print. The caller's directory, environment, argv and
    torch threads are restored; modules under `fresh_modules_under` (a script's own imports) are imported
    afresh by the run and put back after, so no cached module state passes between runs."""
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()

    def scripts() -> dict[str, object]:
        if fresh_modules_under is None:
            return {}
        under = str(fresh_modules_under)
        return {n: m for n, m in list(sys.modules.items()) if (getattr(m, "__file__", None) or "").startswith(under)}

    before = scripts()
    for name in before:
        del sys.modules[name]
    with (
        mock.patch.dict(os.environ, env or {}),
        mock.patch.object(sys, "argv", argv if argv is not None else sys.argv),
        contextlib.chdir(cwd or os.getcwd()),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.resetwarnings()  # the interpreter's defaults, not pytest's
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            code = run() or 0
        except SystemExit as exit_:  # what the interpreter would do with it
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        except Exception:
            code = 1
            traceback.print_exc()
        finally:
            torch.set_num_threads(threads)
            for name in scripts():
                del sys.modules[name]
            sys.modules.update(before)  # type: ignore[arg-type]
        for warning in caught:
            print(
                warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno),
                end="",
                file=sys.stderr,
            )
    return Ran(code, stdout.getvalue(), stderr.getvalue())


IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_set(
    directory: Path,
    *,
    n_train: int = 60,
    n_test: int = 20,
    size: int = 6,
    num_classes: int = 10,
    gz: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the four MNIST-named files; returns the arrays by file stem."""
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        IDX_FILES[1]: (np.arange(n_train) % num_classes).astype(np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        IDX_FILES[3]: (np.arange(n_test) % num_classes).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """Point every default data location into tmp_path so tests never see (or write) real caches."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("IKD_DATA_DIR", raising=False)
    import ikd.data.mnist

    monkeypatch.setattr(ikd.data.mnist, "FASHION_SYSTEM_DIR", tmp_path / "no-system-fashion")
    return home


@pytest.fixture
def make_idx_set():
    """write_idx_set(directory, n_train=60, n_test=20, size=6, num_classes=10, gz=False, seed=0)."""
    return write_idx_set


# VGG-11 at a quarter of its widths, for tests whose ikd processes train a model from `--arch`: it learns
# digits as well in a few epochs, at a tenth of the time and disk (a state of VGG-11's 9.2 M parameters is
# ~110 MB per epoch with its optimiser and EMA), and exercises the same code as a preset. The benchmarks'
# --quick modes train the same layout, and the tests check their tables by it: one definition, theirs.
SMALL_ARCH = QUICK_ARCH


# --- campaign fixtures: the bundled digits set and a small teacher trained on it -------------


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny runs: with the CPU shared, a second thread costs more in
    waiting than it saves (use with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def campaign_args(teacher: Path, run_dir: Path, *extra: str, generations: int = 1) -> list[str]:
    """`ikd compress` arguments of the tiny campaign the fault tests run: the teacher imported, 1
    epoch per child, nothing rejected."""
    return [
        *("compress", "--teacher", str(teacher), "--dataset", "digits", "--run-dir", str(run_dir)),
        *("--epochs", "1", "--max-drop", "100", "--max-step-drop", "100", "--max-generations", str(generations)),
        *("--precision", "fp32", "--device", "cpu", "--quiet", *extra),
    ]


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, digits):
    """A small CNN trained briefly on digits, saved the way `ikd train` saves."""
    spec = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[16, 16], [32], [32]])
    model = build_model(spec, seed=0)
    config = TrainConfig(epochs=4, batch_size=32, precision="fp32", device="cpu")
    result = train_model(model, digits, config, progress=False)
    test = evaluate(
        model,
        digits.test,
        mean=digits.mean,
        std=digits.std,
        device=torch.device("cpu"),
        precision=resolve_precision("fp32", torch.device("cpu")),
    )
    out = tmp_path_factory.mktemp("teacher")
    save_model(
        out,
        model,
        training_metadata(
            data=digits, val_fraction=0.1, split_seed=0, spec=spec, config=config, result=result, test=test
        ),
    )
    return out


# --- the ray extra: skipped only where it is not installed ----------------------------------------


def _ray_installed() -> bool:
    try:
        importlib.metadata.distribution("ray")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked `ray` skip where the ray extra is not installed; where it is, Ray must import:
    a broken install fails them (an importorskip would have hidden it as a skip)."""
    if item.get_closest_marker("ray") is None:
        return
    if not _ray_installed():
        pytest.skip("needs the ray extra: pip install -e '.[ray]'")
    import ray  # noqa: F401  (installed, so an ImportError here is a failure, not a skip)


# --- the reliability audit: opt-in ----------------------------------------------------------------

AUDIT = Path(__file__).parent / "audit"


def pytest_ignore_collect(collection_path: Path, config):
    """tests/audit (minutes of real ikd processes killed, starved and fed bad input) is collected
    only when named on the command line, e.g. `pytest tests/audit`; a plain `pytest` leaves it out."""
    if collection_path != AUDIT:
        return None
    named = [Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args]
    return not any(path == AUDIT or AUDIT in path.parents for path in named)


# --- parallel runs (pytest-xdist, as `make test` runs the suite) --------------------------------


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each runs torch, and the ikd processes its
    tests start, on one thread (two threads each made every test about 2x slower, not the suite faster)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
