"""One pass of students: the loss stages the config asks for, the pass run on the executor, each
student that comes back saved and recorded (or recorded as failed, with why)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ikd.context import CampaignContext
from ikd.executor import MAX_WORKER_LOSSES, WORKER_LOST, WorkerLost, never_started
from ikd.fit import save_trained
from ikd.lineage import Lineage, NodeRecord, Status
from ikd.objective import LossWeights
from ikd.rules import hint_pre_epochs, late_error_ratios
from ikd.shrink import Candidate
from ikd.strategy import SEED_STRIDE, teacher_weights
from ikd.teachers import TeacherModels
from ikd.train import TrainingDiverged
from ikd.train_state import remove_state
from ikd.training_pass import TrainingPass

Stages = tuple[tuple[LossWeights | None, int], ...]


def loss_stages(ctx: CampaignContext, distilled: bool, epochs: int) -> Stages:
    """(loss weights, epochs) per stage: plain CE (None) without teachers; hint pre-training first
    when two-stage; else the configured KD + CE + hint."""
    weights = ctx.config.loss
    if not distilled:
        return ((None, epochs),)
    if pre := hint_pre_epochs(ctx.config):  # the epochs rules.pass_epochs counts
        hint_only = LossWeights(temperature=weights.temperature, alpha=0, beta=0, gamma=weights.gamma)
        return ((hint_only, pre), (weights.model_copy(update={"gamma": 0.0}), epochs))
    return ((weights, epochs),)


def plan_pass(
    ctx: CampaignContext,
    lineage: Lineage,
    candidates: list[Candidate],
    *,
    generation: int,
    teacher_ids: list[str],
    inherit_from: str | None,
    epochs: int,
    floor: float | None = None,
    reached: Collection[str] | None = None,
) -> TrainingPass:
    student, ensemble = ctx.config.student, ctx.config.ensemble
    augment = ctx.data.augment_for(student.augment)
    return TrainingPass(
        candidates=tuple(candidates),
        seeds=tuple(ctx.config.seed + generation + SEED_STRIDE * c.seed_index for c in candidates),
        teacher_ids=tuple(teacher_ids),
        inherit_from=inherit_from,
        stages=loss_stages(ctx, bool(teacher_ids), epochs),
        train_config=ctx.train_config(student, epochs, seed_offset=generation),
        cached=bool(teacher_ids) and student.cache_teacher and augment == "none",
        hints=ensemble.hints if len(teacher_ids) > 1 else "parent",
        teacher_weights=tuple(teacher_weights(lineage, teacher_ids, ensemble) if teacher_ids else ()),
        aggregate=ensemble.aggregate,
        drop=ensemble.drop,
        # on this machine's disk; a Ray job's worker trains it in its own and sends it back when it pauses
        state_root=str(ctx.state_root),
        deadline=ctx.deadline,
        floor=floor,
        early_slack=ctx.config.search.early_rejection or None,
        later_ratios=(
            late_error_ratios(lineage, epochs, reached)
            if floor is not None and ctx.config.search.early_rejection
            else ()
        ),
    )


def describe_loss(ctx: CampaignContext, job: TrainingPass) -> dict[str, Any]:
    """The loss a pass trained with, as recorded on each of its nodes."""
    if not job.teacher_ids:
        return {"objective": "cross-entropy"}
    ensemble = ctx.config.ensemble
    loss = ctx.config.loss.model_dump() | {
        "hint_stage": ctx.config.student.hint_stage,
        "inherit": job.inherit_from is not None,
        "cached_teacher": job.cached,
    }
    if len(job.teacher_ids) > 1:
        loss |= {
            "aggregate": ensemble.aggregate,
            "weighting": ensemble.weighting,
            "drop": ensemble.drop,
            "hints": job.hints,
            "teacher_weights": list(job.teacher_weights),
        }
    return loss


def train_students(
    ctx: CampaignContext,
    models: TeacherModels,
    lineage: Lineage,
    job: TrainingPass,
    *,
    generation: int,
    status: Status,
    parent_id: str | None,
    record: Callable[[NodeRecord], None],
) -> None:
    """Run `job`, then save and `record` each student as it is done. A candidate whose loss diverges,
    or whose worker dies, is recorded as failed; the others go on."""
    trained = ctx.executor().run(job, models)  # TrainingPaused (time limit) passes through, nothing recorded
    loss = describe_loss(ctx, job)
    earlier_stages = job.epochs_before(len(job.stages) - 1)
    root_params = lineage.root().params
    for candidate, seed, done in zip(job.candidates, job.seeds, trained, strict=True):
        common: dict[str, Any] = dict(
            root_params=root_params,
            generation=generation,
            parent=parent_id,
            teachers=list(job.teacher_ids),
            operator=candidate.operator,
            epochs=earlier_stages + job.stages[-1][1],
            seed=seed,  # the one its weights were drawn with: seed siblings differ here
            seconds=round(done.seconds, 2),
            loss=loss,
        )
        result = done.outcome
        if isinstance(result, Exception) or done.model is None:
            # what it cost: a lost worker's epochs are unknown (its rerun trains it again)
            common["epochs"] = result.epochs if isinstance(result, TrainingDiverged) else 0
            reason = str(result)
            if isinstance(result, WorkerLost):
                started = not never_started(str(result))
                common["workers_lost"] = losses = workers_lost_before(lineage, candidate.node_id) + started
                if losses >= MAX_WORKER_LOSSES:  # no longer "worker lost": a failure the campaign decides with
                    reason = f"failed {losses} times with its worker, not tried again (last: {result})"
            record(NodeRecord.of_spec(candidate.node_id, candidate.spec, status=Status.FAILED, reason=reason, **common))
            ctx.log(f"{candidate.node_id} failed: {reason}")
            continue
        if result.stopped_early:  # it cost only the epochs it trained
            common["epochs"] = earlier_stages + len(result.history)
        test = save_trained(
            ctx.run.node_dir(candidate.node_id),
            done.model.to(ctx.device),
            ctx.data,
            config=job.train_config,
            result=result,
            val_fraction=ctx.config.data.val_fraction,
            split_seed=ctx.config.data.split_seed,
            extra={
                "distillation": {
                    "parent": parent_id,
                    "teachers": list(job.teacher_ids),
                    "operator": candidate.operator,
                    **loss,
                }
            },
        )
        record(
            NodeRecord.of_spec(
                candidate.node_id,
                candidate.spec,
                status=status,
                val_accuracy=result.best_val_accuracy,
                val_accuracy_last=result.last_val_accuracy,
                test_accuracy=test["accuracy"],
                best_epoch=result.best_epoch,
                val_curve=[r.kept_accuracy for r in result.history],
                reason=result.stopped_early or "",
                **common,
            )
        )
    for one, done in zip(job.split(), trained, strict=True):
        # a Ray job's own state (one per candidate, kept at a pause); a lost job's goes on with its rerun
        if not isinstance(done.outcome, WorkerLost) and (state_dir := one.state_dir()) is not None:
            remove_state(state_dir)
    if (state_dir := job.state_dir()) is not None:
        remove_state(state_dir)  # every student is saved: only their final weights are kept


def workers_lost_before(lineage: Lineage, node_id: str) -> int:
    """How many times `node_id`'s worker died on earlier runs of this candidate (0: none, or its
    record is of a training that came back)."""
    node = lineage.find(node_id)
    if node is None or node.status != Status.FAILED or not node.reason.startswith(WORKER_LOST):
        return 0
    # a record of an ikd before the count was kept: one loss (a job that never started: none)
    return node.workers_lost or int(not never_started(node.reason))
