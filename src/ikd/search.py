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

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ikd.arch import ArchSpec, preset
from ikd.checkpoint import load_model, read_metadata, save_model, training_metadata
from ikd.config import CampaignConfig
from ikd.data import DataSplits, load_dataset
from ikd.errors import ConfigError
from ikd.external import ExternalTeacher
from ikd.inherit import inherit_weights
from ikd.lineage import Lineage, NodeRecord, RunDir
from ikd.model import VGG, build_model
from ikd.objective import (
    CachedTeacher,
    LossWeights,
    build_objective,
    cache_teacher_outputs,
    teacher_hint_block,
)
from ikd.runtime import resolve_device, resolve_precision
from ikd.shrink import get_operator
from ikd.train import TrainConfig, evaluate, train_model

ROOT_ID = "g0-teacher"


def _points(accuracy: float) -> float:
    return 100.0 * accuracy


@dataclass
class Candidate:
    node_id: str
    operator: str
    spec: ArchSpec


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
        self.data: DataSplits | None = None
        self._teacher_caches: dict[tuple[str, int | None], CachedTeacher] = {}

    # --- lineage ----------------------------------------------------------------------------
    def _open_lineage(self, force: bool) -> Lineage:
        wanted = self.config.decision_fields()
        if not self.run.exists():
            # Written with the first node, so a campaign that fails before any work leaves nothing.
            return Lineage(config=wanted)
        lineage = self.run.load()
        if not lineage.nodes:
            return Lineage(config=wanted)
        differences = _config_differences(lineage.config, wanted)
        if differences and not force:
            raise ConfigError(
                f"{self.run.path}: holds a campaign with another config ({'; '.join(differences[:4])}"
                f"{' ...' if len(differences) > 4 else ''}); use another run_dir or pass --force to continue it")
        corrupt = self.run.verify(lineage)
        if corrupt:
            # Files that no longer match their checksum are retrained rather than trusted.
            self.log(f"nodes with missing or changed weights will be retrained: {', '.join(corrupt)}")
            lineage = lineage.model_copy(update={"nodes": [n for n in lineage.nodes if n.id not in corrupt]})
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

    def _node_record(self, node_id: str, model: VGG, *, generation: int, status: str, parent: str | None,
                     teachers: list[str], operator: str | None, result=None, val: float, test: float,
                     epochs: int, seconds: float, loss: dict | None = None) -> NodeRecord:
        spec = model.spec
        root_params = self.lineage.root().params if node_id != ROOT_ID else spec.num_params()
        return NodeRecord(
            id=node_id, generation=generation, parent=parent, teachers=teachers, operator=operator,
            status=status, arch=spec.to_json_dict(), params=spec.num_params(),
            size_bytes_fp32=spec.size_bytes_fp32(), macs=spec.macs(),
            compression=root_params / spec.num_params(), val_accuracy=val,
            val_accuracy_last=result.last_val_accuracy if result else None, test_accuracy=test,
            best_epoch=result.best_epoch if result else None, epochs=epochs, seed=self.config.seed,
            seconds=round(seconds, 2), loss=loss or {},
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
            result = train_model(model, data, train_config, progress=self.progress, description=ROOT_ID)
            epochs = cfg.epochs
            # The model holds its best-by-validation weights, so that epoch's score is its val accuracy.
            val, test = result.best_val_accuracy, self._evaluate(model, data.test)
            save_model(self.run.node_dir(ROOT_ID), model, training_metadata(
                data=data, val_fraction=self.config.data.val_fraction, split_seed=self.config.data.split_seed,
                spec=spec, config=train_config, result=result, test=test))
        self._record(self._node_record(ROOT_ID, model, generation=0, status="teacher", parent=None, teachers=[],
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

    # --- one generation ---------------------------------------------------------------------
    def _teacher_cache(self, teacher_id: str, teacher: VGG, hint_block: int | None) -> CachedTeacher:
        key = (teacher_id, hint_block)
        if key not in self._teacher_caches:
            self._teacher_caches.clear()  # one parent at a time: bound the memory
            data = self._load_data()
            self._teacher_caches[key] = cache_teacher_outputs(
                teacher, data.train, mean=data.mean, std=data.std, hint_block=hint_block, device=self.device,
                progress=self.progress)
        return self._teacher_caches[key]

    def _distil(self, candidate: Candidate, parent_id: str, parent: VGG, generation: int) -> None:
        """Train one candidate child from its parent and record it as a `candidate` node."""
        self._train_node(candidate.node_id, candidate.spec, generation=generation, teacher_id=parent_id,
                         teacher=parent,
                         inherit_from=parent if self.config.student.inherit and isinstance(parent, VGG) else None,
                         epochs=self.config.student.epochs, status="candidate", parent_id=parent_id,
                         operator=candidate.operator)

    def _train_node(self, node_id: str, spec: ArchSpec, *, generation: int, teacher_id: str | None,
                    teacher: VGG | None, inherit_from: VGG | None, epochs: int, status: str,
                    parent_id: str | None, operator: str | None) -> None:
        """Train a student (distilled from `teacher`, or with plain CE when None), save and record it."""
        data = self._load_data()
        cfg = self.config.student
        started = time.perf_counter()
        student = build_model(spec, seed=self.config.seed + generation)
        if inherit_from is not None:
            inherit_weights(student, inherit_from)
        augment = cfg.augment if cfg.augment is not None else data.augment
        use_cache = teacher is not None and cfg.cache_teacher and augment == "none"
        weights = self.config.loss
        stages: list[tuple[LossWeights | None, int]] = []
        if teacher is None:
            stages.append((None, epochs))
        elif cfg.hint_stage == "two-stage" and weights.gamma > 0 and cfg.hint_epochs > 0:
            stages.append((LossWeights(temperature=weights.temperature, alpha=0, beta=0, gamma=weights.gamma),
                           cfg.hint_epochs))
            stages.append((weights.model_copy(update={"gamma": 0.0}), epochs))
        else:
            stages.append((weights, epochs))
        result = None
        for stage_weights, stage_epochs in stages:
            objective = None
            if stage_weights is not None:
                block = teacher_hint_block(spec, teacher, stage_weights)
                cached = self._teacher_cache(teacher_id, teacher, block) if use_cache else None
                objective = build_objective(student, teacher, stage_weights, cached=cached,
                                            seed=self.config.seed + generation)
            result = train_model(student, data, self._train_config(cfg, stage_epochs, seed_offset=generation),
                                 objective=objective, progress=self.progress, description=node_id)
        test = self._evaluate(student, data.test)
        loss = ({"objective": "cross-entropy"} if teacher is None else
                weights.model_dump() | {"hint_stage": cfg.hint_stage, "inherit": inherit_from is not None,
                                        "cached_teacher": use_cache})
        save_model(self.run.node_dir(node_id), student, training_metadata(
            data=data, val_fraction=self.config.data.val_fraction, split_seed=self.config.data.split_seed,
            spec=spec, config=self._train_config(cfg, epochs, seed_offset=generation), result=result, test=test,
            extra={"distillation": {"parent": parent_id, "teacher": teacher_id, "operator": operator, **loss}}))
        self._record(self._node_record(
            node_id, student, generation=generation, status=status, parent=parent_id,
            teachers=[teacher_id] if teacher_id else [], operator=operator, result=result,
            val=result.best_val_accuracy, test=test["accuracy"], epochs=sum(e for _, e in stages),
            seconds=time.perf_counter() - started, loss=loss))

    def _baselines(self) -> None:
        """The final student's architecture trained from scratch (CE) and by one-shot KD from the
        root, each for the epochs the chain spent reaching it: does iterating pay?"""
        final = self._parent()
        if final.status != "accepted":
            return
        chain, node = [], final
        while node.status == "accepted":
            chain.append(node)
            node = self.lineage.node(node.parent)
        budget = sum(n.epochs for n in chain)
        spec = ArchSpec.model_validate(final.arch)
        root = None
        for node_id, use_teacher in (("baseline-scratch", False), ("baseline-oneshot-kd", True)):
            if self.lineage.node(node_id) is not None:
                continue
            if use_teacher and root is None:
                root = self._load_node(ROOT_ID)
            self.log(f"baseline {node_id}: {spec.summary()} for {budget} epochs")
            self._train_node(node_id, spec, generation=final.generation, teacher_id=ROOT_ID if use_teacher else None,
                             teacher=root if use_teacher else None, inherit_from=None, epochs=budget,
                             status="baseline", parent_id=None, operator=None)

    def _within_tolerance(self, parent: NodeRecord, node: NodeRecord) -> str | None:
        """None when `node` keeps accuracy within both tolerances, else why not."""
        search, root = self.config.search, self.lineage.root()
        val = _points(node.val_accuracy)
        if val < _points(root.val_accuracy) - search.max_drop:
            return f"val {val:.2f}% < root {_points(root.val_accuracy):.2f}% - max_drop {search.max_drop}"
        if val < _points(parent.val_accuracy) - search.max_step_drop:
            return f"val {val:.2f}% < parent {_points(parent.val_accuracy):.2f}% - max_step_drop {search.max_step_drop}"
        return None

    def _decide(self, generation: int, parent: NodeRecord, candidates: list[NodeRecord],
                skipped: list[str] = ()) -> NodeRecord | None:
        kept = []
        for node in candidates:
            reason = self._within_tolerance(parent, node)
            if reason is None:
                kept.append(node)
            self._record(node.model_copy(update={"status": "rejected", "reason": reason or "within tolerance"}))
        if not kept:
            return None
        # Smallest first; among equal sizes, the more accurate.
        chosen = min(kept, key=lambda n: (n.params, -n.val_accuracy))
        reason = "smallest within tolerance"
        if skipped:
            reason += f"; larger candidates not trained: {', '.join(skipped)}"
        chosen = chosen.model_copy(update={"status": "accepted", "reason": reason})
        self._record(chosen)
        for node in kept:
            if node.id != chosen.id:
                self._record(self.lineage.node(node.id).model_copy(
                    update={"reason": f"within tolerance, but {chosen.id} is smaller"}))
        return chosen

    def _parent(self) -> NodeRecord:
        accepted = [n for n in self.lineage.nodes if n.status == "accepted"]
        return max(accepted, key=lambda n: n.generation) if accepted else self.lineage.root()

    def _target_reached(self, node: NodeRecord) -> str | None:
        search = self.config.search
        if search.target_params and node.params <= search.target_params:
            return f"target reached: {node.id} has {node.params:,} <= {search.target_params:,} params"
        if search.target_compression and node.compression >= search.target_compression:
            return f"target reached: {node.id} is {node.compression:.1f}x smaller than the root"
        return None

    def run_generation(self, generation: int, parent: NodeRecord) -> tuple[NodeRecord | None, str | None]:
        """Train (or reuse) this generation's candidates and decide; returns (accepted, stop reason)."""
        candidates, seen = [], set()
        if parent.arch.get("external"):  # a user module cannot be shrunk: the chain starts from a spec
            candidates.append(Candidate(f"g{generation}-student", "initial", self._first_student()))
            parent_spec = None
        else:
            parent_spec = ArchSpec.model_validate(parent.arch)
        for name in self.config.search.operators if parent_spec is not None else ():
            spec = get_operator(name, self.config.search.width_factor)(parent_spec)
            if spec is not None and spec.model_dump_json() not in seen:
                seen.add(spec.model_dump_json())
                candidates.append(Candidate(f"g{generation}-{name}", name, spec))
        if not candidates:
            return None, f"no operator can shrink {parent.id} further"
        # The rule keeps the smallest candidate within tolerance, so training them smallest first and
        # stopping at the first that passes makes the same choice without training the larger ones.
        candidates.sort(key=lambda c: c.spec.num_params())
        parent_model, trained = None, []
        for candidate in candidates:
            if (self.config.search.candidates == "smallest-first" and trained
                    and candidate.spec.num_params() > trained[-1].params
                    and any(self._within_tolerance(parent, n) is None for n in trained)):
                break
            if self.lineage.node(candidate.node_id) is None:  # else finished before an interruption
                if parent_model is None:
                    parent_model = self._load_node(parent.id)
                self.log(f"generation {generation}: distilling {candidate.node_id} "
                         f"({candidate.spec.summary()}, {candidate.spec.num_params():,} params) from {parent.id}")
                self._distil(candidate, parent.id, parent_model, generation)
            trained.append(self.lineage.node(candidate.node_id))
        skipped = [c.node_id for c in candidates[len(trained):]]
        if skipped:
            self.log(f"generation {generation}: not training {', '.join(skipped)} (larger than a child that passed)")
        accepted = self._decide(generation, parent, trained, skipped)
        if accepted is None:
            return None, f"generation {generation}: no candidate stayed within tolerance"
        self.log(f"generation {generation}: accepted {accepted.id} ({accepted.params:,} params, "
                 f"{accepted.compression:.1f}x, val {_points(accepted.val_accuracy):.2f}%)")
        return accepted, self._target_reached(accepted)

    def run_campaign(self) -> Lineage:
        self._ensure_root()
        self.lineage = self.lineage.model_copy(update={"stop_reason": None})
        stop = None
        while stop is None:
            parent = self._parent()
            generation = parent.generation + 1
            if generation > self.config.search.max_generations:
                stop = f"max_generations ({self.config.search.max_generations}) reached"
                break
            if parent.status == "accepted" and (reached := self._target_reached(parent)):
                stop = reached
                break
            _, stop = self.run_generation(generation, parent)
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
    return Campaign(config, progress=progress, force=force, **user_teacher).run_campaign()
