"""Where a campaign's training passes run.

    local   the pass's candidates train together in this process: one read of each batch, one
            teacher forward (or one cached copy of its outputs) shared by all of them.
    ray     each candidate is its own job on a Ray cluster (`pip install -e '.[ray]'`), so all of a
            generation's candidates train at once. Jobs run on long-lived worker actors that hold
            the dataset (shipped once through Ray's object store) and the teachers' cached outputs,
            so neither is rebuilt per job. Workers return weights and metrics; only the campaign's
            process writes the run directory, so the lineage stays consistent.

A job whose worker dies comes back as a `WorkerLost` outcome: the campaign records the node as
`failed` with the reason and goes on with the other candidates; rerunning the campaign trains
that node again, until it has lost `MAX_WORKER_LOSSES` workers (then it stays failed). A lost
worker is replaced only while the cluster still reports room for it (a dead node takes its CPUs
along); with no worker left, the jobs still queued come back lost too. A job that raised is raised
again as it would be locally.

Under a time limit a job stops at an epoch boundary as it would locally, and a pass with a stopped job
pauses as a whole (nothing recorded, TrainingPaused): each worker sends its job's newest training state
back, finished or stopped, the campaign's process keeps it under the run directory, and the rerun sends
it to whichever worker takes the job, which goes on from there (a finished one is done at once).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ikd.data import DataSplits
from ikd.errors import ConfigError, ForeignStateError, IkdError
from ikd.external import Teacher
from ikd.model import VGG
from ikd.runtime import resolve_device
from ikd.train import EpochCallback, TrainingPaused
from ikd.train_state import pack_state, unpack_state
from ikd.training_pass import Outcome, TeacherOutputStore, TrainingPass, run_training_pass

WORKER_LOST = "worker lost"  # prefix of a failed node's reason when its job, not its training, failed
NO_ROOM = "no worker left and no room on the Ray cluster to start one"
# A job that kills its worker every time (one that always runs out of memory there) would make
# every rerun of the campaign stop for it: after this many losses it is recorded as a plain failure.
MAX_WORKER_LOSSES = 3


def never_started(reason: str) -> bool:
    """Whether a lost job's reason says it was still queued when no worker was left: it killed none."""
    return NO_ROOM in reason


class WorkerLost(IkdError):
    """The process training a job died (killed, out of memory, node lost) before returning it."""


@dataclass
class JobPaused:
    """A Ray job stopped by the time limit after `epoch` of `epochs` (0: not begun before it)."""

    epoch: int
    epochs: int

    def __str__(self) -> str:
        return f"stopped after epoch {self.epoch}/{self.epochs} to stay within the time limit"


@dataclass
class Trained:
    """One candidate back from a pass: its model (best weights; None when its worker was lost),
    outcome, seconds and where it ran."""

    model: VGG | None
    outcome: Outcome | WorkerLost
    seconds: float
    worker: str = "local"


class LocalExecutor:
    def __init__(
        self,
        data: DataSplits,
        device: torch.device,
        *,
        progress: bool,
        on_epoch: EpochCallback | None,
        log: Callable[[str], None],
    ):
        self.data, self.device, self.progress, self.on_epoch = data, device, progress, on_epoch
        self.store = TeacherOutputStore(log)

    def run(self, job: TrainingPass, models: Callable[[str], Teacher]) -> list[Trained]:
        started = time.perf_counter()
        trained = run_training_pass(
            job, self.data, models, store=self.store, device=self.device, progress=self.progress, on_epoch=self.on_epoch
        )
        seconds = (time.perf_counter() - started) / len(trained)  # one pass's wall time, shared
        return [Trained(m.model, m.outcome, seconds + m.earlier_seconds) for m in trained]

    def close(self) -> None:
        pass


