"""One training pass: some candidates of one generation, built, distilled from their teachers and
returned with their results. The same function runs in the campaign's process (every candidate of
the pass together, one teacher forward per batch) and in a Ray worker (one candidate per job).

A `TrainingPass` is plain, picklable data: which architectures, seeds, teachers, loss stages and
optimiser settings. Models come from a `models(node_id)` lookup, so the caller decides where the
teachers' weights live (the run directory, or Ray's object store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from ikd.data import DataSplits
from ikd.external import Teacher
from ikd.inherit import inherit_weights
from ikd.model import VGG, build_model
from ikd.objective import (
    CachedTeacher,
    LiveTeacher,
    LossWeights,
    TeacherSource,
    build_objective,
    cache_teacher_outputs,
    teacher_hint_blocks,
)
from ikd.rules import hopeless
from ikd.runtime import Precision, resolve_precision
from ikd.shrink import Candidate
from ikd.train import (
    EpochCallback,
    EpochRecord,
    GiveUp,
    Objective,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    monotonic_deadline,
    steps_per_epoch,
    train_models,
)

Outcome = TrainResult | TrainingDiverged


class PassMember(NamedTuple):
    """A candidate back from its pass: best-by-validation weights, result (or the divergence that
    dropped it), and the wall time earlier processes spent on it, over all its stages (a resumed pass
    is timed in this process only by its caller)."""

    model: VGG
    outcome: Outcome
    earlier_seconds: float


@dataclass(frozen=True)
class TrainingPass:
    """What to train in one pass; `stages` is a list of (loss weights or None for plain CE, epochs)."""

    candidates: tuple[Candidate, ...]
    seeds: tuple[int, ...]
    teacher_ids: tuple[str, ...]
    inherit_from: str | None  # node whose weights every candidate starts from
    stages: tuple[tuple[LossWeights | None, int], ...]
    train_config: TrainConfig
    cached: bool  # teacher outputs computed once over the training set (no augmentation)
    hints: str = "parent"  # "each": a hint from every teacher; "parent": from the first (the parent) only
    teacher_weights: tuple[float, ...] = ()
    aggregate: str = "mean-kd"
    drop: float = 0.0
    # Resumable passes save their training state after every epoch under state_root/<node ids>/stage-<k>.
    state_root: str | None = None
    deadline: float | None = None  # wall-clock (time.time()): stop at the last epoch boundary before it
    # Early rejection (rules.hopeless): the validation accuracy the candidates must reach, the slack
    # on the error cut still expected of them, and what the campaign's candidates cut late (late_error_ratios).
    floor: float | None = None
    early_slack: float | None = None
    later_ratios: tuple[float, ...] = ()

    def split(self) -> list[TrainingPass]:
        """One pass per candidate: the same training, trained alone (the weights come out the same)."""
        return [replace(self, candidates=(c,), seeds=(s,)) for c, s in zip(self.candidates, self.seeds, strict=True)]

    def epochs_before(self, stage: int) -> int:
        """Epochs of the stages before `stage` (hint pre-training before the distillation)."""
        return sum(epochs for _, epochs in self.stages[:stage])

    def state_dir(self) -> Path | None:
        """Where this pass's training state lives while it is unfinished."""
        if self.state_root is None:
            return None
        return Path(self.state_root) / "+".join(c.node_id for c in self.candidates)

    def give_up(self, epochs: int) -> GiveUp | None:
        """The early-rejection rule for a stage of `epochs`, when the pass has a floor and a slack."""
        floor, slack = self.floor, self.early_slack
        if floor is None or not slack:
            return None

        def hopeless_candidate(description: str, history: list[EpochRecord]) -> str | None:
            curve = [r.kept_accuracy for r in history]
            return hopeless(curve, epochs, floor, slack, self.later_ratios)

        return hopeless_candidate


