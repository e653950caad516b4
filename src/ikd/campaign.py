"""The campaign: grow a lineage of ever smaller students, generation by generation.

    root teacher -> propose children (shrink operators) -> distil each from its teachers
                 -> score on the validation split -> keep the smallest child within tolerance
                 -> it parents the next generation ... until a stop rule fires.

The rules (accept, stop, budget) are in ikd.rules, who teaches whom in ikd.strategy, the teachers
themselves in ikd.teachers, one training pass in ikd.distil. Rerunning the same config on the same
run directory resumes: finished nodes are kept (checked by ikd.resume), an interrupted node goes
on after its last finished epoch. The test split is never consulted.
"""

from __future__ import annotations

import dataclasses
import itertools
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ikd import rules
from ikd.arch import ArchSpec, preset_for
from ikd.checkpoint import read_metadata
from ikd.config import CampaignConfig, as_config
from ikd.context import CampaignContext
from ikd.distil import plan_pass, train_students
from ikd.errors import ConfigError, IkdError
from ikd.executor import WORKER_LOST
from ikd.export import time_beside_root
from ikd.external import load_program
from ikd.lineage import (
    FINAL_NOT_KEPT,
    LOST_STOP,
    ROOT_ID,
    Lineage,
    NodeKind,
    NodeRecord,
    RunDir,
    Session,
    Status,
    rank,
    size,
)
from ikd.resume import grown_from, open_campaign
from ikd.runtime import describe_machine, resolve_device
from ikd.shrink import OPERATORS, Candidate, inherit_by
from ikd.strategy import child_prefix, id_prefix, propose, seed_index, teachers_of, versioned_id
from ikd.teachers import (
    TeacherModels,
    check_teacher_views,
    expert_ids,
    expert_teachers,
    first_student,
    imported_root_dir,
    new_experts,
    root_teacher,
    with_teachers_data,
)
from ikd.tensorboard_log import TensorBoardLog
from ikd.train import TrainingPaused
from ikd.train_state import remove_state

FINAL_ID = "final"  # the node of the final distillation
UNDECIDED = "undecided:"  # the reason of a trained candidate no decision has taken yet starts so
BUDGET_UNDECIDED = f"{UNDECIDED} within tolerance, but the budget ran out"
BUDGET_STOP = "training budget spent:"
BASELINE_IDS = ("baseline-scratch", "baseline-oneshot-kd")  # from scratch; one-shot KD from the root


class CampaignPaused(Exception):
    """`time_limit` was reached: every finished node is recorded, the node in training has its state
    saved, and running the same campaign again continues from there."""

    def __init__(self, lineage: Lineage, run_dir: Path):
        done = sum(1 for node in lineage.nodes if node.kind in (NodeKind.STUDENT, NodeKind.FINAL, NodeKind.BASELINE))
        super().__init__(f"time limit reached with {done} student(s) trained; state kept in {run_dir}")
        self.lineage, self.run_dir = lineage, run_dir


