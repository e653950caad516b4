"""What distillation costs on top of plain training: ikd's KD epoch time over the same student's CE epoch time.

One student (the teacher's width child, initialised from the teacher), the same data, batch,
steps and precision, trained by `train_model` twice: with plain cross-entropy (no teacher), and
with ikd's distillation objective (KD + CE + FitNets hint, ikd's defaults) whose teacher outputs
come from the cache, as in every campaign without augmentation. Timed: the training loops (data
preparation included, validation not), from ikd's own per-epoch images/s. `--repeats` alternates
CE and KD runs and keeps each one's fastest, so a busy machine penalises neither side alone.

Distillation is not free of the cache: building it is a teacher pass over the training set. The
verdict (goal 1.15) is decided on the ratio that counts it, the cache's time spread over
`--cache-epochs` (a child's epochs in configs/mnist-vgg16.yaml) since every epoch of the child
reuses it; the ratio of the training loops alone is reported beside it. `--live` runs the teacher
on every batch instead (what augmentation forces): there the loop ratio already counts the teacher.

    python benchmarks/kd_overhead.py --data-dir ../shared/data/mnist --teacher runs/mnist-vgg16 \
        --markdown benchmarks/results/kd_overhead.md
    python benchmarks/kd_overhead.py --quick        # digits, random teacher, 3 steps
Last line: `RESULT kd_over_ce=... kd_with_cache_over_ce=... ...`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

from ikd.objective import LiveTeacher, LossWeights, build_objective, cache_teacher_outputs, teacher_hint_block
from ikd.runtime import resolve_precision
from ikd.train import TrainConfig, train_model

# benchmarks/common.py: a script's own directory is on sys.path
from common import (
    CPU,
    add_kd_arguments,
    kd_setup,
    loop_seconds,
    machine_line,
    print_result,
    publish,
    train_images_per_epoch,
    warm_up,
    width_student,
)

GOAL = 1.15  # the issue's, for cached teacher outputs (no augmentation), the cache counted


def ratio_with_cache(kd_s: float, ce_s: float, cache_s: float, epochs: int, cache_epochs: int) -> float:
    """KD epoch over CE epoch, the KD epoch paying its share of the one teacher pass that built the
    cache (shared by `cache_epochs` epochs): the ratio the verdict is decided on."""
    return (kd_s / epochs + cache_s / cache_epochs) / (ce_s / epochs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kd_arguments(parser)
    parser.add_argument("--width", type=float, default=0.5, help="the student: the teacher's width child, this factor")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="CE/KD runs each, alternating; the fastest counts")
    parser.add_argument(
        "--cache-epochs",
        type=int,
        default=5,
        help="epochs the cache is spread over in the 'with cache' ratio (MNIST config: 5 per child)",
    )
    parser.add_argument("--live", action="store_true", help="run the teacher on every batch instead of caching")
    args = parser.parse_args()

    setup = kd_setup(args)
    data, teacher = setup.data, setup.teacher
    weights = LossWeights()
    student = width_student(teacher, args.width, args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device="cpu", seed=args.seed)
    images = train_images_per_epoch(data, args.batch_size)

    block = teacher_hint_block(student.spec, teacher, weights)
    blocks = [block] if block is not None else []
    cache_seconds = 0.0
    if args.live:
        source = LiveTeacher(teacher, blocks)
    else:
        started = time.perf_counter()
        precision = resolve_precision(config.precision, CPU)  # the students' autocast, as in a campaign
        source = cache_teacher_outputs(
            teacher, data.train, mean=data.mean, std=data.std, hint_blocks=blocks, device=CPU, precision=precision
        )
        cache_seconds = time.perf_counter() - started

    def distillation(model):
        return build_objective(model, teacher, weights, sources=[source], seed=args.seed)

    def timed(kind: str) -> tuple[float, str]:
        model = copy.deepcopy(student)  # every run starts from the same weights
        objective = distillation(model) if kind == "kd" else None
        result = train_model(model, data, config, objective=objective, progress=not args.quiet, description=kind)
        return loop_seconds(result, images), result.precision

    warm_up(student, data, config)
    warm_up(student, data, config, distillation)
    runs: dict[str, list[float]] = {"ce": [], "kd": []}
    for _ in range(args.repeats):
        for kind in runs:
            seconds, precision = timed(kind)
            runs[kind].append(seconds)
    ce, kd = min(runs["ce"]), min(runs["kd"])
    with_cache = ratio_with_cache(kd, ce, cache_seconds, args.epochs, args.cache_epochs)
    # the teacher pass is part of what distillation costs; judged on the ratio as shown (3 decimals)
    goal_met = round(with_cache, 3) <= GOAL
    spec = student.spec
    teacher_text = (
        "run on every batch (--live)"
        if args.live
        else f"outputs cached once ({cache_seconds:.3f} s, hint block {block}), looked up per batch"
    )
    lines = [
        f"Machine: {machine_line()}.",
        f"Data: {data.name}, {len(data.train):,} training images, batch {args.batch_size}, {args.epochs} epoch(s) of "
        f"{images // args.batch_size} steps, precision {precision}; fastest of {args.repeats} run(s) each.",
        f"Teacher: {setup.teacher_label}; {teacher_text}.",
        f"Student: width x{args.width:g} ({spec.summary()}, {spec.num_params():,} params), "
        "initialised from the teacher.",
        "",
        "| objective | training seconds | images/s |",
        "|---|---|---|",
        f"| cross-entropy (no teacher) | {ce:.2f} | {args.epochs * images / ce:.1f} |",
        f"| distillation (KD + CE + hint) | {kd:.2f} | {args.epochs * images / kd:.1f} |",
        "",
        f"KD / CE: {kd / ce:.3f} (the teacher run on every batch)"
        if args.live
        else f"KD / CE: {kd / ce:.3f} (training loops only); with the cache spread over {args.cache_epochs} epochs: "
        f"{with_cache:.3f} (goal <= {GOAL:g}: {'met' if goal_met else 'not met'})",
    ]
    text = "\n".join(lines)
    publish(text, args.markdown, "KD overhead: distillation epoch over plain training epoch")
    print_result(
        {
            "teacher": "live" if args.live else "cached",
            "kd_over_ce": f"{kd / ce:.3f}",
            "kd_with_cache_over_ce": f"{with_cache:.3f}",
            "cache_s": f"{cache_seconds:.3f}",  # a small teacher's pass can take under 0.05 s
            "ce_s": f"{ce:.2f}",
            "kd_s": f"{kd:.2f}",
            "goal_met": "-" if args.live else "yes" if goal_met else "no",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
