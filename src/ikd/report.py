"""`ikd report`: what a campaign did, as markdown and a self-contained HTML page with three figures.

Everything comes from the run directory: `lineage.json` for the nodes and decisions, each node's
`model.json` for its per-epoch history. Figures are drawn with matplotlib's object API on the Agg
canvas (no display, no pyplot global state, no system binaries), saved as PNG next to the report
and embedded in the HTML as data URIs so the page travels as one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import ValidationError

from ikd import rules
from ikd.arch import PRESETS, millions, preset_for
from ikd.atomic import atomic_write_bytes
from ikd.checkpoint import META_FILE
from ikd.config import CampaignConfig
from ikd.errors import CheckpointError, ConfigError
from ikd.lineage import NO_NODE_YET, REPORT_DIR, Latency, Lineage, NodeKind, NodeRecord, Status, open_run_dir

FIGURES = ("pareto.png", "lineage.png", "training.png")
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "digits": "digits"}
# Status -> (colour, marker) shared by every figure, so a node looks the same everywhere.
STYLE: dict[str, tuple[str, str]] = {
    Status.TEACHER: ("#222222", "*"),
    Status.ACCEPTED: ("#2a9d4b", "o"),
    Status.FINAL: ("#145a32", "P"),
    Status.REJECTED: ("#d1495b", "X"),
    Status.CANDIDATE: ("#999999", "o"),
    Status.FAILED: ("#7f3c8d", "v"),
    Status.BASELINE: ("#2e6fbf", "D"),
    Status.EXPERT: ("#e09f3e", "s"),
}
LATENCY_BATCHES = (1, 64)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _points(a: float | None, b: float | None) -> str:
    """a - b in percentage points, signed."""
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f}"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def arch_name(node: NodeRecord) -> str:
    """A preset's name ("VGG-16") when the node is one, else the spec's one-line summary."""
    if node.kind is NodeKind.EXTERNAL:
        return str(node.arch["external"])
    spec = node.spec()
    for name in PRESETS:
        if preset_for(name, spec) == spec:
            return name.upper().replace("VGG", "VGG-")
    return spec.summary()


def accuracy_of(node: NodeRecord, split: Literal["val", "test"]) -> float:
    """A teacher's or an accepted student's accuracy on `split`: measured whenever one is recorded."""
    value = node.val_accuracy if split == "val" else node.test_accuracy
    if value is None:
        raise CheckpointError(
            f"node {node.id} has no {split}_accuracy; expected a lineage.json written by `ikd compress`"
        )
    return value


def latency_of(node: NodeRecord, runtime: str, batch: int) -> Latency | None:
    return next((m for m in node.timings() if m.runtime == runtime and m.batch == batch), None)


def speedup(node: NodeRecord, root: NodeRecord, runtime: str, batch: int) -> float | None:
    """How many times faster `node` runs than `root` in `runtime` at `batch`: against the root's time
    measured beside it when recorded (`teacher_ms`), else the root's own record; None unless both were
    timed there alike (same CPU and thread count): a node exported on two threads is not set against
    a root re-timed on one, or on another CPU."""
    mine, theirs = latency_of(node, runtime, batch), latency_of(root, runtime, batch)
    if mine is not None and mine.teacher_ms is not None and node.id != root.id:
        return mine.teacher_ms / mine.median_ms
    if mine is None or theirs is None or (mine.device, mine.threads) != (theirs.device, theirs.threads):
        return None
    return theirs.median_ms / mine.median_ms


@dataclass
class Report:
    lineage: Lineage
    dataset: str
    histories: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def root(self) -> NodeRecord:
        return self.lineage.root()

    @property
    def final(self) -> NodeRecord:
        return self.lineage.final()

    def headline(self) -> str:
        """The sentence the paper's abstract left blank, filled from this run."""
        root, final = self.root, self.final
        teacher = arch_name(root)
        # a run still going, interrupted, or waiting for candidates lost with their workers: no result yet
        unfinished = (
            "" if self.lineage.answered() else f"Not finished ({self.lineage.stop_reason or 'not stopped'}); so far: "
        )
        if final is root:
            tried = max((n.generation for n in self.lineage.students()), default=0)
            ending = "; the teacher stands." if not unfinished else "."
            return (
                f"{unfinished}ikd found no student of {teacher} on {self.dataset} within tolerance "
                f"({tried} generation{'s' * (tried != 1)} tried){ending}"
            )
        reduction = 100 * (1 - final.size_bytes_fp32 / root.size_bytes_fp32)
        root_test, final_test = accuracy_of(root, "test"), accuracy_of(final, "test")
        drop = 100 * (root_test - final_test)
        points = f"{abs(drop):.2f}-point {'drop' if drop >= 0 else 'gain'}"
        article = "an" if re.match(r"8|1[18]\.", points) else "a"  # an 8.64-point, an 11.00-point, a 1.50-point
        change = f"{article} {points}"
        val_drop = 100 * (accuracy_of(root, "val") - accuracy_of(final, "val"))
        validation = f"{abs(val_drop):.2f} points {'down' if val_drop >= 0 else 'up'}"
        if final.status == Status.FINAL:  # trained again after the search: validation chose its architecture
            answer = self.lineage.find(final.parent or "")
            chosen = f"; validation chose {answer.id}" if answer is not None else ""
            validation = f"on validation {validation}{chosen}, which this final distillation retrained"
        else:
            validation = f"on validation, the split that chose it, {validation}"
        return (
            f"{unfinished}ikd compressed {teacher} on {self.dataset} by {reduction:.2f}% in memory footprint "
            f"({final.compression:.1f}x fewer parameters, {_bytes(root.size_bytes_fp32)} -> "
            f"{_bytes(final.size_bytes_fp32)} of fp32 weights) with {change} in test accuracy "
            f"({100 * root_test:.2f}% -> {100 * final_test:.2f}%; {validation}) in {final.generation} "
            f"generation{'s' * (final.generation != 1)}."
        )

    def latency_note(self) -> str:
        """How the latency columns were measured: where, on how many threads (ratios depend on both)."""
        where = sorted({(m.device, m.threads) for n in self.lineage.nodes for m in n.timings()})
        if not where:
            return "No latency yet: `ikd export RUN_DIR --node ID --format onnx` measures it."
        machines = "; ".join(f"{device}, {threads} thread{'s' * (threads != 1)}" for device, threads in where)
        return (
            "Latency (`ikd export`, or the search's timing under `search.target_speedup`): ms per call on a "
            f"whole batch, the least of several rounds' medians after warm-up, on {machines}; each speed-up "
            "against the teacher timed beside the node where recorded "
            "(exports before that: the teacher's own latest timing). Other CPUs and thread counts give other ratios."
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        """One row per node: the numbers a user compares, formatted; raw values are in lineage.json."""
        root, final = self.root, self.final
        header = [
            "node",
            "gen",
            "arch",
            "params",
            "size (MB)",
            "reduction %",
            "M MACs",
            "val %",
            "test %",
            "drop val (pts)",
            "drop test (pts)",
            "status",
            "teachers",
            "why (the search's reason)",
        ]
        runtimes = [r for r in ("onnxruntime", "torch") if any(latency_of(n, r, 1) for n in self.lineage.nodes)]
        for runtime in runtimes:
            header += [f"{runtime} b{b} ms (speed-up)" for b in LATENCY_BATCHES]
        rows = []
        for node, depth in self.lineage.tree_order():
            status = node.status + (
                " (final)" if node is final and node is not root and node.status != Status.FINAL else ""
            )
            row = [
                "\u00a0\u00a0" * depth + node.id,
                str(node.generation),
                node.arch_summary(),
                f"{node.params:,}",
                f"{node.size_bytes_fp32 / 1e6:.3f}",
                f"{100 * (1 - node.size_bytes_fp32 / root.size_bytes_fp32):.2f}",
                millions(node.macs),
                _pct(node.val_accuracy),
                _pct(node.test_accuracy),
                _points(root.val_accuracy, node.val_accuracy),
                _points(root.test_accuracy, node.test_accuracy),
                status,
                "+".join(node.teachers) or "-",
                node.reason or "-",
            ]
            for runtime in runtimes:
                for batch in LATENCY_BATCHES:
                    mine, ratio = latency_of(node, runtime, batch), speedup(node, root, runtime, batch)
                    cell = "-" if mine is None else f"{mine.median_ms:.3g}"
                    row.append(cell if ratio is None else f"{cell} ({ratio:.1f}x)")
            rows.append(row)
        return header, rows

    def facts(self) -> list[str]:
        """Short lines under the headline: what was searched, why it stopped, the baselines."""
        config = self.lineage.config
        search = config.get("search", {})
        lines = [
            f"Strategy `{search.get('strategy', 'parent-child')}`{_variant_settings(config)}, operators "
            f"{', '.join(search.get('operators', []))}; accept within {search.get('max_drop')} points of the "
            f"teacher and {search.get('max_step_drop')} of the parent (validation)"
            + (f", preferring children {margin} points above that" if (margin := search.get("accept_margin")) else "")
            + ("; smallest by MACs per image (search.objective)" if search.get("objective") == "macs" else "")
            + ".",
            f"Stopped: {self.lineage.stop_reason or 'not finished (run interrupted or still running)'}.",
        ]
        lines.append(self.cost())
        baselines = [n for n in self.lineage.nodes if n.kind is NodeKind.BASELINE]
        if baselines and self.final is not self.root:
            compared = "; ".join(
                f"{n.id} failed ({n.reason})" if n.status == Status.FAILED else f"{n.id} {_pct(n.test_accuracy)}%"
                for n in baselines
            )
            final = self.lineage.distilled() is not None
            spent = "final student's chain, final distillation included" if final else "chain's"
            lines.append(
                f"Baselines (same architecture as the final student, {self.lineage.baseline_budget()} epochs "
                f"each: the {spent}): {compared}; "
                f"the chain's student: {_pct(self.final.test_accuracy)}% (test)."
            )
        if line := self.final_distillation():
            lines.append(line)
        if line := self.dead_parameters():
            lines.append(line)
        lines.append("Test accuracy is reported only; every decision used the validation split.")
        lines += [f"Run {s.started}: `{s.command}` on {s.machine}." for s in self.lineage.sessions]
        return lines

    def cost(self) -> str:
        """Epochs and recorded minutes, apart for each kind of training: the search's cost is not its
        teacher's, its final distillation's or its baselines'."""
        by_kind: dict[NodeKind, list[NodeRecord]] = {}
        for node in self.lineage.nodes:
            by_kind.setdefault(node.kind, []).append(node)

        def minutes(*kinds: NodeKind) -> float:
            return sum(n.seconds for kind in kinds for n in by_kind.get(kind, [])) / 60

        students = by_kind.get(NodeKind.STUDENT, [])
        epochs = sum(n.epochs for n in students)
        parts = [f"{len(students)} candidates trained, {epochs} epochs, {minutes(NodeKind.STUDENT):.1f} min"]
        if final := by_kind.get(NodeKind.FINAL):
            parts.append(f"final distillation {final[0].epochs} epochs, {minutes(NodeKind.FINAL):.1f} min")
        teachers = minutes(NodeKind.TEACHER, NodeKind.EXTERNAL, NodeKind.EXPERT)
        trained_here = self.root.epochs > 0
        parts.append(f"teacher {teachers:.1f} min ({'trained here' if trained_here else 'imported: scored only'})")
        if baselines := by_kind.get(NodeKind.BASELINE):
            parts.append(f"{len(baselines)} baselines {minutes(NodeKind.BASELINE):.1f} min")
        return "Training recorded: " + "; ".join(parts) + "."

    def dead_parameters(self) -> str | None:
        """The teacher's parameters that never meet a pixel, and the ratio in live ones; None when
        there are none, or for a user's module (no spec to count them in)."""
        if NodeKind.EXTERNAL in (self.root.kind, self.final.kind):
            return None
        root, final = self.root.spec(), self.final.spec()
        if (dead := root.num_params() - root.live_params()) <= 0:
            return None
        return (
            f"{dead:,} of the teacher's {root.num_params():,} parameters ({100 * dead / root.num_params():.1f}%) "
            "never meet a pixel at this input size (3x3 kernels on 1x1 maps use only their centre tap); "
            f"counting live parameters only, the teacher has {root.live_params():,} and the final student "
            f"{final.live_params():,}: {root.live_params() / final.live_params():.1f}x fewer, where all "
            f"parameters give {root.num_params() / final.num_params():.1f}x."
        )

    def final_distillation(self) -> str | None:
        """What the final distillation did to the search's answer, by both splits, and whether it
        became the answer (validation decides); None without one, or when its answer is not in the lineage."""
        distilled = self.lineage.distilled()
        answer = self.lineage.find(distilled.parent or "") if distilled is not None else None
        failed = [n for n in self.lineage.nodes if n.kind is NodeKind.FINAL and n.status == Status.FAILED]
        if distilled is None and failed:
            last = failed[-1]
            if last.parent != self.lineage.search_result().id:  # left from an earlier answer
                return None
            return f"Final distillation of {last.parent} failed ({last.reason}): {self.final.id} stays the answer."
        if distilled is None or answer is None:
            return None
        line = (
            f"Final distillation: {answer.id} trained again for {distilled.epochs} epochs by "
            f"{'+'.join(distilled.teachers)}; validation {_pct(answer.val_accuracy)}% -> "
            f"{_pct(distilled.val_accuracy)}%, test {_pct(answer.test_accuracy)}% -> {_pct(distilled.test_accuracy)}%."
        )
        if (why := rules.final_not_kept(self.lineage)) is not None:
            line += (
                f" Not kept ({why}): {self.final.id} stays the answer; the final student's weights are in "
                f"nodes/{distilled.id}."
            )
        elif (why := rules.final_never_judged(self.lineage)) is not None:
            line += (
                f" By validation it fails the test {answer.id} passed ({why}); the ikd that made this run kept "
                f"it as the answer (rerun `ikd compress` on the run to decide); {answer.id}'s weights are in "
                f"nodes/{answer.id}."
            )
        return line


def load_report(run_dir: Path) -> Report:
    run = open_run_dir(run_dir)
    lineage = run.load()
    if not lineage.nodes:
        raise ConfigError(f"{run.lineage_path}: has {NO_NODE_YET}; nothing to report")
    if not any(n.status == Status.TEACHER for n in lineage.nodes):
        raise ConfigError(f"{run.lineage_path}: has no teacher node yet; nothing to report")
    name = lineage.config.get("data", {}).get("name", "?")
    histories = {}
    for node in lineage.nodes:
        meta = run.node_dir(node.id) / META_FILE
        try:
            histories[node.id] = _usable_history(json.loads(meta.read_text()).get("history")) if meta.is_file() else []
        except (OSError, ValueError, AttributeError):
            histories[node.id] = []  # the figure leaves the node out; the table still has it
    return Report(lineage=lineage, dataset=DATASET_NAMES.get(name, name), histories=histories)


def _usable_history(history: Any) -> list[dict[str, Any]]:
    """The epochs of a model.json history the training figure can draw: a root's model.json is copied
    from the user's teacher.dir, so its entries are checked, not trusted (numbers only)."""
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    epochs = []
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict):
            continue
        train, val = entry.get("train"), entry.get("val_accuracy")
        terms = {k: v for k, v in train.items() if number(v)} if isinstance(train, dict) else {}
        epochs.append({"train": terms, "val_accuracy": val if number(val) else None})
    return epochs


