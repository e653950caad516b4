"""Caching a teacher's outputs in fp32 against in the students' precision (bf16), side by side.

A campaign on data without augmentation runs each teacher once over the training set and keeps its
logits and the hint block's output (`ikd.objective.cache_teacher_outputs`). Until 2026-12-03 that pass
ran in fp32 whatever the students trained in; it now runs under the students' autocast and in the
teacher's own layout, as a live teacher would inside their steps. This times both on the same images,
alternating (fp32, bf16, fp32, bf16, ...) in one process, and keeps the fastest of each; it also says
how far the two caches' KD targets are apart (softened at T=4, as ikd's default loss).

    python benchmarks/teacher_cache.py --data-dir ../shared/data/mnist --teacher runs/teachers/mnist-vgg16-b128-crop \
        --steps 47 --markdown benchmarks/results/teacher_cache.md
    python benchmarks/teacher_cache.py --quick      # digits, a random small VGG, 3 batches, one round
Last line: `RESULT fp32_img_s=... bf16_img_s=... speedup=... top1_agreement=... max_target_diff=...`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ikd.objective import CachedTeacher, LossWeights, cache_teacher_outputs, teacher_hint_block
from ikd.runtime import resolve_precision
from ikd.shrink import shrink_width

# benchmarks/common.py: a script's own directory is on sys.path
from common import CPU, add_kd_arguments, kd_setup, machine_line, print_result, publish


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kd_arguments(parser)  # --steps x --batch-size: the training images cached per timed pass
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest of each is kept")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    setup = kd_setup(args)
    data, teacher, images = setup.data, setup.teacher, setup.data.train
    bf16 = resolve_precision("bf16", CPU)
    fp32 = resolve_precision("fp32", CPU)
    # the hint block a campaign's first child (half the teacher's width) asks for
    child = shrink_width(teacher.spec)
    assert child is not None, "every conv of at least 2 filters can be halved"
    block = teacher_hint_block(child, teacher, LossWeights())
    blocks = [block] if block is not None else []

    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    caches: dict[str, CachedTeacher] = {}
    for _ in range(args.rounds):
        for name, precision in (("fp32", fp32), ("bf16", bf16)):
            started = time.perf_counter()
            caches[name] = cache_teacher_outputs(
                teacher,
                images,
                mean=data.mean,
                std=data.std,
                hint_blocks=blocks,
                device=CPU,
                precision=precision,
                batch_size=args.batch_size,
            )
            seconds[name].append(time.perf_counter() - started)
    rate = {name: len(images) / min(times) for name, times in seconds.items()}
    fp32_logits, bf16_logits = caches["fp32"].logits, caches["bf16"].logits
    agreement = (fp32_logits.argmax(1) == bf16_logits.argmax(1)).float().mean().item()
    targets = [torch.softmax(logits / LossWeights().temperature, dim=1) for logits in (fp32_logits, bf16_logits)]
    target_diff = (targets[0] - targets[1]).abs().max().item()
    feature_diff = (
        (caches["fp32"].features[block] - caches["bf16"].features[block]).abs().max().item()
        if block is not None
        else 0.0
    )

    text = "\n".join(
        [
            f"Machine: {machine_line()}.",
            f"Teacher: {setup.teacher_label}; {len(images):,} {data.name} training images, hint block {block}; "
            f"{args.rounds} alternating round(s), fastest kept, batch {args.batch_size}.",
            "",
            "| cache pass | images/s | seconds per round |",
            "|---|---|---|",
            *(
                f"| {name} | {rate[name]:,.0f} | {', '.join(f'{s:.1f}' for s in seconds[name])} |"
                for name in ("fp32", "bf16")
            ),
            "",
            f"bf16 / fp32 speed-up: {rate['bf16'] / rate['fp32']:.2f}x. Top-1 agreement of the two caches' "
            f"logits: {agreement:.4f}; largest difference of a KD target probability (T = "
            f"{LossWeights().temperature:g}): {target_diff:.2e}; of a cached hint feature: {feature_diff:.2e}.",
        ]
    )
    publish(text, args.markdown, "Teacher output cache: fp32 against the students' bf16")
    print_result(
        {
            "fp32_img_s": f"{rate['fp32']:.1f}",
            "bf16_img_s": f"{rate['bf16']:.1f}",
            "speedup": f"{rate['bf16'] / rate['fp32']:.2f}",
            "top1_agreement": f"{agreement:.4f}",
            "max_target_diff": f"{target_diff:.2e}",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
