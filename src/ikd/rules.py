"""The campaign's decisions as pure functions of recorded numbers: accept, stop, budget.

Accuracies in a NodeRecord are fractions; tolerances are in percentage points. Nothing here
trains, loads or writes, so every rule is unit-tested on made-up records.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from itertools import pairwise

from pydantic import ValidationError

from ikd.config import CampaignConfig, SearchConfig
from ikd.lineage import FINAL_NOT_KEPT, Latency, Lineage, NodeRecord, Status, rank, size
from ikd.shrink import OPERATORS


def points(accuracy: float) -> float:
    return 100.0 * accuracy


def falls_short(value: float, reference: float, tolerance: float) -> bool:
    """Whether `value` is more than `tolerance` below `reference` (all in percentage points).
    Accuracies are ratios of image counts, so a child exactly at the floor must not be rejected by
    float rounding (99.38333 - 0.3 = 99.08333333333334 > 99.08333333333333)."""
    return value < reference - tolerance - 1e-9


def floors(parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> tuple[tuple[float, str], ...]:
    """The validation accuracies (points) a child of `parent` must reach, each with what sets it: the
    root's less max_drop, and the parent's less max_step_drop. The one source of the accept threshold
    (rejection, floor, margin)."""
    at_root, at_parent = points(root.val_accuracy or 0.0), points(parent.val_accuracy or 0.0)
    return (
        (at_root - search.max_drop, f"root {at_root:.2f}% - max_drop {search.max_drop}"),
        (at_parent - search.max_step_drop, f"parent {at_parent:.2f}% - max_step_drop {search.max_step_drop}"),
    )


def rejection(node: NodeRecord, parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> str | None:
    """None when `node` keeps accuracy within both tolerances, else why not."""
    if node.val_accuracy is None:
        return node.reason or "failed"
    val = points(node.val_accuracy)
    return next(
        (f"val {val:.2f}% < {why}" for needed, why in floors(parent, root, search) if falls_short(val, needed, 0.0)),
        None,
    )


def final_rejection(lineage: Lineage, search: SearchConfig) -> str | None:
    """Why the final distillation's student fails the test its search answer passed (`rejection`
    against the answer's parent and the root), or None: it passes, or there is none. Within those
    tolerances it is the answer even a few validation images below the search's (a longer schedule
    from the same weights; on the committed MNIST and CIFAR-10 runs, 3 of the 4 finals below their
    answer by validation were above it by test): only the tolerances are a promise."""
    distilled = lineage.distilled()
    answer = lineage.find(distilled.parent or "") if distilled is not None else None
    parent = lineage.find(answer.parent) if answer is not None and answer.parent is not None else None
    return None if distilled is None or parent is None else rejection(distilled, parent, lineage.root(), search)


def final_not_kept(lineage: Lineage) -> str | None:
    """Why the final distillation's student is not the campaign's answer, as the campaign recorded
    it, or None: it is, or there is none."""
    distilled = lineage.distilled()
    if distilled is None or not distilled.reason.startswith(FINAL_NOT_KEPT):
        return None
    return distilled.reason.removeprefix(FINAL_NOT_KEPT).strip()


def final_never_judged(lineage: Lineage) -> str | None:
    """Why the final student of a lineage an ikd before 2026-12-06 made (which kept every final as the
    answer, unjudged) fails its answer's tolerances, by the search settings the lineage records; None
    when it passes, was judged, or there is none. Rerunning `ikd compress` on the run judges it."""
    distilled = lineage.distilled()
    if distilled is None or distilled.reason or "search" not in lineage.config:
        return None
    try:
        search = SearchConfig.model_validate(lineage.config["search"])
    except ValidationError:
        return None
    return final_rejection(lineage, search)


def floor(parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> float:
    """The validation accuracy (a fraction) a child of `parent` must reach to be accepted."""
    return max(needed for needed, _ in floors(parent, root, search)) / 100.0


def early_floor(parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> float:
    """The floor early rejection judges a candidate's prospects by: a near miss (search.retry_within)
    still earns a retry, so one heading there is not hopeless."""
    return floor(parent, root, search) - search.retry_within / 100.0


def margin(node: NodeRecord, parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> float:
    """Points by which `node`'s validation accuracy clears its floor (negative: it falls short)."""
    return points(node.val_accuracy or 0.0) - max(needed for needed, _ in floors(parent, root, search))


