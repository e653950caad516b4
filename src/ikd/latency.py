"""Time a model on this CPU: the median of repeated forwards, with onnxruntime and PyTorch.

A measurement says where it was taken (CPU model, thread count), so two are only compared when
they come from the same place; `record_latency` keeps them on the lineage's nodes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import onnxruntime
import torch

from ikd.lineage import Latency, RunDir
from ikd.model import VGG, NormalizedModel
from ikd.runtime import cpu_model_name

# batch size -> timed runs by default; batch 64 runs are long enough that fewer give a stable median
LATENCY_REPEATS = {1: 30, 64: 10}
RUNTIMES: tuple[Literal["onnxruntime", "torch"], ...] = ("onnxruntime", "torch")
WARMUP_RUNS = 3


def cpu_session(graph: bytes, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU with `threads` threads, logging errors only."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # as many as PyTorch uses, so the two are comparable
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def median_ms(run_once: Callable[[], object], repeats: int) -> float:
    """Milliseconds per call of `run_once`: the median of `repeats` timed calls after a warm-up."""
    for _ in range(WARMUP_RUNS):  # first runs allocate buffers and pick kernels
        run_once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def measure_latency(model: VGG, dataset: dict[str, Any], graph: bytes, repeats: int | None = None) -> list[Latency]:
    """Median ms per forward at each LATENCY_REPEATS batch size, with onnxruntime and PyTorch, on the CPU.

    Both runtimes run the same computation (normalisation included) with the same number of threads:
    `graph` is the model's ONNX graph behind the same normalisation.
    """
    spec = model.spec
    wrapper = NormalizedModel(model, dataset["mean"], dataset["std"]).eval()
    threads = torch.get_num_threads()
    session = cpu_session(graph, threads)
    input_name = session.get_inputs()[0].name
    device = cpu_model_name()
    generator = torch.Generator().manual_seed(0)
    measured = []
    with torch.inference_mode():
        for batch, default_repeats in LATENCY_REPEATS.items():
            images = torch.rand(batch, spec.in_channels, spec.image_size, spec.image_size, generator=generator)
            feed = {input_name: images.numpy()}
            runners = {
                "onnxruntime": lambda feed=feed: session.run(None, feed),
                "torch": lambda images=images: wrapper(images),
            }
            count = repeats or default_repeats
            measured += [
                Latency(
                    runtime=runtime,
                    batch=batch,
                    median_ms=median_ms(runners[runtime], count),
                    repeats=count,
                    threads=threads,
                    device=device,
                )
                for runtime in RUNTIMES
            ]
    return measured


def comparable(latency: list[Latency], reference: list[Latency]) -> list[Latency]:
    """The entries of `latency` measured where `reference` was (same CPU, same thread count)."""
    where = {(m.device, m.threads) for m in reference}
    return [m for m in latency if (m.device, m.threads) in where]


def record_latency(run: RunDir, measured: dict[str, list[Latency]]) -> None:
    """Store new measurements in the lineage, replacing earlier ones of the same (runtime, batch).

    The caller holds the run directory, so the lineage read here is the latest.
    """
    lineage = run.load()
    for node_id, new in measured.items():
        record = lineage.node(node_id)
        replaced = {(m.runtime, m.batch) for m in new}
        kept = [m for m in record.latency if (m.runtime, m.batch) not in replaced]
        lineage = run.add_node(lineage, record.model_copy(update={"latency": kept + new}))