class Campaign:
    """Runs (or resumes) one compression campaign described by a CampaignConfig."""

    def __init__(
        self,
        config: CampaignConfig,
        *,
        progress: bool = True,
        force: bool = False,
        teacher: torch.nn.Module | None = None,
        hint_layer: str | None = None,
        student: ArchSpec | None = None,
        redecide: bool = False,
    ):
        """`teacher`: a user's trained module as the root (see ikd.external); the chain then starts
        from `student` (default: vgg11 fitted to the data). `redecide`: replay every generation's
        decision under this config's acceptance rules, reusing the candidates already trained."""
        run = RunDir(Path(config.run_dir))
        if config.teacher.program is not None:  # the command line's way to pass a module
            if teacher is not None:
                raise ConfigError("teacher.program and a module passed as teacher=: expected one root")
            teacher = load_program(config.teacher.program, resolve_device(config.device))
            # recorded where it is, not as spelt from this directory: `ikd export` loads it again to time it
            program = str(Path(config.teacher.program).resolve())
            config = config.model_copy(update={"teacher": config.teacher.model_copy(update={"program": program})})
        hint_layer = config.teacher.hint_layer if hint_layer is None else hint_layer
        # a module passed from Python is the root: teacher.dir is then not read
        config, taught = with_teachers_data(config, run) if teacher is None else (config, None)
        self.ctx = CampaignContext(
            config, run, progress, TensorBoardLog(run.path) if config.log == "tensorboard" else None
        )
        self.config, self.search, self.first_student, self.redecide = config, config.search, student, redecide
        # --force without --redecide continues under changed keys: what they no longer ask for goes
        self.keeps_other_paths = redecide or not force
        if taught is not None:
            self.ctx.log(f"note: {taught}")
        inert = config.inert_settings()
        if teacher is None:
            for key, value in (
                ("student.first_epochs", config.student.first_epochs),
                ("student.first_arch", config.student.first_arch),
                ("teacher.hint_layer", config.teacher.hint_layer),
            ):
                if value is not None:
                    inert.append(
                        f"{key}: read only when the root is a user's module (teacher.program, or compress(teacher=...))"
                    )
        for note in inert:
            self.ctx.log(f"note: {note}; set here, it changes nothing")
        lineage = open_campaign(run, config, force=force, log=self.ctx.log, redecide=redecide)
        session = Session(
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            command=shlex.join(command_line(sys.argv)),
            machine=describe_machine(self.ctx.device),
        )
        # saved with the lineage's next write (the first node's for a new campaign, or at a pause)
        self.lineage = lineage.model_copy(update={"sessions": [*lineage.sessions, session]})
        self.models = TeacherModels(self.ctx, lambda: self.lineage, teacher, hint_layer)
        self.passes_done = 0  # in this session
        # candidates this session's search has trained or reused, in its order: with the decided ones, the
        # evidence early rejection may read (a --redecide keeps another path's trainings it has not reached)
        self.reached: set[str] = set()

    def record(self, *nodes: NodeRecord) -> None:
        self.lineage = self.ctx.run.add_nodes(self.lineage, nodes)

    def close(self) -> None:
        self.ctx.close()

    def run(self) -> Lineage:
        try:
            return self._run()
        except TrainingPaused:  # mid-node: its state is saved beside the run
            # and this session goes on record, though it finished no node: the epochs it trained are in the
            # node the next session finishes (a teacher paused in its training leaves a lineage of no nodes)
            self.ctx.run.save(self.lineage)
            raise CampaignPaused(self.lineage, self.ctx.run.path) from None

    def _run(self) -> Lineage:
        # before the root is recorded; a program is loaded again from its file to be timed
        if self.search.target_speedup and self.models.user_module is not None and not self.config.teacher.program:
            raise ConfigError(
                f"search.target_speedup {self.search.target_speedup:g}: the root teacher is a module passed from "
                "Python, which ikd cannot load again to time beside its students (save it with torch.export and "
                "give it as teacher.program, or use target_macs or target_params)"
            )
        if self.search.target_speedup and self.config.teacher.program:  # found now, not after a generation trains
            self.check_program_timeable(self.config.teacher.program)
        self.ctx.executor()  # a Ray cluster that cannot run a job fails now, not after the teacher trains
        root_dir = imported_root_dir(self.config, self.models.user_module)
        check_teacher_views(self.ctx, root_dir, self.models.user_module)
        self.check_budget_fits_a_first_pass()  # before a teacher trains for a search that cannot begin
        experts_to_copy = new_experts(self.ctx, self.lineage, root_dir)
        if (root := root_teacher(self.ctx, self.lineage, self.models)) is not None:  # or checks the data against it
            self.record(root)
        elif self.ctx.run.exists():  # resumed: what open_campaign changed (config, --redecide, --force), checked now
            self.ctx.run.save(self.lineage)
        for expert in expert_teachers(self.ctx, self.lineage, experts_to_copy):
            self.record(expert)
        experts = expert_ids(self.config.ensemble.experts, root_dir)
        self.lineage = self.lineage.model_copy(update={"stop_reason": None})
        stop = None
        while stop is None:
            # timed here too: a run stopped between accepting a child and timing it times it on resuming
            frontier = self.time_against_root(rules.frontier(self.lineage))
            generation = frontier[0].generation + 1
            stop = rules.stop_before(generation, frontier, self.search) or self.run_generation(
                generation, frontier, experts
            )
        # a candidate still undecided was trained on a path an earlier decision opened (kept for a
        # later --redecide that returns to it), unless this run's budget cut its generation short
        cut_short = stop is not None and stop.startswith(BUDGET_STOP)
        unreached = {
            n.id
            for n in self.lineage.students()
            if n.status == Status.CANDIDATE and not (cut_short and n.reason.startswith(BUDGET_UNDECIDED))
        }
        # ... or, after candidates were lost with their workers, waits in their generation for them
        waiting = (
            {n for n in unreached if n in self.reached and self.lineage.node(n).generation == generation}
            if stop.startswith(LOST_STOP)
            else set()
        )
        reasons = {
            n: f"{UNDECIDED} decided once the candidates lost with their workers train again (rerun the command)"
            if n in waiting
            else f"{UNDECIDED} the search no longer reaches it"
            for n in unreached
        }
        nodes = [n.model_copy(update={"reason": reasons[n.id]}) if n.id in reasons else n for n in self.lineage.nodes]
        self.lineage = self.lineage.model_copy(update={"stop_reason": stop, "nodes": nodes})
        self.ctx.run.save(self.lineage)
        self.ctx.log(f"stopped: {stop}")
        if not self.lineage.answered():
            return self.lineage  # not an answer yet: the rerun trains the lost candidates first
        self.final_distillation()
        self.forget_stale_baselines()  # asked for or not: a lineage must not pair an answer with another's baselines
        if self.config.baselines:
            self.baselines()
        # Each job removed its own state. What is left belongs to no job this campaign will run again:
        # a pass interrupted under one executor whose candidates the other then trained (a local pass keeps
        # one directory for its candidates together, a Ray job one of its own).
        left = sorted(d.name for d in self.ctx.state_root.glob("*"))
        if left:
            self.ctx.log(f"removing training state no job will resume: {', '.join(left)}")
        remove_state(self.ctx.state_root)
        return self.lineage

    def run_generation(self, generation: int, frontier: list[NodeRecord], expert_ids: list[str]) -> str | None:
        """Grow every frontier parent's children, decide, and return a stop reason (None: go on)."""
        branches = [
            (parent, self.candidates(generation, parent, b if len(frontier) > 1 else None))
            for b, parent in enumerate(frontier)
        ]
        if not any(candidates for _, candidates in branches):
            return f"no operator can shrink {', '.join(p.id for p in frontier)} further"
        kept, failed, out_of_budget = [], [], False
        skipped: list[str] = []  # not trained: larger than a child that passed
        blocked: list[str] = []  # not trained: the budget ran out first
        narrow: dict[str, float] = {}  # within tolerance by less than accept_margin: id -> its margin
        for b, (parent, candidates) in enumerate(branches):
            if out_of_budget:  # the generation stays undecided: the other branches' trainings could not count
                blocked.extend(c.node_id for _, later in branches[b:] for c in later)
                break
            trained, not_trained, stopped = self.grow(generation, parent, candidates, expert_ids)
            (blocked if stopped else skipped).extend(not_trained)  # by the budget, or larger than a pass
            out_of_budget |= stopped
            for node in trained:
                if node.status == Status.FAILED:
                    failed.append(node)
                    continue
                reason = rules.rejection(node, parent, self.lineage.root(), self.search)
                if reason is None:
                    kept.append(node)
                    if not rules.roomy(node, parent, self.lineage.root(), self.search):
                        narrow[node.id] = rules.margin(node, parent, self.lineage.root(), self.search)
                # a node trained before this run comes back with its old verdict: keep only why it
                # stopped early, or each resume would append the verdict again
                elif note := rules.early_stop_note(node.reason):
                    reason = f"{reason}; {note}"
                if reason is not None and any(t.id == rules.retry_id(node.id) for t in trained):
                    reason = f"{reason}; retried as {rules.retry_id(node.id)}"
                # one within tolerance stays a candidate until the whole generation is decided below
                if reason is not None:
                    self.record(node.model_copy(update={"status": Status.REJECTED, "reason": reason}))
        if out_of_budget:
            budget_note = (
                f"{BUDGET_STOP} {self.lineage.search_epochs()} of {self.search.budget_epochs} "
                "epochs used, the next pass needs more"
            )
            self.ctx.log(f"generation {generation}: {budget_note}")
            # The candidates not trained could change which of these survive (another branch of a
            # tree, a larger child with room to spare): the generation is decided once they train.
            undecided = f"{BUDGET_UNDECIDED} before {', '.join(blocked) or 'a retry of this generation'} trained"
            pending = {"status": Status.CANDIDATE, "reason": undecided}
            self.record(*(self.lineage.node(n.id).model_copy(update=pending) for n in kept))
            return budget_note
        if skipped:
            self.ctx.log(
                f"generation {generation}: not training {', '.join(skipped)} (larger than a child that passed)"
            )
        chosen = rules.survivors(kept, self.search, narrow)
        lost = [n.id for n in failed if n.reason.startswith(WORKER_LOST)]
        # had each come back at its best (roomy, perfectly accurate), would the rule have chosen it?
        best_case = [n.model_copy(update={"val_accuracy": 1.0}) for n in failed if n.id in lost]
        if chosen and (
            could_win := [n.id for n in rules.survivors([*kept, *best_case], self.search, narrow) if n.id in lost]
        ):
            # trained, it might have been chosen instead: the rerun trains it and decides (the others stay candidates)
            return (
                f"{LOST_STOP} {', '.join(sorted(could_win))} in generation {generation}, which could have been "
                f"chosen over {', '.join(c.id for c in chosen)}"
            )
        if not chosen:
            if lost:
                return (
                    f"{LOST_STOP} {', '.join(sorted(lost))} in generation {generation}, where no other candidate "
                    f"stayed within tolerance ({'; '.join(n.reason for n in failed)})"
                )
            failures = f" ({'; '.join(n.reason for n in failed)})" if failed else ""
            return f"generation {generation}: no candidate stayed within tolerance{failures}"
        beam = self.search.kept_per_generation()
        room = f" by {self.search.accept_margin} points" if narrow else ""
        smallest = "smallest" if self.search.objective == "params" else "fewest MACs"
        reason = f"{smallest} within tolerance{room}"
        if beam > 1:
            reason = f"within the beam of {beam} ({reason})"
        if narrow and all(n.id in narrow for n in chosen):
            reason = f"{smallest} within tolerance (none cleared its floor by {self.search.accept_margin} points)"
        if skipped:
            reason += f"; larger candidates not trained: {', '.join(skipped)}"
        decided = [node.model_copy(update={"status": Status.ACCEPTED, "reason": reason}) for node in chosen]
        for node in (n for n in kept if n not in chosen):
            smaller = size(chosen[0], self.search.objective) < size(node, self.search.objective)
            smaller_by = "is smaller" if self.search.objective == "params" else "costs fewer MACs"
            why = f"{chosen[0].id} {smaller_by if smaller else 'is as small, and no less accurate by validation'}"
            why = why if beam == 1 else f"outside the beam of {beam}"
            if node.id in narrow and chosen[0].id not in narrow:
                why = f"only {narrow[node.id]:.2f} points above its floor (accept_margin {self.search.accept_margin})"
            if beam > 1 and (twin := next((c for c in chosen if c.arch == node.arch), None)):
                why = f"{twin.id}, of the same architecture, was kept"
            decided.append(
                node.model_copy(update={"status": Status.REJECTED, "reason": f"within tolerance, but {why}"})
            )
        # in one write: a run stopped halfway through would resume with part of the generation accepted
        self.record(*decided)
        for node in chosen:
            self.ctx.log(
                f"generation {generation}: accepted {node.id} ({node.params:,} params, "
                f"{node.compression:.1f}x, val {rules.points(node.val_accuracy or 0):.2f}%)"
            )
        chosen = self.time_against_root([self.lineage.node(n.id) for n in chosen])  # as recorded: accepted
        # in the frontier's order (smallest first), as stop_before reads them on a rerun: survivors puts a beam's
        # narrow children last, so the first to reach a target could be another node than a rerun names
        ordered = sorted(chosen, key=lambda n: rank(n, self.search.objective))
        return next((r for n in ordered if (r := rules.target_reached(n, self.search))), None)

    def check_program_timeable(self, program: str) -> None:
        """Refuse search.target_speedup where the root program cannot be timed beside its students (it does
        not convert to ONNX, or its graph disagrees with it), before anything trains."""
        from ikd.export import timeable_program

        data = self.ctx.data
        try:
            timeable_program(
                program, (data.in_channels, data.image_size, data.image_size), {"mean": data.mean, "std": data.std}
            )
        except ConfigError as error:
            raise ConfigError(
                f"search.target_speedup {self.search.target_speedup:g}: the root cannot be timed beside its "
                f"students: {error} (use target_macs or target_params)"
            ) from None

    def time_against_root(self, nodes: list[NodeRecord]) -> list[NodeRecord]:
        """`nodes`, each accepted one timed beside the root where search.target_speedup asks for it and it has
        no such timing yet. Timed once, on the CPU that accepts it: a decision a rerun finds recorded is
        not taken again on another machine, or with other noise."""
        if not self.search.target_speedup:
            return nodes
        batch = self.search.speedup_batch
        untimed = [n for n in nodes if n.status == Status.ACCEPTED and rules.speedup_timing(n, batch) is None]
        if not untimed:
            return nodes
        try:
            timings = time_beside_root(self.ctx.run, self.lineage, untimed, batch)
        except IkdError as error:  # raised again on every resume: say how to go on without the target
            raise type(error)(
                f"search.target_speedup: cannot time {', '.join(n.id for n in untimed)} beside the root: {error} "
                "(the trainings are kept; rerun with another target key and --redecide to go on without it)"
            ) from error
        self.record(*(self.lineage.node(i).model_copy(update={"speedup_timing": t}) for i, t in timings.items()))
        for node_id, timing in timings.items():
            if timing.teacher_ms is not None:
                self.ctx.log(
                    f"timed {node_id} beside the root: {timing.teacher_ms / timing.median_ms:.2f}x faster "
                    f"({timing.median_ms:.3f} vs {timing.teacher_ms:.3f} ms per call of {batch}, onnxruntime, "
                    "one thread)"
                )
        return [self.lineage.node(n.id) for n in nodes]

    def check_budget_fits_a_first_pass(self) -> None:
        """Candidates trained together are trained all or none (`grow`): a search budget under the first
        generation's pass would train the teacher and stop with no student. The config's own check knows
        only one candidate's cost; the root's spec says how many the first generation proposes (a lower
        bound: slim proposes only once the teacher's BatchNorm scales exist)."""
        budget = self.search.budget_epochs
        if budget is None or self.lineage.students():
            return
        if self.models.user_module is not None:  # one first student, of the user's spec
            first = rules.epochs_per_child(self.config, rules.FIRST_STUDENT)
            if not rules.budget_allows(0, 1, first, budget):
                raise ConfigError(
                    f"search.budget_epochs {budget}: the first student of a user module trains for {first} epochs "
                    "(student.first_epochs); with less the search would stop before any student"
                )
            return
        if not self.search.trains_together():
            return
        root = self.lineage.find(ROOT_ID)
        try:
            if root is not None:
                spec = root.spec()
            elif self.config.teacher.dir:
                spec = ArchSpec.model_validate(read_metadata(Path(self.config.teacher.dir))["arch"])
            else:
                spec = preset_for(self.config.teacher.arch, self.ctx.data)
        except (IkdError, KeyError, ValueError):
            return  # an unreadable teacher is reported where it is imported, with its own message
        count, per_child = len(propose(spec, self.search, child_prefix(1, None))), rules.epochs_per_child(self.config)
        if count and not rules.budget_allows(0, count, per_child, budget):
            raise ConfigError(
                f"search.budget_epochs {budget}: the first generation trains its {count} candidates together "
                f"({count} x {per_child} = {count * per_child} epochs); with less the search would stop before any "
                "student (raise it, or train fewer candidates together: fewer operators, factors or cut_sites, "
                "search.seeds, or a strategy that trains one child at a time)"
            )

    def candidates(self, generation: int, parent: NodeRecord, branch: int | None) -> list[Candidate]:
        prefix = child_prefix(generation, branch)
        if parent.kind is NodeKind.EXTERNAL:  # a user module cannot be shrunk: the chain starts from a spec
            spec = first_student(self.ctx, self.first_student)
            objective = self.search.objective  # the size the search minimises; a module's MACs may be uncounted (0)
            unit = "params" if objective == "params" else "MACs"
            if 0 < size(parent, objective) <= spec.size(objective):
                self.ctx.warn(
                    f"the first student ({spec.summary()}, {spec.size(objective):,} {unit}) is not smaller "
                    f"than the teacher module ({size(parent, objective):,} {unit}); pass a smaller one as "
                    "student="
                )
            return [Candidate(f"{prefix}student", rules.FIRST_STUDENT, spec)]
        scales = None
        if any(OPERATORS[name].needs_scales for name in self.search.operators):  # slim ranks the trained channels
            from ikd.inherit import bn_scales

            scales = bn_scales(self.models(parent.id))
        return propose(parent.spec(), self.search, prefix, scales)

    def grow(
        self, generation: int, parent: NodeRecord, candidates: list[Candidate], expert_ids: list[str]
    ) -> tuple[list[NodeRecord], list[str], bool]:
        """Train (or reuse) one parent's candidates: (their records, ids not trained, whether the
        budget stopped it). Unless the strategy trains them together, they train smallest first and
        stop at the first within tolerance with accept_margin to spare: the rule keeps it anyway."""
        teacher_ids = teachers_of(self.lineage, parent, self.search, self.config.ensemble, expert_ids)
        self.models.keep_only(teacher_ids)
        candidates = self.as_recorded(generation, candidates, parent.id, teacher_ids)
        together = self.search.trains_together()
        batches = [candidates] if together else [[c] for c in candidates]
        trained: list[NodeRecord] = []
        for i, batch in enumerate(batches):
            not_trained = [c.node_id for b in batches[i:] for c in b]
            if (
                not together
                and trained
                and batch[0].spec.size(self.search.objective) > size(trained[-1], self.search.objective)
                and any(rules.roomy(n, parent, self.lineage.root(), self.search) for n in trained)
            ):
                return trained, not_trained, False
            # else finished before a stop (or, after --redecide, on the same path before)
            todo = [c for c in batch if self.needs_training(c, parent.id, teacher_ids)]
            if todo and not rules.budget_allows(
                self.lineage.search_epochs(),
                len(todo),
                rules.epochs_per_child(self.config, batch[0].operator),
                self.search.budget_epochs,
            ):
                return trained, not_trained, True
            if todo:
                self.ctx.log(
                    f"generation {generation}: distilling {', '.join(c.node_id for c in todo)} "
                    f"({', '.join(f'{c.spec.num_params():,}' for c in todo)} params) from "
                    f"{', '.join(teacher_ids)}"
                )
                self.distil(
                    todo,
                    generation,
                    teacher_ids,
                    self.inherit_from(parent),
                    rules.child_epochs(self.config, batch[0].operator),
                    status=Status.CANDIDATE,
                    parent_id=parent.id,
                    floor=rules.early_floor(parent, self.lineage.root(), self.search),
                )
            trained += [self.lineage.node(c.node_id) for c in batch]
            self.reached.update(c.node_id for c in batch)
            retried, stopped = self.retry_near_misses(generation, parent, trained, len(batch), teacher_ids)
            trained += retried
            self.reached.update(n.id for n in retried)
            if stopped:
                return trained, [c.node_id for b in batches[i + 1 :] for c in b], True
        return trained, [], False

    def retry_near_misses(
        self, generation: int, parent: NodeRecord, trained: list[NodeRecord], new: int, teacher_ids: list[str]
    ) -> tuple[list[NodeRecord], bool]:
        """Each of the last `new` of `trained` that missed its floor narrowly (rules.near_miss) trained
        again from `parent` on a longer schedule, as a sibling `<id>-retry`: (those retries, whether
        the budget stopped one). Not one that could not be chosen anyway (rules.retry_could_be_chosen:
        roomy siblings no larger fill every place the generation keeps). Like any sibling, a rejected
        near miss is not on the answer's chain, so the baselines are not given its epochs."""
        root = self.lineage.root()
        retried: list[NodeRecord] = []
        for node in (n for n in trained[-new:] if rules.near_miss(n, parent, root, self.search)):
            if not rules.retry_could_be_chosen(node, trained, parent, root, self.search):
                continue
            epochs, cost = (
                rules.retry_epochs(self.config, node.operator),
                rules.epochs_per_retry(self.config, node.operator),
            )
            # a sibling's retry keeps its seed: two siblings' retries are two trainings
            retry = Candidate(
                rules.retry_id(node.id), rules.RETRY, node.spec(), seed_index(node.id), inherit_by(node.operator)
            )
            [retry] = self.as_recorded(generation, [retry], parent.id, teacher_ids)
            if self.needs_training(retry, parent.id, teacher_ids):
                if not rules.budget_allows(self.lineage.search_epochs(), 1, cost, self.search.budget_epochs):
                    return retried, True
                self.ctx.log(
                    f"generation {generation}: {node.id} missed its floor by "
                    f"{-rules.margin(node, parent, root, self.search):.2f} points; training it again for "
                    f"{epochs} epochs as {retry.node_id}"
                )
                self.distil(
                    [retry],
                    generation,
                    teacher_ids,
                    self.inherit_from(parent),
                    epochs,
                    status=Status.CANDIDATE,
                    parent_id=parent.id,
                    floor=rules.floor(parent, root, self.search),
                )
            retried.append(self.lineage.node(retry.node_id))
        return retried, False

    def inherit_from(self, parent: NodeRecord) -> str | None:
        """Whose weights `parent`'s children start from: the parent's (student.inherit), unless it is a
        user module, which a VGG cannot inherit from."""
        return parent.id if self.config.student.inherit and parent.kind is not NodeKind.EXTERNAL else None

    def as_recorded(
        self, generation: int, candidates: list[Candidate], parent_id: str, teacher_ids: list[str]
    ) -> list[Candidate]:
        """`candidates`, each one the lineage holds under another id renamed to that id, so it is reused
        rather than trained again: the same training (generation, parent, operator, shape, teachers,
        sibling seed) named otherwise, as when a width_factor or slim_fraction list replaces a single
        value (`g5-block` against `g5-block50`), or a tree's branch ids (`g2-b0-width`) meet a single
        parent's (`g2-width`), either way, in a --redecide. Never another branch's id (`g2-b1-` for a
        `g2-b0-` candidate): that branch may be about to train under it. One whose id holds another
        finished training not yet decided in this run (another path's, after a --redecide) is renamed to a
        free `versioned_id`, so both trainings stay on record."""
        proposed = {c.node_id for c in candidates}
        renamed = []
        for c in candidates:
            own = self.lineage.find(c.node_id)
            if own is None or not same_training(own, c, parent_id, teacher_ids):
                twin = next(
                    (
                        n
                        for n in self.lineage.students()
                        if n.generation == generation
                        # a single parent's id is no other branch's: a tree may reuse it both ways
                        and (
                            id_prefix(c.node_id) == id_prefix(n.id)
                            or child_prefix(generation, None) in (id_prefix(c.node_id), id_prefix(n.id))
                        )
                        and n.id not in proposed
                        and n.status != Status.FAILED
                        and same_training(n, c, parent_id, teacher_ids)
                    ),
                    None,
                )
                if twin is not None:
                    self.ctx.log(f"{c.node_id} was trained before as {twin.id}; reusing it under that id")
                    proposed.add(twin.id)
                    c = dataclasses.replace(c, node_id=twin.id)
                elif (
                    self.keeps_other_paths
                    and own is not None
                    and own.status == Status.CANDIDATE
                    and own.val_accuracy is not None
                ):
                    # another path's finished training (a --redecide under other operators, factors or objective
                    # cuts other shapes, or grows from another parent; or such a --redecide killed and rerun
                    # without the flag): kept for a later --redecide that returns to it, the asked one trains
                    # under a free id. A decided or failed record, or one --force changed the keys of, makes way.
                    taken = proposed | {n.id for n in self.lineage.nodes}
                    free = next(v for i in itertools.count(2) if (v := versioned_id(c.node_id, i)) not in taken)
                    self.ctx.log(f"{c.node_id} holds another path's training, kept; this one trains as {free}")
                    proposed.add(free)
                    c = dataclasses.replace(c, node_id=free)
            renamed.append(c)
        return renamed

    def needs_training(self, candidate: Candidate, parent_id: str, teacher_ids: list[str]) -> bool:
        """Not in the lineage yet, lost with its worker (the job failed, not the training), or
        recorded under its id from another parent, shape or teachers: that record, and all that grew
        from it, make way (a failed or decided one, or any under --force; `as_recorded` has already
        renamed a candidate whose id holds another path's finished training)."""
        node = self.lineage.find(candidate.node_id)
        if node is None:
            return True
        # Decided records are trusted (their generation was decided before the next one trained), except
        # when deciding again, or when they hold another shape than asked (--force changed an operator's
        # factor: `g3-width` at 0.5, then at 0.75); an undecided or failed one may be left from another path
        # (a --redecide killed halfway and resumed without the flag keeps the old path's failures).
        undecided = node.status in (Status.CANDIDATE, Status.FAILED)
        checked = self.redecide or undecided or node.spec() != candidate.spec
        if checked and not same_training(node, candidate, parent_id, teacher_ids):
            self.forget(node.id)
            return True
        return node.status == Status.FAILED and node.reason.startswith(WORKER_LOST)

    def forget(self, node_id: str) -> None:
        """Drop an out-of-date node (to be trained again, or no longer asked for), with every node
        that grew from it (their parent's weights are about to change): records first, then their
        files and any training state saved under their ids, which belong to the old path."""
        gone = {node_id} | grown_from(self.lineage.nodes, {node_id})
        self.ctx.log(f"{node_id} is out of date; dropping the records of {', '.join(sorted(gone))}")
        self.lineage = self.lineage.model_copy(update={"nodes": [n for n in self.lineage.nodes if n.id not in gone]})
        self.ctx.run.save(self.lineage)
        states = [d for d in self.ctx.state_root.glob("*") if gone & set(d.name.split("+"))]
        for directory in [*(self.ctx.run.node_dir(i) for i in gone), *states]:
            shutil.rmtree(directory, ignore_errors=True)

    def final_distillation(self) -> None:
        """The search's answer distilled again for a full schedule (`student.final_epochs`), from its
        own weights, by the root or by its whole chain: the short per-step trainings find the
        architecture, this one trains it."""
        answer, epochs = self.lineage.search_result(), self.config.student.final_epochs
        # nearest first, as teachers_of orders ancestors: the parent gives the hint (ensemble.hints: parent)
        chain = [n.id for n in reversed(self.lineage.chain(answer)[:-1])]
        teacher_ids = [ROOT_ID] if self.config.student.final_teachers == "root" else chain
        recorded_epochs = rules.pass_epochs(self.config, epochs)  # hint pre-training included
        final = self.lineage.find(FINAL_ID)
        # one made for another answer (--redecide), or under other final keys (--force), or no longer asked for;
        # a chain final of ikd before 2026-12-05 lists the root first (it took the hint from the root): kept
        made_for = ((answer.id, teacher_ids), (answer.id, teacher_ids[::-1]))
        if final is not None and not (
            final.trained_for(recorded_epochs) and (final.parent, final.teachers) in made_for
        ):
            self.forget(FINAL_ID)
        if not epochs or answer.status != Status.ACCEPTED:
            return
        if self.lineage.find(FINAL_ID) is None:
            self.ctx.log(f"final distillation of {answer.id} from {'+'.join(teacher_ids)} for {epochs} epochs")
            self.distil(
                [Candidate(FINAL_ID, NodeKind.FINAL, answer.spec())],
                answer.generation,
                teacher_ids,
                answer.id,
                epochs,
                status=Status.FINAL,
                parent_id=answer.id,
            )
        final = self.lineage.find(FINAL_ID)
        # Decided on every run (a final an older ikd made, tolerances a --force changed): one below its
        # answer's floor is not the answer; within it, the longer training is, even a few images lower.
        if final is not None and final.status == Status.FINAL:
            why = rules.final_rejection(self.lineage, self.search)
            reason = f"{FINAL_NOT_KEPT} by validation it fails the test {answer.id} passed ({why})" if why else ""
            if reason != final.reason:
                self.record(final.model_copy(update={"reason": reason}))
            if why:
                self.ctx.log(f"{FINAL_ID} {reason}; {answer.id} stays the answer")

    def forget_stale_baselines(self) -> None:
        """Drop baselines made for another final student (a --redecide, a --force) or for none now."""
        for node_id in BASELINE_IDS:
            old = self.lineage.find(node_id)
            if old is not None and not self.lineage.is_current_baseline(old):
                self.forget(node_id)

    def baselines(self) -> None:
        """The final student's architecture trained from scratch (CE) and by one-shot KD from the
        root, each for the epochs the chain spent reaching it: does iterating pay?"""
        final, budget = self.lineage.final(), self.lineage.baseline_budget()
        if budget is None:
            return
        for node_id, teacher_ids in zip(BASELINE_IDS, ([], [ROOT_ID]), strict=True):
            if self.lineage.find(node_id) is not None:
                continue
            self.ctx.log(f"baseline {node_id}: {final.spec().summary()} for {budget} epochs")
            self.distil(
                [Candidate(node_id, NodeKind.BASELINE, final.spec())],
                final.generation,
                teacher_ids,
                None,
                rules.distilled_within(self.config, budget) if teacher_ids else budget,
                status=Status.BASELINE,
                parent_id=None,
            )

    def distil(
        self,
        candidates: list[Candidate],
        generation: int,
        teacher_ids: list[str],
        inherit_from: str | None,
        epochs: int,
        *,
        status: Status,
        parent_id: str | None,
        floor: float | None = None,
    ) -> None:
        """Train `candidates` in one pass (plain CE when `teacher_ids` is empty) and record each;
        `floor` is the validation accuracy they must reach (for early rejection)."""
        # Every session trains at least one pass's epoch, so a limit shorter than start-up still progresses.
        if self.passes_done and self.ctx.time_is_up():
            raise CampaignPaused(self.lineage, self.ctx.run.path)
        job = plan_pass(
            self.ctx,
            self.lineage,
            candidates,
            generation=generation,
            teacher_ids=teacher_ids,
            inherit_from=inherit_from,
            epochs=epochs,
            floor=floor,
            reached=self.reached,
        )
        train_students(
            self.ctx,
            self.models,
            self.lineage,
            job,
            generation=generation,
            status=status,
            parent_id=parent_id,
            record=self.record,
        )
        self.passes_done += 1


