"""Does a teacher's batch-1 time follow the memory system? Its calls interleaved with a streaming read.

A VGG-16's fp32 weights (59 MB on MNIST) outgrow a 32 MB L3, so every batch-1 call reads them from
memory, which on a shared VM other tenants use too; a student of a few kilobytes stays in L1/L2. This
times a VGG-16 for MNIST's shape (speed does not depend on the weights; or the root teacher of `--run`)
with onnxruntime on one thread, in blocks of calls, each call followed by a sum over an array of the
weights' size, and prints each block's fastest call and read rate, and their correlation across
blocks: strongly negative when the teacher slows as the read does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ikd.arch import preset
from ikd.checkpoint import load_model
from ikd.export import onnx_graph
from ikd.latency import cpu_session
from ikd.lineage import RunDir
from ikd.model import build_model

from common import QUICK_ARCH, machine_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", metavar="DIR", help="time this run directory's root teacher instead")
    parser.add_argument("--blocks", type=int, default=40, help="blocks of calls (default 40)")
    parser.add_argument("--calls", type=int, default=100, help="calls per block (default 100)")
    parser.add_argument("--quick", action="store_true", help="a small VGG on 8x8 images, 3 blocks of 3 calls")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        run = RunDir(Path(args.run))
        model, meta = load_model(run.node_dir(run.load().root().id))
        dataset = meta["dataset"]
    else:
        arch, size = (QUICK_ARCH, 8) if args.quick else ("vgg16", 28)
        model = build_model(preset(arch, in_channels=1, image_size=size, num_classes=10), seed=0)
        dataset = {"mean": [0.0], "std": [1.0]}
    if args.quick:
        args.blocks, args.calls = 3, 3
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    session = cpu_session(onnx_graph(model.eval(), dataset, {}), threads=1)
    spec = model.spec
    images = np.random.rand(1, spec.in_channels, spec.image_size, spec.image_size).astype(np.float32)
    feed = {session.get_inputs()[0].name: images}
    array = np.ones(weight_bytes // 8)
    for _ in range(10):  # warm-up
        session.run(None, feed)
        array.sum()
    teacher_ms, read_gbs = [], []
    for _ in range(args.blocks):
        calls, reads = [], []
        for _ in range(args.calls):
            start = time.perf_counter()
            session.run(None, feed)
            middle = time.perf_counter()
            array.sum()
            calls.append(middle - start)
            reads.append(time.perf_counter() - middle)
        teacher_ms.append(1000 * min(calls))
        read_gbs.append(weight_bytes / 1e9 / min(reads))
    print(f"Machine: {machine_line()}; one thread; teacher weights {weight_bytes / 1e6:.0f} MB")
    print("block  teacher ms  read GB/s")
    for index, (ms, gbs) in enumerate(zip(teacher_ms, read_gbs, strict=True)):
        print(f"{index + 1:5d}  {ms:10.3f}  {gbs:9.1f}")
    spread = max(teacher_ms) / min(teacher_ms)
    correlation = float(np.corrcoef(teacher_ms, read_gbs)[0, 1])
    print(f"RESULT teacher_spread={spread:.3f} correlation={correlation:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
