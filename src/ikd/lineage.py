"""The persistent record of a campaign: every model, who taught it, how it scored, why it was kept.

A run directory holds `lineage.json` and one model directory per node, `nodes/<id>/` with
`model.safetensors` + `model.json` -- the same layout `ikd train` writes, so any node can be used
as a teacher, evaluated or exported as it is. Every write is atomic (temp file + rename) and a
node is added to the lineage only after its files are complete, with their SHA-256, so a crash
at any moment leaves a valid lineage whose finished nodes are intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ikd.arch import ArchSpec, Objective
from ikd.atomic import TEMP_SUFFIX, atomic_write_json, is_temp_name
from ikd.checkpoint import META_FILE, WEIGHTS_FILE, load_model
from ikd.dirlock import held
from ikd.errors import CheckpointError, ConfigError, first_validation_error
from ikd.model import VGG
from ikd.train_state import STATE_DIR

LINEAGE_FILE = "lineage.json"
# What every reader of a lineage says when it has no node: a campaign paused inside its teacher's training
NO_NODE_YET = "no node yet: the campaign's teacher has not finished training (rerun the same `ikd compress` to go on)"
ROOT_ID = "g0-teacher"
NODES_DIR = "nodes"
# the folders of a run directory that ikd writes (besides lineage.json): nodes, unfinished trainings'
# state, and what `ikd export`, `ikd report` and `--log tensorboard` write by default
EXPORT_DIR, REPORT_DIR, TB_DIR = "export", "report", "tb"
RUN_SUBDIRS = (NODES_DIR, STATE_DIR, EXPORT_DIR, REPORT_DIR, TB_DIR)
LINEAGE_VERSION = 1


class Status(StrEnum):
    """Where a node stands. A candidate is trained and waits for the rest of its generation
    before the accept/reject decision."""

    TEACHER = "teacher"
    EXPERT = "expert"
    CANDIDATE = "candidate"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    BASELINE = "baseline"
    FINAL = "final"  # the final student distilled again for a full schedule: the answer unless "not kept"


class NodeKind(StrEnum):
    """What a node is, whatever was decided about it."""

    TEACHER = "teacher"  # the root, an ikd model
    EXTERNAL = "external"  # the root, a user's own nn.Module: no spec, nothing to shrink or export
    EXPERT = "expert"  # an extra teacher of the ancestors-* strategies
    STUDENT = "student"  # a candidate of the search: accepted, rejected or failed
    BASELINE = "baseline"  # the final architecture trained from scratch or by one-shot KD
    FINAL = "final"  # the final student's final distillation (student.final_epochs)


_KIND_OF_STATUS = {Status.EXPERT: NodeKind.EXPERT, Status.BASELINE: NodeKind.BASELINE, Status.FINAL: NodeKind.FINAL}
# a failed training keeps its kind through its operator, which the campaign names by that kind: a final
# distillation or a baseline that diverged is not a search candidate (its epochs are not the search's budget)
_KINDS_OF_FAILED_OPERATORS = (NodeKind.FINAL, NodeKind.BASELINE)
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")  # used with fullmatch
_NODE_ID_RULE = "expected letters, digits, '_', '-', '.' (max 80)"


def check_node_id(node_id: str) -> str:
    """Node ids become directory names: only plain names, never a path that leaves the run dir."""
    if not _NODE_ID.fullmatch(node_id):
        raise ConfigError(f"node id {node_id!r}: {_NODE_ID_RULE}")
    return node_id


class Latency(BaseModel):
    """One latency measurement of a node's model (see ikd.latency): the smallest of `rounds` medians of
    `repeats` timed runs, interleaved with the models it was measured beside."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["onnxruntime", "torch"]
    batch: int = Field(gt=0)
    median_ms: float = Field(gt=0)
    repeats: int = Field(gt=0)
    rounds: int = Field(default=1, gt=0, description="1: a single median (lineages before the protocol)")
    threads: int = Field(gt=0)
    device: str = Field(description="where it was measured, e.g. the CPU's model name")
    teacher_ms: float | None = Field(
        default=None,
        gt=0,
        description="the root teacher's median_ms measured beside it in the same rounds: the speed-up's "
        "denominator (a later export re-times the root, so its own record may be from another moment)",
    )


