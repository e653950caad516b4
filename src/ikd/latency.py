"""Time models on this CPU, side by side: the smallest of several interleaved medians, onnxruntime and PyTorch.

A measurement says where it was taken (CPU model, thread count), so two are only compared when
they come from the same place; `record_latency` keeps them on the lineage's nodes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import onnxruntime
import torch

from ikd.lineage import Latency, NodeRecord, RunDir
from ikd.model import VGG, NormalizedModel
from ikd.runtime import cpu_model_name

# batch size -> (timed calls per turn, interleaved rounds). At batch 1, many short turns: on a 2-core VM,
# 200 rounds of 3 calls spread speed-ups 1.09-1.10 across 6 runs where 5 rounds of 30 spread 1.21-1.33
# the same hour (benchmarks/results/latency_stability.md); batch 64 calls are long enough for 5 of 10.
LATENCY_PLAN = {1: (3, 200), 64: (10, 5)}
OTHER_BATCH_PLAN = (10, 5)
RUNTIMES: tuple[Literal["onnxruntime", "torch"], ...] = ("onnxruntime", "torch")
WARMUP_RUNS = 3
# One thread unless asked: the per-core cost, and the setting whose speed-ups hold still. On a 2-vCPU VM a
# 12k-param student's onnxruntime time moved 2% across 6 runs at one thread, 21% (batch 1) and 42% (batch 64)
# at two, where waking the second thread outweighs a small model's work; at one thread its speed-up over a
# VGG-16 held within 3% (onnxruntime) and 8% (torch) at batch 64 (benchmarks/results/latency_stability.md).
LATENCY_THREADS = 1


def cpu_session(graph: bytes, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU with `threads` threads, logging errors only."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # as many as PyTorch uses, so the two are comparable
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # No busy-waiting after a run: a spinning session's idle threads take the cores from the next model
    # timed (two identical architectures, interleaved on 2 cores, timed 0.28 and 0.43 ms with spinning,
    # within 5% without). Slower in absolute terms at small sizes, but the models compared fairly.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def min_of_medians(runners: dict[str, Callable[[], object]], repeats: int, rounds: int) -> dict[str, float]:
    """Milliseconds per call of each runner: the smallest of `rounds` medians of `repeats` timed calls.

    The runners are interleaved, round by round (after a warm-up of each), their order rotating each
    round, so a slow moment -- another process, a frequency change -- falls on every model alike
    instead of on whichever was being timed then; the minimum over rounds then drops the rounds it hit.
    Timing a teacher and its student one after the other, each once, gave the same teacher 2.46, 2.82
    and 5.05 ms in three rows.
    """
    for run_once in runners.values():
        for _ in range(WARMUP_RUNS):  # first runs allocate buffers and pick kernels
            run_once()
    medians: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run_once = runners[name]
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run_once()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return {name: 1000.0 * min(values) for name, values in medians.items()}


def _runner(model: onnxruntime.InferenceSession | torch.nn.Module, inputs: Any) -> Callable[[], object]:
    """One forward of `model` on `inputs` (an onnxruntime feed, or a batch for a PyTorch module)."""
    if isinstance(model, onnxruntime.InferenceSession):
        return lambda: model.run(None, inputs)
    return lambda: model(inputs)


# a model (an ikd VGG, or a user's program as a root), its dataset metadata (mean, std), its ONNX graph
Timed = tuple[torch.nn.Module, dict[str, Any], bytes]


def image_shape(models: Mapping[str, Timed]) -> tuple[int, int, int]:
    """The (channels, height, width) of the images `models` take: those of their VGGs (models timed together
    take the same images; a user's program has no spec to say)."""
    spec = next((m.spec for m, _, _ in models.values() if isinstance(m, VGG)), None)
    if spec is None:
        raise ValueError("models timed together must include an ikd VGG, whose spec gives the input shape")
    return spec.image_shape()


def measure_latencies(
    models: Mapping[str, Timed],
    repeats: int | None = None,
    rounds: int | None = None,
    batches: tuple[int, ...] = tuple(LATENCY_PLAN),
    threads: int = LATENCY_THREADS,
    runtimes: tuple[Literal["onnxruntime", "torch"], ...] = RUNTIMES,
) -> dict[str, list[Latency]]:
    """Each model's ms per forward at each of `batches` (default: LATENCY_PLAN's), with onnxruntime and PyTorch, on
    the CPU with `threads` threads, all timed together (min_of_medians): models meant to be compared must be
    measured in one call. `repeats` and `rounds` replace LATENCY_PLAN's; `runtimes` narrows the two.

    Both runtimes run the same computation (normalisation included) with the same number of threads:
    each graph is its model behind the same normalisation. Models share input shapes.
    """
    if threads < 1:
        raise ValueError(f"threads {threads}: expected at least 1")
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(models, repeats, rounds, batches, threads, runtimes)
    finally:
        torch.set_num_threads(caller_threads)  # training in the same process keeps its threads


def _measure(
    models: Mapping[str, Timed],
    repeats: int | None,
    rounds: int | None,
    batches: tuple[int, ...],
    threads: int,
    runtimes: tuple[Literal["onnxruntime", "torch"], ...],
) -> dict[str, list[Latency]]:
    wrappers = {name: NormalizedModel(m, meta["mean"], meta["std"]).eval() for name, (m, meta, _) in models.items()}
    sessions = {name: cpu_session(graph, threads) for name, (_, _, graph) in models.items()}
    shape = image_shape(models)
    device = cpu_model_name()
    generator = torch.Generator().manual_seed(0)
    measured: dict[str, list[Latency]] = {name: [] for name in models}
    with torch.inference_mode():
        for batch in batches:
            images = torch.rand(batch, *shape, generator=generator)
            feeds = {name: {s.get_inputs()[0].name: images.numpy()} for name, s in sessions.items()}
            planned_repeats, planned_rounds = LATENCY_PLAN.get(batch, OTHER_BATCH_PLAN)
            count, turns = repeats or planned_repeats, rounds or planned_rounds
            for runtime in runtimes:
                runners = {
                    name: _runner(sessions[name], feeds[name])
                    if runtime == "onnxruntime"
                    else _runner(wrappers[name], images)
                    for name in models
                }
                for name, ms in min_of_medians(runners, count, turns).items():
                    measured[name].append(
                        Latency(
                            runtime=runtime,
                            batch=batch,
                            median_ms=ms,
                            repeats=count,
                            rounds=turns,
                            threads=threads,
                            device=device,
                        )
                    )
    return measured


def record_latency(run: RunDir, measured: dict[str, list[Latency]]) -> None:
    """Store new measurements in the lineage, replacing earlier ones of the same (runtime, batch).

    The caller holds the run directory, so the lineage read here is the latest.
    """
    if not measured:
        return
    lineage = run.load()

    def merged(node: NodeRecord) -> NodeRecord:
        new = measured[node.id]
        replaced = {(m.runtime, m.batch) for m in new}
        kept = [m for m in node.latency if (m.runtime, m.batch) not in replaced]
        return node.model_copy(update={"latency": kept + new})

    # not add_nodes: that re-hashes the weights, and would hide a file changed since the node was recorded
    nodes = [merged(n) if n.id in measured else n for n in lineage.nodes]
    run.save(lineage.model_copy(update={"nodes": nodes}))


def beside_reference(measured: dict[str, list[Latency]], reference: str) -> dict[str, list[Latency]]:
    """`measured` (one measure_latencies call) with each model's timings carrying the reference's of the
    same (runtime, batch) as teacher_ms: the denominator of its speed-up, taken in the same rounds."""
    beside = {(m.runtime, m.batch): m.median_ms for m in measured[reference]}
    return {
        name: timings
        if name == reference
        else [m.model_copy(update={"teacher_ms": beside.get((m.runtime, m.batch))}) for m in timings]
        for name, timings in measured.items()
    }