def roomy(node: NodeRecord, parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> bool:
    """Within tolerance with `search.accept_margin` points to spare. A child accepted exactly at its
    floor leaves its descendants none (on MNIST one such child ended a chain at 482.6x where the
    roomier sibling's went on to 1232x); with no margin asked, every child within tolerance is roomy."""
    return rejection(node, parent, root, search) is None and margin(node, parent, root, search) >= (
        search.accept_margin - 1e-9
    )


STOPPED_EARLY = "stopped after epoch"
RETRY = "retry"  # the operator of a near miss trained again on a longer schedule (search.retry_within)


def retry_id(node_id: str) -> str:
    return f"{node_id}-{RETRY}"


def near_miss_id(retry: str) -> str:
    """The id of the near miss a retry's id names (the inverse of retry_id)."""
    return retry.removesuffix(f"-{RETRY}")


def near_miss(node: NodeRecord, parent: NodeRecord, root: NodeRecord, search: SearchConfig) -> bool:
    """Whether `node` fell short of its floor by at most `search.retry_within` points after all its
    epochs, so it earns one retry (search.retry_epochs from its parent). Not a node stopped early (the
    rule found it hopeless), nor a retry itself (one second chance, not a loop)."""
    return (
        search.retry_within > 0
        and node.val_accuracy is not None
        and node.operator != RETRY
        and STOPPED_EARLY not in node.reason
        and rejection(node, parent, root, search) is not None
        and margin(node, parent, root, search) >= -search.retry_within - 1e-9
    )


def retry_could_be_chosen(
    node: NodeRecord, siblings: list[NodeRecord], parent: NodeRecord, root: NodeRecord, search: SearchConfig
) -> bool:
    """Whether a retry of the near miss `node` could parent the next generation: not when its
    `siblings` (from the same parent) already hold roomy children no larger, of as many architectures
    as the generation keeps (one under `select: best`, `beam` under a tree; a passing twin of its own
    architecture counts: the shape is chosen either way), since survivors takes the smallest roomy
    ones and other branches only add rivals."""
    rivals = {
        json.dumps(n.arch, sort_keys=True)
        for n in siblings
        if n.id != node.id
        and size(n, search.objective) <= size(node, search.objective)
        and roomy(n, parent, root, search)
    }
    return len(rivals) < search.kept_per_generation()


def early_stop_note(reason: str) -> str | None:
    """The part of a node's reason that says it stopped before its last epoch (always its end), if any:
    kept when it is decided again on a resumed run, where the rest of the reason is replaced."""
    start = reason.find(STOPPED_EARLY)
    return reason[start:] if start >= 0 else None


# Early rejection extrapolates a candidate's validation *error*, which late epochs shrink by a factor:
# 97 -> 99% and 70 -> 90% are the same threefold cut. Gains in points do not carry over between
# accuracy levels: a child at 68.9% climbing 12 points an epoch "could" gain 24 more a stage, so the
# points rule this replaced let it train to the end (86.5% against a 99.08% floor).
MIN_ERROR = 1e-4  # a perfect epoch would make a ratio infinite
EVIDENCE = 2  # fully trained candidates the campaign needs before it stops any


def error(accuracy: float) -> float:
    return max(1.0 - accuracy, MIN_ERROR)


def fully_trained_curves(lineage: Lineage, epochs: int, reached: Collection[str] | None = None) -> list[list[float]]:
    """The last `epochs` validation accuracies of every candidate that trained a whole stage of at
    least `epochs`: not one stopped early, nor a retry (another, longer schedule), nor a user module's first
    student (from random weights, where the others inherit: another kind of curve). With `reached`, only
    candidates decided or among those ids: the ones the search has come to on its path (a --redecide
    keeps trainings of the old path, which a fresh run under the new rules would not have had yet)."""
    return [
        n.val_curve[-epochs:]
        for n in lineage.students()
        if len(n.val_curve) >= epochs
        and STOPPED_EARLY not in n.reason
        and n.operator not in (RETRY, FIRST_STUDENT)
        and (reached is None or n.id in reached or n.status in (Status.ACCEPTED, Status.REJECTED))
    ]


def late_error_ratios(lineage: Lineage, epochs: int, reached: Collection[str] | None = None) -> tuple[float, ...]:
    """Entry e-1: the most any candidate of this campaign that trained all of a stage of `epochs` went
    on to shrink its validation error after its epoch e (error at epoch e / error of its best later
    epoch); () until EVIDENCE candidates have. Under a one-cycle schedule children that start low gain
    most in the last epochs, so a candidate's own first epochs are not enough to give up on it; and one
    candidate is not enough either (on MNIST the only one trained before it would have stopped a child
    at 97.20% after 2 of 5 epochs that ended at 99.47%, accepted). `reached`: as fully_trained_curves."""
    curves = fully_trained_curves(lineage, epochs, reached)
    if len(curves) < EVIDENCE:
        return ()
    return tuple(max(error(c[e - 1]) / error(max(c[e:])) for c in curves) for e in range(1, epochs))


def hopeless(curve: list[float], epochs: int, needed: float, slack: float, later: tuple[float, ...] = ()) -> str | None:
    """Why a candidate with validation accuracies `curve` after its first epochs (of `epochs`) can
    be stopped now: even if its best epoch's error so far shrank by the larger of (its best
    epoch-to-epoch error ratio, once per epoch left) and (the most a fully trained candidate of the
    campaign shrank its error after the same epoch, `later`, from late_error_ratios), raised to the
    power `slack`, it would stay below `needed`. Never before its second epoch, nor after its last,
    nor without the campaign's evidence of what comes late; None means train on."""
    done, left = len(curve), epochs - len(curve)
    if done < 2 or left <= 0 or len(later) < done:
        return None
    own = max(1.0, *(error(a) / error(b) for a, b in pairwise(curve)))
    try:
        shrink = max(own**left, later[done - 1]) ** slack
    except OverflowError:  # a cut beyond any float: nothing is out of its reach
        return None
    reachable = 1.0 - error(max(curve)) / shrink
    if falls_short(points(reachable), points(needed), 0.0):
        return (
            f"{STOPPED_EARLY} {done}/{epochs}: val {points(max(curve)):.2f}% with its error cut {shrink:.1f}-fold "
            f"(the larger of its best epoch's {own:.2f}-fold in each of {left} epochs left and the most a candidate "
            f"cut it after epoch {done}, {later[done - 1]:.2f}-fold, to the power {slack:g}) reaches "
            f"{points(reachable):.2f}% < {points(needed):.2f}% needed"
        )
    return None


def target_reached(node: NodeRecord, search: SearchConfig) -> str | None:
    """Why the campaign may stop at `node` on its size target, or None."""
    if search.target_params and node.params <= search.target_params:
        return f"target reached: {node.id} has {node.params:,} <= {search.target_params:,} params"
    if search.target_compression and node.compression >= search.target_compression:
        return f"target reached: {node.id} is {node.compression:.1f}x smaller than the root"
    if search.target_macs and node.macs <= search.target_macs:
        return f"target reached: {node.id} costs {node.macs:,} <= {search.target_macs:,} MACs per image"
    timed = speedup_timing(node, search.speedup_batch)
    speedup = timed.teacher_ms / timed.median_ms if timed and timed.teacher_ms else 0.0
    if timed and search.target_speedup and speedup >= search.target_speedup:
        return (
            f"target reached: {node.id} runs {speedup:.2f}x faster than the root "
            f"(>= {search.target_speedup:g}x: {timed.median_ms:.3f} vs {timed.teacher_ms:.3f} ms per call of "
            f"{timed.batch}, onnxruntime, one thread, {timed.device})"
        )
    return None


def speedup_timing(node: NodeRecord, batch: int) -> Latency | None:
    """The timing target_speedup decides `node` on: its onnxruntime timing beside the root at `batch`
    images a call (None where it has none at that batch)."""
    timing = node.speedup_timing
    return timing if timing is not None and timing.batch == batch and timing.teacher_ms is not None else None


# The config keys that only judge trained candidates or choose which to propose and train: `ikd
# compress --redecide` replays a campaign's decisions under new values of these, reusing every
# training the new path repeats (Campaign.as_recorded finds one under another id). Not
# budget_epochs: a replay cannot tell which epochs a fresh run would have spent.
REDECIDE_KEYS = frozenset(
    f"search.{key}"
    for key in (
        "max_drop",
        "max_step_drop",
        "accept_margin",
        "select",
        "beam",
        "candidates",
        "max_generations",
        "objective",
        "target_params",
        "target_compression",
        "target_macs",
        "target_speedup",
        "speedup_batch",
        "operators",
        "retry_within",
        *(key for operator in OPERATORS.values() for key in operator.search_keys()),  # what shapes the children
    )
)


def frontier(lineage: Lineage) -> list[NodeRecord]:
    """The current parents: the latest generation's accepted nodes (smallest first), or the root."""
    accepted = [n for n in lineage.nodes if n.status == Status.ACCEPTED]
    if not accepted:
        return [lineage.root()]
    latest = max(n.generation for n in accepted)
    return sorted((n for n in accepted if n.generation == latest), key=lambda n: rank(n, lineage.objective()))


def hint_pre_epochs(config: CampaignConfig) -> int:
    """Epochs of hint pre-training a distillation pass starts with (two-stage), else 0."""
    return config.hint_pre_epochs()


def pass_epochs(config: CampaignConfig, epochs: int) -> int:
    """Epochs a distillation pass of `epochs` records: plus hint pre-training when two-stage."""
    return epochs + hint_pre_epochs(config)


def distilled_within(config: CampaignConfig, total: int) -> int:
    """The epochs to ask of a distillation pass that must record `total` in all: hint pre-training
    (two-stage) counted inside them, as a baseline held to the chain's budget needs (at least one)."""
    return max(1, total - hint_pre_epochs(config))


FIRST_STUDENT = "initial"  # the operator of a user module's first student: a spec trained from random weights


def child_epochs(config: CampaignConfig, operator: str | None = None) -> int:
    """The epochs a candidate of `operator` distils for: student.epochs, or student.first_epochs for a user
    module's first student (where set)."""
    first = config.student.first_epochs
    return first if operator == FIRST_STUDENT and first is not None else config.student.epochs


def epochs_per_child(config: CampaignConfig, operator: str | None = None) -> int:
    """Epochs one candidate (of `operator`) costs."""
    return pass_epochs(config, child_epochs(config, operator))


def retry_epochs(config: CampaignConfig, operator: str | None = None) -> int:
    """The epochs of a retry's schedule (search.retry_within) of a near miss of `operator`:
    search.retry_epochs, or twice the near miss's own (a user module's first student: student.first_epochs)."""
    return config.search.retry_epochs or 2 * child_epochs(config, operator)


def epochs_per_retry(config: CampaignConfig, operator: str | None = None) -> int:
    """Epochs one retry (of a near miss of `operator`) costs."""
    return pass_epochs(config, retry_epochs(config, operator))


def budget_allows(spent: int, children: int, per_child: int, budget: int | None) -> bool:
    """Whether training `children` more candidates keeps the search within `budget` epochs."""
    return budget is None or spent + children * per_child <= budget


def survivors(kept: list[NodeRecord], search: SearchConfig, narrow: Collection[str] = ()) -> list[NodeRecord]:
    """Of the children within tolerance, those that parent the next generation: the smallest one
    (`select: best`), or up to `beam` of them (`select: tree`); children in `narrow` (within
    tolerance by less than `search.accept_margin`) only after every roomy one. One child per
    architecture: two branches of a tree often reach the same shape (depth then width, width then
    depth), and a beam filled with twins would grow the same children twice."""
    distinct: dict[str, NodeRecord] = {}  # by architecture, the first in survivor order
    for node in sorted(kept, key=lambda n: (n.id in narrow, *rank(n, search.objective))):
        distinct.setdefault(json.dumps(node.arch, sort_keys=True), node)
    return list(distinct.values())[: search.kept_per_generation()]


def stop_before(generation: int, frontier: list[NodeRecord], search: SearchConfig) -> str | None:
    """Why the campaign stops before growing `generation` from `frontier` (the generation cap, or an
    accepted parent already at the size target), or None. The target first: a search that reached it in its
    last generation stopped for that, and says so again when it is run again."""
    accepted = (n for n in frontier if n.status == Status.ACCEPTED)
    if reached := next((reason for n in accepted if (reason := target_reached(n, search)) is not None), None):
        return reached
    if generation > search.max_generations:
        return f"max_generations ({search.max_generations}) reached"
    return None