# A stop that is not a result: candidates lost with their Ray workers might have passed; the same
# command trains them again (ikd compress exits 75, as after a time limit)
LOST_STOP = "candidates lost with their workers:"
# The reason of a final distillation's student that fell below its search answer's floor: the answer
# stays the search's (within tolerance, the longer training is kept even a few images lower)
FINAL_NOT_KEPT = "not kept:"


class Session(BaseModel):
    """One `ikd compress` (or `ikd.compress`) that started or resumed the campaign: when, how, where."""

    model_config = ConfigDict(extra="forbid")

    started: str = Field(description="UTC, ISO 8601")
    command: str = Field(description="the program and its arguments, as run")
    machine: str = Field(description="CPU, threads, accelerator, torch and ikd versions")


MAX_COUNT = 10**15  # parameters, bytes or MACs: far past any network, short of float overflow
Accuracy = Annotated[float, Field(ge=0, le=1)]  # a share of images: NaN fails both bounds


class NodeRecord(BaseModel):
    # statuses are kept as their plain strings, so a record updated with model_copy(status="...")
    # serialises as cleanly as one built through validation
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    id: str
    generation: int = Field(ge=0)
    parent: str | None = None
    teachers: list[str] = Field(default_factory=list)
    operator: str | None = None
    status: Status
    reason: str = ""
    arch: dict[str, Any]
    # bounds a file ikd wrote always meets: an edited or damaged lineage is refused when read, not
    # reported as a 500% accuracy or a negative size, nor crashing a plot on NaN
    params: int = Field(ge=0, le=MAX_COUNT)  # 0: a user's teacher module without nn.Parameters (TorchScript frozen)
    size_bytes_fp32: int = Field(ge=0, le=MAX_COUNT)
    macs: int = Field(ge=0, le=MAX_COUNT)
    compression: float = Field(gt=0, allow_inf_nan=False, description="root teacher params / this node's params")
    val_accuracy: Accuracy | None = Field(default=None, description="best epoch, on the validation split")
    val_accuracy_last: Accuracy | None = None
    test_accuracy: Accuracy | None = Field(default=None, description="of the saved weights; reported only")
    best_epoch: int | None = Field(default=None, ge=0)
    epochs: int = Field(
        ge=0,
        default=0,
        description="epochs trained (fewer than planned when stopped early or diverged; 0 for a lost worker)",
    )
    val_curve: list[Accuracy] = Field(
        default_factory=list, description="validation accuracy of the kept weights' kind, per epoch"
    )
    workers_lost: int = Field(
        default=0, ge=0, description="how many times its training job's worker died (Ray), while it has not come back"
    )
    seed: int | None = Field(
        default=None,
        description="the seed its training drew from (a child's: campaign seed + generation + 7919 x sibling)",
    )
    seconds: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="wall time of its training, summed over the processes that trained it (a resumed node's "
        "earlier sessions included); children trained together in one process (sharing each teacher forward) "
        "are each given the pass's time divided by their number; on Ray, its worker's time",
    )
    loss: dict[str, Any] = Field(default_factory=dict)
    sha256: str | None = Field(default=None, description="of nodes/<id>/model.safetensors")
    latency: list[Latency] = Field(default_factory=list, description="filled by `ikd export`")
    speedup_timing: Latency | None = Field(
        default=None,
        description="its onnxruntime timing beside the root that search.target_speedup decided on, taken once, "
        "where it was accepted; `ikd export`'s later timings (latency) never replace it",
    )

    def timings(self) -> list[Latency]:
        """Every timing of the node: export's, then the search's speedup_timing where export has none of
        its runtime and batch."""
        timed = {(m.runtime, m.batch) for m in self.latency}
        searched = self.speedup_timing
        return [*self.latency, *([searched] if searched and (searched.runtime, searched.batch) not in timed else [])]

    def trained_for(self, planned: int) -> bool:
        """Whether this record is a training of `planned` epochs: all of them, or a divergence within
        them (a failure records the epochs it ran; a lost worker's 0 is no training, to be run again)."""
        return self.epochs == planned or (self.status == Status.FAILED and 0 < self.epochs <= planned)

    @classmethod
    def of_spec(cls, node_id: str, spec: ArchSpec, *, root_params: int | None, **fields: Any) -> NodeRecord:
        """A node of an ikd architecture: its size fields computed from `spec`; `root_params`
        None means the node is the root."""
        params = spec.num_params()
        return cls(
            id=node_id,
            arch=spec.to_json_dict(),
            params=params,
            size_bytes_fp32=spec.size_bytes_fp32(),
            macs=spec.macs(),
            compression=(root_params or params) / params,
            **fields,
        )

    @property
    def kind(self) -> NodeKind:
        if self.status == Status.TEACHER:
            return NodeKind.EXTERNAL if "external" in self.arch else NodeKind.TEACHER
        if self.status == Status.FAILED and self.operator in _KINDS_OF_FAILED_OPERATORS:
            return NodeKind(self.operator)
        return _KIND_OF_STATUS.get(self.status, NodeKind.STUDENT)

    def spec(self) -> ArchSpec:
        if self.kind is NodeKind.EXTERNAL:
            raise ConfigError(f"node {self.id} is a user-supplied module ({self.arch['external']}); it has no ArchSpec")
        return ArchSpec.model_validate(self.arch)

    def arch_summary(self) -> str:
        """One line: the spec's summary, or which user module the node is."""
        return f"external: {self.arch['external']}" if self.kind is NodeKind.EXTERNAL else self.spec().summary()

    @field_validator("id", "parent", "teachers")
    @classmethod
    def _plain_ids(cls, value: str | list[str] | None) -> str | list[str] | None:
        # checked on load too, so a tampered lineage.json cannot name a path outside the run dir
        for node_id in value if isinstance(value, list) else [value]:
            if node_id is not None and not _NODE_ID.fullmatch(node_id):
                raise ValueError(_NODE_ID_RULE)
        return value


