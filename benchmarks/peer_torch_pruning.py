"""Torch-Pruning beside ikd: the same teacher, data, split, schedule and loss; only the method differs.

Reads a finished `ikd compress` run (ideally with `--baselines`) and replays its chain with
Torch-Pruning (DepGraph, Fang et al. 2023) in place of ikd's search: stage k prunes the model until it
has no more parameters than the chain's k-th student (`--match macs`: no more MACs per image, so the
methods meet at equal compute instead of equal memory), then fine-tunes it for as many epochs as that
student trained, with the campaign's own student optimiser settings; a final distillation in the
ikd run is matched by as many fine-tuning epochs at the final size. So both methods spend the same
epochs along the same size schedule, from the same teacher weights.

Pruning is global (one ranking across layers, so widths end uneven, as Network Slimming's and ikd's
slim operator's do) or local (every layer loses the same share of its channels, Torch-Pruning's
default), in small steps (`--granularity` steps would remove every channel), the classifier's output
layer kept, no layer below one channel. Importances (Torch-Pruning's own classes):
  l1     filter L1 norm of each conv, as Li et al. 2017, over its layer's mean (MagnitudeImportance p=1)
  bn     raw BatchNorm |scale|, one global threshold, as Network Slimming (BNScaleImportance); fine-tuned
         with Network Slimming's L1 term on the scales (the run's bn_sparsity, at least 1e-4). Stage 1
         prunes the teacher as it was trained (no sparsity term), as ikd's slim operator does
  group  DepGraph's group L2 norm over every coupled layer (GroupMagnitudeImportance p=2)
Losses: `ce` (cross-entropy, the library's usual fine-tuning) and `kd` (ikd's own distillation
objective from the root teacher, with the run's loss settings, hint included; teacher outputs cached
when ikd would cache them, i.e. without augmentation). Two differences remain and are stated in the
record: each ikd student learns from its parent (the peer always from the root), and a chain node's
epochs include any two-stage hint epochs, which the peer spends on its joint loss.

Every choice uses validation; test accuracy is reported. Torch-Pruning is a dev dependency only.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from ikd.arch import ArchSpec, parse_layout
from ikd.atomic import atomic_write_json
from ikd.checkpoint import load_model
from ikd.config import CampaignConfig
from ikd.context import section_train_config
from ikd.latency import LATENCY_THREADS
from ikd.lineage import Lineage, NodeKind, RunDir, Status
from ikd.model import VGG
from ikd.objective import build_objective
from ikd.runtime import resolve_device, resolve_precision
from ikd.train import evaluate, steps_per_epoch, train_model

from common import (
    QUICK_ARCH,
    TIMED_BATCHES,
    CachedTeacherObjectives,
    machine_line,
    print_result,
    publish,
    repo_path,
    spec_latencies,
)

try:
    import torch_pruning as tp
except ImportError:  # a one-line reason rather than a traceback
    raise SystemExit("peer_torch_pruning.py: needs torch-pruning (pip install -e '.[dev]')") from None

IMPORTANCES = {
    # each layer's norms over their mean: raw filter L1 grows with fan-in, so one global ranking of raw
    # norms would empty the first layers (Li et al. prune layer by layer; this is its global form)
    "l1": lambda: tp.importance.MagnitudeImportance(p=1, normalizer="mean", group_reduction="first"),
    # raw |gamma| under one global threshold, as Network Slimming
    "bn": lambda: tp.importance.BNScaleImportance(normalizer=None),
    "group": lambda: tp.importance.GroupMagnitudeImportance(p=2),
}


@dataclass
class Stage:
    target_params: int
    epochs: int
    target_macs: int = 0  # what --match macs prunes to
    params: int = 0
    macs: int = 0  # per image; 0 in results stored before MACs were recorded (see stage_macs)
    val: float = 0.0
    test: float = 0.0
    seconds: float = 0.0
    arch: str = ""


@dataclass
class PeerRun:
    importance: str
    loss: str
    scope: str
    stages: list[Stage] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"torch-pruning {self.importance} {self.scope} + {self.loss}"

    @property
    def key(self) -> str:
        return f"{self.importance}+{self.loss}+{self.scope}"


def parse_variant(text: str) -> tuple[str, str, str]:
    parts = text.split("+")
    if (
        len(parts) != 3
        or parts[0] not in IMPORTANCES
        or parts[1] not in ("ce", "kd")
        or parts[2] not in ("global", "local")
    ):
        raise SystemExit(
            f"peer_torch_pruning.py: variant {text!r}: expected IMPORTANCE+LOSS+SCOPE, e.g. group+kd+local"
        )
    return parts[0], parts[1], parts[2]


def stored_results(path: Path) -> dict:
    """The variants a --results file holds (none when it is missing or damaged: they are replayed)."""
    if not path.exists():
        return {}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"peer_torch_pruning.py: {path}: unreadable ({exc}); replaying every variant", file=sys.stderr)
        return {}
    return stored if isinstance(stored, dict) and isinstance(stored.get("runs"), dict) else {}


def stage_plan(lineage: Lineage) -> list[Stage]:
    """The chain's size schedule and epochs: one stage per student on the final student's chain."""
    answer = lineage.final()
    chain = lineage.chain(answer)[1:]
    return [Stage(node.params, node.epochs, target_macs=node.macs) for node in chain if node.epochs]


def sync_spec(model: VGG) -> None:
    """Give a pruned ikd VGG the spec of its new widths (the objective's hint pairing and the record read it)."""
    blocks = [[m.out_channels for m in block if isinstance(m, torch.nn.Conv2d)] for block in model.blocks]
    head = [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)][:-1]
    model.spec = model.spec.model_copy(update={"blocks": blocks, "head": head})


