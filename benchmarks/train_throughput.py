"""Training throughput of a VGG at batch 128, fp32 vs bf16, against this machine's matmul peak.

Measures, in one run: the peak matmul rate (fp32 and bf16) and images/s of full training steps
(forward, backward, SGD update) on random 32x32x3 data, then reports the achieved training
FLOP/s as a fraction of the peak of the same precision. Training FLOPs per image are taken as
3 x 2 x MACs (forward, plus backward for inputs and for weights), the usual estimate.

    python benchmarks/train_throughput.py [--arch vgg16] [--quick] [--markdown FILE]
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ikd.arch import PRESETS, preset
from ikd.model import build_model
from ikd.runtime import Precision, cpu_has_bf16_instructions


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n matmul over several repeats."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_rate(arch: str, precision: Precision, batch: int, steps: int, warmup: int, size: int, channels: int) -> float:
    """Median images/s over `steps` timed training steps."""
    torch.manual_seed(0)
    spec = preset(arch, in_channels=channels, image_size=size, num_classes=10)
    model = build_model(spec).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        with precision.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16", choices=PRESETS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a few steps only (well under a minute)")
    parser.add_argument("--markdown", help="also write the results table to this markdown file")
    args = parser.parse_args()
    steps, warmup, n, repeats = (2, 1, 1024, 3) if args.quick else (args.steps, 2, 4096, 5)

    spec = preset(args.arch, in_channels=args.channels, image_size=args.size, num_classes=10)
    train_flops_per_image = 3 * 2 * spec.macs()
    precisions = [Precision("fp32", "cpu", None)]
    if cpu_has_bf16_instructions():
        precisions.append(Precision("bf16", "cpu", torch.bfloat16))

    rows = []
    for precision in precisions:
        peak = matmul_peak(precision.dtype or torch.float32, n, repeats)
        rate = train_rate(args.arch, precision, args.batch, steps, warmup, args.size, args.channels)
        rows.append((precision.name, rate, peak, rate * train_flops_per_image / peak))

    header = (f"{args.arch} training, batch {args.batch}, {args.channels}x{args.size}x{args.size}, "
              f"{spec.macs() / 1e6:.1f} M MACs/image, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
              f"{' (quick)' if args.quick else ''}")
    lines = [header, "", "| precision | images/s | train GFLOP/s | matmul peak GFLOP/s | fraction of peak |",
             "|---|---|---|---|---|"]
    for name, rate, peak, fraction in rows:
        lines.append(f"| {name} | {rate:.1f} | {rate * train_flops_per_image / 1e9:.1f} | {peak / 1e9:.1f} | {fraction:.2f} |")
    speedup = rows[1][1] / rows[0][1] if len(rows) > 1 else float("nan")
    lines += ["", f"bf16 / fp32 speed-up: {speedup:.2f}x"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(f"# Training throughput\n\nCommand: `python {' '.join(sys.argv)}`\n\n{text}\n")
    results = " ".join(f"{name}_img_s={rate:.1f} {name}_peak_fraction={fraction:.3f}" for name, rate, _, fraction in rows)
    print(f"RESULT arch={args.arch} {results} bf16_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