class JobWorker:
    """A Ray actor's state: the dataset, the teachers it has been sent and their cached outputs."""

    def __init__(self, data: DataSplits, threads: int):
        torch.set_num_threads(threads)
        self.data = data
        self.models: dict[str, Teacher] = {}
        self.store = TeacherOutputStore()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        remove_orphaned_scratch()

    def train(
        self, job: TrainingPass, model_refs: dict, saved: dict[str, bytes]
    ) -> tuple[VGG | None, Outcome | JobPaused, float, str, dict[str, bytes]]:
        """Train one candidate's pass: (its model, outcome, seconds, this worker, its training state).
        `saved`: the state from an earlier session (pack_state). Under a time limit its state comes back
        finished or not, since another job of the pass may stop and the pass then resumes as a whole."""
        import ray

        device = resolve_device(job.train_config.device)
        self.models = {k: m for k, m in self.models.items() if k in model_refs}  # bound memory: this job's only
        for node_id, ref in model_refs.items():
            if node_id not in self.models:
                self.models[node_id] = ray.get(ref).to(device)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
            # the state lives on this worker's disk while it trains: the campaign's may be on another machine
            local = replace(job, state_root=scratch) if job.state_root is not None else job
            if (state_dir := local.state_dir()) is not None:
                unpack_state(state_dir, saved)
            # its notes on the state (resumed, damaged file skipped) name the campaign's copy, which the user can see
            renamed = _Renaming(sys.stderr, scratch, job.state_root) if job.state_root is not None else sys.stderr
            try:
                with contextlib.redirect_stderr(renamed):
                    [member] = run_training_pass(
                        local, self.data, self.models.__getitem__, store=self.store, device=device
                    )
            except TrainingPaused as stop:
                files = pack_state(state_dir) if state_dir is not None else {}
                return None, JobPaused(stop.epoch, stop.epochs), time.perf_counter() - started, self.name, files
            except ForeignStateError as exc:  # name the campaign's copy, which the user can remove, not this one
                assert job.state_root is not None
                raise ForeignStateError(str(exc).replace(scratch, job.state_root), exc.keys) from None
            files = pack_state(state_dir) if state_dir is not None and job.deadline is not None else {}
        seconds = time.perf_counter() - started + member.earlier_seconds
        return member.model.cpu(), member.outcome, seconds, self.name, files


SCRATCH_PREFIX = "ikd-job-"  # then the worker's pid: a killed worker's scratch is found by its dead pid