def spec_of(summary: str, like: ArchSpec) -> ArchSpec:
    """The spec an `ArchSpec.summary()` line describes, with `like`'s input and classes (its inverse)."""
    blocks, head = parse_layout(summary)
    return like.model_copy(update={"blocks": blocks, "head": head})


def stage_macs(stage: Stage, teacher: VGG) -> int:
    """The stage's MACs per image, from its architecture line where the stored result predates the field."""
    return stage.macs or spec_of(stage.arch, teacher.spec).macs()


def params_of(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cost(model: VGG, match: str) -> int:
    """What the pruning is matched on: parameters, or MACs per image (of the widths pruned so far)."""
    if match == "params":
        return params_of(model)
    sync_spec(model)
    return model.spec.macs()


def replay(args, config: CampaignConfig, lineage: Lineage, teacher: VGG, data, run: PeerRun) -> PeerRun:
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    teacher = teacher.to(device).eval()
    # the student is a copy: pruning changes it in place, and the teacher stays whole for the KD loss and
    # the next variant (the quick test runs KD before CE, which fails if a variant leaves it frozen)
    model = copy.deepcopy(teacher)
    example = torch.randn(1, data.in_channels, data.image_size, data.image_size, device=device)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCES[run.importance](),
        global_pruning=run.scope == "global",
        pruning_ratio=1.0,
        max_pruning_ratio=0.99,
        iterative_steps=args.granularity,
        ignored_layers=[model.head[-1]],
    )
    run.stages = stage_plan(lineage)
    student = config.student
    augment = student.augment if student.augment is not None else data.augment
    cached = student.cache_teacher and augment == "none"  # ikd's own rule (ikd.distil)
    objectives = CachedTeacherObjectives(teacher, data, device, precision)
    for k, stage in enumerate(run.stages):
        started = time.perf_counter()
        target = stage.target_macs if args.match == "macs" else stage.target_params
        while cost(model, args.match) > target and pruner.current_step < args.granularity:
            pruner.step()
        sync_spec(model)
        stage.params, stage.macs, stage.arch = params_of(model), model.spec.macs(), model.spec.summary()
        train_config = section_train_config(student, stage.epochs, precision, device, config.seed + k + 1)
        if run.importance == "bn":  # Network Slimming fine-tunes with its sparsity term
            train_config = train_config.model_copy(update={"bn_sparsity": max(student.bn_sparsity, 1e-4)})
        objective, steps = None, steps_per_epoch(len(data.train), train_config)  # steps: the run's loss.kd_warmup
        if run.loss == "kd" and not cached:
            objective = build_objective(model, teacher, config.loss, seed=config.seed + k, steps_per_epoch=steps)
        elif run.loss == "kd":
            objective = objectives(model, config.loss, config.seed + k, steps)
        result = train_model(model, data, train_config, objective=objective, progress=False, description=run.name)
        stage.seconds = time.perf_counter() - started
        stage.val = 100 * result.best_val_accuracy
        stage.test = (
            100
            * evaluate(model, data.test, mean=data.mean, std=data.std, device=device, precision=precision)["accuracy"]
        )
        print(
            f"{run.name}: stage {k + 1}/{len(run.stages)} {stage.arch} {stage.params:,} params, val {stage.val:.2f}",
            flush=True,
        )
    return run