# --- figures ---------------------------------------------------------------------------------


def _legend_handles(statuses) -> list[Line2D]:
    return [
        Line2D([], [], color=STYLE[s][0], marker=STYLE[s][1], linestyle="", markersize=8, label=s)
        for s in STYLE
        if s in statuses
    ]


def _save(fig: Figure, path: Path) -> None:
    """The figure as a PNG, written all or nothing (report.html embeds it: a half-written one breaks it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def plot_pareto(report: Report, path: Path) -> None:
    """Test accuracy against parameters (log scale); the accepted chain to the final student joined."""
    accuracy_of(report.root, "test")  # the reference every point is read against: a clear error without it
    # test accuracy (%) of the nodes that have one
    percent = {n.id: 100 * n.test_accuracy for n in report.lineage.nodes if n.test_accuracy is not None}
    nodes = [n for n in report.lineage.nodes if n.id in percent]
    fig = Figure(figsize=(8, 5.5), dpi=110)
    ax = fig.add_subplot()
    # Candidates that collapsed would squash the interesting band: clip them to the bottom edge.
    kept = [percent[n.id] for n in nodes if n.status != "rejected"] or list(percent.values())
    spread = max(kept) - min(kept)
    floor = min(kept) - max(1.0, 0.5 * spread)
    for node in nodes:
        colour, marker = STYLE[node.status]
        accuracy = percent[node.id]
        clipped = accuracy < floor
        ax.scatter(
            node.params,
            floor if clipped else accuracy,
            color=colour,
            marker="v" if clipped else marker,
            s=120 if node.status == "teacher" else 55,
            zorder=3,
            edgecolors="white",
            linewidths=0.6,
        )
        if clipped:
            ax.annotate(
                f"{accuracy:.1f}%",
                (node.params, floor),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
                color=colour,
            )
    chain = [n for n in report.lineage.chain(report.final) if n.id in percent]
    ax.plot(
        [n.params for n in chain],
        [percent[n.id] for n in chain],
        color=STYLE["accepted"][0],
        linewidth=1.2,
        alpha=0.7,
        zorder=2,
    )
    for node in {report.root.id: report.root, report.final.id: report.final}.values():
        if node.id in percent:
            ax.annotate(
                f"{node.id}\n{node.params:,} params, {percent[node.id]:.2f}%",
                (node.params, percent[node.id]),
                textcoords="offset points",
                xytext=(8, 8),
                fontsize=8,
            )
    root_percent = 100 * accuracy_of(report.root, "test")
    ax.axhline(root_percent, color="#222222", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(floor - 0.3, max(max(kept), root_percent) + max(0.5, 0.15 * spread))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{arch_name(report.root)} on {report.dataset}: accuracy against size")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(handles=_legend_handles({n.status for n in nodes}), loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_lineage(report: Report, path: Path) -> None:
    """The lineage as a tree, generation by row: parent links solid, other teachers dashed."""
    ordered = report.lineage.tree_order()
    aside_kinds = (NodeKind.BASELINE, NodeKind.EXPERT)
    in_tree = [(n, d) for n, d in ordered if n.kind not in aside_kinds]
    aside = [n for n, _ in ordered if n.kind in aside_kinds]
    children: dict[str, list[NodeRecord]] = {}
    for node, _ in in_tree:
        if node.parent is not None:
            children.setdefault(node.parent, []).append(node)
    # Leaves take consecutive columns in depth-first order; a parent sits above its children's middle.
    x: dict[str, float] = {}
    next_column = [0.0]

    def place(node: NodeRecord) -> float:
        kids = sorted(children.get(node.id, []), key=lambda n: (n.params, n.id))
        if kids:
            x[node.id] = sum(place(k) for k in kids) / len(kids)
        else:
            x[node.id] = next_column[0]
            next_column[0] += 1
        return x[node.id]

    for node, depth in in_tree:
        if depth == 0 and node.id not in x:
            place(node)
    y: dict[str, float] = {n.id: -n.generation for n, _ in in_tree}
    depth_max = max((n.generation for n, _ in in_tree), default=0)
    for i, node in enumerate(aside):  # a row of their own, below the tree
        x[node.id], y[node.id] = float(i), -(depth_max + 1.5)
    columns = max(next_column[0], len(aside), 1)
    rows = depth_max + (2.5 if aside else 1)
    fig = Figure(figsize=(max(6.0, 1.7 * columns + 1), max(3.0, 1.05 * rows + 1)), dpi=100)
    ax = fig.add_subplot()
    for node, _ in in_tree + [(n, 0) for n in aside]:
        for teacher in node.teachers:
            if teacher in x and teacher != node.parent:
                ax.annotate(
                    "",
                    (x[node.id], y[node.id]),
                    (x[teacher], y[teacher]),
                    arrowprops=dict(
                        arrowstyle="-", color="#bbbbbb", linestyle="--", linewidth=0.7, connectionstyle="arc3,rad=0.25"
                    ),
                    zorder=1,
                )
        if node.parent in x:
            ax.plot(
                [x[node.parent], x[node.id]], [y[node.parent], y[node.id]], color="#555555", linewidth=1.0, zorder=1
            )
    final = report.final
    for node in [n for n, _ in in_tree] + aside:
        colour = STYLE[node.status][0]
        label = f"{node.id}\n{node.params:,}\nval {_pct(node.val_accuracy)}%"
        ax.text(
            x[node.id],
            y[node.id],
            label,
            ha="center",
            va="center",
            fontsize=7.5,
            zorder=3,
            bbox=dict(
                boxstyle="round,pad=0.35", facecolor="white", edgecolor=colour, linewidth=2.6 if node is final else 1.4
            ),
        )
    ax.set_xlim(-0.7, columns - 0.3)
    ax.set_ylim(min(y.values()) - 0.6, 0.6)
    ax.set_yticks([-g for g in range(depth_max + 1)], [f"gen {g}" for g in range(depth_max + 1)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    handles = [
        Line2D([], [], color=STYLE[s][0], linewidth=3, label=s)
        for s in STYLE
        if any(n.status == s for n in report.lineage.nodes)
    ]
    handles.append(Line2D([], [], color="#bbbbbb", linestyle="--", label="also taught by"))
    ax.legend(handles=handles, loc="upper right", fontsize=7.5, framealpha=0.9)
    ax.set_title(f"Lineage ({len(report.lineage.nodes)} nodes; thick border: the final student)")
    fig.tight_layout()
    _save(fig, path)


def plot_training(report: Report, path: Path) -> bool:
    """Every trained node's loss terms and validation accuracy per epoch, nodes side by side in
    training order, so a whole campaign reads left to right. False (nothing drawn) when no node
    has a history."""
    nodes = [n for n in report.lineage.nodes if report.histories.get(n.id)]
    if not nodes:  # a lineage brought back without its model directories has no histories
        return False
    fig = Figure(figsize=(max(8.0, min(24.0, 0.35 * sum(len(report.histories[n.id]) for n in nodes) + 4)), 7), dpi=100)
    loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
    terms = sorted(
        {k for n in nodes for e in report.histories[n.id] for k in e.get("train", {})} - {"accuracy"},
        key=lambda t: (t != "loss", t),
    )
    # terms past the palette are drawn grey (the .get below)
    palette = ["#222222", "#2e6fbf", "#d1495b", "#2a9d4b", "#e09f3e", "#7f3c8d", "#999999"]
    term_colours = dict(zip(terms, palette, strict=False))
    offset, centres = 0, []
    for node in nodes:
        history = report.histories[node.id]
        steps = [offset + i + 1 for i in range(len(history))]
        for term in terms:
            values = [e.get("train", {}).get(term) for e in history]
            points = [
                (s, v) for s, v in zip(steps, values, strict=True) if v is not None and math.isfinite(v) and v > 0
            ]
            if points:
                loss_ax.plot(
                    *zip(*points, strict=True), color=term_colours.get(term, "#999999"), marker=".", linewidth=1.1
                )
        acc = [100 * e["val_accuracy"] for e in history if e.get("val_accuracy") is not None]
        acc_ax.plot(steps[: len(acc)], acc, color=STYLE[node.status][0], marker="o", markersize=3, linewidth=1.3)
        centres.append((offset + (len(history) + 1) / 2, node.id))
        offset += len(history)
        for ax in (loss_ax, acc_ax):
            ax.axvline(offset + 0.5, color="#dddddd", linewidth=0.8)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("train loss terms (log)")
    loss_ax.legend(
        handles=[Line2D([], [], color=term_colours[t], label=t) for t in terms], fontsize=8, ncol=max(1, len(terms))
    )
    acc_ax.set_ylabel("validation accuracy (%)")
    accs = [100 * e["val_accuracy"] for n in nodes for e in report.histories[n.id] if e.get("val_accuracy") is not None]
    if accs:  # early epochs of a fresh child can sit near chance; keep the band that matters readable
        top = max(accs)
        acc_ax.set_ylim(max(min(accs), top - 15) - 0.5, top + 0.5)
    acc_ax.set_xticks([c for c, _ in centres], [label for _, label in centres], rotation=60, ha="right", fontsize=7)
    acc_ax.legend(handles=_legend_handles({n.status for n in nodes}), fontsize=8, loc="lower left")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, axis="y", alpha=0.25)
    loss_ax.set_title("Training, node by node, epoch by epoch (accuracy axis: the top 15 points)")
    fig.tight_layout()
    _save(fig, path)
    return True


# --- documents -------------------------------------------------------------------------------


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CAPTIONS = {
    "pareto.png": "Test accuracy against parameters. "
    "The line joins the accepted chain from the teacher to the final student.",
    "lineage.png": "Who came from whom: each box is a node (parameters, validation accuracy), coloured by status.",
    "training.png": "Loss terms and validation accuracy of every trained node, epoch by epoch, in training order.",
}


def write_report(run_dir: Path, out: Path | None = None, report: Report | None = None) -> Path:
    """Write report.md, report.html and the figures (of `report`, default the run's as it is now);
    returns the report directory."""
    report = report or load_report(Path(run_dir))
    out = Path(out) if out is not None else Path(run_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    plot_pareto(report, out / "pareto.png")
    plot_lineage(report, out / "lineage.png")
    figures = list(FIGURES[:2])
    if plot_training(report, out / "training.png"):
        figures.append(FIGURES[2])
    else:  # not drawable (no node files): drop one left by an earlier report, it would describe other nodes
        (out / "training.png").unlink(missing_ok=True)
    header, rows = report.table()
    title = f"ikd report: {arch_name(report.root)} on {report.dataset}"
    latency_note = report.latency_note()
    markdown = [f"# {title}", "", f"**{report.headline()}**", ""]
    markdown += [f"- {line}" for line in report.facts()]
    markdown += ["", "## Nodes", "", _markdown_table(header, rows), "", latency_note, ""]
    for name in figures:
        markdown += [f"![{name}]({name})", "", f"*{CAPTIONS[name]}*", ""]
    atomic_write_bytes(out / "report.md", "\n".join(markdown).encode())

    images = "".join(
        f"<figure><img alt='{name}' src='data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}'>"
        f"<figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>"
        for name in figures
    )
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in report.facts())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }}
th {{ background: #f3f3f3; }} \
td:first-child, td:nth-child(3), td:nth-child(12), td:nth-child(13) {{ text-align: left; }}
.headline {{ font-size: 1.15em; font-weight: 600; }} img {{ max-width: 100%; }} figure {{ margin: 2em 0; }}
figcaption {{ color: #555; font-size: 0.9em; }} .scroll {{ overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="headline">{html.escape(report.headline())}</p>
<ul>{facts}</ul>
<h2>Nodes</h2><div class="scroll">{_html_table(header, rows)}</div>
<p>{html.escape(latency_note)}</p>
{images}
</body></html>
"""
    atomic_write_bytes(out / "report.html", page.encode())
    return out


def _variant_settings(recorded: dict) -> str:
    """What shapes the variant beyond its name (a tree's beam, seed siblings, the teachers' ensemble),
    from the lineage's config; empty for parent-child, or for a config this ikd cannot read."""
    try:
        config = CampaignConfig.model_validate(recorded)
    except ValidationError:
        return ""
    search, ensemble = config.search, config.ensemble
    parts = []
    if search.many_children():
        parts.append(f"select {search.select}" + (f", beam {search.beam}" if search.select == "tree" else ""))
        if search.seeds > 1:
            parts.append(f"{search.seeds} seeds per architecture")
    if search.many_teachers():
        experts = f" + {len(ensemble.experts)} expert(s)" if ensemble.experts else ""
        hints = f", hints from {ensemble.hints}" if config.loss.gamma > 0 else ""
        drop = f", teacher drop {ensemble.drop}" if ensemble.drop else ""
        parts.append(
            f"ancestors {ensemble.ancestors}{experts}, {ensemble.aggregate} weighted {ensemble.weighting}{hints}{drop}"
        )
    return f" ({'; '.join(parts)})" if parts else ""
