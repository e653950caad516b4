"""Which distillation defaults pay: hint weight gamma, and inheriting the parent's weights vs random init.

One teacher (a model directory from `ikd train`), one student architecture (the teacher shrunk by
the width operator `--shrinks` times), the same epochs and seed for every row; only the studied
setting changes. Decisions use the validation split; test accuracy is reported alongside.

    python benchmarks/distill_ablation.py --teacher runs/mnist-vgg16 --dataset mnist \
        --data-dir ../shared/data/mnist --epochs 1 --markdown benchmarks/results/distill_ablation_mnist.md
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ikd.checkpoint import load_model, read_metadata
from ikd.data import load_dataset
from ikd.inherit import inherit_weights
from ikd.model import build_model
from ikd.objective import LossWeights
from ikd.runtime import resolve_device, resolve_precision
from ikd.shrink import shrink_depth, shrink_width
from ikd.train import TrainConfig, evaluate, train_model

# benchmarks/common.py: a script's own directory is on sys.path
from common import CachedTeacherObjectives, print_result, publish


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--shrinks", type=int, default=3, help="operator steps from the teacher (3 width halvings = 1/8 width)"
    )
    parser.add_argument("--operator", default="width", choices=("width", "depth"), help="shrink operator")
    parser.add_argument("--gammas", default="0,0.1,1,10")
    parser.add_argument("--seeds", default="0,1,2", help="every row is the mean over these seeds")
    parser.add_argument("--quick", action="store_true", help="a few batches per run")
    parser.add_argument("--markdown")
    args = parser.parse_args()

    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    teacher, _ = load_model(Path(args.teacher), map_location=device)
    recorded = read_metadata(Path(args.teacher))["dataset"]
    data = load_dataset(
        args.dataset, args.data_dir, val_fraction=recorded["val_fraction"], split_seed=recorded["split_seed"]
    )
    spec = teacher.spec
    for _ in range(args.shrinks):
        spec = shrink_width(spec) if args.operator == "width" else shrink_depth(spec)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    objectives = CachedTeacherObjectives(teacher, data, device, precision)

    def run(gamma: float, inherit: bool) -> dict:
        runs = [run_once(gamma, inherit, seed) for seed in seeds]
        mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
        return {
            "gamma": gamma,
            "inherit": inherit,
            "val": mean("val"),
            "test": mean("test"),
            "seconds": mean("seconds"),
            "val_range": (min(r["val"] for r in runs), max(r["val"] for r in runs)),
        }

    def run_once(gamma: float, inherit: bool, seed: int) -> dict:
        config = TrainConfig(
            epochs=args.epochs,
            precision=precision.name,
            device=device.type,
            seed=seed,
            max_steps_per_epoch=5 if args.quick else None,
        )
        student = build_model(spec, seed=seed)
        if inherit:
            inherit_weights(student, teacher)
        weights = LossWeights(gamma=gamma)
        objective = objectives(student, weights, seed)
        started = time.perf_counter()
        result = train_model(student, data, config, objective=objective, progress=False)
        test = evaluate(student, data.test, mean=data.mean, std=data.std, device=device, precision=precision)
        return {"val": result.best_val_accuracy, "test": test["accuracy"], "seconds": time.perf_counter() - started}

    rows = [run(float(g), True) for g in args.gammas.split(",")]
    best_gamma = max(rows, key=lambda r: r["val"])["gamma"]
    rows.append(run(best_gamma, False))

    shrunk = (
        f"width x {0.5**args.shrinks:g}"
        if args.operator == "width"
        else f"{args.shrinks} conv(s) fewer: {spec.summary()}"
    )
    header = (
        f"Teacher {args.teacher} ({spec.num_params():,}-param student = teacher {shrunk}, "
        f"{teacher.spec.num_params() / spec.num_params():.1f}x smaller), "
        f"{args.dataset}, {args.epochs} epoch(s), mean of seeds {args.seeds}, {precision.name}"
        f"{' (quick)' if args.quick else ''}"
    )
    lines = [
        header,
        "",
        "| gamma | init | val acc (mean) | val min..max | test acc (mean) | seconds/run |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["val_range"]
        lines.append(
            f"| {r['gamma']:g} | {'inherited' if r['inherit'] else 'random'} | {100 * r['val']:.2f} "
            f"| {100 * low:.2f}..{100 * high:.2f} | {100 * r['test']:.2f} | {r['seconds']:.0f} |"
        )
    inherited = next(r for r in rows if r["gamma"] == best_gamma and r["inherit"])
    scratch = rows[-1]
    lines += [
        "",
        f"Best gamma by validation: {best_gamma:g}. Inherited vs random init at that gamma: "
        f"{100 * (inherited['val'] - scratch['val']):+.2f} points (validation).",
    ]
    text = "\n".join(lines)
    publish(text, args.markdown, "Distillation ablation")
    print_result(
        {"best_gamma": f"{best_gamma:g}", "inherit_gain_points": f"{100 * (inherited['val'] - scratch['val']):.2f}"}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
