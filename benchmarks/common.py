"""What every benchmark script shares: where it ran, the dense peak, the record it writes, its RESULT line.

The scripts are run as `python benchmarks/<name>.py`, and Python puts a script's own directory
first on `sys.path`, so they import this module as plain `common` -- no path juggling needed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ikd.arch import ArchSpec, preset
from ikd.atomic import atomic_write_bytes
from ikd.checkpoint import load_model
from ikd.data import DataSplits, ImageSet, load_dataset
from ikd.export import onnx_graph
from ikd.inherit import inherit_weights
from ikd.latency import LATENCY_THREADS, measure_latencies
from ikd.lineage import Latency, Lineage
from ikd.model import VGG, build_model
from ikd.objective import DistillationObjective, LossWeights, build_objective, teacher_hint_block
from ikd.runtime import Precision, describe_machine
from ikd.shrink import shrink_width
from ikd.train import TrainConfig, TrainResult, train_model
from ikd.training_pass import TeacherOutputStore

ROOT = Path(__file__).resolve().parents[1]

# Training FLOPs per multiply-accumulate: 2 FLOPs per MAC, times forward + backward for the inputs
# + backward for the weights -- the usual estimate.
TRAIN_FLOPS_PER_MAC = 3 * 2


# The 1-minute load average as the script started: well above 0 then, other work shared the cores and
# the timings of this run are not clean (the average lags: a job ended a minute ago still shows).
LOAD_AT_START = os.getloadavg()[0]


def machine_line() -> str:
    """One line saying where and when a number was measured, and how busy the machine was."""
    load = f"load average {LOAD_AT_START:.1f} at the start, {os.getloadavg()[0]:.1f} now, {os.cpu_count()} CPUs"
    return f"{describe_machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({load})"


def command_line() -> str:
    """The command that is running, as someone would retype it from the repository root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # a script outside the repository: as given
        script = script.resolve().relative_to(ROOT)
    return "python " + shlex.join([script.as_posix(), *sys.argv[1:]])


def repo_path(path: str | Path) -> Path:
    """`path` as given when it exists from here, else relative to the repository root (so shipped
    configs are found whatever the working directory)."""
    path = Path(path)
    return path if path.exists() or path.is_absolute() else ROOT / path


def write_record(path: str | Path, title: str, body: str) -> None:
    """A markdown record of a run: its title, the exact command, then the script's own text."""
    # atomic: a record rewritten in place (the paper's table) is never left half-written
    atomic_write_bytes(Path(path), f"# {title}\n\nCommand: `{command_line()}`\n\n{body.rstrip()}\n".encode())


COMMITTED_LINEAGES = ROOT / "benchmarks" / "results" / "lineages"  # <table or study>/<run>/lineage.json
# the batches speed-ups are given at: 1 (latency) and 64 (throughput, which holds still between runs where
# batch 1 over a memory-bound teacher does not: results/latency_stability.md)
TIMED_BATCHES = (1, 64)

# What the --quick modes (smoke runs, the tests' size) train where a real run trains a VGG: VGG-11 at a
# quarter of its widths, the same code at a tenth of the time (also the tests' SMALL_ARCH, tests/conftest.py).
QUICK_ARCH = "16x1-32x1-64x2-128x2-128x2"


def load_lineages(paths: list[Path], script: str) -> dict[str, Lineage]:
    """Lineages by `<table>/<run>` (their two parent folders; none given: every committed one); an unreadable
    one ends `script` with one line."""
    lineages = {}
    for path in paths or sorted(COMMITTED_LINEAGES.glob("*/*/lineage.json")):
        try:
            lineages[f"{path.parent.parent.name}/{path.parent.name}"] = Lineage.model_validate_json(path.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"{script}: {path}: not a readable lineage.json ({error})") from None
    return lineages


def publish(text: str, markdown: str | Path | None, title: str) -> None:
    """Print a script's table, and keep it as a record (see write_record) when --markdown names a file."""
    print(text)
    if markdown:
        write_record(markdown, title, text)


def print_result(values: dict[str, object]) -> None:
    """The last stdout line: `RESULT name=value ...`, so a number can be checked by rerunning."""
    for name, value in values.items():
        if not name or any(c.isspace() or c == "=" for c in name) or any(c.isspace() for c in str(value)):
            raise ValueError(f"RESULT entries need names and values without spaces: {name!r}={value!r}")
    print("RESULT " + " ".join(f"{name}={value}" for name, value in values.items()), flush=True)