def size(node: NodeRecord, objective: Objective = "params") -> int:
    """The node's size in the search's currency: parameters or MACs per image."""
    return node.macs if objective == "macs" else node.params


def rank(node: NodeRecord, objective: Objective = "params") -> tuple[int, float]:
    """Survivor order: the smallest by `objective` first, then higher validation accuracy."""
    return size(node, objective), -(node.val_accuracy or 0.0)


CONFIG_SECTIONS = ("data", "teacher", "student", "loss", "search", "ensemble", "executor")


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = LINEAGE_VERSION
    config: dict[str, Any]
    nodes: list[NodeRecord] = Field(default_factory=list)
    stop_reason: str | None = None
    sessions: list[Session] = Field(default_factory=list, description="every run of the campaign, first first")

    @field_validator("config")
    @classmethod
    def _sections_are_objects(cls, config: dict[str, Any]) -> dict[str, Any]:
        # the report and a resumed campaign read each section's keys
        for section in CONFIG_SECTIONS:
            if section in config and not isinstance(config[section], dict):
                raise ValueError(f"config.{section} is {type(config[section]).__name__}; expected an object")
        return config

    def find(self, node_id: str) -> NodeRecord | None:
        """The node, or None when the lineage has none of that id."""
        return next((n for n in self.nodes if n.id == node_id), None)

    def node(self, node_id: str) -> NodeRecord:
        """The node, which must be there (`find` asks whether it is)."""
        node = self.find(node_id)
        if node is None:
            raise CheckpointError(f"the lineage has no node {node_id!r}")
        return node

    def root(self) -> NodeRecord:
        root = next((n for n in self.nodes if n.status == Status.TEACHER), None)
        if root is None and not self.nodes:
            raise CheckpointError(f"the lineage has {NO_NODE_YET}")
        if root is None:
            raise CheckpointError(
                "the lineage has no root teacher (no node with status 'teacher'); "
                "expected a lineage.json written by `ikd compress`"
            )
        return root

    def final(self) -> NodeRecord:
        """The campaign's answer: the final distillation's student when there is one and it keeps the
        tolerances its search answer kept (by validation; the campaign marks one that does not,
        FINAL_NOT_KEPT), else the smallest accepted student (the root when none was)."""
        distilled = self.distilled()
        if distilled is not None and not distilled.reason.startswith(FINAL_NOT_KEPT):
            return distilled
        return self.search_result()

    def answered(self) -> bool:
        """Whether the campaign stopped with an answer: it stopped, and not to wait for candidates lost
        with their Ray workers (the rerun trains them first)."""
        return self.stop_reason is not None and not self.stop_reason.startswith(LOST_STOP)

    def distilled(self) -> NodeRecord | None:
        """The final distillation's student (status final), whether or not it is the answer."""
        finals = [n for n in self.nodes if n.status == Status.FINAL]
        return finals[-1] if finals else None

    def search_result(self) -> NodeRecord:
        """The smallest accepted student (the root when none was), before any final distillation."""
        accepted = [n for n in self.nodes if n.status == Status.ACCEPTED]
        return min(accepted, key=lambda n: rank(n, self.objective())) if accepted else self.root()

    def objective(self) -> Objective:
        """The search's search.objective (params in a lineage from before the key)."""
        search = self.config.get("search")
        return "macs" if isinstance(search, dict) and search.get("objective") == "macs" else "params"

    def students(self) -> list[NodeRecord]:
        """The search's candidates, whatever was decided (not teachers, experts or baselines)."""
        return [n for n in self.nodes if n.kind is NodeKind.STUDENT]

    def epochs_spent(self, nodes: Iterable[NodeRecord] | None = None) -> int:
        """Epochs the search spent training students (of `nodes`, default all), the final distillation
        included, each epoch one pass over the training set: the budget a fair baseline gets."""
        spent = (NodeKind.STUDENT, NodeKind.FINAL)
        return sum(n.epochs for n in (self.nodes if nodes is None else nodes) if n.kind in spent)

    def search_epochs(self) -> int:
        """Epochs spent training the search's candidates: what search.budget_epochs limits (not a final
        distillation, which trains after the search, and one left from an earlier answer that a --force
        continued past is trained again for the new one)."""
        return sum(n.epochs for n in self.students())

    def baseline_budget(self) -> int | None:
        """The epochs a baseline of the answer gets (the chain's, final distillation included, kept as
        the answer or not: the chain spent them to choose); None while there is no answer (no accepted
        student)."""
        final = self.final()
        if final.status not in (Status.ACCEPTED, Status.FINAL):
            return None
        return self.epochs_spent(self.chain(self.distilled() or final))

    def is_current_baseline(self, node: NodeRecord) -> bool:
        """Whether a baseline was made for today's answer: its architecture, for the chain's epochs.
        One made before a --redecide or --force, or before the final distillation, is stale."""
        budget = self.baseline_budget()
        return budget is not None and node.spec() == self.final().spec() and node.trained_for(budget)

    def chain(self, node: NodeRecord) -> list[NodeRecord]:
        """`node` and its parents up to the root, root first."""
        path = [node]
        while path[-1].parent is not None and (parent := self.find(path[-1].parent)) is not None:
            path.append(parent)
        return path[::-1]

    def tree_order(self) -> list[tuple[NodeRecord, int]]:
        """(node, depth) in depth-first order from the root along parent links, smaller children
        first; nodes without a parent in the tree (baselines, experts) come last at depth 0."""
        children: dict[str | None, list[NodeRecord]] = {}
        for node in self.nodes:
            children.setdefault(node.parent, []).append(node)
        ordered: list[tuple[NodeRecord, int]] = []
        placed: set[str] = set()

        def visit(node: NodeRecord, depth: int) -> None:
            ordered.append((node, depth))
            placed.add(node.id)
            for child in sorted(children.get(node.id, []), key=lambda n: (n.params, n.id)):
                visit(child, depth + 1)

        for root in (n for n in self.nodes if n.status == Status.TEACHER):
            visit(root, 0)
        return ordered + [(n, 0) for n in self.nodes if n.id not in placed]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RunDir:
    """A run directory and its lineage; the only writer of `lineage.json`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def lineage_path(self) -> Path:
        return self.path / LINEAGE_FILE

    def node_dir(self, node_id: str) -> Path:
        return self.path / NODES_DIR / check_node_id(node_id)

    @contextlib.contextmanager
    def locked(self, purpose: str):
        """Hold the run directory for one writer (a campaign, an export) at a time (ikd.dirlock.held).
        Temporary files a crashed writer left are removed once the lock is held."""
        if not self.exists() and (self.path / META_FILE).is_file():  # its nodes would land beside that model
            raise ConfigError(
                f"{self.path}: holds a model from `ikd train` ({META_FILE}), not a campaign; choose another "
                f"run_dir (to compress that model, give it as the teacher: --teacher {self.path})"
            )
        if (outer := campaign_of_node(self.path)) is not None:  # its files would pass for a node's
            raise ConfigError(f"{self.path}: lies in the nodes of the campaign in {outer}; choose another run_dir")
        with held(self.path, purpose, what="run directory"):
            self._remove_stale_temp_files()
            yield self

    def _remove_stale_temp_files(self) -> None:
        """Atomic writes a kill -9 cut short leave `.<name>.<random>.tmp` files; only the lock holder
        may remove them, as any other writer's would be live. Only where ikd writes: a run directory
        given as an existing folder (`--run-dir ~`) may hold the user's own files."""
        owned = [self.path / name for name in RUN_SUBDIRS if (self.path / name).is_dir()]
        candidates = [*self.path.glob(f".*{TEMP_SUFFIX}"), *(p for d in owned for p in d.rglob(f".*{TEMP_SUFFIX}"))]
        for stale in candidates:  # rglob does not follow symlinked dirs
            if stale.is_file() and is_temp_name(stale.name):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def exists(self) -> bool:
        return self.lineage_path.is_file()

    def load(self) -> Lineage:
        try:
            document = json.loads(self.lineage_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, JSON or a huge number
            raise CheckpointError(f"{self.lineage_path}: not readable JSON ({exc})") from None
        if not isinstance(document, dict):  # pydantic would name no key: "invalid : Input should be..."
            raise CheckpointError(f"{self.lineage_path}: is JSON {type(document).__name__}; expected an object")
        version = document.get("version")
        if isinstance(version, int) and version > LINEAGE_VERSION:
            raise CheckpointError(
                f"{self.lineage_path}: written by a newer ikd (lineage version {version}; this one reads "
                f"version {LINEAGE_VERSION}); upgrade ikd to read it"
            )
        try:
            lineage = Lineage.model_validate(document)
        except ValidationError as exc:
            where, first = first_validation_error(exc)
            raise CheckpointError(f"{self.lineage_path}: invalid {where}: {first['msg']}") from None
        self._check_records(lineage)
        return lineage

    def _check_records(self, lineage: Lineage) -> None:
        """Architectures valid, ids unique, every parent and teacher present, no node its own ancestor: what
        ikd writes, so anything else is an edit or damage, refused here rather than met later as a bare
        error (a parent loop would hang every walk up the chain)."""
        expected = "expected a lineage.json written by `ikd compress`"
        parents: dict[str, str | None] = {}
        for i, node in enumerate(lineage.nodes):
            if node.kind is not NodeKind.EXTERNAL:
                try:
                    ArchSpec.model_validate(node.arch)
                except ValidationError as exc:
                    where, first = first_validation_error(exc)
                    where = f"nodes.{i}.arch.{where}"
                    raise CheckpointError(f"{self.lineage_path}: invalid {where}: {first['msg']}") from None
            if node.id in parents:
                raise CheckpointError(f"{self.lineage_path}: node id {node.id!r} appears twice; {expected}")
            parents[node.id] = node.parent
        for node in lineage.nodes:  # ikd drops a node with all that grew from it: a gap is an edit or damage
            if missing := [i for i in (node.parent, *node.teachers) if i is not None and i not in parents]:
                raise CheckpointError(
                    f"{self.lineage_path}: node {node.id!r} names {missing[0]!r} as its parent or teacher, "
                    f"which the lineage does not hold; {expected}"
                )
        reach_root: set[str] = set()  # ids whose chain of parents is known to end: each chain walked once
        for node in lineage.nodes:
            walked, at = {node.id}, node.parent
            while at is not None and at not in reach_root:
                if at in walked:
                    raise CheckpointError(f"{self.lineage_path}: node {at!r} is its own ancestor; {expected}")
                walked.add(at)
                at = parents[at]
            reach_root.update(walked)

    def save(self, lineage: Lineage) -> None:
        atomic_write_json(self.lineage_path, lineage.model_dump(mode="json"))

    def add_node(self, lineage: Lineage, record: NodeRecord) -> Lineage:
        """Record a finished node (its files already written); replaces an earlier record with its id."""
        return self.add_nodes(lineage, [record])

    def add_nodes(self, lineage: Lineage, records: Iterable[NodeRecord]) -> Lineage:
        """`add_node` for several records, written together (one decision is never half on disk)."""
        nodes = list(lineage.nodes)
        for record in records:
            check_node_id(record.id)
            weights = self.node_dir(record.id) / WEIGHTS_FILE
            # hashed when first recorded with its weights; a later update (a decision) keeps that checksum,
            # so a file changed since is caught by verify, not re-hashed into the record
            if record.sha256 is None and weights.is_file():
                record = record.model_copy(update={"sha256": file_sha256(weights)})
            # replaced in place, so a record updated after the fact (a latency) keeps its position
            at = next((i for i, n in enumerate(nodes) if n.id == record.id), None)
            if at is None:
                nodes.append(record)
            else:
                nodes[at] = record
        updated = lineage.model_copy(update={"nodes": nodes})
        self.save(updated)
        return updated

    def verify(self, lineage: Lineage) -> list[str]:
        """Ids of nodes whose weights are missing or differ from the checksum in the lineage."""
        return [n.id for n in lineage.nodes if n.sha256 is not None and self.weights_problem(n) is not None]

    def load_node(self, node: NodeRecord, map_location: str | torch.device = "cpu") -> tuple[VGG, dict[str, Any]]:
        """A node's model and model.json, refused when its architecture is not the one the lineage records
        (the checksum covers the weights, not model.json: the lineage would describe one model, export another)."""
        model, metadata = load_model(self.node_dir(node.id), map_location=map_location)
        if model.spec != node.spec():
            raise CheckpointError(
                f"{self.node_dir(node.id) / META_FILE}: architecture {model.spec.summary()}, where "
                f"{self.lineage_path} records {node.spec().summary()} for node {node.id!r}"
            )
        return model, metadata

    def weights_problem(self, node: NodeRecord) -> str | None:
        """Why `node`'s weights file cannot be trusted (missing, or not the bytes its recorded sha256 names),
        or None."""
        weights = self.node_dir(node.id) / WEIGHTS_FILE
        if not weights.is_file():
            return f"{weights} is missing"
        if node.sha256 is not None and file_sha256(weights) != node.sha256:
            return f"{weights}: differs from the sha256 recorded in {self.lineage_path}"
        return None


def campaign_of_node(path: Path) -> Path | None:
    """The run directory whose nodes folder holds `path` (nodes/, a node, or anything inside one), or None."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13): nothing of a run's
        return None
    for folder in (resolved, *resolved.parents):
        if folder.name == NODES_DIR and (folder.parent / LINEAGE_FILE).is_file():
            return folder.parent
    return None


def open_run_dir(path: str | Path) -> RunDir:
    """An existing run directory (one with a lineage), or the one error saying it is not one."""
    run = RunDir(Path(path))
    if not run.exists():
        found = "not a file" if run.lineage_path.exists() else "not found"
        raise ConfigError(f"{run.lineage_path}: {found}; expected a run directory written by `ikd compress`")
    return run
