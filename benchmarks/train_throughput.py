"""Training throughput of a VGG at batch 128, fp32 vs bf16 (and NHWC vs NCHW), against this machine's dense peak.

Measures, in one run: the peak dense rate (fp32 and bf16: the better of a large matmul and a
large 3x3 convolution, common.dense_peak) and images/s of full training steps
(forward, backward, SGD update) on random data, then reports the achieved training
FLOP/s as a fraction of the peak of the same precision. Training FLOPs per image are taken as
3 x 2 x MACs (forward, plus backward for inputs and for weights), the usual estimate.
By default each precision trains in the layout ikd would use (ikd.runtime.training_layout);
`--layouts` times both channels-last and NCHW, so the rule can be checked on this CPU.
`--arch 4x2-8x2-16x3-32x1` times a custom VGG (a campaign's small student, its layout as `ikd lineage`
prints it) instead of a preset; `--blocks 4,4/8,8/16,16,16/32` is the older spelling of the same, kept
because recorded commands use it.

    python benchmarks/train_throughput.py [--arch vgg16|LAYOUT] [--layouts] [--quick] [--markdown FILE]
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ikd.arch import PRESETS, ArchSpec, preset
from ikd.errors import IkdError
from ikd.model import build_model
from ikd.runtime import Precision, cpu_has_bf16_instructions, cpu_name, training_layout

from common import TRAIN_FLOPS_PER_MAC, bare_train_rate, dense_peak, machine_line, print_result, publish

LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}


def parse_blocks(text: str) -> list[list[int]]:
    try:
        blocks = [[int(w) for w in block.split(",")] for block in text.split("/")]
    except ValueError:
        raise SystemExit(f"train_throughput.py: --blocks {text!r}: expected widths like 4,4/8,8/16") from None
    if not blocks or any(w < 1 for block in blocks for w in block):
        raise SystemExit(f"train_throughput.py: --blocks {text!r}: widths must be positive integers")
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16", help="a preset or a layout line (ikd's --arch)")
    parser.add_argument(
        "--blocks", help="older spelling of a layout: widths split by ',', blocks by '/' (overrides --arch)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layouts", action="store_true", help="time channels-last and NCHW for each precision")
    parser.add_argument("--quick", action="store_true", help="a few steps only (well under a minute)")
    parser.add_argument("--quiet", action="store_true", help="(no progress output either way)")
    parser.add_argument("--markdown", help="also write the results table to this markdown file")
    args = parser.parse_args()
    steps, warmup, n, repeats = (2, 1, 1024, 3) if args.quick else (args.steps, 2, 4096, 5)

    if args.blocks:
        spec = ArchSpec(
            in_channels=args.channels, image_size=args.size, num_classes=10, blocks=parse_blocks(args.blocks)
        )
        name = f"VGG {args.blocks}"
    else:
        try:
            spec = preset(args.arch, in_channels=args.channels, image_size=args.size, num_classes=10)
        except IkdError as exc:
            raise SystemExit(f"train_throughput.py: --arch: {exc}") from None
        name = args.arch if args.arch in PRESETS else f"VGG {spec.summary()}"
    train_flops_per_image = TRAIN_FLOPS_PER_MAC * spec.macs()
    precisions = [Precision("fp32", "cpu", None)]
    if cpu_has_bf16_instructions():
        precisions.append(Precision("bf16", "cpu", torch.bfloat16))

    rows = []
    for precision in precisions:
        peak = dense_peak(precision.dtype or torch.float32, n, repeats)
        ikd_layout = training_layout(build_model(spec), torch.device("cpu"), precision.dtype)
        for layout_name, layout in LAYOUTS.items():
            if args.layouts or layout == ikd_layout:
                rate = bare_train_rate(spec, precision, args.batch, steps, warmup, layout)
                chosen = " (ikd's)" if layout == ikd_layout else ""
                rows.append((precision.name, layout_name + chosen, rate, peak, rate * train_flops_per_image / peak))

    header = (
        f"{name} training, {spec.num_params():,} params, batch {args.batch}, {args.channels}x{args.size}x{args.size}, "
        f"{spec.macs() / 1e6:.1f} M MACs/image, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()}"
        f"{' (quick)' if args.quick else ''}"
    )
    lines = [
        f"Machine: {machine_line()}.",
        "",
        header,
        "",
        "| precision | layout | images/s | train GFLOP/s | dense peak GFLOP/s | fraction of peak |",
        "|---|---|---|---|---|---|",
    ]
    for precision_name, layout_name, rate, peak, fraction in rows:
        lines.append(
            f"| {precision_name} | {layout_name} | {rate:.1f} | {rate * train_flops_per_image / 1e9:.1f} | "
            f"{peak / 1e9:.1f} | {fraction:.2f} |"
        )
    best = {p: max(r[2] for r in rows if r[0] == p) for p in dict.fromkeys(r[0] for r in rows)}
    speedup = best["bf16"] / best["fp32"] if "bf16" in best else float("nan")
    lines += ["", f"bf16 / fp32 speed-up (each in its faster layout measured): {speedup:.2f}x"]
    publish("\n".join(lines), args.markdown, "Training throughput")
    results: dict[str, object] = {"arch": name.replace(" ", "-")}
    for precision_name, layout_name, rate, _, fraction in rows:
        key = f"{precision_name}_{layout_name.split()[0]}"
        results |= {f"{key}_img_s": f"{rate:.1f}", f"{key}_peak_fraction": f"{fraction:.3f}"}
    print_result(results | {"bf16_speedup": f"{speedup:.2f}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
