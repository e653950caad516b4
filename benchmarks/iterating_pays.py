"""Does iterating pay? The chain's final student against scratch and one-shot KD, per upgrade and seed.

One campaign (`ikd compress --baselines`) per variant x seed, all from one teacher: a variant is the
base config with some of issue 18's upgrades switched on (`slim`, `final`, `dkd`, `early`, `margin`, joined by
`+`; `none` is the base config as it is). `--baselines` trains the final student's architecture from
scratch and by one-shot KD from the root, for as many epochs as the final student's chain spent
(final distillation included), so every row compares three ways of training one architecture at an
equal epoch budget. The seed changes the students' initialisation and data order; the validation
split stays, and so does the teacher when `--teacher` names one (else each run trains its own, and
each row's drop is from its own teacher). Decisions use validation only; test accuracy is reported.

A variant x seed whose run directory already holds a campaign is resumed by `ikd compress` (a
finished one just reloads), so an interrupted benchmark picks up where it stopped; times are read
from the lineage (every node's own training seconds), not from this process's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from ikd import rules
from ikd.atomic import atomic_write_json
from ikd.checkpoint import WEIGHTS_FILE, load_model
from ikd.cli import format_lineage
from ikd.compare import PairedComparison, compare_predictions
from ikd.config import CampaignConfig, DataConfig
from ikd.data import DataSplits
from ikd.diff import config_differences
from ikd.errors import CheckpointError
from ikd.lineage import Lineage, NodeKind, RunDir, Status
from ikd.runtime import Precision
from ikd.train import predict

from common import QUICK_ARCH, machine_line, mean_spread, print_result, publish, repo_path
from early_rejection_replay import replay_table

# Each upgrade as the config keys it sets (merged over the base config). Values are MNIST-sized;
# pass --upgrade NAME=YAML to change one.
SLIM: dict = {
    "search": {"operators": ["depth", "slim"], "slim_fraction": [0.75, 0.5], "slim_min_channels": 2},
    "student": {"bn_sparsity": 1e-4},
}
UPGRADES: dict[str, dict] = {
    # Network Slimming's shrink: uneven widths by BN scale, trained with its L1 term on the scales
    "slim": SLIM,
    # slim ranking channels by their share of what their layer keeps: wide layers narrow first
    "share": {**SLIM, "search": {**SLIM["search"], "slim_by_share": True}},
    # the paper's reduce-block-size one block at a time, beside halving every layer and dropping a conv
    "block": {"search": {"operators": ["depth", "width", "block"]}},
    # block's operators and the last block dropped whole: 3-block students on 28x28 MNIST (shape_probe_mnist.md)
    "stage": {"search": {"operators": ["depth", "width", "block", "stage"]}},
    "final": {"student": {"final_epochs": 20}},
    "dkd": {"loss": {"kd": "dkd"}},
    "early": {"search": {"early_rejection": 2.0}},
    # one standard error of ~99.2% on MNIST's 6,000 validation images: no child kept at its floor's edge
    "margin": {"search": {"accept_margin": 0.1}},
    # a near miss (short by up to about one standard error of ~99% on 6,000 images, 0.13 points) is
    # trained again from its parent for twice the epochs
    "retry": {"search": {"retry_within": 0.15}},
    # gentler steps where halving fails: width and block also propose a 0.75 scale, tried (smallest
    # first) only after the smaller candidates of the generation
    "gentle": {"search": {"width_factor": [0.5, 0.75]}},
}


def merged(base: dict, overlay: dict) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def variant_config(base: dict, variant: str) -> dict:
    config = base
    for name in [] if variant == "none" else variant.split("+"):
        if name not in UPGRADES:
            raise SystemExit(
                f"iterating_pays.py: variant {variant!r}: unknown upgrade {name!r}; expected {sorted(UPGRADES)}"
            )
        config = merged(config, UPGRADES[name])
    return config


BASELINES = {"scratch": "baseline-scratch", "one-shot KD": "baseline-oneshot-kd"}


@dataclass
class Row:
    variant: str
    seed: int
    lineage: Lineage
    # (split, baseline name) -> the final student against that baseline on the same images
    paired: dict[tuple[str, str], PairedComparison]

    def node(self, node_id: str):
        return self.lineage.find(node_id)

    @property
    def teacher(self):
        return self.lineage.root()

    @property
    def answer(self):
        return self.lineage.final()

    def test(self, node_id: str | None = None) -> float:
        node = self.answer if node_id is None else self.node(node_id)
        return 100 * node.test_accuracy if node is not None and node.test_accuracy is not None else float("nan")

    def val(self, node_id: str | None = None) -> float:
        node = self.answer if node_id is None else self.node(node_id)
        return 100 * node.val_accuracy if node is not None and node.val_accuracy is not None else float("nan")

    def minutes(self, kinds: tuple[NodeKind, ...]) -> float:
        return sum(n.seconds for n in self.lineage.nodes if n.kind in kinds) / 60

    def rejected_minutes(self) -> float:
        return sum(n.seconds for n in self.lineage.nodes if n.status == Status.REJECTED) / 60

    def lineage_config(self) -> CampaignConfig:
        return CampaignConfig.model_validate(self.lineage.config)

    def stopped_early(self) -> int:
        return sum(
            1 for n in self.lineage.students() if n.status == Status.REJECTED and rules.STOPPED_EARLY in n.reason
        )


PAIRED_FILE = "paired-comparisons.json"  # beside lineage.json: kept when the weights are not (a GPU lease's results)


def saved_comparisons(path: Path, shas: list[str | None]) -> dict[tuple[str, str], PairedComparison] | None:
    """What an earlier run of this script compared for exactly these weights, or None (absent, for other
    weights, unreadable, or nodes without a checksum to tell their weights apart)."""
    if None in shas or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["nodes"] != shas:
            return None
        return {(c["split"], c["vs"]): PairedComparison(**c["comparison"]) for c in saved["comparisons"]}
    except (ValueError, KeyError, TypeError, AttributeError):  # a damaged file is only a cache: compute again
        return None


def paired_comparisons(
    run_dir: Path, lineage: Lineage, load_data: Callable[[], DataSplits]
) -> dict[tuple[str, str], PairedComparison]:
    """The final student against each baseline, image by image, on validation and test (fp32, CPU).

    Computed once from the weights and kept in the run directory; {} when neither is there."""
    run, fp32, cpu = RunDir(run_dir), Precision("fp32", "cpu", None), torch.device("cpu")
    nodes = (lineage.final().id, *BASELINES.values())
    if any(lineage.find(n) is None for n in nodes):
        return {}
    shas = [lineage.node(n).sha256 for n in nodes]
    cached = run_dir / PAIRED_FILE
    if (saved := saved_comparisons(cached, shas)) is not None:
        return saved
    if not all((run.node_dir(n) / WEIGHTS_FILE).is_file() for n in nodes):
        return {}
    predicted = {}
    for node_id in nodes:
        model, metadata = load_model(run.node_dir(node_id))
        stats = metadata["dataset"]
        for split in ("val", "test"):
            images = getattr(load_data(), split)
            predicted[node_id, split] = predict(
                model, images, mean=stats["mean"], std=stats["std"], device=cpu, precision=fp32
            )[0]
    final = lineage.final().id
    comparisons = {
        (split, name): compare_predictions(
            predicted[final, split], predicted[node_id, split], getattr(load_data(), split).labels
        )
        for split in ("val", "test")
        for name, node_id in BASELINES.items()
    }
    if None not in shas:
        saved_list = [{"split": s, "vs": name, "comparison": asdict(c)} for (s, name), c in comparisons.items()]
        atomic_write_json(cached, {"nodes": shas, "comparisons": saved_list})
    return comparisons


def paired_table(rows: list[Row]) -> str:
    lines = [
        "| variant | seed | split | vs | chain - baseline (points) | only the chain right | only the baseline right "
        "| McNemar p |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        for (split, name), c in r.paired.items():
            lines.append(
                f"| {r.variant} | {r.seed} | {split} | {name} | {c.difference:+.2f} | {c.only_a} | {c.only_b} "
                f"| {c.p_value:.3g} |"
            )
    return "\n".join(lines)


def other_settings(config: dict, seed: int, lineage: Lineage) -> list[str]:
    """How the campaign in `lineage` was configured otherwise than this variant and seed (the teacher's
    directory aside: the record names the lineage's own)."""
    documents = []
    for document in (merged(config, {"seed": seed}), lineage.config):
        # keys added to ikd since the run compare as their defaults; a lineage records its config without the
        # keys decision_fields leaves out, so one that no longer validates compares as it is
        with contextlib.suppress(ValidationError):
            document = CampaignConfig.model_validate(document).decision_fields()
        documents.append(merged(document, {"teacher": {"dir": None}}))
    return config_differences(*reversed(documents))


def reload(config: dict, run_dir: Path, seed: int) -> Lineage:
    """A finished campaign as it is on disk, run with this variant's config and seed: its record must
    describe it (the config is read from the lineage: the yaml beside it is written before each run)."""
    where = f"iterating_pays.py: --reload: {run_dir}"
    if not RunDir(run_dir).exists():
        raise SystemExit(f"{where}: no campaign there (no lineage.json)")
    try:
        lineage = RunDir(run_dir).load()
    except CheckpointError as exc:
        raise SystemExit(f"iterating_pays.py: --reload: {exc}") from None
    if differences := other_settings(config, seed, lineage):
        raise SystemExit(
            f"{where}: run with other settings than this variant and seed ({'; '.join(differences[:4])}); "
            "give the same --upgrade values"
        )
    baselines = [lineage.find(n) for n in BASELINES.values()]
    if not lineage.nodes:  # paused while its teacher trained
        raise SystemExit(f"{where}: the campaign has not finished (its teacher has not)")
    # an interrupted --redecide or --force leaves the old baselines until the campaign ends; a campaign
    # whose last candidates were lost with their Ray workers stopped without an answer
    if not lineage.answered() or any(b is None or not lineage.is_current_baseline(b) for b in baselines):
        raise SystemExit(
            f"{where}: the campaign has not finished (its search or its baselines for {lineage.final().id})"
        )
    return lineage


def run(args: argparse.Namespace, config: dict, config_path: Path, run_dir: Path, seed: int) -> Lineage:
    if args.reload:
        return reload(config, run_dir, seed)
    command = [sys.executable, "-m", "ikd", "compress", "--config", str(config_path), "--run-dir", str(run_dir)]
    command += ["--seed", str(seed), "--baselines", "--quiet"]
    command += ["--data-dir", args.data_dir] if args.data_dir else []
    command += ["--teacher", args.teacher] if args.teacher else []
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # progress (stderr) shows as it goes
    if done.returncode != 0:
        raise SystemExit(f"iterating_pays.py: `{' '.join(command)}` exited with {done.returncode}")
    return RunDir(run_dir).load()  # one stopped on lost workers exited 75, above


def retries_table(rows: list[Row]) -> str:
    """Every retry (search.retry_within) beside the near miss it retrained: how far each moved, what was decided."""
    lines = [
        "| variant | seed | near miss | params | epochs | val % | test % | retry epochs | retry val % | retry test % "
        "| val change | retry |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        for retry in (n for n in r.lineage.students() if n.operator == rules.RETRY):
            missed = r.node(rules.near_miss_id(retry.id))
            if missed is None:  # a --redecide with other operators forgot the near miss; its retry stays
                continue
            lines.append(
                f"| {r.variant} | {r.seed} | {missed.id} | {missed.params:,} | {missed.epochs} "
                f"| {r.val(missed.id):.2f} | {r.test(missed.id):.2f} | {retry.epochs} | {r.val(retry.id):.2f} "
                f"| {r.test(retry.id):.2f} "
                f"| {r.val(retry.id) - r.val(missed.id):+.2f} | {retry.status} |"
            )
    return "\n".join(lines)


def replay_early_rejection(rows: list[Row], slacks: list[float]) -> str:
    """ikd's early-rejection rule replayed on every candidate that trained all its epochs: where it
    would have stopped it, whether that changed the decision, and the training time it would have saved."""
    lineages = {f"{r.variant}-seed{r.seed}": r.lineage for r in rows}
    return replay_table(lineages, slacks, ["ikd"])[0]


@dataclass(frozen=True)
class Goals:
    """Issue 18's goals for one dataset: the least compression of the seeds, the means over seeds of the test
    accuracy differences (decisions by validation)."""

    compression: float  # at least this many times fewer parameters than the teacher
    vs_scratch: float  # chain test - scratch test, at least (points)
    vs_oneshot: float  # chain test - one-shot KD test, at least (points)
    drop: float | None  # test drop from the teacher, at most (points); None: no bound
    seeds: int = 3


GOALS = {
    "mnist": Goals(compression=2000, vs_scratch=0.0, vs_oneshot=0.0, drop=0.2),
    "cifar10": Goals(compression=10, vs_scratch=1.0, vs_oneshot=0.5, drop=None),
}


def goal_cells(goals: Goals, compression: float, vs_scratch: float, vs_oneshot: float, drop: float) -> list[str]:
    """One cell per goal: the value, then `met`, or `missed by` how much; judged on the value as shown
    (an exact tie, or a drop of exactly 0.20 computed as 0.2000000000000028, meets its goal)."""

    def verdict(value: float, bound: float, digits: int, at_most: bool = False) -> str:
        if value != value:  # NaN: a baseline or a test accuracy missing
            return "n/a"
        shown = round(value, digits) + 0.0  # + 0.0: no "-0.00"
        short = round(shown - bound if at_most else bound - shown, digits)
        return f"{shown:.{digits}f} ({'met' if short <= 0 else f'missed by {short:.{digits}f}'})"

    cells = [verdict(compression, goals.compression, 2), verdict(vs_scratch, goals.vs_scratch, 2)]
    cells.append(verdict(vs_oneshot, goals.vs_oneshot, 2))
    if goals.drop is not None:
        cells.append(verdict(drop, goals.drop, 2, at_most=True))
    return cells


def goals_table(rows: list[Row]) -> str:
    """Each variant's seeds against issue 18's goals for its dataset, where the issue states some: the least
    compression of the seeds (every student must reach it), the means of the accuracy differences."""
    lines = []
    for variant in dict.fromkeys(r.variant for r in rows):
        group = [r for r in rows if r.variant == variant]
        name = group[0].lineage.config["data"]["name"]
        if (goals := GOALS.get(name)) is None:
            lines.append(f"`{variant}`: no goals are stated for {name} (issue 18 sets them for {' and '.join(GOALS)}).")
            continue
        drop = [f"mean test drop (<= {goals.drop:.2f})"] if goals.drop is not None else []
        header = [f"least x (>= {goals.compression:g})", f"mean chain - scratch (>= {goals.vs_scratch:+.2f})"]
        header += [f"mean chain - one-shot (>= {goals.vs_oneshot:+.2f})", *drop]
        seeds = f"{len(group)}" + ("" if len(group) >= goals.seeds else f" (of {goals.seeds}: not a verdict yet)")
        cells = goal_cells(
            goals,
            min(r.answer.compression for r in group),
            statistics.mean(r.test() - r.test("baseline-scratch") for r in group),
            statistics.mean(r.test() - r.test("baseline-oneshot-kd") for r in group),
            statistics.mean(r.test(r.teacher.id) - r.test() for r in group),
        )
        lines += [
            f"Issue 18's goals for {name} ({goals.seeds} seeds, test accuracy, decisions by validation):",
            "",
            "| variant | seeds | " + " | ".join(header) + " |",
            "|" + "---|" * (2 + len(header)),
            f"| {variant} | {seeds} | " + " | ".join(cells) + " |",
            "",
        ]
    return "\n".join(lines).rstrip()


def tables(rows: list[Row]) -> str:
    lines = [
        "| variant | seed | final student | params | x | chain val | scratch val | one-shot KD val | chain test "
        "| scratch test | one-shot KD test "
        "| chain - scratch | chain - one-shot | test drop | epochs (chain + final) | search min | final min "
        "| baselines min | rejected min | stopped early |",
        "|" + "---|" * 20,
    ]
    for r in rows:
        answer = r.answer
        lines.append(
            f"| {r.variant} | {r.seed} | `{answer.id}` {answer.arch_summary()} | {answer.params:,} | "
            f"{answer.compression:.0f} | {r.val():.2f} | {r.val('baseline-scratch'):.2f} | "
            f"{r.val('baseline-oneshot-kd'):.2f} | {r.test():.2f} | {r.test('baseline-scratch'):.2f} | "
            f"{r.test('baseline-oneshot-kd'):.2f} | {r.test() - r.test('baseline-scratch'):+.2f} | "
            f"{r.test() - r.test('baseline-oneshot-kd'):+.2f} | {r.test(r.teacher.id) - r.test():.2f} | "
            f"{r.lineage.baseline_budget()} | {r.minutes((NodeKind.STUDENT,)):.1f} | "
            f"{r.minutes((NodeKind.FINAL,)):.1f} | {r.minutes((NodeKind.BASELINE,)):.1f} | "
            f"{r.rejected_minutes():.1f} | {r.stopped_early()} |"
        )
    lines += [
        "",
        "Mean ± standard deviation over seeds (points; the drop is from the teacher's test accuracy; "
        "validation is what the search decided by):",
        "",
        "| variant | seeds | x | chain test | scratch test | one-shot KD test | chain - scratch | chain - one-shot "
        "| chain - scratch (val) | chain - one-shot (val) | test drop | search + final min |",
        "|" + "---|" * 12,
    ]
    for variant in dict.fromkeys(r.variant for r in rows):
        group = [r for r in rows if r.variant == variant]

        def column(value, group=group, digits: int = 2) -> str:
            return mean_spread([value(r) for r in group], digits)

        lines.append(
            f"| {variant} | {len(group)} | {column(lambda r: r.answer.compression, digits=0)} | "
            f"{column(lambda r: r.test())} | {column(lambda r: r.test('baseline-scratch'))} | "
            f"{column(lambda r: r.test('baseline-oneshot-kd'))} | "
            f"{column(lambda r: r.test() - r.test('baseline-scratch'))} | "
            f"{column(lambda r: r.test() - r.test('baseline-oneshot-kd'))} | "
            f"{column(lambda r: r.val() - r.val('baseline-scratch'))} | "
            f"{column(lambda r: r.val() - r.val('baseline-oneshot-kd'))} | "
            f"{column(lambda r: r.test(r.teacher.id) - r.test())} | "
            f"{column(lambda r: r.minutes((NodeKind.STUDENT, NodeKind.FINAL)), digits=1)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mnist-vgg16.yaml", help="the base config (variant `none`)")
    parser.add_argument("--teacher", metavar="DIR", help="one teacher for every run (else each run trains its own)")
    parser.add_argument("--data-dir")
    parser.add_argument("--variants", nargs="+", default=["none", "slim+final+dkd+early"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--upgrade", action="append", default=[], metavar="NAME=YAML", help="replace an upgrade's keys")
    parser.add_argument(
        "--runs-dir",
        help="one campaign per variant x seed under it (default runs/iterating-pays; --quick: a temporary one)",
    )
    parser.add_argument("--markdown", help="also write the record to this file")
    parser.add_argument("--note", action="append", default=[], help="a line added to the record")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, a small VGG teacher (QUICK_ARCH), 1 epoch each, seed 0, temporary run directories",
    )
    parser.add_argument("--quiet", action="store_true", help="(ikd compress always runs with --quiet here)")
    parser.add_argument(
        "--reload",
        action="store_true",
        help="only read finished campaigns under --runs-dir (e.g. brought back from a GPU without their weights): "
        "nothing is trained; paired comparisons come from each run's saved ones, or are left out",
    )
    args = parser.parse_args()
    if args.reload and args.quick and not args.runs_dir:
        parser.error("--reload --quick reads the campaigns of an earlier --quick --runs-dir DIR: give that DIR")
    for item in args.upgrade:
        name, _, text = item.partition("=")
        UPGRADES[name] = yaml.safe_load(text)

    with tempfile.TemporaryDirectory(prefix="ikd-iterating-") as scratch:
        base = yaml.safe_load(repo_path(args.config).read_text())
        runs_dir = Path(args.runs_dir or (scratch if args.quick else "runs/iterating-pays"))
        if args.quick:
            base = yaml.safe_load(repo_path("configs/digits-demo.yaml").read_text())
            quick = {
                "teacher": {"arch": QUICK_ARCH, "epochs": 1},
                "student": {"epochs": 1},
                "search": {"max_generations": 1},
            }
            base = merged(base, quick)
            base["search"] |= {"max_drop": 100.0, "max_step_drop": 100.0}
            UPGRADES["final"] = {"student": {"final_epochs": 1}}
            args.seeds, args.config = [0], "configs/digits-demo.yaml"
        rows: list[Row] = []
        datasets: dict[str, Callable[[], DataSplits]] = {}  # one load per data section
        for variant in args.variants:
            config = variant_config(base, variant)
            for seed in args.seeds:
                run_dir = runs_dir / f"{variant}-seed{seed}"
                config_path = runs_dir / f"{variant}-seed{seed}.yaml"
                if not args.reload:  # --reload only reads
                    run_dir.parent.mkdir(parents=True, exist_ok=True)
                    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
                lineage = run(args, config, config_path, run_dir, seed)
                section = DataConfig.model_validate(lineage.config["data"])
                section = section.model_copy(update={"dir": args.data_dir}) if args.data_dir else section
                key = section.model_dump_json()
                if key not in datasets:
                    datasets[key] = functools.cache(section.load)  # loaded only if a comparison needs it
                rows.append(Row(variant, seed, lineage, paired_comparisons(run_dir, lineage, datasets[key])))

    teacher = rows[0].teacher
    teacher_dirs = sorted(
        {str(r.lineage.config["teacher"].get("dir")) for r in rows if r.lineage.config["teacher"].get("dir")}
    )
    trained_on = sorted({s.machine for r in rows for s in r.lineage.sessions})
    text = "\n".join(
        [
            f"Trained on: {'; '.join(trained_on)} (each campaign's sessions, from its lineage). "
            f"Tabulated on: {machine_line()}.",
            f"Base config: `{args.config}`" + (" (quick: smoke-sized)" if args.quick else "") + "; upgrades:",
            "",
            *[
                f"- `{name}`: `{yaml.safe_dump(keys, default_flow_style=True).strip()}`"
                for name, keys in UPGRADES.items()
            ],
            "",
            f"Teacher: {', '.join(teacher_dirs) or 'trained by each run'}, {teacher.arch_summary()}, "
            f"{teacher.params:,} params, val {100 * teacher.val_accuracy:.2f}%, "
            f"test {100 * (teacher.test_accuracy or 0):.2f}%.",
            "",
            tables(rows),
            "",
            goals_table(rows),
            "",
            "Paired comparisons: the final student and each baseline on the same images (exact McNemar test "
            "on the images only one of them gets right; evaluated again in fp32, so a count may differ by an "
            "image or two from the accuracies above, measured under the run's precision). A p-value above "
            "0.05 says the difference could be chance on this split:",
            "",
            paired_table([r for r in rows if r.paired]) if any(r.paired for r in rows) else "",
            *(
                [f"Not compared (no saved comparison, and the weights are not here): {', '.join(missing)}."]
                if (missing := [f"{r.variant} seed {r.seed}" for r in rows if not r.paired])
                else []
            ),
            "",
            *(
                [
                    "Retries (search.retry_within): each near miss and its retry, trained again from the same "
                    "parent; the decision is the retry's, by validation:",
                    "",
                    retries_table(rows),
                    "",
                ]
                if any(n.operator == rules.RETRY for r in rows for n in r.lineage.students())
                else []
            ),
            "Early rejection (rules.hopeless) replayed at several slacks on the candidates that trained all "
            "their epochs:",
            "",
            replay_early_rejection(rows, [1.0, 2.0, 3.0]),
            "",
            "Lineages (`ikd lineage RUN_DIR`):",
            *[f"\n{r.variant}, seed {r.seed}:\n\n```\n{format_lineage(r.lineage).rstrip()}\n```" for r in rows],
            *(["", *[f"- {note}" for note in args.note]] if args.note else []),
        ]
    )
    publish(text, args.markdown, "Does iterating pay? Chain vs scratch vs one-shot KD, per upgrade and seed")
    last = [r for r in rows if r.variant == args.variants[-1]]
    print_result(
        {
            "variant": args.variants[-1],
            "compression": f"{statistics.mean(r.answer.compression for r in last):.1f}",
            "chain_minus_scratch": f"{statistics.mean(r.test() - r.test('baseline-scratch') for r in last):.3f}",
            "chain_minus_oneshot": f"{statistics.mean(r.test() - r.test('baseline-oneshot-kd') for r in last):.3f}",
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