def mean_spread(values: list[float], digits: int = 2, spec: str | None = None) -> str:
    """`mean ± standard deviation` of values over seeds; one value alone, as it is (a spread needs two).
    `spec`: a format spec for both instead of `digits` (a sign, '+.2f', is the mean's only)."""
    spec = spec or f".{digits}f"
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    return f"{statistics.mean(values):{spec}} ± {statistics.stdev(values):{spec.lstrip('+')}}"


def dense_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of dense arithmetic in this precision, over several repeats: the better of an
    n x n matmul (torch.mm: the BLAS) and a same-scale 3x3 convolution in the channels-last layout
    (oneDNN, which VGG training runs on). Both, because which library is faster depends on the CPU:
    on an AMD EPYC (AVX-512, Zen 5) torch.mm reached about half of oneDNN's fp32 rate, so a peak
    from the matmul alone put VGG-16 training at 1.5x "peak"."""

    def best_seconds(run) -> float:
        for _ in range(2):
            run()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    matmul = 2 * n**3 / best_seconds(lambda: torch.mm(a, b))
    channels, batch, side = min(512, n // 8), 64, 16
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1))
    convolution = 2 * batch * channels**2 * 9 * side**2 / seconds
    return max(matmul, convolution)


def training_step(
    spec: ArchSpec, precision: Precision, batch: int, layout: torch.memory_format = torch.contiguous_format
) -> Callable[[], None]:
    """One bare training step (forward, CE, backward, SGD) of a fresh model of `spec` on one fixed
    random batch, in `layout`: the model's own arithmetic with nothing around it."""
    torch.manual_seed(0)
    model = build_model(spec).train()
    model.to(memory_format=layout)  # type: ignore[call-overload]  # untyped in torch; converts in place
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size).contiguous(memory_format=layout)
    y = torch.randint(0, spec.num_classes, (batch,))

    def step() -> None:
        with precision.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def spec_latencies(
    specs: dict[str, ArchSpec],
    repeats: int | None = None,
    rounds: int | None = None,
    threads: int = LATENCY_THREADS,
    batches: tuple[int, ...] = (1,),
) -> dict[str, list[Latency]]:
    """Latencies at `batches` of fresh models of `specs`, all timed together by ikd.latency (onnxruntime and
    PyTorch) with `threads` threads. Speed does not depend on the weights, so architectures whose weights are
    not here can be timed."""
    first = next(iter(specs.values()))
    dataset = {"mean": [0.0] * first.in_channels, "std": [1.0] * first.in_channels}
    timed = {}
    for name, spec in specs.items():
        model = build_model(spec, seed=0).eval()
        timed[name] = (model, dataset, onnx_graph(model, dataset, {}))
    return measure_latencies(timed, repeats, rounds, batches=batches, threads=threads)


def bare_train_rate(
    spec: ArchSpec,
    precision: Precision,
    batch: int,
    steps: int,
    warmup: int,
    layout: torch.memory_format = torch.contiguous_format,
) -> float:
    """Median images/s of `training_step`: the ceiling for any training loop."""
    step = training_step(spec, precision, batch, layout)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


# --- the distillation benchmarks' shared set-up: data, a teacher, a student inherited from it -------

CPU = torch.device("cpu")  # these benchmarks measure CPU training: everything here runs on it
FP32 = Precision("fp32", "cpu", None)