def remove_orphaned_scratch(root: Path | None = None) -> list[Path]:
    """Remove the scratch directories of this machine's workers that were killed mid-job (a job's training
    state, hundreds of MB for a VGG-16, which TemporaryDirectory only removes when its process lives on).
    A directory whose pid is alive (a worker, or a process that took a dead worker's pid) is left."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX).partition("-")[0]
        if not pid.isdigit() or not path.is_dir() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no pid at all
        return True
    return True


class _Renaming(io.TextIOBase):
    """A text stream that writes to `target` with every `old` path replaced by `new`."""

    def __init__(self, target, old: str, new: str):
        self.target, self.old, self.new = target, old, new

    def write(self, text: str) -> int:
        self.target.write(text.replace(self.old, self.new))
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor ray needs Ray: pip install 'ray>=2.40' (or, in ikd's checkout, pip install -e '.[ray]')"
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT address that nothing answers is a one-line error now: Ray itself retries it forever."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # auto, local, ray://: Ray reports those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"ray address {address!r}: cannot connect (nothing answered at {host} port {port}: {exc.strerror or exc})"
        ) from None


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}"[:limit]


class RayExecutor:
    """One Ray job per candidate, run on a pool of `JobWorker` actors sized to the cluster."""

    def __init__(
        self,
        data: DataSplits,
        *,
        address: str | None,
        cpus_per_job: float,
        gpus_per_job: float,
        precision: str,
        on_epoch: EpochCallback | None,
        log: Callable[[str], None],
    ):
        ray = self.ray = _import_ray()
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # no address: RAY_ADDRESS if set, else a new instance on this machine's cores ("local"; Ray's
            # own default would join a cluster `ray start` left running here)
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            _check_reachable(address)
            sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(
                    address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"ray address {address!r}: cannot connect ({_first_line(exc)})") from None
            finally:
                # Ray installs its own SIGTERM handler (a dump, exit 1); ikd's stops like Ctrl-C, exit 130
                if threading.current_thread() is threading.main_thread() and sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
        self.device = "cuda" if gpus_per_job > 0 else "cpu"
        self.precision, self.on_epoch, self.log = precision, on_epoch, log
        resources = ray.cluster_resources()
        self.capacity = self._jobs_that_fit(resources)
        if self.capacity < 1:
            raise ConfigError(
                f"cpus_per_job {cpus_per_job} / gpus_per_job {gpus_per_job}: the Ray cluster has "
                f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs; no job fits"
            )
        self.actor_class = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job)(JobWorker)
        self.data_ref = ray.put(data)  # once: every worker reads the same copy
        self.model_refs: dict[str, object] = {}
        self.actors: list = []
        log(
            f"ray executor: {self.capacity} job(s) at once ({resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs; {cpus_per_job:g} CPU / {gpus_per_job:g} GPU per job)"
        )

    def _jobs_that_fit(self, resources: dict) -> int:
        slots = [
            int(resources.get(kind, 0) // need)
            for kind, need in (("CPU", self.cpus_per_job), ("GPU", self.gpus_per_job))
            if need > 0
        ]
        return min(slots) if slots else 64

    def _new_actor(self):
        return self.actor_class.remote(self.data_ref, max(1, int(self.cpus_per_job)))

    def _model_ref(self, node_id: str, models: Callable[[str], Teacher]):
        if node_id not in self.model_refs:  # a node's weights never change once it is trained
            model = models(node_id)
            if not isinstance(model, VGG):
                raise ConfigError(
                    "executor ray ships ikd's VGG models to its workers; a user-module teacher needs executor local"
                )
            on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
            self.model_refs[node_id] = self.ray.put(on_cpu)
        return self.model_refs[node_id]

    def run(self, job: TrainingPass, models: Callable[[str], Teacher]) -> list[Trained]:
        ray = self.ray
        # The worker resolves its own device and precision: it may have a GPU the driver lacks.
        job = replace(
            job, train_config=job.train_config.model_copy(update={"device": self.device, "precision": self.precision})
        )
        jobs = job.split()
        needed = set(job.teacher_ids) | ({job.inherit_from} if job.inherit_from else set())
        refs = {node_id: self._model_ref(node_id, models) for node_id in sorted(needed)}
        self.model_refs = dict(refs)  # older teachers' weights can leave the object store
        self.capacity = self._jobs_that_fit(ray.cluster_resources())  # nodes come and go (autoscaling, losses)
        while len(self.actors) < min(len(jobs), self.capacity):
            self.actors.append(self._new_actor())
        idle, queue = list(self.actors[: len(jobs)]), list(enumerate(jobs))
        pending: dict = {}
        trained: list[Trained | None] = [None] * len(jobs)
        stopped: list[JobPaused] = []  # by the time limit: the pass pauses once every job is back
        first_wave = True  # those start whatever the time: each session trains at least an epoch of them
        while queue or pending:
            while queue and idle:
                index, one = queue.pop(0)
                state_dir = one.state_dir()
                if not first_wave and one.deadline is not None and time.time() >= one.deadline:
                    # it waited for a worker past the limit: not begun, its state (if any) stays for the rerun
                    stopped.append(JobPaused(0, one.stages[-1][1]))
                    continue
                actor = idle.pop(0)
                saved = pack_state(state_dir) if state_dir is not None else {}
                pending[actor.train.remote(one, refs, saved)] = (index, actor)
            first_wave = False
            if not pending:  # every worker lost, none to replace them: the rest are lost too
                for left, _ in queue:
                    trained[left] = Trained(None, WorkerLost(f"{WORKER_LOST}: {NO_ROOM}"), 0.0, "lost")
                break
            [done], _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done)
            candidate = jobs[index].candidates[0]
            try:
                model, outcome, seconds, worker, files = ray.get(done)
            except ray.exceptions.RayTaskError as exc:  # the job raised: an ikd error or a bug, not a lost worker
                if exc.cause is not None:
                    # as it would be raised locally (an ikd error is one line); --debug keeps the remote traceback
                    raise exc.cause from (None if isinstance(exc.cause, IkdError) else exc)
                raise
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError,
                ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError,
            ) as exc:
                self.log(f"{candidate.node_id}: its worker died ({_first_line(exc)}); recorded as failed")
                trained[index] = Trained(None, WorkerLost(f"{WORKER_LOST}: {_first_line(exc)}"), 0.0, "lost")
                self.actors.remove(actor)
                # a lost node takes its resources along: a replacement that cannot be placed would be waited
                # for forever, so the pool shrinks to what the cluster still holds
                self.capacity = self._jobs_that_fit(ray.cluster_resources())
                if len(self.actors) < self.capacity:
                    replacement = self._new_actor()
                    self.actors.append(replacement)
                    idle.append(replacement)
                continue
            idle.append(actor)
            if files and (state_dir := jobs[index].state_dir()) is not None:
                unpack_state(state_dir, files)  # on this machine's disk, in case the pass pauses
            if isinstance(outcome, JobPaused):
                self.log(f"{candidate.node_id}: {outcome} on {worker}; its training state is kept")
                stopped.append(outcome)
                continue
            trained[index] = Trained(model, outcome, seconds, worker)
            if self.on_epoch is not None and hasattr(outcome, "history"):
                for record in outcome.history:
                    self.on_epoch(candidate.node_id, record)
            self.log(f"{candidate.node_id}: trained on {worker} in {seconds:.0f} s")
        if stopped:  # as a local pass: nothing recorded, every job's state kept, the rerun goes on
            last = max(stopped, key=lambda s: s.epoch)
            raise TrainingPaused(last.epoch, last.epochs, Path(job.state_root or "."))
        done = [t for t in trained if t is not None]
        assert len(done) == len(jobs), "every job was queued and waited for"
        return done

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