class TeacherOutputStore:
    """Teachers' outputs over the training set, computed once per teacher and reused by every pass
    that needs them; a later pass needing more hint blocks recomputes with the union."""

    def __init__(self, log: Callable[[str], None] = lambda message: None):
        self._caches: dict[str, CachedTeacher] = {}
        self.log = log

    def sources(
        self,
        teacher_ids: tuple[str, ...],
        blocks: dict[str, set[int]],
        models: Callable[[str], Teacher],
        data: DataSplits,
        device: torch.device,
        precision: Precision,
        progress: bool,
    ) -> list[TeacherSource]:
        for other, cache in list(self._caches.items()):
            if other not in teacher_ids and cache.features:  # bound memory: old hint features go, logits stay
                self._caches[other] = CachedTeacher(cache.logits)
        for t in teacher_ids:
            held = self._caches.get(t)
            if held is None or not blocks[t] <= held.hint_blocks:
                self.log(f"caching the outputs of {t}")
                self._caches[t] = cache_teacher_outputs(
                    models(t),
                    data.train,
                    mean=data.mean,
                    std=data.std,
                    hint_blocks=blocks[t] | (held.hint_blocks if held else set()),
                    device=device,
                    precision=precision,
                    progress=progress,
                )
        return [self._caches[t] for t in teacher_ids]


def run_training_pass(
    job: TrainingPass,
    data: DataSplits,
    models: Callable[[str], Teacher],
    *,
    store: TeacherOutputStore,
    device: torch.device,
    progress: bool = False,
    on_epoch: EpochCallback | None = None,
) -> list[PassMember]:
    """Train the pass's candidates together; each comes back with its best-by-validation weights and
    its result, or the TrainingDiverged error that dropped it."""
    students = [build_model(c.spec, seed=seed) for c, seed in zip(job.candidates, job.seeds, strict=True)]
    if job.inherit_from is not None:
        parent = models(job.inherit_from)
        assert isinstance(parent, VGG), f"{job.inherit_from} is a user module: no weights a VGG can inherit"
        for student, candidate in zip(students, job.candidates, strict=True):
            inherit_weights(student, parent, by=candidate.inherit_by)
    outcome: list[Outcome | None] = [None] * len(students)
    earlier = [0.0] * len(students)
    state_dir = job.state_dir()
    precision = resolve_precision(job.train_config.precision, device)
    for stage, (stage_weights, stage_epochs) in enumerate(job.stages):
        alive = [i for i, o in enumerate(outcome) if not isinstance(o, TrainingDiverged)]
        objectives: list[Objective | None] = [None] * len(alive)
        if stage_weights is not None:
            teachers = [models(t) for t in job.teacher_ids]
            blocks: dict[str, set[int]] = {t: set() for t in job.teacher_ids}
            for i in alive:
                needed = teacher_hint_blocks(job.candidates[i].spec, teachers, stage_weights, job.hints)
                for t, block in zip(job.teacher_ids, needed, strict=True):
                    if block is not None:
                        blocks[t].add(block)
            # Views of the teachers' logits, for a KD term (hint pre-training has none); cached outputs are
            # for passes without augmentation, whose teachers never learnt views (teachers.check_teacher_views)
            views = stage_weights.teacher_views if stage_weights.alpha else "none"
            sources: list[TeacherSource] = (
                store.sources(job.teacher_ids, blocks, models, data, device, precision, progress)
                if job.cached
                else [LiveTeacher(models(t), blocks[t], views) for t in job.teacher_ids]
            )
            objectives = [
                build_objective(
                    students[i],
                    teachers,
                    stage_weights,
                    sources=sources,
                    teacher_weights=list(job.teacher_weights),
                    hints=job.hints,
                    aggregate=job.aggregate,
                    drop=job.drop,
                    seed=job.seeds[i],
                    steps_per_epoch=steps_per_epoch(len(data.train), job.train_config),
                )
                for i in alive
            ]
        config = job.train_config.model_copy(update={"epochs": stage_epochs})
        results = train_models(
            [students[i] for i in alive],
            data,
            config,
            objectives=objectives,
            progress=progress,
            descriptions=[job.candidates[i].node_id for i in alive],
            on_epoch=on_epoch,
            state_dir=state_dir / f"stage-{stage}" if state_dir is not None else None,
            discard_foreign_state=True,  # the campaign's config decides the job: another one's state is stale
            deadline=monotonic_deadline(job.deadline) if state_dir is not None else None,
            give_up=job.give_up(stage_epochs) if stage == len(job.stages) - 1 else None,
            stage_follows=stage < len(job.stages) - 1,
        )
        for i, result in zip(alive, results, strict=True):
            if isinstance(result, TrainingDiverged):  # its epochs count from the pass's start
                result.epochs += job.epochs_before(stage)
            else:
                earlier[i] += result.earlier_seconds
            outcome[i] = result
    done = [o for o in outcome if o is not None]
    assert len(done) == len(students), "the first stage trains every candidate"
    return [PassMember(*member) for member in zip(students, done, earlier, strict=True)]