def quick_run(directory: Path) -> Path:
    """A smoke-sized ikd run to replay: digits, a small VGG teacher, one generation, baselines."""
    config = yaml.safe_load(repo_path("configs/digits-demo.yaml").read_text())
    config["teacher"] |= {"arch": QUICK_ARCH, "epochs": 1}
    config["student"] |= {"epochs": 1, "augment": "crop"}  # augmented, so KD runs a live teacher, as on CIFAR-10
    config["search"] |= {"max_generations": 1, "max_drop": 100.0, "max_step_drop": 100.0}
    path, run_dir = directory / "quick.yaml", directory / "run"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "ikd", "compress", "--config", str(path), "--run-dir", str(run_dir), "--quiet"]
    subprocess.run([*command, "--baselines"], check=True, stdout=subprocess.DEVNULL)
    return run_dir


def final_latencies(lineage: Lineage, runs: list[PeerRun], quick: bool = False) -> dict[int, dict[str, float]]:
    """Onnxruntime ms at each of TIMED_BATCHES of the teacher's, ikd's answer's and each variant's final
    architecture, timed together in this process (fresh weights: the peer's are not kept, and speed does not
    depend on them)."""
    root = lineage.root().spec()
    specs = {"teacher": root, "ikd": lineage.final().spec()}
    specs |= {run.key: spec_of(run.stages[-1].arch, root) for run in runs}
    first_of = {}  # each architecture timed once, however many methods reached it
    for name, spec in specs.items():
        first_of.setdefault(spec.summary(), name)
    # --quick: a smoke test of the timing, not a measurement (the plan's 3 x 200 calls per model take longer)
    plan = {"repeats": 20, "rounds": 2} if quick else {}
    measured = spec_latencies({name: specs[name] for name in first_of.values()}, batches=TIMED_BATCHES, **plan)
    ms = {(m.batch, n): m.median_ms for n, entries in measured.items() for m in entries if m.runtime == "onnxruntime"}
    return {
        batch: {name: ms[batch, first_of[spec.summary()]] for name, spec in specs.items()} for batch in TIMED_BATCHES
    }


