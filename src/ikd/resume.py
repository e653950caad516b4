"""Opening a campaign's run directory: a new lineage, or the one on disk checked before it is
continued -- made with the same settings, its finished nodes' weights matching their checksums."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from pydantic import ValidationError

from ikd import rules
from ikd.config import RECORDED, CampaignConfig
from ikd.data import effective_image_size
from ikd.data.paths import same_place
from ikd.diff import config_differences
from ikd.errors import CheckpointError, ConfigError
from ikd.lineage import LINEAGE_FILE, NODES_DIR, ROOT_ID, Lineage, NodeRecord, RunDir, Status


def grown_from(nodes: list[NodeRecord], lost: set[str]) -> set[str]:
    """Ids of the nodes that descend from `lost` through a parent or a teacher, at any depth."""
    dependents: set[str] = set()
    grew = True
    while grew:
        found = {
            n.id for n in nodes if n.id not in lost | dependents and ({n.parent, *n.teachers} & (lost | dependents))
        }
        grew = bool(found)
        dependents |= found
    return dependents


def _refuse_nodes_without_a_lineage(run: RunDir) -> None:
    """A run directory whose lineage.json is gone (or is not a file) but whose nodes are there: a new campaign
    would train over them. Only the root may be there alone: a run killed after saving its teacher and before
    recording it."""
    if run.lineage_path.exists():
        raise ConfigError(f"{run.lineage_path}: is not a file; expected the run's lineage (JSON), or nothing")
    nodes = run.path / NODES_DIR
    found = sorted(d.name for d in nodes.iterdir() if d.is_dir()) if nodes.is_dir() else []
    if [name for name in found if name != ROOT_ID]:
        raise ConfigError(
            f"{run.path}: holds {len(found)} trained nodes ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) "
            f"but no {LINEAGE_FILE}, which records what they are; restore it, or choose another run_dir"
        )


def open_campaign(
    run: RunDir, config: CampaignConfig, *, force: bool, log: Callable[[str], None], redecide: bool = False
) -> Lineage:
    """The lineage to continue in `run` (an empty one for a new campaign, written with its first node),
    not yet written; `redecide`: every trained candidate back to undecided, so the search replays its
    decisions."""
    if redecide and config.search.budget_epochs is not None:
        raise ConfigError(
            f"{run.path}: --redecide with search.budget_epochs {config.search.budget_epochs}: a replay "
            "cannot tell which epochs a fresh run would have spent; drop the budget or start a new run_dir"
        )
    wanted = config.decision_fields()
    if not run.exists():
        _refuse_nodes_without_a_lineage(run)
        return Lineage(config=wanted)
    lineage = run.load()
    stored = lineage.config
    with contextlib.suppress(ValidationError):  # keys added to ikd since the run started compare as their defaults
        stored = CampaignConfig.model_validate(stored, context={RECORDED: True}).decision_fields()
    differences = config_differences(with_image_size(stored), with_image_size(wanted))
    if not lineage.nodes:
        # paused before its first node (its teacher in training): no node to check against. The sessions
        # stay on record when they ran this config; under another, their partial teacher may be discarded
        return Lineage(config=wanted, sessions=[] if differences else lineage.sessions)
    other_data = [d for d in differences if d.startswith("data.")]
    if other_data:  # not even under --force: the lineage's accuracies are on the old split
        raise ConfigError(
            f"{run.path}: holds a campaign on other data ({'; '.join(other_data)}); its accuracies were "
            "measured on another validation split, and a student trained now could be validated on images "
            "its ancestors trained on; use another run_dir"
        )
    other_teacher = [d for d in differences if d.startswith("teacher.")]
    imported, asked = stored.get("teacher", {}).get("dir"), wanted["teacher"]["dir"]
    if imported is not None and asked is not None and same_place(imported) == same_place(asked):
        # the same model imported: the keys for training one are not read, nor is how its path is spelt
        other_teacher = []
        differences = [d for d in differences if not d.startswith("teacher.dir:")]
    # a module root's hint layer is checked against its record (teachers._same_module); for any other root
    # the key is not read
    other_teacher = [d for d in other_teacher if not d.startswith("teacher.hint_layer:")]
    differences = [d for d in differences if not d.startswith("teacher.hint_layer:")]
    program, asked_program = stored.get("teacher", {}).get("program"), wanted["teacher"].get("program")
    if program is not None and asked_program is not None:
        # a program's weights are checked against the root's recorded digest, not by where the file lies;
        # the keys for training a root are not read
        other_teacher = []
        differences = [d for d in differences if not d.startswith("teacher.")]
    if other_teacher:  # not even under --force: the root stays what it was, and every student learnt from it
        raise ConfigError(
            f"{run.path}: holds a campaign grown from a root teacher made under other settings "
            f"({'; '.join(other_teacher)}); the run would keep that root while naming this one; use another "
            "run_dir (to resume it as it is, give the teacher keys of its lineage.json)"
        )
    if redecide:  # what it is for: the same trainings judged by other rules
        differences = [d for d in differences if d.partition(":")[0] not in rules.REDECIDE_KEYS]
    if differences and not force:
        judging_only = all(d.partition(":")[0] in rules.REDECIDE_KEYS for d in differences)
        raise ConfigError(
            f"{run.path}: holds a campaign with another config ({'; '.join(differences[:4])}"
            f"{' ...' if len(differences) > 4 else ''}); use another run_dir"
            + (", pass --redecide to decide its generations again under these keys," if judging_only else "")
            + " or pass --force to continue it"
        )
    corrupt = set(run.verify(lineage))
    if corrupt:
        # Files that no longer match their checksum are retrained rather than trusted. Nodes grown
        # from them would then hang from a different model, so they go too -- but only when asked:
        # they are finished work.
        dependents = grown_from(lineage.nodes, corrupt)
        if dependents and not force:
            raise CheckpointError(
                f"{run.path}: the weights of {', '.join(sorted(corrupt))} are missing or changed, and "
                f"{', '.join(sorted(dependents))} grew from them; restore the files, or pass --force to "
                "retrain them all"
            )
        log(f"nodes with missing or changed weights will be retrained: {', '.join(sorted(corrupt | dependents))}")
        lineage = lineage.model_copy(update={"nodes": [n for n in lineage.nodes if n.id not in corrupt | dependents]})
    if redecide:
        lineage = undecided(lineage, config, log)
    # not saved here: the campaign writes it once its own checks pass, so a refusal (or Ctrl-C) before
    # any work leaves the decisions --redecide undid and the nodes --force dropped on disk
    return lineage.model_copy(update={"config": wanted})


def with_image_size(document: dict) -> dict:
    """`document` with data.image_size unset replaced by the size the dataset loads at, where that is
    known: leaving it unset and writing MNIST's own 28 train on the same images."""
    data = document.get("data")
    if not isinstance(data, dict) or data.get("image_size") is not None:
        return document
    size = effective_image_size(str(data.get("name")), None)
    return {**document, "data": {**data, "image_size": size}}