def add_kd_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every distillation benchmark takes, with the same meaning in each."""
    parser.add_argument("--dataset", default="mnist", help="ikd dataset name (with --teacher: its own)")
    parser.add_argument("--data-dir", help="e.g. ../shared/data/mnist")
    parser.add_argument(
        "--teacher",
        metavar="DIR",
        help="an `ikd train` output (e.g. runs/mnist-vgg16); default: a random-init VGG-16 (--quick: QUICK_ARCH)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--steps",
        type=int,
        help="train on the first STEPS x batch-size training images only (default: the whole split)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", help="also write a record (command, machine, table) to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true", help="digits, 3 steps: a smoke run, seconds")


@dataclass(frozen=True)
class KDSetup:
    data: DataSplits
    teacher: VGG
    teacher_label: str  # what the teacher is, for the record


def kd_setup(args: argparse.Namespace) -> KDSetup:
    """The data (on the teacher's own validation split) and the teacher the flags name; with
    --steps, the training split cut to exactly that many batches, so every cost is per those images."""
    if args.quick:
        args.dataset, args.steps = "digits", args.steps or 3
    if args.teacher:
        teacher, meta = load_model(Path(args.teacher), map_location=CPU)
        recorded = meta["dataset"]
        if recorded["name"] != args.dataset:
            raise SystemExit(
                f"--teacher {args.teacher} was trained on {recorded['name']}, not {args.dataset}; "
                f"pass --dataset {recorded['name']}"
            )
        data = load_dataset(
            args.dataset, args.data_dir, val_fraction=recorded["val_fraction"], split_seed=recorded["split_seed"]
        )
        label = f"{args.teacher} ({teacher.spec.summary()}, {teacher.spec.num_params():,} params, trained)"
    else:
        data = load_dataset(args.dataset, args.data_dir)
        arch = QUICK_ARCH if args.quick else "vgg16"
        spec = preset(arch, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes)
        teacher = build_model(spec, seed=args.seed)
        label = (
            f"random-init {'VGG-16' if arch == 'vgg16' else arch} ({spec.num_params():,} params; no --teacher "
            "given, so accuracies say nothing about distillation)"
        )
    if args.steps:
        data = first_train_images(data, args.steps * args.batch_size)
    return KDSetup(data, teacher.eval(), label)


class CachedTeacherObjectives:
    """Distillation objectives against one teacher whose outputs over the training set are computed
    once and shared by every student (ikd's own cache, TeacherOutputStore: more hint blocks, one more
    pass). Only for data without augmentation, as in ikd."""

    def __init__(self, teacher: VGG, data: DataSplits, device: torch.device, precision: Precision):
        self.teacher, self.data, self.device, self.precision = teacher, data, device, precision
        self.store = TeacherOutputStore()

    def __call__(
        self, student: VGG, weights: LossWeights, seed: int, steps_per_epoch: int | None = None
    ) -> DistillationObjective:
        block = teacher_hint_block(student.spec, self.teacher, weights)
        blocks = {"teacher": set() if block is None else {block}}
        [source] = self.store.sources(
            ("teacher",), blocks, lambda _: self.teacher, self.data, self.device, self.precision, False
        )
        return build_objective(
            student, self.teacher, weights, sources=[source], seed=seed, steps_per_epoch=steps_per_epoch
        )


def first_train_images(data: DataSplits, n: int) -> DataSplits:
    if n > len(data.train):
        raise SystemExit(f"--steps asks for {n} training images; {data.name} has {len(data.train)}")
    return replace(data, train=ImageSet(data.train.images[:n], data.train.labels[:n]))


def width_student(teacher: VGG, factor: float, seed: int) -> VGG:
    """The teacher's width child (every conv scaled by `factor`), initialised from the teacher's
    weights as a campaign's child is (`student.inherit: true`). factor 1: the teacher's own arch."""
    spec = teacher.spec if factor == 1 else shrink_width(teacher.spec, factor)
    if spec is None:
        raise SystemExit(f"width factor {factor}: {teacher.spec.summary()} has no narrower child")
    student = build_model(spec, seed=seed)
    inherit_weights(student, teacher)
    return student


def train_images_per_epoch(data: DataSplits, batch_size: int) -> int:
    """Images one training epoch sees (ikd drops the last partial batch)."""
    n = len(data.train)
    return n - n % batch_size if n >= batch_size else n


def loop_seconds(result: TrainResult, images_per_epoch: int) -> float:
    """Wall time of a solo model's training loops (data preparation included, validation not),
    from the images/s that ikd records per epoch."""
    return sum(images_per_epoch / record.images_per_s for record in result.history)


def warm_up(model: VGG, data: DataSplits, config: TrainConfig, objective_for=None) -> None:
    """Two untimed steps on a copy of `model` (with `objective_for(copy)`'s objective, else CE) and a
    one-batch validation: the first steps at a shape build its kernels, and no side of a comparison
    should pay that alone."""
    n = config.batch_size
    small = replace(data, val=ImageSet(data.val.images[:n], data.val.labels[:n]))
    model = copy.deepcopy(model)
    objective = objective_for(model) if objective_for else None
    train_model(
        model,
        small,
        config.model_copy(update={"epochs": 1, "max_steps_per_epoch": 2}),
        objective=objective,
        progress=False,
    )
