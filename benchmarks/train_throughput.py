"""Training throughput of a VGG at batch 128, fp32 vs bf16, against this machine's dense peak.

Measures, in one run: the peak dense rate (fp32 and bf16: the better of a large matmul and a
large 3x3 convolution, common.dense_peak) and images/s of full training steps
(forward, backward, SGD update) on random 32x32x3 data, then reports the achieved training
FLOP/s as a fraction of the peak of the same precision. Training FLOPs per image are taken as
3 x 2 x MACs (forward, plus backward for inputs and for weights), the usual estimate.

    python benchmarks/train_throughput.py [--arch vgg16] [--quick] [--markdown FILE]
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ikd.arch import PRESETS, preset
from ikd.runtime import Precision, cpu_has_bf16_instructions, cpu_name

# benchmarks/common.py: a script's own directory is on sys.path
from common import TRAIN_FLOPS_PER_MAC, bare_train_rate, dense_peak, print_result, publish


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
    train_flops_per_image = TRAIN_FLOPS_PER_MAC * spec.macs()
    precisions = [Precision("fp32", "cpu", None)]
    if cpu_has_bf16_instructions():
        precisions.append(Precision("bf16", "cpu", torch.bfloat16))

    rows = []
    for precision in precisions:
        peak = dense_peak(precision.dtype or torch.float32, n, repeats)
        rate = bare_train_rate(spec, precision, args.batch, steps, warmup)
        rows.append((precision.name, rate, peak, rate * train_flops_per_image / peak))

    header = (
        f"{args.arch} training, batch {args.batch}, {args.channels}x{args.size}x{args.size}, "
        f"{spec.macs() / 1e6:.1f} M MACs/image, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}"
        f"{' (quick)' if args.quick else ''}"
    )
    lines = [
        header,
        "",
        "| precision | images/s | train GFLOP/s | dense peak GFLOP/s | fraction of peak |",
        "|---|---|---|---|---|",
    ]
    for name, rate, peak, fraction in rows:
        lines.append(
            f"| {name} | {rate:.1f} | {rate * train_flops_per_image / 1e9:.1f} | {peak / 1e9:.1f} | {fraction:.2f} |"
        )
    speedup = rows[1][1] / rows[0][1] if len(rows) > 1 else float("nan")
    lines += ["", f"bf16 / fp32 speed-up: {speedup:.2f}x"]
    text = "\n".join(lines)
    publish(text, args.markdown, "Training throughput")
    results = {"arch": args.arch}
    for name, rate, _, fraction in rows:
        results |= {f"{name}_img_s": f"{rate:.1f}", f"{name}_peak_fraction": f"{fraction:.3f}"}
    print_result(results | {"bf16_speedup": f"{speedup:.2f}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
