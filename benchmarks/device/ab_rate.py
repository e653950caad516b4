"""Tabulate interleaved `ikd train` runs of two versions of ikd (step_overhead.sh): images/s per round.

Reads RUNS/<arm>-<round>/model.json for the arms given (default before, after), takes each run's
training rate over its epochs after the first (the first carries start-up and cuDNN's autotuning),
and reports every round, the median of each arm, their ratio, and the fraction of the GPU's bf16
rate (GPU_FILE: the line device_gpu_rate wrote) that the training FLOPs reach (6 x MACs x images/s).

    python benchmarks/device/ab_rate.py --runs runs/step-overhead [--arms before after] [--gpu gpu.txt] [--markdown F]

Last line: `RESULT before_img_s=... after_img_s=... ratio=...`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path


def rate(model_dir: Path) -> tuple[float, int] | None:
    """Images/s over the epochs after the first (the only epoch when there is one), and the MACs/image."""
    try:
        meta = json.loads((model_dir / "model.json").read_text())
    except (OSError, ValueError):
        return None
    history = meta["history"]
    later = history[1:] or history
    return statistics.fmean(e["images_per_s"] for e in later), int(meta["size"]["macs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--arms", nargs="+", default=["before", "after"])
    parser.add_argument("--gpu", type=Path, help="device_gpu_rate's line: '...: measured bf16 matmul N TFLOP/s ...'")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    rounds: dict[str, dict[int, float]] = {arm: {} for arm in args.arms}
    macs = 0
    for path in sorted(args.runs.glob("*-*")):
        arm, _, number = path.name.rpartition("-")
        measured = rate(path) if arm in rounds and number.isdigit() else None
        if measured is not None:
            rounds[arm][int(number)], macs = measured
    missing = [arm for arm, runs in rounds.items() if not runs]
    if missing:
        print(f"ab_rate.py: {args.runs}: no finished run of {', '.join(missing)}", file=sys.stderr)
        return 2
    peak = None
    if args.gpu and args.gpu.is_file():
        found = re.search(r"([\d.]+) TFLOP/s", args.gpu.read_text())
        peak = float(found.group(1)) * 1e12 if found else None

    medians = {arm: statistics.median(runs.values()) for arm, runs in rounds.items()}
    lines = [f"Runs: `{args.runs}`, interleaved by round; images/s over each run's epochs after the first.", ""]
    lines += ["| round | " + " | ".join(args.arms) + " |", "|---" * (len(args.arms) + 1) + "|"]
    for number in sorted({n for runs in rounds.values() for n in runs}):
        cells = [f"{rounds[arm][number]:,.0f}" if number in rounds[arm] else "-" for arm in args.arms]
        lines.append(f"| {number} | " + " | ".join(cells) + " |")
    lines.append("| median | " + " | ".join(f"**{medians[arm]:,.0f}**" for arm in args.arms) + " |")
    first, last = args.arms[0], args.arms[-1]
    ratio = medians[last] / medians[first]
    lines += ["", f"{last} / {first}: **{ratio:.2f}x** (medians)."]
    if peak and macs:
        fractions = ", ".join(f"{arm} {6 * macs * medians[arm] / peak:.1%}" for arm in args.arms)
        lines.append(f"Fraction of the measured bf16 rate ({peak / 1e12:.0f} TFLOP/s): {fractions}.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    result = " ".join(f"{arm}_img_s={medians[arm]:.0f}" for arm in args.arms)
    print(f"RESULT {result} ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
