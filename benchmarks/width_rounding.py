"""Do odd conv widths cost speed? A slim student as the search made it against its widths rounded.

The slim operator cuts channels one at a time, so its students have widths like 61/89/137; the
convolution kernels work on blocks of channels (an AVX-512 register holds 16 fp32 or 32 bf16
values). This times, side by side in one process, a student's training step (batch `--batch`,
forward + CE + backward + SGD, in the precisions asked, NHWC as ikd trains under bf16) and its batch-1
inference (onnxruntime and PyTorch, ikd.latency's protocol), for the student as it is and for its
widths rounded down to a multiple of each `--round-to` (at least that multiple), the direction
`search.slim_round_to` cuts. Rounding down also removes MACs, so each speed-up is given twice: per
step, and per MAC (how much of it is the kernels' better use of aligned channels). Training steps are
interleaved like ikd.latency's inference rounds: the smallest of several medians.
"""

from __future__ import annotations

import argparse

import torch

from ikd.arch import ArchSpec
from ikd.latency import LATENCY_THREADS, min_of_medians
from ikd.lineage import RunDir
from ikd.runtime import resolve_precision

from common import CPU, machine_line, print_result, publish, spec_latencies, training_step


def rounded(spec: ArchSpec, multiple: int) -> ArchSpec:
    """`spec` with every conv width rounded down to a multiple of `multiple` (at least one)."""
    blocks = [[max(multiple, multiple * (w // multiple)) for w in block] for block in spec.blocks]
    return spec.model_copy(update={"blocks": blocks})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an `ikd compress` run directory")
    parser.add_argument("--node", help="the node whose widths are timed (default: the run's answer)")
    parser.add_argument("--round-to", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="training steps per median")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="a tiny odd-width spec of its own, one short round")
    parser.add_argument("--quiet", action="store_true", help="(prints only the record and its RESULT line)")
    args = parser.parse_args()

    if args.quick:
        searched = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[13, 21], [29]])
        source = "a tiny odd-width spec (--quick)"
        args.round_to, args.batch, args.repeats, args.rounds = [8], 8, 1, 1
    elif args.run:
        node = RunDir(args.run).load().find(args.node) if args.node else RunDir(args.run).load().final()
        if node is None:
            raise SystemExit(f"width_rounding.py: {args.run}: no node {args.node!r}")
        searched, source = node.spec(), f"`{node.id}` of `{args.run}`"
    else:
        parser.error("--run is required (or --quick)")
    specs = {"as-searched": searched} | {f"round-to-{m}": rounded(searched, m) for m in args.round_to}
    train_ms: dict[str, dict[str, float]] = {}
    for precision in args.precisions:
        resolved = resolve_precision(precision, CPU)
        layout = torch.channels_last if resolved.dtype == torch.bfloat16 else torch.contiguous_format  # as ikd
        steps = {name: training_step(spec, resolved, args.batch, layout) for name, spec in specs.items()}
        train_ms[precision] = min_of_medians(steps, args.repeats, args.rounds)
    inference = spec_latencies(specs)

    base = "as-searched"
    header = ["widths", "conv widths", "params", "M MACs/image"]
    header += [f"train ms/step {p} (speed-up; per MAC)" for p in args.precisions]
    header += [f"batch-1 ms {m.runtime} (speed-up; per MAC)" for m in inference[base]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, spec in specs.items():
        macs = spec.macs() / specs[base].macs()  # this row's MACs over the searched student's

        def speed(ms: float, base_ms: float, macs: float = macs) -> str:
            return f"{ms:.3f} ({base_ms / ms:.2f}x; {base_ms * macs / ms:.2f}x)"

        cells = [name, spec.summary().replace("|", "\\|"), f"{spec.num_params():,}", f"{spec.macs() / 1e6:.1f}"]
        cells += [speed(train_ms[p][name], train_ms[p][base]) for p in args.precisions]
        cells += [
            speed(mine.median_ms, theirs.median_ms)
            for mine, theirs in zip(inference[name], inference[base], strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            f"Machine: {machine_line()}; training steps on {torch.get_num_threads()} torch threads, inference on "
            f"{LATENCY_THREADS}.",
            f"Student: {source}; training steps at batch {args.batch} on a fixed random "
            f"batch, smallest of {args.rounds} interleaved medians of {args.repeats} steps; inference: "
            "ikd.latency (batch 1, interleaved rounds, smallest median). Speed-up = as-searched / this row.",
            "",
            *lines,
            *(["", *[f"- {note}" for note in args.note]] if args.note else []),
        ]
    )
    publish(text, args.markdown, "Odd conv widths against rounded ones: training and inference speed")
    first = train_ms[args.precisions[0]]
    best = min(specs, key=lambda name: first[name])
    print_result({"fastest": best, "train_speedup": f"{first[base] / first[best]:.2f}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