def report(
    lineage: Lineage,
    runs: list[PeerRun],
    granularity: int,
    latency: dict[int, dict[str, float]],
    match: str = "params",
) -> tuple[str, dict[str, str]]:
    root, answer = lineage.root(), lineage.final()

    def schedule(stage: Stage) -> str:
        return f"{stage.target_params if match == 'params' else stage.target_macs:,}:{stage.epochs}"

    def timed(name: str) -> str:
        ms = (latency[batch] for batch in TIMED_BATCHES)
        return " | ".join(f"{by[name]:.3g} ({by['teacher'] / by[name]:.1f}x)" for by in ms)

    teacher_test, teacher_val = 100 * root.test_accuracy, 100 * root.val_accuracy
    ikd_test, ikd_val = 100 * answer.test_accuracy, 100 * answer.val_accuracy
    epochs = sum(s.epochs for s in runs[0].stages) if runs else 0
    lines = [
        f"Teacher: {root.arch_summary()}, {root.params:,} params, val {teacher_val:.2f}%, test {teacher_test:.2f}%.",
        f"Budget: {epochs} epochs along the chain's size schedule, each stage pruned to the chain student's {match} "
        f"({', '.join(schedule(s) for s in runs[0].stages) if runs else '-'}; {match}:epochs); "
        # the distribution's version: the module's __version__ string says 1.6.0 in 1.6.1
        f"Torch-Pruning {importlib.metadata.version('torch-pruning')}, pruning (global or local, per row) in steps "
        f"of 1/{granularity} of the channels. "
        "Left different: each ikd student learns from its parent, the peer from the root; ikd's epochs include "
        "any two-stage hint epochs, which the peer spends on its joint loss.",
        "",
        "## At the final size",
        "",
        f"Latency at batch 1 and time per batch of 64: onnxruntime on this CPU, the architectures timed together on "
        f"{LATENCY_THREADS} thread(s) by ikd.latency's protocol (the teacher: {latency[1]['teacher']:.2f} ms and "
        f"{latency[64]['teacher']:.1f} ms); in brackets, the speed-up over the teacher.",
        "",
        "| method | params | x | M MACs/image | batch-1 ms | batch-64 ms | val % | test % | test drop "
        "| vs ikd (test points) | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| ikd (`{answer.id}`) | {answer.params:,} | {answer.compression:.0f} | {answer.macs / 1e6:.3g} | "
        f"{timed('ikd')} | {ikd_val:.2f} | {ikd_test:.2f} | "
        f"{teacher_test - ikd_test:.2f} | | "
        f"{sum(n.seconds for n in lineage.chain(answer)[1:]) / 60:.1f} (the chain) |",
    ]
    for baseline in (n for n in lineage.nodes if n.kind is NodeKind.BASELINE):
        lines.append(
            f"| ikd {baseline.id} | {baseline.params:,} | {baseline.compression:.0f} | {baseline.macs / 1e6:.3g} | "
            f"{'as ikd | as ikd' if baseline.spec() == answer.spec() else '- | -'} | "
            f"{100 * baseline.val_accuracy:.2f} | {100 * baseline.test_accuracy:.2f} | "
            f"{teacher_test - 100 * baseline.test_accuracy:.2f} | {100 * baseline.test_accuracy - ikd_test:+.2f} | "
            f"{baseline.seconds / 60:.1f} |"
        )
    for run in runs:
        last = run.stages[-1]
        lines.append(
            f"| {run.name} | {last.params:,} | {root.params / last.params:.0f} | {last.macs / 1e6:.3g} | "
            f"{timed(run.key)} | {last.val:.2f} | {last.test:.2f} | "
            f"{teacher_test - last.test:.2f} | {last.test - ikd_test:+.2f} | "
            f"{sum(s.seconds for s in run.stages) / 60:.1f} |"
        )
    # Parameters at an equal drop: each curve's smallest stage whose *validation* drop is no larger
    # than the ikd answer's (validation decides; test is reported).
    lines += [
        "",
        "## Parameters at ikd's validation drop",
        "",
        f"The smallest point of each curve whose validation drop is at most ikd's "
        f"({teacher_val - ikd_val:.2f} points); ikd's answer has {answer.params:,} params.",
        "",
        "| method | params there | over ikd's answer | val % | test % |",
        "|---|---|---|---|---|",
    ]
    chain = lineage.chain(answer)[1:]
    ikd_points = [(n.params, 100 * n.val_accuracy, 100 * n.test_accuracy) for n in chain]
    curves = [("ikd chain", ikd_points)] + [(r.name, [(s.params, s.val, s.test) for s in r.stages]) for r in runs]
    for name, points in curves:
        held = [p for p in points if teacher_val - p[1] <= teacher_val - ikd_val + 1e-9]
        if held:
            params, val, test = min(held, key=lambda p: (p[0], -p[1]))  # a tie: the better by validation
            lines.append(f"| {name} | {params:,} | {params / answer.params:.2f}x | {val:.2f} | {test:.2f} |")
        else:
            lines.append(f"| {name} | none held it | - | - | - |")
    lines += ["", "## Curves (params, val %, test % after each stage)", ""]
    for name, points in curves:
        lines.append(f"- {name}: " + "; ".join(f"{p:,} / {v:.2f} / {t:.2f}" for p, v, t in points))
    best = max(runs, key=lambda r: r.stages[-1].val) if runs else None  # by validation
    values = {"ikd_test": f"{ikd_test:.2f}"}
    if best is not None:
        values |= {
            "best_peer": best.name.replace(" ", ""),
            "ikd_minus_best_peer": f"{ikd_test - best.stages[-1].test:.2f}",
        }
        lines += [
            "",
            f"Best Torch-Pruning variant by validation: {best.name}, test {best.stages[-1].test:.2f}%; "
            f"ikd minus it: {ikd_test - best.stages[-1].test:+.2f} test points at "
            f"{best.stages[-1].params / answer.params:.2f}x ikd's parameters.",
        ]
    if len(runs) > 1:
        spread = statistics.pstdev(r.stages[-1].test for r in runs)
        lines.append(f"Spread of the Torch-Pruning variants' test accuracy: {spread:.2f} points (population sd).")
    return "\n".join(lines), values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ikd-run", metavar="DIR", help="a finished `ikd compress` run directory to replay")
    parser.add_argument("--data-dir")
    parser.add_argument("--importances", nargs="+", default=list(IMPORTANCES), choices=list(IMPORTANCES))
    parser.add_argument("--losses", nargs="+", default=["ce", "kd"], choices=["ce", "kd"])
    parser.add_argument("--scopes", nargs="+", default=["global"], choices=["global", "local"])
    parser.add_argument(
        "--variants", nargs="+", metavar="IMPORTANCE+LOSS+SCOPE", help="these, in order, instead of the product"
    )
    parser.add_argument(
        "--granularity", type=int, help="pruning steps that would remove every channel (default 400; --quick: 100)"
    )
    parser.add_argument(
        "--match",
        choices=["params", "macs"],
        default="params",
        help="prune each stage to the chain student's parameters (memory) or its MACs per image (compute)",
    )
    parser.add_argument("--markdown", help="also write the record to this file")
    parser.add_argument("--results", help="JSON of finished variants: reused on a rerun of the same replay")
    parser.add_argument("--note", action="append", default=[], help="a line added to the record")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="l1 local + KD, then l1 global + CE, at smoke size, replaying --ikd-run or a digits run of its own",
    )
    parser.add_argument("--quiet", action="store_true", help="(no progress bars either way)")
    args = parser.parse_args()
    if not args.quick and not args.ikd_run:
        parser.error("--ikd-run is required (or --quick)")

    with tempfile.TemporaryDirectory(prefix="ikd-peer-") as scratch:
        run_dir = Path(args.ikd_run) if args.ikd_run else quick_run(Path(scratch))
        if args.quick:
            args.variants = ["l1+kd+local", "l1+ce+global"]  # CE after a live-teacher KD variant
        if args.granularity is None:
            args.granularity = 100 if args.quick else 400
        lineage = RunDir(run_dir).load()
        if lineage.final().status not in (Status.ACCEPTED, Status.FINAL):
            raise SystemExit(f"peer_torch_pruning.py: {run_dir}: no accepted student to compare with")
        config = CampaignConfig.model_validate(lineage.config)
        data = config.data.model_copy(update={"dir": args.data_dir}).load()
        teacher, _ = load_model(RunDir(run_dir).node_dir(lineage.root().id))
        # Finished variants are kept in --results as they end, so a long replay can stop and go on.
        results_file = Path(args.results) if args.results else None
        key = {"ikd_run": str(run_dir), "granularity": args.granularity}
        if args.match != "params":  # results stored before --match existed matched parameters
            key["match"] = args.match
        # what the replays depend on besides the path: a --redecide or --force there changes the plan
        key |= {
            "plan": [[s.target_params, s.target_macs, s.epochs] for s in stage_plan(lineage)],
            "teacher_sha256": lineage.root().sha256,
            "seed": config.seed,
            "torch_pruning": importlib.metadata.version("torch-pruning"),
        }
        stored = stored_results(results_file) if results_file else {}
        if stored.get("key") != key:
            if stored:
                print(
                    f"peer_torch_pruning.py: {results_file}: stored for another run or plan; replaying", file=sys.stderr
                )
            stored = {"key": key, "runs": {}}
        runs = []
        for variant in args.variants or [
            f"{i}+{loss}+{scope}" for i in args.importances for loss in args.losses for scope in args.scopes
        ]:
            importance, loss, scope = parse_variant(variant)
            run = PeerRun(importance, loss, scope)
            if run.key in stored["runs"]:
                run.stages = [Stage(**st) for st in stored["runs"][run.key]]
                for stage in run.stages:
                    stage.macs = stage_macs(stage, teacher)
            else:
                replay(args, config, lineage, teacher, data, run)
                if results_file:
                    stored["runs"][run.key] = [asdict(st) for st in run.stages]
                    atomic_write_json(results_file, stored)
            runs.append(run)
    body, values = report(lineage, runs, args.granularity, final_latencies(lineage, runs, args.quick), args.match)
    text = "\n".join(
        [
            f"Machine: {machine_line()}.",
            f"ikd run: `{run_dir if not args.quick else 'quick (digits, smoke-sized)'}`.",
            "",
            body,
            *(["", *[f"- {note}" for note in args.note]] if args.note else []),
        ]
    )
    publish(text, args.markdown, "Torch-Pruning beside ikd: same teacher, data, epochs and loss")
    print_result(values)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
