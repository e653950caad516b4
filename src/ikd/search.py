"""The campaign: grow a lineage of ever smaller students, generation by generation.

    root teacher -> propose children (shrink operators) -> distil each from its parent
                 -> score on the validation split -> accept the smallest child that kept accuracy
                 -> it becomes the next parent ... until a stop rule fires.

A child is accepted when its best validation accuracy is at least `root - max_drop` and at least
`parent - max_step_drop` (in percentage points). Candidates train smallest first and the
generation ends at the first one within tolerance (`search.candidates: all` trains every one, to
see them; the choice is the same). The campaign stops when no child is accepted,
no operator can shrink the parent further, a size target is reached, or after
`max_generations`; the reason is written into the lineage. The test split is never consulted.

Resuming: running the same config on the same run directory skips every node already in the
lineage (their files are checked against the stored SHA-256); a node that was interrupted
mid-training is simply trained again.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from ikd.arch import ArchSpec, preset
from ikd.checkpoint import load_model, read_metadata, save_model, training_metadata
from ikd.config import CampaignConfig
from ikd.data import DataSplits, load_dataset
from ikd.errors import CheckpointError, ConfigError
from ikd.external import ExternalTeacher
from ikd.lineage import Lineage, NodeRecord, RunDir, Session
from ikd.model import VGG, build_model
from ikd.executor import WORKER_LOST, LocalExecutor, RayExecutor
from ikd.objective import LossWeights
from ikd.runtime import describe_machine, resolve_device, resolve_precision
from ikd.strategy import (
    SEED_STRIDE,
    Candidate,
    propose,
    rank,
    teacher_weights,
    teachers_of,
)
from ikd.tensorboard_log import TensorBoardLog
from ikd.train import TrainConfig, evaluate, train_model
from ikd.training_pass import TrainingPass

ROOT_ID = "g0-teacher"


def _points(accuracy: float) -> float:
    return 100.0 * accuracy


def falls_short(points: float, reference: float, tolerance: float) -> bool:
    """Whether `points` is more than `tolerance` below `reference` (all in percentage points).
    Accuracies are ratios of image counts, so a child exactly at the floor must not be rejected by
    float rounding (99.38333 - 0.3 = 99.08333333333334 > 99.08333333333333)."""
    return points < reference - tolerance - 1e-9


def _config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


class Campaign:
    """Runs (or resumes) one compression campaign described by a CampaignConfig."""

    def __init__(self, config: CampaignConfig, *, progress: bool = True, force: bool = False,
                 teacher: torch.nn.Module | None = None, hint_layer: str | None = None,
                 student: ArchSpec | None = None):
        """`teacher`, when given, is a user's trained module used as the root (see ikd.external);
        the chain then starts from `student` (default: vgg11 fitted to the data)."""
        self.config = config
        self.user_teacher, self.hint_layer, self.first_student = teacher, hint_layer, student
        self.external: ExternalTeacher | None = None
        self.progress = progress
        self.run = RunDir(Path(config.run_dir))
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.lineage = self._open_lineage(force)
        # saved with the lineage's next write (the first node's, for a new campaign)
        self.lineage = self.lineage.model_copy(update={"sessions": [*self.lineage.sessions, Session(
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), machine=describe_machine(self.device))]})
        self.data: DataSplits | None = None
        self.executor: LocalExecutor | RayExecutor | None = None
        self._models: dict[str, VGG | ExternalTeacher] = {}
        self.on_epoch = TensorBoardLog(self.run.path) if config.log == "tensorboard" else None

    # --- lineage ----------------------------------------------------------------------------
    def _open_lineage(self, force: bool) -> Lineage:
        wanted = self.config.decision_fields()
        if not self.run.exists():
            # Written with the first node, so a campaign that fails before any work leaves nothing.
            return Lineage(config=wanted)
        lineage = self.run.load()
        if not lineage.nodes:
            return Lineage(config=wanted)
        stored = lineage.config
        try:  # keys added to ikd since the run started compare as their defaults
            stored = CampaignConfig.model_validate(stored).decision_fields()
        except ValidationError:
            pass
        differences = _config_differences(stored, wanted)
        if differences and not force:
            raise ConfigError(
                f"{self.run.path}: holds a campaign with another config ({'; '.join(differences[:4])}"
                f"{' ...' if len(differences) > 4 else ''}); use another run_dir or pass --force to continue it")
        corrupt = set(self.run.verify(lineage))
        if corrupt:
            # Files that no longer match their checksum are retrained rather than trusted. Nodes
            # grown from them (children, pupils) would then hang from a different model, so they
            # are dropped too -- but only when asked: they are finished work.
            dependents, grew = set(), True
            while grew:
                found = {n.id for n in lineage.nodes if n.id not in corrupt | dependents
                         and ({n.parent, *n.teachers} & (corrupt | dependents))}
                grew = bool(found)
                dependents |= found
            if dependents and not force:
                raise CheckpointError(
                    f"{self.run.path}: the weights of {', '.join(sorted(corrupt))} are missing or changed, and "
                    f"{', '.join(sorted(dependents))} grew from them; restore the files, or pass --force to "
                    "retrain them all")
            self.log(f"nodes with missing or changed weights will be retrained: {', '.join(sorted(corrupt | dependents))}")
            lineage = lineage.model_copy(update={"nodes": [n for n in lineage.nodes if n.id not in corrupt | dependents]})
        lineage = lineage.model_copy(update={"config": wanted})
        self.run.save(lineage)
        return lineage

    def log(self, message: str) -> None:
        if self.progress:
            print(f"ikd: {message}", file=sys.stderr)

    def _record(self, record: NodeRecord) -> None:
        self.lineage = self.run.add_node(self.lineage, record)

    # --- data and models --------------------------------------------------------------------
    def _load_data(self) -> DataSplits:
        if self.data is None:
            d = self.config.data
            self.data = load_dataset(d.name, d.dir, val_fraction=d.val_fraction, split_seed=d.split_seed,
                                     image_size=d.image_size)
        return self.data

    def _load_node(self, node_id: str) -> VGG | ExternalTeacher:
        if node_id == ROOT_ID and self.lineage.root().arch.get("external"):
            return self._external_teacher()
        model, _ = load_model(self.run.node_dir(node_id), map_location=self.device)
        return model

    def _external_teacher(self) -> ExternalTeacher:
        if self.user_teacher is None:
            raise ConfigError(f"{self.run.path}: the root teacher is a user module; pass it again "
                              "(ikd.compress(..., teacher=module)) to resume")
        if self.external is None:
            data = self._load_data()
            example = torch.zeros(2, data.in_channels, data.image_size, data.image_size, device=self.device)
            self.external = ExternalTeacher(self.user_teacher.to(self.device), self.hint_layer, example)
        return self.external

    def _train_config(self, section, epochs: int | None = None, seed_offset: int = 0) -> TrainConfig:
        return TrainConfig(
            epochs=epochs or section.epochs, batch_size=section.batch_size, lr=section.lr,
            weight_decay=section.weight_decay, schedule=section.schedule, augment=section.augment,
            precision=self.precision.name, device=self.device.type, seed=self.config.seed + seed_offset,
        )

    def _evaluate(self, model: VGG | ExternalTeacher, split) -> dict[str, float]:
        data = self._load_data()
        return evaluate(model, split, mean=data.mean, std=data.std, device=self.device, precision=self.precision)

    def _node_record(self, node_id: str, spec: ArchSpec, *, generation: int, status: str, parent: str | None,
                     teachers: list[str], operator: str | None, result=None, val: float | None,
                     test: float | None, epochs: int, seconds: float, loss: dict | None = None,
                     reason: str = "") -> NodeRecord:
        root_params = self.lineage.root().params if node_id != ROOT_ID else spec.num_params()
        return NodeRecord(
            id=node_id, generation=generation, parent=parent, teachers=teachers, operator=operator,
            status=status, arch=spec.to_json_dict(), params=spec.num_params(),
            size_bytes_fp32=spec.size_bytes_fp32(), macs=spec.macs(),
            compression=root_params / spec.num_params(), val_accuracy=val,
            val_accuracy_last=result.last_val_accuracy if result else None, test_accuracy=test,
            best_epoch=result.best_epoch if result else None, epochs=epochs, seed=self.config.seed,
            seconds=round(seconds, 2), loss=loss or {}, reason=reason,
        )

    # --- the root teacher -------------------------------------------------------------------
    def _ensure_root(self) -> None:
        existing = self.lineage.node(ROOT_ID)
        if existing is not None:
            if existing.arch.get("external"):
                params = self._external_teacher().num_params()
                if params != existing.params:
                    raise ConfigError(f"{self.run.path}: the teacher passed has {params:,} params, the run's "
                                      f"root had {existing.params:,}; not the same teacher")
            return
        data = self._load_data()
        cfg = self.config.teacher
        started = time.perf_counter()
        result, epochs = None, 0
        if self.user_teacher is not None:
            self._record_external_root(data, started)
            return
        if cfg.dir:
            model = self._import_teacher(Path(cfg.dir), data)
            save_model(self.run.node_dir(ROOT_ID), model, read_metadata(Path(cfg.dir)))
            val, test = self._evaluate(model, data.val)["accuracy"], self._evaluate(model, data.test)
        else:
            spec = preset(cfg.arch, in_channels=data.in_channels, image_size=data.image_size,
                          num_classes=data.num_classes)
            model = build_model(spec, seed=self.config.seed)
            train_config = self._train_config(cfg)
            self.log(f"training the root teacher {cfg.arch} ({spec.num_params():,} params)")
            result = train_model(model, data, train_config, progress=self.progress, description=ROOT_ID,
                                 on_epoch=self.on_epoch)
            epochs = cfg.epochs
            # The model holds its best-by-validation weights, so that epoch's score is its val accuracy.
            val, test = result.best_val_accuracy, self._evaluate(model, data.test)
            save_model(self.run.node_dir(ROOT_ID), model, training_metadata(
                data=data, val_fraction=self.config.data.val_fraction, split_seed=self.config.data.split_seed,
                spec=spec, config=train_config, result=result, test=test))
        self._record(self._node_record(ROOT_ID, model.spec, generation=0, status="teacher", parent=None, teachers=[],
                                       operator=None, result=result, val=val, test=test["accuracy"],
                                       epochs=epochs, seconds=time.perf_counter() - started))
        self.log(f"root teacher: val {_points(val):.2f}%, test {_points(test['accuracy']):.2f}%")

    def _record_external_root(self, data: DataSplits, started: float) -> None:
        teacher = self._external_teacher()
        val, test = self._evaluate(teacher, data.val)["accuracy"], self._evaluate(teacher, data.test)["accuracy"]
        params = teacher.num_params()
        self._record(NodeRecord(
            id=ROOT_ID, generation=0, status="teacher", arch={"external": type(self.user_teacher).__name__},
            params=params, size_bytes_fp32=4 * params, macs=0, compression=1.0, val_accuracy=val,
            test_accuracy=test, seed=self.config.seed, seconds=round(time.perf_counter() - started, 2),
            reason=f"user module, hint layer {self.hint_layer!r}; MACs not computed"))
        self.log(f"root teacher (user module): val {_points(val):.2f}%, test {_points(test):.2f}%")

    def _first_student(self) -> ArchSpec:
        if self.first_student is not None:
            return self.first_student
        data = self._load_data()
        return preset("vgg11", in_channels=data.in_channels, image_size=data.image_size,
                      num_classes=data.num_classes)

    def _import_teacher(self, directory: Path, data: DataSplits) -> VGG:
        model, metadata = load_model(directory, map_location=self.device)
        spec, recorded = model.spec, metadata.get("dataset", {})
        if (spec.in_channels, spec.image_size, spec.num_classes) != (data.in_channels, data.image_size, data.num_classes):
            raise ConfigError(f"teacher.dir {directory}: model expects {spec.in_channels}x{spec.image_size}"
                              f"x{spec.image_size} images and {spec.num_classes} classes; the data has "
                              f"{data.in_channels}x{data.image_size}x{data.image_size} and {data.num_classes}")
        split = (recorded.get("name"), recorded.get("val_fraction"), recorded.get("split_seed"))
        expected = (data.name, self.config.data.val_fraction, self.config.data.split_seed)
        if split != expected:
            # A teacher trained on another split may have trained on this campaign's validation images.
            raise ConfigError(f"teacher.dir {directory}: trained on dataset/val_fraction/split_seed {split}, "
                              f"the campaign uses {expected}; its validation accuracy would not be honest")
        if list(recorded.get("mean", data.mean)) != list(data.mean):
            raise ConfigError(f"teacher.dir {directory}: normalisation differs from this dataset's")
        return model

    # --- experts (ancestors-* strategies) ------------------------------------------------------
    def _ensure_experts(self) -> list[str]:
        """Copy each expert teacher into the run (so a resume never depends on the original files)."""
        ids = []
        for i, directory in enumerate(self.config.ensemble.experts, start=1):
            name = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in Path(directory).name)[:60]
            node_id = f"expert{i}-{name}".rstrip(".")
            ids.append(node_id)
            if self.lineage.node(node_id) is not None:
                continue
            data = self._load_data()
            started = time.perf_counter()
            model = self._import_teacher(Path(directory), data)
            save_model(self.run.node_dir(node_id), model, read_metadata(Path(directory)))
            val, test = self._evaluate(model, data.val)["accuracy"], self._evaluate(model, data.test)["accuracy"]
            self._record(self._node_record(node_id, model.spec, generation=0, status="expert", parent=None, teachers=[],
                                           operator=None, val=val, test=test, epochs=0,
                                           seconds=time.perf_counter() - started, reason=f"from {directory}"))
            self.log(f"expert teacher {node_id}: {model.spec.summary()}, val {_points(val):.2f}%")
        return ids

    # --- training students -----------------------------------------------------------------
    def _teacher(self, node_id: str) -> VGG | ExternalTeacher:
        if node_id not in self._models:
            self._models[node_id] = self._load_node(node_id)
        return self._models[node_id]

    def _executor(self) -> LocalExecutor | RayExecutor:
        if self.executor is None:
            data, chosen = self._load_data(), self.config.executor
            if chosen.kind == "ray":
                self.executor = RayExecutor(data, address=chosen.ray_address, cpus_per_job=chosen.cpus_per_job,
                                            gpus_per_job=chosen.gpus_per_job, precision=self.config.precision,
                                            on_epoch=self.on_epoch, log=self.log)
            else:
                self.executor = LocalExecutor(data, self.device, progress=self.progress, on_epoch=self.on_epoch,
                                              log=self.log)
        return self.executor

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
        if self.on_epoch is not None:
            self.on_epoch.close()

    def _train_students(self, candidates: list[Candidate], *, generation: int, teacher_ids: list[str],
                        inherit_from: str | None, status: str, parent_id: str | None, epochs: int) -> None:
        """Train candidates -- distilled from `teacher_ids`, or with plain CE when there are none --
        on the executor, then save and record each one. A candidate whose loss diverges, or whose
        worker dies, is recorded as `failed`; the others go on."""
        data = self._load_data()
        cfg, weights, ensemble = self.config.student, self.config.loss, self.config.ensemble
        augment = cfg.augment if cfg.augment is not None else data.augment
        cached = bool(teacher_ids) and cfg.cache_teacher and augment == "none"
        stages: list[tuple[LossWeights | None, int]] = []
        if not teacher_ids:
            stages.append((None, epochs))
        elif cfg.hint_stage == "two-stage" and weights.gamma > 0 and cfg.hint_epochs > 0:
            stages.append((LossWeights(temperature=weights.temperature, alpha=0, beta=0, gamma=weights.gamma),
                           cfg.hint_epochs))
            stages.append((weights.model_copy(update={"gamma": 0.0}), epochs))
        else:
            stages.append((weights, epochs))
        hints = "each" if ensemble.hints == "each" and len(teacher_ids) > 1 else "first"
        t_weights = teacher_weights(self.lineage, teacher_ids, ensemble) if teacher_ids else []
        job = TrainingPass(
            candidates=tuple(candidates),
            seeds=tuple(self.config.seed + generation + SEED_STRIDE * c.seed_index for c in candidates),
            teacher_ids=tuple(teacher_ids), inherit_from=inherit_from, stages=tuple(stages),
            train_config=self._train_config(cfg, epochs, seed_offset=generation), cached=cached, hints=hints,
            teacher_weights=tuple(t_weights), aggregate=ensemble.aggregate, drop=ensemble.drop)
        trained = self._executor().run(job, self._teacher)
        loss = ({"objective": "cross-entropy"} if not teacher_ids else
                weights.model_dump() | {"hint_stage": cfg.hint_stage, "inherit": inherit_from is not None,
                                        "cached_teacher": cached})
        if len(teacher_ids) > 1:
            loss |= {"aggregate": ensemble.aggregate, "weighting": ensemble.weighting, "drop": ensemble.drop,
                     "hints": hints, "teacher_weights": t_weights}
        total_epochs = sum(e for _, e in stages)
        for candidate, done in zip(candidates, trained):
            result = done.outcome
            common = dict(generation=generation, parent=parent_id, teachers=list(teacher_ids),
                          operator=candidate.operator, epochs=total_epochs, seconds=done.seconds, loss=loss)
            if isinstance(result, Exception):
                self._record(self._node_record(candidate.node_id, candidate.spec, status="failed", val=None, test=None,
                                               reason=str(result), **common))
                self.log(f"{candidate.node_id} failed: {result}")
                continue
            student = done.model.to(self.device)
            test = self._evaluate(student, data.test)
            save_model(self.run.node_dir(candidate.node_id), student, training_metadata(
                data=data, val_fraction=self.config.data.val_fraction, split_seed=self.config.data.split_seed,
                spec=candidate.spec, config=job.train_config, result=result,
                test=test, extra={"distillation": {"parent": parent_id, "teachers": teacher_ids,
                                                   "operator": candidate.operator, **loss}}))
            self._record(self._node_record(candidate.node_id, candidate.spec, status=status, result=result,
                                           val=result.best_val_accuracy, test=test["accuracy"], **common))

    def _baselines(self) -> None:
        """The final student's architecture trained from scratch (CE) and by one-shot KD from the
        root, each for the epochs the chain spent reaching it: does iterating pay?"""
        final = self.lineage.final()
        if final.status != "accepted":
            return
        chain, node = [], final
        while node.status == "accepted":
            chain.append(node)
            node = self.lineage.node(node.parent)
        budget = sum(n.epochs for n in chain)
        spec = ArchSpec.model_validate(final.arch)
        for node_id, teacher_ids in (("baseline-scratch", []), ("baseline-oneshot-kd", [ROOT_ID])):
            if self.lineage.node(node_id) is not None:
                continue
            self.log(f"baseline {node_id}: {spec.summary()} for {budget} epochs")
            self._train_students([Candidate(node_id, "baseline", spec)], generation=final.generation,
                                 teacher_ids=teacher_ids, inherit_from=None, status="baseline", parent_id=None,
                                 epochs=budget)

    # --- deciding ---------------------------------------------------------------------------
    def _within_tolerance(self, parent: NodeRecord, node: NodeRecord) -> str | None:
        """None when `node` keeps accuracy within both tolerances, else why not."""
        if node.val_accuracy is None:
            return node.reason or "failed"
        search, root = self.config.search, self.lineage.root()
        val = _points(node.val_accuracy)
        if falls_short(val, _points(root.val_accuracy), search.max_drop):
            return f"val {val:.2f}% < root {_points(root.val_accuracy):.2f}% - max_drop {search.max_drop}"
        if falls_short(val, _points(parent.val_accuracy), search.max_step_drop):
            return f"val {val:.2f}% < parent {_points(parent.val_accuracy):.2f}% - max_step_drop {search.max_step_drop}"
        return None

    def _frontier(self) -> list[NodeRecord]:
        """The current parents: the latest generation's accepted nodes, or the root."""
        accepted = [n for n in self.lineage.nodes if n.status == "accepted"]
        if not accepted:
            return [self.lineage.root()]
        latest = max(n.generation for n in accepted)
        return sorted((n for n in accepted if n.generation == latest), key=rank)

    def _target_reached(self, node: NodeRecord) -> str | None:
        search = self.config.search
        if search.target_params and node.params <= search.target_params:
            return f"target reached: {node.id} has {node.params:,} <= {search.target_params:,} params"
        if search.target_compression and node.compression >= search.target_compression:
            return f"target reached: {node.id} is {node.compression:.1f}x smaller than the root"
        return None

    def _candidates(self, generation: int, parent: NodeRecord, branch: int | None) -> list[Candidate]:
        prefix = f"g{generation}-" + (f"b{branch}-" if branch is not None else "")
        if parent.arch.get("external"):  # a user module cannot be shrunk: the chain starts from a spec
            return [Candidate(f"{prefix}student", "initial", self._first_student())]
        return propose(ArchSpec.model_validate(parent.arch), self.config.search, prefix)

    def _grow(self, generation: int, parent: NodeRecord, candidates: list[Candidate],
              expert_ids: list[str]) -> tuple[list[NodeRecord], list[str], bool]:
        """Train (or reuse) one parent's candidates; returns (trained records, ids not trained,
        whether the budget stopped it).

        parent-child strategies train them smallest first and stop at the first within tolerance:
        the rule keeps the smallest that passes, so the larger ones need not be trained at all.
        """
        search = self.config.search
        teacher_ids = teachers_of(self.lineage, parent, search, self.config.ensemble, expert_ids)
        self._models = {k: m for k, m in self._models.items() if k in teacher_ids}  # bound memory
        inherit_from = parent.id if self.config.student.inherit and not parent.arch.get("external") else None

        def train(batch: list[Candidate]) -> bool:
            """False when the budget does not cover this pass (nothing is trained)."""
            todo = [c for c in batch if self._needs_training(c.node_id)]  # else finished before a stop
            if todo and not self._budget_allows(len(todo)):
                return False
            if todo:
                self.log(f"generation {generation}: distilling {', '.join(c.node_id for c in todo)} "
                         f"({', '.join(f'{c.spec.num_params():,}' for c in todo)} params) from {', '.join(teacher_ids)}")
                self._train_students(todo, generation=generation, teacher_ids=teacher_ids, inherit_from=inherit_from,
                                     status="candidate", parent_id=parent.id, epochs=self.config.student.epochs)
            return True

        # Together in one pass (one teacher forward per batch locally, parallel jobs on Ray) unless
        # smallest-first may make the larger candidates unnecessary.
        together = search.many_children() or search.candidates == "all"
        batches = [candidates] if together else [[c] for c in candidates]
        lazy = not together
        trained: list[NodeRecord] = []
        for i, batch in enumerate(batches):
            if (lazy and trained and batch[0].spec.num_params() > trained[-1].params
                    and any(self._within_tolerance(parent, n) is None for n in trained)):
                return trained, [c.node_id for b in batches[i:] for c in b], False
            if not train(batch):
                return trained, [c.node_id for b in batches[i:] for c in b], True
            trained += [self.lineage.node(c.node_id) for c in batch]
        return trained, [], False

    def _needs_training(self, node_id: str) -> bool:
        """Not in the lineage yet, or lost with its worker (the job failed, not the training)."""
        node = self.lineage.node(node_id)
        return node is None or (node.status == "failed" and node.reason.startswith(WORKER_LOST))

    def _child_epochs(self) -> int:
        """Epochs spent on candidates so far (each over the whole training set)."""
        return sum(n.epochs for n in self.lineage.nodes if n.status in ("candidate", "accepted", "rejected", "failed"))

    def _epochs_per_child(self) -> int:
        cfg = self.config.student
        two_stage = cfg.hint_stage == "two-stage" and self.config.loss.gamma > 0
        return cfg.epochs + (cfg.hint_epochs if two_stage else 0)

    def _budget_allows(self, children: int) -> bool:
        budget = self.config.search.budget_epochs
        return budget is None or self._child_epochs() + children * self._epochs_per_child() <= budget

    def run_generation(self, generation: int, frontier: list[NodeRecord], expert_ids: list[str]) -> str | None:
        """Grow every frontier parent's children, decide, and return a stop reason (None: go on)."""
        search = self.config.search
        branches = [(parent, self._candidates(generation, parent, b if len(frontier) > 1 else None))
                    for b, parent in enumerate(frontier)]
        if not any(candidates for _, candidates in branches):
            return f"no operator can shrink {', '.join(p.id for p in frontier)} further"
        kept: list[NodeRecord] = []
        failed: list[NodeRecord] = []
        skipped: list[str] = []
        out_of_budget = False
        for parent, candidates in branches:
            trained, not_trained, stopped = self._grow(generation, parent, candidates, expert_ids)
            skipped += not_trained
            out_of_budget |= stopped
            for node in trained:
                if node.status == "failed":
                    failed.append(node)
                    continue
                reason = self._within_tolerance(parent, node)
                if reason is None:
                    kept.append(node)
                self._record(node.model_copy(update={"status": "rejected", "reason": reason or "within tolerance"}))
        budget_note = None
        if out_of_budget:
            budget_note = (f"training budget spent: {self._child_epochs()} of {search.budget_epochs} epochs used, "
                           f"the next pass needs more")
            self.log(f"generation {generation}: {budget_note}")
        elif skipped:
            self.log(f"generation {generation}: not training {', '.join(skipped)} (larger than a child that passed)")
        beam = search.beam if search.select == "tree" else 1
        chosen = sorted(kept, key=rank)[:beam]
        if not chosen:
            failures = f" ({'; '.join(n.reason for n in failed)})" if failed else ""
            return budget_note or f"generation {generation}: no candidate stayed within tolerance{failures}"
        reason = "smallest within tolerance" if beam == 1 else f"within the beam of {beam} (smallest within tolerance)"
        if skipped and not budget_note:
            reason += f"; larger candidates not trained: {', '.join(skipped)}"
        for node in chosen:
            self._record(self.lineage.node(node.id).model_copy(update={"status": "accepted", "reason": reason}))
            self.log(f"generation {generation}: accepted {node.id} ({node.params:,} params, "
                     f"{node.compression:.1f}x, val {_points(node.val_accuracy):.2f}%)")
        for node in kept[:]:
            if node not in chosen:
                why = f"{chosen[0].id} is smaller" if beam == 1 else f"outside the beam of {beam}"
                self._record(self.lineage.node(node.id).model_copy(update={"reason": f"within tolerance, but {why}"}))
        return budget_note or next((r for n in chosen if (r := self._target_reached(n))), None)

    def run_campaign(self) -> Lineage:
        self._executor()  # a Ray cluster that cannot run a job fails now, not after the teacher trains
        self._ensure_root()
        expert_ids = self._ensure_experts()
        self.lineage = self.lineage.model_copy(update={"stop_reason": None})
        stop = None
        while stop is None:
            frontier = self._frontier()
            generation = frontier[0].generation + 1
            if generation > self.config.search.max_generations:
                stop = f"max_generations ({self.config.search.max_generations}) reached"
                break
            reached = [r for n in frontier if n.status == "accepted" and (r := self._target_reached(n))]
            if reached:
                stop = reached[0]
                break
            stop = self.run_generation(generation, frontier, expert_ids)
        self.lineage = self.lineage.model_copy(update={"stop_reason": stop})
        self.run.save(self.lineage)
        self.log(f"stopped: {stop}")
        if self.config.baselines:
            self._baselines()
        return self.lineage


def compress(config: CampaignConfig, *, progress: bool = True, force: bool = False, **user_teacher) -> Lineage:
    """Run or resume the campaign described by `config`; returns the final lineage.

    `user_teacher`: optional `teacher=`, `hint_layer=`, `student=` (see Campaign).
    """
    torch.manual_seed(config.seed)
    with RunDir(Path(config.run_dir)).locked("a running `ikd compress`"):
        campaign = Campaign(config, progress=progress, force=force, **user_teacher)
        try:
            return campaign.run_campaign()
        finally:
            campaign.close()
