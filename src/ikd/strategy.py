"""The paper's four variants as policies over one campaign loop: which children a parent proposes,
who teaches them, and which of them survive.

    parent-child        a parent's candidates train one at a time, smallest first, each taught by
                        the parent; the first within tolerance is kept (the smallest that passes;
                        with search.accept_margin, the smallest that passes with that much room,
                        if any does).
    parent-children     all of a parent's candidates (every operator, width factor and slim
                        fraction, times `search.seeds`) train together in one pass over the data,
                        sharing one teacher forward per batch; `select: best` keeps one,
                        `select: tree` keeps up to `beam` across the generation, each parenting
                        its own children.
    ancestors-child     as parent-child, but each child is taught by its chain of ancestors (all,
                        or the last m) plus any expert teachers, their KD signals aggregated.
    ancestors-children  both at once.

Survivors are ranked by size, then validation accuracy: `best` and the beam keep the smallest
children within tolerance, so `select: best` is the beam of one.
"""

from __future__ import annotations

import re

from ikd.arch import ArchSpec
from ikd.config import EnsembleConfig, SearchConfig
from ikd.lineage import Lineage, NodeRecord
from ikd.rules import RETRY
from ikd.shrink import OPERATORS, Candidate, Scales, cuts_per_block, get_operator

# Children of one architecture that differ only in seed are seeded this far apart.
SEED_STRIDE = 7919
SEED_SUFFIX = "-s"  # the id suffix of such a sibling: g2-width-s1
BLOCK_INFIX = "-in"  # the block (1-based) of a one-block cut under search.cut_sites > 1: g5-depth-in3
VERSION_SUFFIX = "-v"  # another training asked under an id another path's training holds: g2-width-v2


def propose(parent_spec: ArchSpec, search: SearchConfig, prefix: str, scales: Scales | None = None) -> list[Candidate]:
    """The children one parent proposes, smallest first (by search.objective); node ids start with
    `prefix`. `scales` are the parent's BatchNorm scales (ikd.inherit.bn_scales), which the slim
    operator ranks; without them it proposes nothing."""
    proposals: list[tuple[str, str, ArchSpec | None]] = []  # (operator, label, child spec)
    for name in search.operators:
        kind = OPERATORS[name]
        if kind.needs_scales and scales is None:
            continue
        factors: list[float] | list[None] = search.factors(kind.factor) if kind.factor else [None]
        for factor in factors:
            label = name if factor is None or len(factors) == 1 else f"{name}{round(100 * factor)}"
            if kind.one_block and search.cut_sites != 1:
                cuts = cuts_per_block(name, parent_spec, factor, search.objective)
                sites = len(cuts) if search.cut_sites == "all" else search.cut_sites
                # every cut names its block: which block saves the most depends on the objective and the factor,
                # so a plain id would name other shapes in two runs (a --redecide finds a cut_sites 1 run's
                # child under its plain id anyway: Campaign.as_recorded matches trainings, not ids)
                proposals += [(name, f"{label}{BLOCK_INFIX}{block + 1}", child) for block, child in cuts[:sites]]
                continue
            operator = get_operator(
                name,
                factor,
                scales=scales,
                min_channels=search.slim_min_channels,
                by_share=search.slim_by_share,
                round_to=search.slim_round_to,
                objective=search.objective,
            )
            proposals.append((name, label, operator(parent_spec)))
    seen, candidates = set(), []
    seeds = search.seeds if search.many_children() else 1
    for name, label, spec in proposals:
        if spec is None or spec.model_dump_json() in seen:
            continue
        seen.add(spec.model_dump_json())
        for j in range(seeds):
            suffix = f"{SEED_SUFFIX}{j}" if seeds > 1 else ""
            candidates.append(Candidate(f"{prefix}{label}{suffix}", name, spec, j, OPERATORS[name].inherit_by))
    return sorted(candidates, key=lambda c: (c.spec.size(search.objective), c.node_id))


def seed_index(node_id: str) -> int:
    """Which same-architecture sibling `node_id` names (its `-sJ` suffix; none: the first)."""
    return int(match.group(1)) if (match := re.search(rf"{SEED_SUFFIX}(\d+)$", node_id)) else 0


def versioned_id(node_id: str, version: int) -> str:
    """`node_id` for the `version`-th training asked under it (`g1-depth-v2`, `g2-width-v2-s1`,
    `g2-width-v2-s1-retry`): a --redecide that cuts other shapes, or grows from another parent, keeps the
    old path's trainings under their ids. The seed and retry suffixes stay last, so `seed_index` and
    `rules.near_miss_id` read them as before."""
    suffixes = re.search(rf"(?:{SEED_SUFFIX}\d+)?(?:-{RETRY})?$", node_id)
    assert suffixes is not None  # both parts optional: it matches at the end of any id
    return f"{node_id[: suffixes.start()]}{VERSION_SUFFIX}{version}{suffixes.group(0)}"


def child_prefix(generation: int, branch: int | None) -> str:
    """The generation and branch part of a child's id (`g3-`, `g3-b1-`): each frontier parent proposes
    its children under its own; `id_prefix` reads it back."""
    return f"g{generation}-" + (f"b{branch}-" if branch is not None else "")


def id_prefix(node_id: str) -> str:
    """The `child_prefix` a node's id starts with ("" for the root or a user's expert)."""
    match = re.match(r"g\d+-(?:b\d+-)?", node_id)
    return match.group(0) if match else ""


def teachers_of(
    lineage: Lineage, parent: NodeRecord, search: SearchConfig, ensemble: EnsembleConfig, expert_ids: list[str]
) -> list[str]:
    """Who teaches the children of `parent`; the parent is always first (it gives the hint)."""
    if not search.many_teachers():
        return [parent.id]
    chain = [n.id for n in reversed(lineage.chain(parent))]  # the parent first: it gives the hint
    if ensemble.ancestors != "all":
        chain = chain[: ensemble.ancestors]
    return chain + [e for e in expert_ids if e not in chain]


def teacher_weights(lineage: Lineage, teacher_ids: list[str], ensemble: EnsembleConfig) -> list[float]:
    return ensemble.teacher_weights([lineage.node(t).val_accuracy for t in teacher_ids])
