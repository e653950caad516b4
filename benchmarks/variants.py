"""The paper's four variants at an equal training budget, and the cost of training k children together.

Part 1: the same config, teacher and seed, run once per strategy with the same budget of child
epochs (`search.budget_epochs`: epochs x the whole training set, summed over every candidate a
strategy trains). Reported: the smallest accepted student, its compression, test accuracy and drop
against the teacher's test accuracy, the epochs spent, generations and wall time.

Part 2: one Parent->Children generation with k children (the operators x width factors given)
against the same k children as k separate Parent->Child runs, timed back to back in this process.

    python benchmarks/variants.py --config configs/mnist-vgg16.yaml --data-dir ../shared/data/mnist \
        --teacher runs/mnist-vgg16 --epochs 1 --budget-epochs 12 --out runs/variants-mnist \
        --markdown benchmarks/results/variants.md
    python benchmarks/variants.py --quick        # digits, tiny budget, about a minute
Last line: `RESULT name=value ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ikd.campaign import compress
from ikd.config import load_config

# benchmarks/common.py: a script's own directory is on sys.path
from common import machine_line, print_result, publish, repo_path

STRATEGIES = ("parent-child", "parent-children", "ancestors-child", "ancestors-children")


def run(config_path, overrides: dict, progress: bool):
    config = load_config(repo_path(config_path), overrides)
    started = time.perf_counter()
    lineage = compress(config, progress=progress)
    return lineage, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits-demo.yaml")
    parser.add_argument("--data-dir")
    parser.add_argument("--teacher", help="teacher.dir (an `ikd train` output on the same split)")
    parser.add_argument("--epochs", type=int, default=1, help="student.epochs per candidate")
    parser.add_argument("--budget-epochs", type=int, default=12, help="search.budget_epochs for every strategy")
    parser.add_argument("--max-drop", type=float, help="search.max_drop and max_step_drop")
    parser.add_argument("--width-factors", default="0.5,0.75", help="width factors of the *-children strategies")
    parser.add_argument("--ancestors", default="all")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (children's init, data order)")
    parser.add_argument("--out", default="runs/variants", help="one run directory per strategy is made here")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--skip-children-cost", action="store_true")
    parser.add_argument("--cost-teacher", help="teacher.dir of part 2 (default: the same teacher)")
    parser.add_argument(
        "--cost-width-factors",
        default="0.25,0.5,0.75",
        help="part 2's children: one depth child plus one width child per factor",
    )
    parser.add_argument("--operators", default="depth,width", help="search.operators of part 1")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--quick", action="store_true", help="digits, small budget: a smoke run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.config, args.budget_epochs, args.epochs = "configs/digits-demo.yaml", 6, 1
    out = Path(args.out)
    factors = [float(f) for f in args.width_factors.split(",")]
    common = {
        "seed": args.seed,
        "student.epochs": args.epochs,
        "search.operators": args.operators.split(","),
        "search.budget_epochs": args.budget_epochs,
        "search.max_generations": 50,
        "data.dir": args.data_dir,
        "teacher.dir": args.teacher,
    }
    if args.quick:  # loose tolerance, so the chains grow even from 1-epoch children
        common |= {"teacher.epochs": 3, "search.max_drop": 100.0, "search.max_step_drop": 100.0}
    if args.max_drop is not None:
        common |= {"search.max_drop": args.max_drop, "search.max_step_drop": args.max_drop}
    ancestors = args.ancestors if args.ancestors == "all" else int(args.ancestors)

    rows = []
    for strategy in args.strategies.split(","):
        overrides = common | {"run_dir": str(out / strategy), "search.strategy": strategy}
        overrides |= {"search.width_factor": factors}  # the same candidates for every strategy
        if strategy.startswith("ancestors-"):
            overrides |= {"ensemble.ancestors": ancestors}
        lineage, seconds = run(args.config, overrides, not args.quiet)
        final, root = lineage.final(), lineage.root()
        seconds -= root.seconds  # the teacher is not part of the comparison
        if not common.get("teacher.dir"):  # trained once, by the first run; the others import it
            common["teacher.dir"] = str(out / strategy / "nodes" / root.id)
        spent = lineage.epochs_spent()
        rows.append(
            {
                "strategy": strategy,
                "params": final.params,
                "x": final.compression,
                "val": 100 * final.val_accuracy,
                "test": 100 * final.test_accuracy,
                "drop": 100 * (root.test_accuracy - final.test_accuracy),
                "spent": spent,
                "generations": final.generation,
                "trained": len(lineage.students()),
                "seconds": seconds,
                "stop": lineage.stop_reason,
                "node": final.id,
            }
        )
        print(
            f"{strategy}: {final.id} {final.params:,} params ({final.compression:.1f}x), "
            f"test {rows[-1]['test']:.2f}%, {seconds:.0f} s",
            file=sys.stderr,
        )

    cost = None
    if not args.skip_children_cost:
        cost_factors = [float(f) for f in args.cost_width_factors.split(",")]
        k_overrides = common | {
            "search.max_generations": 1,
            "search.budget_epochs": None,
            "search.max_drop": 100.0,
            "search.max_step_drop": 100.0,
            "search.operators": ["depth", "width"],
        }
        if args.cost_teacher:
            k_overrides["teacher.dir"] = args.cost_teacher
        together, t_seconds = run(
            args.config,
            k_overrides
            | {
                "run_dir": str(out / "k-together"),
                "search.strategy": "parent-children",
                "search.width_factor": cost_factors,
            },
            not args.quiet,
        )
        k = len([n for n in together.nodes if n.generation == 1])
        separate = 0.0
        for op in ["depth"] + [f"width:{f}" for f in cost_factors]:
            name, _, factor = op.partition(":")
            _, seconds = run(
                args.config,
                k_overrides
                | {
                    "run_dir": str(out / f"k-alone-{op.replace(':', '')}"),
                    "search.operators": [name],
                    **({"search.width_factor": float(factor)} if factor else {}),
                },
                not args.quiet,
            )
            separate += seconds
        # the teacher (trained or imported) is part of every run: subtract it so only children count
        root_seconds = together.root().seconds
        cost = {
            "k": k,
            "together": t_seconds - root_seconds,
            "separate": separate - (k * root_seconds),
            "root_seconds": root_seconds,
            "teacher": together.root().arch,
        }

    lines = [
        f"Machine: {machine_line()}. Config `{args.config}`, {args.epochs} epoch(s) "
        f"per candidate, budget {args.budget_epochs} child-epochs per strategy, seed {args.seed}.",
        "",
        "| strategy | smallest accepted | params | x | val % | test % | drop (test, points) | "
        "epochs spent | generations | nodes trained | wall s (teacher excluded) | stop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['node']} | {r['params']:,} | {r['x']:.1f} | {r['val']:.2f} | "
            f"{r['test']:.2f} | {r['drop']:.2f} | {r['spent']} | {r['generations']} | {r['trained']} | "
            f"{r['seconds']:.0f} | {r['stop']} |"
        )
    if cost:
        lines += [
            "",
            f"One Parent->Children generation, k={cost['k']}: {cost['together']:.1f} s; the same "
            f"{cost['k']} children as separate Parent->Child runs: {cost['separate']:.1f} s; ratio "
            f"{cost['together'] / cost['separate']:.2f} (the teacher's own {cost['root_seconds']:.1f} s "
            f"per run is subtracted; teacher blocks {cost['teacher']['blocks']}).",
        ]
    text = "\n".join(lines)
    publish(text, args.markdown, "The four variants at one budget")
    result = {}
    for r in rows:
        result |= {f"{r['strategy']}_x": f"{r['x']:.1f}", f"{r['strategy']}_test": f"{r['test']:.2f}"}
    if cost:
        result[f"k{cost['k']}_together_over_separate"] = f"{cost['together'] / cost['separate']:.2f}"
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
