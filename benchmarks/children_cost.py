"""What a Parent->Children generation costs against training its children alone without a teacher.

Numerator: one generation as a campaign runs it (`ikd.distil.train_students` with strategy
parent-children): the parent's outputs cached once (the blocks every child's hint needs), then
the k children, initialised from the parent, trained together by `train_models` -- one pass over
the data, each batch prepared once -- with ikd's distillation objective.

Denominator: k x one child's plain cross-entropy epoch (the child alone, no teacher, same init,
config and steps; each distinct architecture timed once) + one teacher pass (the same caching).
The issue's goal: <= 1.1. Both sides are walls of ikd's calls, per-epoch validation included
(k validations on each side). Children of one architecture differ in seed, as `search.seeds` makes them.

    python benchmarks/children_cost.py --data-dir ../shared/data/mnist --teacher runs/mnist-vgg16 \
        --markdown benchmarks/results/children_cost.md
    python benchmarks/children_cost.py --quick     # digits, random teacher, 3 steps
Last line: `RESULT k=4 generation_s=... denominator_s=... ratio=...`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter

from ikd.inherit import inherit_weights
from ikd.model import build_model
from ikd.objective import LossWeights, build_objective, cache_teacher_outputs, teacher_hint_block
from ikd.runtime import resolve_precision
from ikd.shrink import get_operator
from ikd.strategy import SEED_STRIDE
from ikd.train import TrainConfig, train_model, train_models

# benchmarks/common.py: a script's own directory is on sys.path
from common import CPU, add_kd_arguments, kd_setup, machine_line, print_result, publish, warm_up

GENERATION = 1  # the teacher's children: generation 1 of a campaign, seeded as the campaign seeds it
GOAL = 1.1  # the issue's


def children_specs(teacher, description: str):
    """[(label, spec)] for `depth` / `width:F` entries; a repeated entry is another seed of that child."""
    children = []
    for entry in description.split(","):
        name, _, factor = entry.strip().partition(":")
        spec = get_operator(name, float(factor) if factor else 0.5)(teacher.spec)
        if spec is None:
            raise SystemExit(f"--children: {entry!r} cannot shrink the teacher")
        children.append((entry.strip(), spec))
    return children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kd_arguments(parser)
    parser.add_argument(
        "--children",
        default="width:0.5,width:0.5,width:0.5,width:0.5",
        help="the generation's children, `depth` or `width:F`, comma-separated (k = their number)",
    )
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    setup = kd_setup(args)
    data, teacher = setup.data, setup.teacher
    weights = LossWeights()
    children = children_specs(teacher, args.children)
    seen: Counter = Counter()
    students, seeds = [], []
    for label, spec in children:
        seeds.append(args.seed + GENERATION + SEED_STRIDE * seen[label])
        seen[label] += 1
        student = build_model(spec, seed=seeds[-1])
        inherit_weights(student, teacher)
        students.append(student)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device="cpu", seed=args.seed + GENERATION)
    progress = not args.quiet

    # Denominator first: each distinct child alone with plain CE, then one teacher pass.
    ce_seconds: dict[str, float] = {}
    for (label, _), student in zip(children, students, strict=True):
        if label not in ce_seconds:
            warm_up(student, data, config)
            started = time.perf_counter()
            train_model(copy.deepcopy(student), data, config, progress=progress, description=f"{label} CE")
            ce_seconds[label] = time.perf_counter() - started
    blocks = {teacher_hint_block(student.spec, teacher, weights) for student in students} - {None}
    started = time.perf_counter()
    precision = resolve_precision(config.precision, CPU)  # the students' autocast, as in a campaign
    cache = cache_teacher_outputs(
        teacher, data.train, mean=data.mean, std=data.std, hint_blocks=blocks, device=CPU, precision=precision
    )
    cache_seconds = time.perf_counter() - started

    # Numerator: the generation -- the cache (timed above: the same work) + the k children together.
    objectives = [
        build_objective(student, teacher, weights, sources=[cache], seed=seed)
        for student, seed in zip(students, seeds, strict=True)
    ]
    started = time.perf_counter()
    train_models(
        students, data, config, objectives=objectives, progress=progress, descriptions=[label for label, _ in children]
    )
    together_seconds = time.perf_counter() - started

    k = len(children)
    generation = cache_seconds + together_seconds
    alone = sum(ce_seconds[label] * count for label, count in seen.items())
    denominator = alone + cache_seconds
    lines = [
        f"Machine: {machine_line()}.",
        f"Data: {data.name}, {len(data.train):,} training images, batch {args.batch_size}, {args.epochs} epoch(s), "
        f"validation on {len(data.val):,} images after each epoch.",
        f"Parent (teacher): {setup.teacher_label}.",
        "",
        f"| child | params | seeds | CE alone ({args.epochs} epoch(s)), s |",
        "|---|---|---|---|",
    ]
    specs = dict(children)
    for label, count in seen.items():
        lines.append(
            f"| {label} ({specs[label].summary()}) | {specs[label].num_params():,} | {count} | "
            f"{ce_seconds[label]:.2f} |"
        )
    lines += [
        "",
        f"Teacher pass (caching its outputs, hint blocks {sorted(blocks)}): {cache_seconds:.2f} s.",
        f"Generation, k={k} children distilled together: {generation:.2f} s = {cache_seconds:.2f} s caching + "
        f"{together_seconds:.2f} s training.",
        f"k x child CE epoch + one teacher pass: {alone:.2f} + {cache_seconds:.2f} = {denominator:.2f} s.",
        f"Ratio: {generation / denominator:.3f} (goal <= {GOAL:g}).",
    ]
    text = "\n".join(lines)
    publish(text, args.markdown, "Children cost: one Parent->Children generation against its children alone")
    print_result(
        {
            "k": k,
            "generation_s": f"{generation:.2f}",
            "cache_s": f"{cache_seconds:.2f}",
            "children_ce_s": f"{alone:.2f}",
            "denominator_s": f"{denominator:.2f}",
            "ratio": f"{generation / denominator:.3f}",
            "goal_met": "yes" if generation / denominator <= GOAL else "no",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