def undecided(lineage: Lineage, config: CampaignConfig, log: Callable[[str], None]) -> Lineage:
    """The lineage with its search's decisions undone: every candidate that trained all its epochs
    under `config` (rules.epochs_per_child; a retry: epochs_per_retry) back to `candidate`, to be reused
    where the replayed search reaches it; one stopped early (or trained for other epochs) goes, with
    what grew from it, as its stop depended on the old rules."""
    students = [n for n in lineage.students() if n.status != Status.FAILED]  # a failure is not a decision

    def planned(node: NodeRecord) -> int:
        if node.operator == rules.RETRY:  # twice its near miss's schedule, unless search.retry_epochs says
            near_miss = lineage.find(rules.near_miss_id(node.id))
            return rules.epochs_per_retry(config, near_miss.operator if near_miss else None)
        return rules.epochs_per_child(config, node.operator)

    partial = {n.id for n in students if n.epochs != planned(n)}
    gone = partial | grown_from(lineage.nodes, partial)
    nodes = [
        n.model_copy(update={"status": Status.CANDIDATE, "reason": ""}) if n in students else n
        for n in lineage.nodes
        if n.id not in gone
    ]
    log(
        f"redeciding {len(students) - len(partial)} trained candidate(s)"
        + (f"; retraining {', '.join(sorted(gone))} (stopped early, or grown from one)" if gone else "")
    )
    return lineage.model_copy(update={"nodes": nodes, "stop_reason": None})
