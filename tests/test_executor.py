"""Scale-out: the Ray executor decides as the local one does, survives a worker killed mid-job, and
`ikd train` under torchrun (DDP, gloo) learns as a single process does."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from test_search import campaign_config

from ikd.campaign import compress
from ikd.config import ExecutorConfig
from ikd.lineage import RunDir

TESTS = Path(__file__).parent


def parent_children(run_dir: Path, teacher: Path, generations: int = 2, final_epochs: int = 0, **executor):
    config = campaign_config(run_dir, teacher, strategy="parent-children", max_generations=generations)
    student = config.student.model_copy(update={"epochs": 2, "final_epochs": final_epochs})
    return config.model_copy(update={"executor": ExecutorConfig(**executor), "student": student})


@contextmanager
def local_ray(kill_node: str = ""):
    """A 2-CPU Ray instance on this machine, with the fault hook of ray_worker_faults in its workers."""
    import ray  # the ray marker's hook in conftest skips only where the extra is not installed

    ray.init(
        address="local",  # a new instance, not a cluster a developer has running on this machine
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={
            "worker_process_setup_hook": "ray_worker_faults.kill_on_first_epoch",
            "env_vars": {
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "IKD_TEST_KILL_NODE": kill_node,
            },
        },
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def decisions(lineage):
    return [(n.id, n.parent, n.arch, n.status) for n in lineage.nodes]


@pytest.mark.ray
def test_ray_executor_makes_the_local_executors_decisions(tmp_path, tiny_teacher):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the arithmetic of a 1-CPU Ray job
    try:
        local = compress(parent_children(tmp_path / "local", tiny_teacher), progress=False)
    finally:
        torch.set_num_threads(threads)
    with local_ray():
        remote = compress(parent_children(tmp_path / "ray", tiny_teacher, kind="ray", cpus_per_job=1), progress=False)
    assert decisions(remote) == decisions(local)
    assert len([n for n in remote.nodes if n.generation == 1]) == 2  # k=2: depth and width children
    for mine, theirs in zip(remote.nodes, local.nodes, strict=True):  # each job trains as it would have alone
        assert mine.val_accuracy == theirs.val_accuracy, mine.id
    assert remote.stop_reason == local.stop_reason
    assert (tmp_path / "ray" / "nodes" / "g2-width" / "model.safetensors").is_file()  # the driver wrote the weights


@pytest.mark.ray
def test_a_ray_campaign_stopped_by_its_time_limit_resumes_its_jobs_bit_identically(tmp_path, tiny_teacher):
    # the jobs stop at an epoch boundary on their workers, which send their states back to the campaign's
    # disk; the rerun sends each to a worker, which goes on from there (it used to start the job again)
    from ikd.campaign import CampaignPaused

    straight_config = parent_children(tmp_path / "straight", tiny_teacher, generations=1, kind="ray")
    config = straight_config.model_copy(update={"run_dir": str(tmp_path / "run")})
    with local_ray():
        straight = compress(straight_config, progress=False)
        with pytest.raises(CampaignPaused):
            compress(config.model_copy(update={"time_limit": "0.01s"}), progress=False)
        states = tmp_path / "run" / ".train-state"
        kept = sorted(p.relative_to(states).as_posix() for p in states.rglob("epoch-*.pt"))
        assert kept == ["g1-depth/stage-0/epoch-00001.pt", "g1-width/stage-0/epoch-00001.pt"], kept
        assert RunDir(tmp_path / "run").load().find("g1-width") is None  # paused inside it: not recorded
        resumed = compress(config, progress=False)
    assert decisions(resumed) == decisions(straight)
    for mine, theirs in zip(resumed.students(), straight.students(), strict=True):
        assert (mine.id, mine.sha256, mine.epochs) == (theirs.id, theirs.sha256, theirs.epochs)
    assert not states.exists()  # every job's state removed once its student was saved


@pytest.mark.ray
def test_a_killed_worker_fails_its_node_and_the_campaign_goes_on(tmp_path, tiny_teacher):
    # the larger child lost: the smaller one passed, so the lost one could not have been chosen
    with local_ray(kill_node="g1-depth"):
        lineage = compress(parent_children(tmp_path / "run", tiny_teacher, kind="ray"), progress=False)
    lost = lineage.node("g1-depth")
    assert lost.status == "failed" and lost.reason.startswith("worker lost") and lost.val_accuracy is None
    assert not (tmp_path / "run" / "nodes" / "g1-depth").exists()
    assert lineage.node("g1-width").status == "accepted"
    assert {n.id for n in lineage.nodes if n.generation == 2} == {"g2-depth", "g2-width"}
    assert (lineage.stop_reason or "").startswith("max_generations")


@pytest.mark.ray
def test_nodes_lost_with_their_workers_are_trained_again_on_resume(tmp_path, tiny_teacher):
    config = parent_children(tmp_path / "run", tiny_teacher, generations=1, kind="ray")
    with local_ray(kill_node="g1-depth,g1-width"):
        first = compress(config, progress=False)
    assert {first.node(n).status for n in ("g1-depth", "g1-width")} == {"failed"}
    stop = first.stop_reason or ""
    assert (
        stop.startswith("candidates lost with their workers: g1-depth, g1-width in generation 1")
        and "worker lost" in stop
    )
    resumed = compress(config.model_copy(update={"executor": ExecutorConfig()}), progress=False)  # locally
    assert {resumed.node(n).status for n in ("g1-depth", "g1-width")} == {"accepted", "rejected"}
    assert (resumed.stop_reason or "").startswith("max_generations")


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, tiny_teacher, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from ikd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"needs Ray: pip install 'ray>=2.40'"):
        compress(parent_children(tmp_path / "run", tiny_teacher, kind="ray"), progress=False)


TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
EPOCHS = 3  # enough for a quarter-width VGG-11 to learn digits; each one is a few seconds of two processes


def ikd_train(
    *prefix: str, out: Path, extra: tuple[str, ...] = ("--quiet",), returncode: int = 0, stderr: list | None = None
) -> dict | None:
    """Run `ikd train` on digits (started by `prefix`: python, or torchrun); its model.json, if it
    finished. Its stderr is appended to `stderr`."""
    command = [
        *prefix,
        "-m",
        "ikd",
        "train",
        "--dataset",
        "digits",
        "--arch",
        SMALL_ARCH,
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--out",
        str(out),
        *extra,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == returncode, done.stderr[-2000:]
    if stderr is not None:
        stderr.append(done.stderr)
    return json.loads((out / "model.json").read_text()) if returncode == 0 else None


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def torchrun_straight(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("torchrun") / "straight"
    meta = ikd_train(*TORCHRUN, out=out)
    assert meta is not None
    return out, meta


@pytest.mark.slow
def test_torchrun_trains_a_teacher_data_parallel_like_one_process(tmp_path, torchrun_straight):
    alone = ikd_train(sys.executable, out=tmp_path / "alone")
    shared = torchrun_straight[1]
    assert alone is not None
    assert shared["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_process": 32}
    assert "distributed" not in alone
    a, b = (m["metrics"]["test_of_saved_weights"]["accuracy"] for m in (alone, shared))
    assert a > 0.8 and b > 0.8  # both learned digits
    assert abs(a - b) <= 0.04  # and agree within noise (360 test images: one image is 0.28 points)
    assert len(shared["history"]) == EPOCHS and shared["history"][-1]["images_per_s"] > 0


@pytest.mark.slow
def test_torchrun_stopped_by_a_time_limit_resumes_bit_identically(tmp_path, torchrun_straight):
    out = tmp_path / "resumed"
    # every session trains at least one epoch, so a 0.01 s limit stops after each one, however fast the
    # machine; torchrun itself reports its workers' exit code 75 as a failure (1)
    ikd_train(*TORCHRUN, out=out, extra=("--quiet", "--time-limit", "0.01s"), returncode=1)
    state = out / ".train-state"
    assert sorted(p.name for p in state.glob("epoch-*.pt")) == ["epoch-00001.pt"]
    assert sorted(p.name for p in state.glob("rank-*/epoch-*.pt")) == ["epoch-00001.pt", "epoch-00001.pt"]
    said: list[str] = []
    ikd_train(sys.executable, out=out, returncode=2, stderr=said)  # one process is another job
    errors = [line for line in said[0].splitlines() if line.startswith("ikd: error:")]
    assert len(errors) == 1 and "started with other settings (the number of torchrun processes)" in errors[0]
    assert "Traceback" not in said[0]
    ikd_train(*TORCHRUN, out=out, extra=("--quiet", "--time-limit", "0.01s"), returncode=1)
    assert sorted(p.name for p in state.glob("epoch-*.pt")) == ["epoch-00001.pt", "epoch-00002.pt"]
    said.clear()
    resumed = ikd_train(*TORCHRUN, out=out, extra=(), stderr=said)
    assert f"resuming after epoch 2/{EPOCHS}" in said[0]  # not started over (which would end alike)
    straight_out, straight = torchrun_straight
    assert resumed is not None
    assert [h["val_accuracy"] for h in resumed["history"]] == [h["val_accuracy"] for h in straight["history"]]
    expected = weights(straight_out)
    got = weights(out)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "resumed weights differ"
    assert not state.exists()


class FakeRay:
    """The few Ray calls RayExecutor.run makes, with a scripted failure per node: no cluster started."""

    def __init__(self, cpus: int, failures: dict):
        import ray.exceptions

        self.exceptions = ray.exceptions
        self.cpus, self.failures, self.actors_started = cpus, failures, 0
        self.jobs_started: list[str] = []
        self.returns: dict = {}  # node id -> (outcome, files) its job comes back with, instead of "trained"

    def cluster_resources(self) -> dict:
        return {"CPU": float(self.cpus)}

    def new_actor(self, *args):
        self.actors_started += 1
        fake = self

        class Actor:
            class train:  # Ray's actor.method.remote(...)
                @staticmethod
                def remote(job, refs, saved):
                    fake.jobs_started.append(job.candidates[0].node_id)
                    return (job.candidates[0].node_id, fake.actors_started)

        return Actor()

    def wait(self, refs, num_returns):
        return refs[:1], refs[1:]

    def get(self, ref):
        node_id, worker = ref
        failure = self.failures.get(node_id)
        if failure is not None:
            if isinstance(failure, self.exceptions.NodeDiedError):
                self.cpus -= 1  # the node and its CPU are gone
            raise failure
        outcome, files = self.returns.get(node_id, ("trained", {}))
        return None, outcome, 1.0, f"worker{worker}", files


def fake_pass(node_ids: list[str]):
    from ikd.arch import ArchSpec
    from ikd.shrink import Candidate
    from ikd.train import TrainConfig
    from ikd.training_pass import TrainingPass

    spec = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[4]], head=[8])
    return TrainingPass(
        candidates=tuple(Candidate(n, "width", spec) for n in node_ids),
        seeds=tuple(range(len(node_ids))),
        teacher_ids=(),
        inherit_from=None,
        stages=((None, 1),),
        train_config=TrainConfig(epochs=1),
        cached=False,
    )


def fake_executor(ray):
    from ikd.executor import RayExecutor

    executor = RayExecutor.__new__(RayExecutor)  # its __init__ starts Ray; run() needs only these
    executor.ray, executor.cpus_per_job, executor.gpus_per_job = ray, 1, 0
    executor.device, executor.precision, executor.on_epoch = "cpu", "fp32", None
    executor.log, executor.model_refs, executor.actors, executor.data_ref = lambda message: None, {}, [], None
    executor.actor_class = type("ActorClass", (), {"remote": staticmethod(ray.new_actor)})
    return executor


@pytest.mark.ray
def test_a_lost_ray_node_shrinks_the_pool_and_no_job_waits_for_a_worker_that_cannot_start():
    import ray.exceptions

    from ikd.executor import WorkerLost

    died = ray.exceptions.NodeDiedError("node 10.0.0.2 died")
    # two 1-CPU jobs at once on 2 CPUs; the first job's node dies, taking one CPU along: the other
    # worker takes the rest of the queue, and no replacement is started that could never be placed
    fake = FakeRay(cpus=2, failures={"a": died})
    trained = fake_executor(fake).run(fake_pass(["a", "b", "c", "d"]), models=lambda node_id: None)
    assert [type(t.outcome).__name__ for t in trained] == ["WorkerLost", "str", "str", "str"]
    assert fake.actors_started == 2 and [t.worker for t in trained[1:]] == ["worker2"] * 3
    # the last node dies too: nothing left to run the queue on, so it comes back lost, not waited for
    fake = FakeRay(cpus=1, failures={"a": died})
    trained = fake_executor(fake).run(fake_pass(["a", "b", "c"]), models=lambda node_id: None)
    assert all(isinstance(t.outcome, WorkerLost) for t in trained)
    assert "no room on the Ray cluster" in str(trained[2].outcome)
    # a worker killed for memory on a node that lives on is replaced
    fake = FakeRay(cpus=1, failures={"a": ray.exceptions.OutOfMemoryError("killed by the memory monitor")})
    trained = fake_executor(fake).run(fake_pass(["a", "b"]), models=lambda node_id: None)
    assert [t.worker for t in trained] == ["lost", "worker2"] and fake.actors_started == 2


@pytest.mark.ray
def test_a_ray_pass_with_a_job_stopped_by_the_time_limit_pauses_whole_and_keeps_every_jobs_state(tmp_path):
    import time

    from ikd.executor import JobPaused
    from ikd.train import TrainingPaused
    from ikd.train_state import pack_state

    # a finished job and a stopped one: nothing comes back to be recorded (as a local pass), both states
    # are kept, so the rerun trains the pass as the uninterrupted run would (the finished one at once)
    fake = FakeRay(cpus=2, failures={})
    fake.returns = {
        "a": ("trained", {"stage-0/epoch-00002.pt": b"a2"}),
        "b": (JobPaused(1, 2), {"stage-0/epoch-00001.pt": b"b1"}),
    }
    job = dataclasses.replace(fake_pass(["a", "b"]), state_root=str(tmp_path), deadline=time.time() + 60)
    with pytest.raises(TrainingPaused, match="after epoch 1/2"):
        fake_executor(fake).run(job, models=lambda node_id: None)
    assert pack_state(tmp_path / "a") == {"stage-0/epoch-00002.pt": b"a2"}
    assert pack_state(tmp_path / "b") == {"stage-0/epoch-00001.pt": b"b1"}
    # one worker for two jobs past the limit: the first starts whatever the time (each session trains an
    # epoch), the second would start after the limit, so it is left for the rerun
    fake = FakeRay(cpus=1, failures={})
    with pytest.raises(TrainingPaused, match="after epoch 0/1"):
        fake_executor(fake).run(dataclasses.replace(fake_pass(["a", "b"]), deadline=time.time() - 1), models=None)
    assert fake.jobs_started == ["a"]


@pytest.mark.ray  # JobWorker imports ray, though no Ray instance is started
def test_a_ray_job_finished_before_its_pass_paused_is_done_at_once_from_its_state_on_the_rerun(
    digits, tmp_path, capsys
):
    import time

    from ikd.executor import JobWorker
    from ikd.train import TrainConfig, TrainResult

    # under a time limit a worker sends back the state of a job it finished, in case another job of the
    # pass stops; given that state again, the job's next worker ends with the same weights, training nothing
    job = dataclasses.replace(
        fake_pass(["a"]),
        stages=((None, 2),),
        train_config=TrainConfig(epochs=2, batch_size=64, precision="fp32", device="cpu"),
        state_root=str(tmp_path / "never-used"),  # the worker trains in its own directory
        deadline=time.time() + 600,
    )
    first = JobWorker(digits, threads=1).train(job, {}, {})
    model, outcome, _, _, files = first
    assert model is not None and [name.rsplit("/", 1)[-1] for name in files] == ["epoch-00002.pt"]
    capsys.readouterr()
    again, outcome_again, seconds_again, _, _ = JobWorker(digits, threads=1).train(job, {}, files)
    assert "resuming after epoch 2/2" in capsys.readouterr().err  # nothing trained again
    assert again is not None and model.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], again.state_dict()[k]) for k in model.state_dict())
    assert isinstance(outcome, TrainResult) and isinstance(outcome_again, TrainResult)
    assert outcome_again.best_val_accuracy == outcome.best_val_accuracy and outcome_again.sessions == 2
    # its first session's training is counted in its time
    assert outcome_again.earlier_seconds > 0 and seconds_again >= outcome_again.earlier_seconds
    assert not (tmp_path / "never-used").exists()


@pytest.mark.ray  # JobWorker imports ray, though no Ray instance is started
def test_a_ray_job_refusing_its_state_names_the_campaigns_copy_not_its_workers(digits, tmp_path):
    import time

    from ikd.errors import ForeignStateError
    from ikd.executor import JobWorker
    from ikd.train import TrainConfig

    config = TrainConfig(epochs=2, batch_size=64, precision="fp32", device="cpu")
    job = dataclasses.replace(
        fake_pass(["a"]), stages=((None, 2),), train_config=config, state_root=str(tmp_path), deadline=time.time() + 600
    )
    *_, files = JobWorker(digits, threads=1).train(job, {}, {})
    # saved in fp32, asked for in bf16 (as on a worker that resolves `auto` otherwise): refused, not discarded
    other = dataclasses.replace(job, train_config=config.model_copy(update={"precision": "bf16"}))
    other = dataclasses.replace(other, state_root=str(tmp_path / "run" / ".train-state"))
    with pytest.raises(ForeignStateError, match=r"\.train-state/a") as refused:
        JobWorker(digits, threads=1).train(other, {}, files)
    assert "ikd-job-" not in str(refused.value) and refused.value.keys


@pytest.mark.ray  # JobWorker imports ray, though no Ray instance is started
def test_a_ray_jobs_notes_on_its_state_name_the_campaigns_copy_not_its_workers(digits, tmp_path, capsys):
    import time

    from ikd.executor import JobWorker
    from ikd.train import TrainConfig

    job = dataclasses.replace(
        fake_pass(["a"]),
        stages=((None, 2),),
        train_config=TrainConfig(epochs=2, batch_size=64, precision="fp32", device="cpu"),
        state_root=str(tmp_path / "run" / ".train-state"),
        deadline=time.time() + 600,
    )
    *_, files = JobWorker(digits, threads=1).train(job, {}, {})
    [name] = files
    capsys.readouterr()
    JobWorker(digits, threads=1).train(job, {}, {name: b"damaged"})  # a truncated state, skipped
    notes = capsys.readouterr().err
    assert f"{tmp_path}/run/.train-state/a" in notes and "ikd-job-" not in notes


def test_a_training_state_carried_to_another_machine_is_its_newest_epochs_and_lands_nowhere_else(tmp_path):
    from ikd.train_state import pack_state, unpack_state

    there = tmp_path / "worker" / "g1-width"
    for stage, epochs in (("stage-0", (2, 3)), ("stage-1", (1,))):
        (there / stage).mkdir(parents=True)
        for epoch in epochs:
            (there / stage / f"epoch-{epoch:05d}.pt").write_bytes(f"{stage}:{epoch}".encode())
    (there / "stage-1" / ".epoch-00002.pt.x.tmp").write_bytes(b"half")  # a write cut short: not carried
    here = tmp_path / "run" / ".train-state" / "g1-width"
    (here / "stage-0").mkdir(parents=True)
    (here / "stage-0" / "epoch-00001.pt").write_bytes(b"old")  # an epoch the job has moved past
    carried = pack_state(there)
    assert carried == {"stage-0/epoch-00003.pt": b"stage-0:3", "stage-1/epoch-00001.pt": b"stage-1:1"}
    unpack_state(here, carried)
    assert pack_state(here) == carried and not (here / "stage-0" / "epoch-00001.pt").exists()
    unpack_state(here, {})  # nothing carried (a job not begun): what is there stays
    assert pack_state(here) == carried
    with pytest.raises(ValueError, match="outside its directory"):
        unpack_state(here, {"stage-0/epoch-00009.pt": b"x", "../../evil.pt": b"x"})
    assert not (tmp_path / "run" / "evil.pt").exists() and not (here / "stage-0" / "epoch-00009.pt").exists()


@pytest.mark.ray
def test_a_ray_job_that_raised_raises_as_it_would_locally():
    import ray.exceptions

    from ikd.errors import ConfigError

    def task_error(cause: BaseException):
        try:
            raise cause
        except BaseException as exc:
            return ray.exceptions.RayTaskError("train", "remote traceback", exc)

    fake = FakeRay(cpus=1, failures={"a": task_error(ConfigError("a one-line ikd error"))})
    with pytest.raises(ConfigError, match="a one-line ikd error") as raised:
        fake_executor(fake).run(fake_pass(["a"]), models=lambda node_id: None)
    assert raised.value.__cause__ is None  # one line at the command line
    fake = FakeRay(cpus=1, failures={"a": task_error(MemoryError("out of memory"))})
    with pytest.raises(MemoryError) as bug:  # the CLI says "internal error: MemoryError: ...", not Ray's dump
        fake_executor(fake).run(fake_pass(["a"]), models=lambda node_id: None)
    assert isinstance(bug.value.__cause__, ray.exceptions.RayTaskError)  # --debug: the remote traceback


@pytest.mark.ray
def test_a_cluster_that_cannot_fit_a_job_fails_before_any_training(tmp_path, tiny_teacher):
    from ikd.errors import ConfigError
    from ikd.lineage import RunDir

    with local_ray(), pytest.raises(ConfigError, match=r"cpus_per_job 64.*2 CPUs.*no job fits"):
        compress(parent_children(tmp_path / "run", tiny_teacher, kind="ray", cpus_per_job=64), progress=False)
    assert not RunDir(tmp_path / "run").exists()  # not even the root was recorded


@pytest.mark.ray
def test_a_generation_lost_with_its_workers_gets_no_final_distillation_before_the_rerun(tmp_path, tiny_teacher):
    config = parent_children(tmp_path / "run", tiny_teacher, final_epochs=1, kind="ray")
    with local_ray(kill_node="g2-depth,g2-width"):
        first = compress(config, progress=False)
    assert (first.stop_reason or "").startswith("candidates lost with their workers: g2-depth, g2-width")
    assert not [n for n in first.nodes if n.kind == "final"]  # g1's answer is provisional: g2 may beat it


@pytest.mark.ray
def test_an_address_nothing_answers_is_one_error_not_a_hang(tmp_path, tiny_teacher):
    import time

    from ikd.errors import ConfigError

    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"ray address '127\.0\.0\.1:1': cannot connect \(nothing answered"):
        compress(parent_children(tmp_path / "run", tiny_teacher, kind="ray", ray_address="127.0.0.1:1"), progress=False)
    assert time.monotonic() - started < 60  # Ray alone retries such an address for good


@pytest.mark.ray
def test_a_private_ray_instance_leaves_the_sigterm_handler_in_place(digits):
    import signal

    import ray

    from ikd.executor import RayExecutor

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        RayExecutor(digits, address=None, cpus_per_job=1, gpus_per_job=0, precision="fp32", on_epoch=None, log=print)
        assert signal.getsignal(signal.SIGTERM) is mine  # ikd's stops like Ctrl-C (exit 130); Ray's exits 1
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, before)


def test_ikd_compress_exits_75_when_it_stopped_on_lost_workers(tmp_path, monkeypatch, capsys):
    import ikd.campaign
    from ikd.cli import EXIT_TEMPFAIL, main
    from ikd.lineage import Lineage

    recorded = Path(__file__).parents[1] / "benchmarks/results/lineages/paper/mnist-vgg16-depth/lineage.json"
    stopped = Lineage.model_validate_json(recorded.read_text())
    stopped.stop_reason = f"{ikd.campaign.LOST_STOP} g1-depth in generation 1, ..."
    monkeypatch.setattr(ikd.campaign, "compress", lambda *args, **kwargs: stopped)
    assert main(["compress", "--run-dir", str(tmp_path / "run"), "--quiet"]) == EXIT_TEMPFAIL
    assert "rerun the same command to train them again" in capsys.readouterr().err
    stopped.stop_reason = "max_generations (2) reached"
    assert main(["compress", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0


def test_a_killed_workers_scratch_is_removed_by_the_next_worker_and_a_live_ones_is_not(tmp_path):
    import os
    import subprocess
    import sys

    from ikd.executor import SCRATCH_PREFIX, remove_orphaned_scratch

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)  # a pid whose process has ended (a worker killed mid-job)
    orphan = tmp_path / f"{SCRATCH_PREFIX}{dead}-k1ll3d"
    (orphan / "a" / "stage-0").mkdir(parents=True)
    (orphan / "a" / "stage-0" / "epoch-00001.pt").write_bytes(b"state")
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-busy"  # a worker still training
    live.mkdir()
    others = [tmp_path / f"{SCRATCH_PREFIX}oldstyle", tmp_path / "unrelated-123-x"]
    for other in others:
        other.mkdir()
    (tmp_path / f"{SCRATCH_PREFIX}{dead}-file").write_text("not a directory")
    assert remove_orphaned_scratch(tmp_path) == [orphan]
    assert not orphan.exists() and live.is_dir() and all(other.is_dir() for other in others)