def command_line(argv: list[str]) -> list[str]:
    """The command as a user would retype it: `python -m ikd` (argv[0] .../ikd/__main__.py) as `ikd`."""
    program = Path(argv[0]).name
    return ["ikd" if program == "__main__.py" else program, *argv[1:]]


def same_training(node: NodeRecord, candidate: Candidate, parent_id: str, teacher_ids: list[str]) -> bool:
    """Whether `node` records the training `candidate` asks for from `parent_id` and `teacher_ids`:
    same parent, teachers, shape, sibling seed and operator. The id does not count (a training's seed
    does not depend on it), except for records from before operators were recorded: those count only
    under their own id, which names the operator (a retry has its near miss's shape and seed)."""
    same_operator = node.operator == candidate.operator or (node.operator is None and node.id == candidate.node_id)
    return (
        (node.parent, node.teachers, node.spec()) == (parent_id, teacher_ids, candidate.spec)
        and seed_index(rules.near_miss_id(node.id)) == candidate.seed_index
        and same_operator
    )


def compress(
    config: CampaignConfig | dict[str, Any] | str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    force: bool = False,
    teacher: torch.nn.Module | None = None,
    hint_layer: str | None = None,
    student: ArchSpec | None = None,
    redecide: bool = False,
) -> Lineage:
    """Run or resume a campaign from a CampaignConfig, a dict of config keys, or a YAML path;
    returns the final lineage.

    `overrides` maps dotted keys (e.g. "search.max_drop") to values, as the CLI flags do.
    `teacher`: your own trained module (images normalised with the dataset's mean/std -> logits)
    as the root, with its hint read from the submodule named `hint_layer`; the chain then starts
    from `student` (default: vgg11 fitted to the data) and shrinks from there. `redecide`: make
    every generation's decision again under this config's acceptance rules and operators
    (rules.REDECIDE_KEYS may differ from the run's without `force`), reusing each trained candidate
    the new path reaches from the same parent and training the others.
    """
    config = as_config(config, overrides)
    torch.manual_seed(config.seed)
    with RunDir(Path(config.run_dir)).locked("a running `ikd compress`"):
        campaign = Campaign(
            config,
            progress=progress,
            force=force,
            teacher=teacher,
            hint_layer=hint_layer,
            student=student,
            redecide=redecide,
        )
        try:
            return campaign.run()
        finally:
            campaign.close()
