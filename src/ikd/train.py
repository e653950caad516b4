"""One training job: a model, data, an objective and a budget -> best-by-validation weights + history.

The objective is a callable `(model, x, y, index) -> (logits, {term_name: tensor})` whose terms
include `loss` (the total that is back-propagated); every term is averaged and shown, so an
objective with several named parts (KD, CE, hint) gets its progress display and history for free.
`index` holds the batch's positions in the training set (for cached teacher outputs). An objective
that is an nn.Module contributes its parameters (e.g. hint regressors) to the optimiser.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ikd import distributed
from ikd.data import DataSplits, ImageSet, iterate_batches
from ikd.errors import CheckpointError, ConfigError, IkdError
from ikd.runtime import (
    PRECISIONS,
    Precision,
    describe_machine,
    resolve_device,
    resolve_precision,
    training_layout,
)
from ikd.train_state import KEEP, SavedState, StateStore, job_fingerprint, remove_state
from ikd.views import VIEWS, Views, viewed_logits

# onecycle: warm-up then cosine decay; linear: warm-up then linear decay to ~0; cosine: decay only.
Schedule = Literal["onecycle", "linear", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
Objective = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]
]
EpochCallback = Callable[[str, "EpochRecord"], None]  # (the model's description, its finished epoch)
# (the model's description, its epochs so far) -> why to stop training it now, or None
GiveUp = Callable[[str, list["EpochRecord"]], str | None]


# SGD's momentum under the one-cycle schedules (onecycle, linear): high while the learning rate is low
CYCLED_MOMENTUM = (0.85, 0.95)


# Far past any setting that trains, and short of the float overflow a value such as 1e308 hit inside the
# optimiser's step (an internal error rather than a refusal of the value).
MAX_LR = 100.0
MAX_WEIGHT_DECAY = 1.0


class TrainConfig(BaseModel):
    """Optimisation settings of one job: SGD + Nesterov with a learning-rate schedule, optionally an
    exponential moving average (EMA) of the weights validated beside them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.05, gt=0, le=MAX_LR, description="peak learning rate")
    # cosine only: the linear and onecycle schedules cycle it instead (CYCLED_MOMENTUM, momentum_used)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0, le=MAX_WEIGHT_DECAY)
    schedule: Schedule = "onecycle"
    augment: str | None = Field(default=None, description="None = the dataset's default")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    bn_sparsity: float = Field(
        default=0.0, ge=0, description="weight of an L1 penalty on the BatchNorm scales (Network Slimming)"
    )
    ema_epochs: float = Field(
        default=0.0, ge=0, description="horizon in epochs of the weights' EMA, validated beside them; 0 = no EMA"
    )
    precision: str = "auto"
    device: str = "auto"
    seed: int = Field(default=0, ge=0, lt=2**63)  # torch's generators take a signed 64-bit seed
    eval_batch_size: int = Field(default=1000, gt=0)
    max_steps_per_epoch: int | None = Field(default=None, gt=0, description="cap, for quick runs")

    def momentum_used(self) -> list[float]:
        """SGD's momentum at the start, at the peak learning rate and at the end of training."""
        low, high = CYCLED_MOMENTUM
        return [self.momentum] * 3 if self.schedule == "cosine" else [high, low, high]


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train: dict[str, float]
    val_accuracy: float
    val_loss: float
    images_per_s: float
    seconds: float
    ema_val_accuracy: float | None = None  # the EMA's, when there is one (val_accuracy is the raw weights')
    ema_val_loss: float | None = None
    machine: str = ""  # where this epoch ran: a resumed run may have moved ("" in models before 2026-12-07)

    @property
    def kept_accuracy(self) -> float:
        """The validation accuracy of the better of the epoch's raw and EMA weights."""
        return max(self.val_accuracy, self.ema_val_accuracy or 0.0)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_accuracy: float
    last_val_accuracy: float
    best_weights: Literal["raw", "ema"] = "raw"  # which of the best epoch's two was kept
    stopped_early: str | None = None  # why `give_up` ended it before its last epoch
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    machine: str = ""  # where it trained (a Ray worker's own, not the driver's)
    sessions: int = 1  # processes that trained it: 1 + the times it resumed from a saved state
    # of the wall time, what the processes before this one spent (a group's shared equally): a caller
    # timing its own call adds this to count a resumed training whole
    earlier_seconds: float = 0.0
    augment: str = ""  # the augmentation it trained with (the config's, else the dataset's default)

    def to_json_dict(self) -> dict:
        return asdict(self)


class TrainingDiverged(IkdError):
    """The loss became NaN or infinite; `epochs`: those it trained, the one it diverged in counted."""

    def __init__(self, message: str, epochs: int = 0):
        super().__init__(message)
        self.epochs = epochs


class TrainingPaused(Exception):
    """The time limit would have been passed during the next epoch: the state after `epoch` is
    saved in `state_dir` and rerunning the same job continues from there."""

    def __init__(self, epoch: int, epochs: int, state_dir: Path):
        super().__init__(f"stopped after epoch {epoch}/{epochs} to stay within the time limit")
        self.epoch, self.epochs, self.state_dir = epoch, epochs, state_dir


def near_chance(accuracy: float, num_classes: int) -> str | None:
    """A warning when a trained model's validation accuracy is within a tenth of the way from guessing
    to perfect: it learnt nothing usable (a schedule too short for the data, a learning rate too high)."""
    chance = 1 / num_classes
    if accuracy > chance + 0.1 * (1 - chance):
        return None
    return (
        f"validation accuracy {accuracy:.3f} is near chance ({chance:.3f} for {num_classes} classes): the model "
        "learnt next to nothing; on a small set try a smaller batch and more epochs (docs/training.md)"
    )


def monotonic_deadline(wall_clock_deadline: float | None) -> float | None:
    """A time.time() deadline (which can cross processes) as the time.monotonic() one train_models takes."""
    if wall_clock_deadline is None:
        return None
    return time.monotonic() + (wall_clock_deadline - time.time())


def steps_per_epoch(train_images: int, config: TrainConfig) -> int:
    """Optimiser steps in one epoch: full batches only (the last partial one is dropped), at least one."""
    steps = train_images // config.batch_size or 1
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def cross_entropy_objective(label_smoothing: float = 0.0) -> Objective:
    def objective(model, x, y, index):
        logits = model(x)
        ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return logits, {"loss": ce}

    return objective


def _warmup_share(share: float, total_steps: int) -> float:
    """The warm-up's share of the steps, nudged where OneCycleLR would divide by zero: a warm-up that
    ends on the first step (share x steps = 1, e.g. 5 steps at 0.2: one epoch of a small dataset)."""
    return share if abs(share * total_steps - 1.0) > 1e-9 else min(1.0, 2.0 / total_steps)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    low, high = CYCLED_MOMENTUM
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            base_momentum=low,
            max_momentum=high,
            pct_start=_warmup_share(0.25, total_steps),
            div_factor=10.0,
            final_div_factor=100.0,
            three_phase=False,
        )
    if config.schedule == "linear":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            base_momentum=low,
            max_momentum=high,
            pct_start=_warmup_share(0.2, total_steps),
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=1000.0,
            three_phase=False,
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def _ema(model: torch.nn.Module) -> AveragedModel:
    """A copy of the model holding the EMA of its weights and BatchNorm statistics (see _update_ema),
    with its count of updates (a host tensor); saved and restored with the training state."""
    return AveragedModel(model, use_buffers=True)


def _update_ema(ema: AveragedModel, model: torch.nn.Module, decay: float) -> None:
    """One EMA step. Early on it averages over the steps so far (min(decay, (1+n)/(10+n))) so that it is
    not anchored to the random initial weights. Done here rather than by AveragedModel.update_parameters,
    which moves its counter to the model's device and reads it back: on a GPU, two waits per step."""
    n = int(ema.n_averaged)  # on the host: no wait
    averaged = list(itertools.chain(ema.module.parameters(), ema.module.buffers()))
    current = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
    if n == 0:
        for a, c in zip(averaged, current, strict=True):
            a.detach().copy_(c)
    else:
        step_decay = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a.detach(), c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - step_decay)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # BatchNorm's batch counters
                a.copy_(c)
    ema.n_averaged += 1


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    images: ImageSet,
    *,
    mean,
    std,
    device: torch.device,
    precision: Precision,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over a split, in eval mode, in large batches."""
    predicted, loss_sum = predict(
        model, images, mean=mean, std=std, device=device, precision=precision, batch_size=batch_size
    )
    return score(predicted, loss_sum, images.labels)


def score(predicted: torch.Tensor, loss_sum: float, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean loss of `predict`'s answer for a split with these labels."""
    n = len(labels)
    correct = (predicted == labels.to(predicted.device)).sum().item()
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images: ImageSet,
    *,
    mean: Any,
    std: Any,
    device: torch.device,
    precision: Precision,
    batch_size: int = 1000,
    views: Views = "none",
) -> tuple[torch.Tensor, float]:
    """The predicted class of every image of a split, in its order (for paired comparisons), and the
    summed cross-entropy; in eval mode, in large batches. `views`: see ikd.views (2x the compute for `flip`,
    6x for `flip-shift`)."""
    if views not in VIEWS:
        raise ConfigError(f"views={views!r}: expected one of {', '.join(VIEWS)}")
    was_training = model.training
    model.eval()
    predicted: list[torch.Tensor] = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in iterate_batches(images, batch_size, mean=mean, std=std, device=device):
        with precision.autocast():
            logits = viewed_logits(model, x, views)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        predicted.append(logits.argmax(1))
    model.train(was_training)
    labels = torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long, device=device)
    return labels, loss_sum.item()


class _Student:
    """One model of a training group: its optimiser, schedule, RNG stream, running sums and best weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        description: str,
        config: TrainConfig,
        device: torch.device,
        precision: Precision,
        steps_per_epoch: int,
        rng_state: torch.Tensor | None,
        ranks: distributed.Group | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.model, self.objective, self.description = model.to(device), objective, description
        self.memory_format = memory_format
        self.model.to(memory_format=memory_format)  # type: ignore[call-overload]  # untyped, documented
        # Under torchrun the forward goes through DDP (gradient averaging); state and evaluation use the model.
        self.forward_module = ranks.wrap(self.model, device) if ranks else self.model
        parameters = list(model.parameters())
        if isinstance(objective, torch.nn.Module):
            parameters += list(objective.to(device).parameters())
        self.optimizer = torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        self.scheduler = _scheduler(self.optimizer, config, config.epochs * steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
        self.ema = _ema(model) if config.ema_epochs else None
        # a horizon under one step would give a negative decay (an EMA that extrapolates): it is then the weights
        self.ema_decay = max(0.0, 1.0 - 1.0 / (config.ema_epochs * steps_per_epoch)) if config.ema_epochs else 0.0
        # Network Slimming's sparsity term: it pushes unimportant channels' |gamma| towards 0, so the slim
        # operator's ranking by gamma separates them (without it the scales stay nearly flat).
        self.bn_sparsity = config.bn_sparsity
        self.bn_scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.affine]
        self.precision = precision
        self.rng_state = rng_state  # None when alone: the global RNG is this model's own
        self.result = TrainResult(
            best_epoch=0,
            best_val_accuracy=-1.0,
            last_val_accuracy=0.0,
            device=str(device),
            precision=precision.name,
            machine=describe_machine(device),
        )
        self.best_state: dict[str, torch.Tensor] | None = None
        self.failure: str | None = None
        self.seconds = 0.0
        self.last_lr = config.lr

    def begin_epoch(self, device: torch.device) -> None:
        self.model.train()
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self.epoch_seconds = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> None:
        started = time.perf_counter()
        if self.rng_state is not None:  # dropout etc. draw from this model's stream, as if trained alone
            torch.set_rng_state(self.rng_state)
        x = x.contiguous(memory_format=self.memory_format)  # a no-op when the batch is already laid out so
        with self.precision.autocast():
            logits, terms = self.objective(self.forward_module, x, y, index)
        loss = terms["loss"]
        if self.bn_sparsity:
            loss = loss + self.bn_sparsity * sum(scale.abs().sum() for scale in self.bn_scales)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step()
        if self.ema is not None:
            _update_ema(self.ema, self.model, self.ema_decay)
        if self.rng_state is not None:
            self.rng_state = torch.get_rng_state()
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)
        self.epoch_seconds += time.perf_counter() - started

    def running_loss(self) -> float:
        return self.sums["loss"].item() / self.seen


def agreed_precision(name: str, device: torch.device, ranks: distributed.Group | None) -> Precision:
    """resolve_precision, with torchrun's ranks all taking rank 0's: on a CPU "auto" times bf16 against
    fp32, and ranks timing at once, sharing the cores, can come to different verdicts."""
    precision = resolve_precision(name, device)
    if ranks is None:
        return precision
    [chosen] = ranks.main_values([PRECISIONS.index(precision.name)], device)
    return resolve_precision(PRECISIONS[chosen], device)


def train_model(
    model: torch.nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    progress: bool = True,
    description: str = "train",
    on_epoch: EpochCallback | None = None,
    state_dir: Path | None = None,
    discard_foreign_state: bool = False,
    deadline: float | None = None,
) -> TrainResult:
    """Train in place; on return the model holds its best-by-validation weights.

    Raises TrainingDiverged when the loss becomes NaN or infinite.
    """
    result = train_models(
        [model],
        data,
        config,
        objectives=[objective],
        progress=progress,
        descriptions=[description],
        on_epoch=on_epoch,
        state_dir=state_dir,
        discard_foreign_state=discard_foreign_state,
        deadline=deadline,
    )[0]
    if isinstance(result, TrainingDiverged):
        raise result
    return result


def train_models(
    models: Sequence[torch.nn.Module],
    data: DataSplits,
    config: TrainConfig,
    *,
    objectives: Sequence[Objective | None] | None = None,
    progress: bool = True,
    descriptions: list[str] | None = None,
    on_epoch: EpochCallback | None = None,
    state_dir: Path | None = None,
    discard_foreign_state: bool = False,
    deadline: float | None = None,
    give_up: GiveUp | None = None,
    stage_follows: bool = False,
) -> list[TrainResult | TrainingDiverged]:
    """Train several models in one pass over the data: every batch is read, augmented and normalised
    once and given to each model in turn (so objectives can share one teacher forward per batch).

    Each model gets its own optimiser, schedule and random stream, so it ends with the weights it
    would have had trained alone with the same config. A model whose loss diverges is dropped from
    the group (its entry in the returned list is the TrainingDiverged error); the others go on.
    On return every model holds its best-by-validation weights. `on_epoch` sees each model's
    epoch record as soon as its epoch is validated and saved (live logging); a resumed run first
    shows it the records of the epochs it resumes after.

    With `state_dir`, the whole training state is saved there after every epoch and a run of the
    same job that finds it continues after its last saved epoch, ending with the same weights
    (bit for bit on the CPU) as a run never interrupted. With `deadline` (a time.monotonic() value)
    training stops at the first epoch boundary from which one more epoch would pass it, and raises
    TrainingPaused once the state is saved; `stage_follows` (the same job trains on in another call, as
    distillation after hint pre-training) counts the first epoch of that as the next one, so the limit
    is checked after the last epoch too. `discard_foreign_state`: a state there of another job is
    passed over and deleted rather than refused (StateStore). `give_up` sees each model's history after each epoch; a
    reason stops that model there (it keeps its best weights so far; the result says why).
    """
    device = resolve_device(config.device)
    objectives = objectives or [None] * len(models)
    ranks = distributed.current()
    precision = agreed_precision(config.precision, device, ranks)
    if ranks and (len(models) > 1 or any(o is not None for o in objectives)):
        raise ConfigError("data-parallel training (torchrun) is for one model with cross-entropy: `ikd train`")
    if deadline is not None and state_dir is None:
        raise ConfigError("a time limit needs a directory for the training state, to resume from")
    if config.label_smoothing and all(o is not None for o in objectives):
        # it would be recorded as the recipe, yet used by no model (a group's others train with it)
        raise ConfigError(
            f"label_smoothing {config.label_smoothing}: smooths the plain cross-entropy only, and this training "
            "has an objective of its own (a distillation loss keeps its CE term unsmoothed); expected 0"
        )
    if ranks and config.batch_size < ranks.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size}: smaller than the {ranks.world_size} torchrun "
            "processes that share each batch"
        )
    progress = progress and (ranks is None or ranks.is_main)
    descriptions = descriptions or [f"train{i}" for i in range(len(models))]
    augment = data.augment_for(config.augment)
    torch.manual_seed(config.seed)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    epoch_steps = steps_per_epoch(len(data.train), config)
    shared_rng = len(models) > 1 and device.type == "cpu"
    if len(models) > 1 and device.type != "cpu":
        torch.cuda.manual_seed_all(config.seed)  # accelerators: grouped runs are not bit-identical to solo ones
    start_state = torch.get_rng_state() if shared_rng else None
    group = [
        _Student(
            model,
            objective or cross_entropy_objective(config.label_smoothing),
            name,
            config,
            device,
            precision,
            epoch_steps,
            start_state.clone() if start_state is not None else None,
            ranks,
            training_layout(model, device, precision.dtype),
        )
        for model, objective, name in zip(models, objectives, descriptions, strict=True)
    ]
    active = list(group)
    # On a GPU the training images live there (uint8: CIFAR-10 is 150 MB): each batch is gathered,
    # cropped, flipped and normalised on the device, so an epoch waits on the model, not the CPU.
    train_images = data.train.to(device) if device.type == "cuda" else data.train
    store = rank_store = None
    first_epoch, seconds_before, sessions = 1, 0.0, 1
    if state_dir is not None:
        job = _job(group, descriptions, data, config, augment, device, precision, ranks)
        fingerprint = job_fingerprint(job)
        as_given = _older_fingerprints(job, config, augment)
        store = StateStore(
            state_dir,
            fingerprint,
            discard_foreign=discard_foreign_state,
            job=job,
            also_accepted=as_given,
            upgrade=_current_layout,
        )
        if ranks:
            # Rank 0 writes the shared state; each rank keeps its own random streams beside it, one
            # more epoch of them than the shared files (a rank's are written first).
            rank_store = StateStore(
                state_dir / f"rank-{ranks.rank}",
                fingerprint,
                keep=KEEP + 1,
                discard_foreign=discard_foreign_state,
                also_accepted=as_given,
            )
            saved, skipped = _agreed_state(store, rank_store, ranks, device)
            rank_store.discard_after(saved.epoch if saved else 0)
        else:
            saved, skipped = store.load_latest()
        speaks = ranks is None or ranks.is_main  # one report and one clean-up, not one per rank
        if speaks:
            store.discard_after(saved.epoch if saved else 0)
        for line in skipped if speaks else []:
            print(f"ikd: {line}", file=sys.stderr)
        if saved is not None:
            active = _restore(saved.state, group, shuffle_generator, device)
            first_epoch, seconds_before = saved.epoch + 1, float(saved.state["seconds"])
            sessions = int(saved.state.get("sessions", 1)) + 1  # states before 2026-12-05 did not count
            if speaks:  # also when quiet (--quiet, Ray workers): a resume is rare and changes what the run means
                print(f"resuming after epoch {saved.epoch}/{config.epochs} from {saved.path}", file=sys.stderr)
            if on_epoch is not None and speaks:  # its consumer (TensorBoard) gets the whole curve, not this session's
                for student in group:
                    for record in student.result.history:
                        on_epoch(student.description, record)
        elif skipped and speaks:
            print(f"ikd: no intact training state in {state_dir}; starting from epoch 1", file=sys.stderr)

    # Without a terminal (logs, CI) the bar redraws rarely; each epoch still gets its own line.
    interactive = sys.stderr.isatty()
    label = descriptions[0] if len(group) == 1 else f"{descriptions[0]} +{len(group) - 1}"
    bar = tqdm(
        total=config.epochs * epoch_steps,
        desc=label,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
        mininterval=0.5 if interactive else 60.0,
        initial=(first_epoch - 1) * epoch_steps,
    )
    started = time.perf_counter() - seconds_before
    for epoch in range(first_epoch, config.epochs + 1):
        if not active:
            break
        for student in active:
            student.begin_epoch(device)
        epoch_start = time.perf_counter()
        batches = iterate_batches(
            train_images,
            config.batch_size,
            mean=data.mean,
            std=data.std,
            augment=augment,
            shuffle=True,
            generator=shuffle_generator,
            device=device,
            drop_last=len(data.train) >= config.batch_size,
            with_index=True,
        )
        for step, (x, y, index) in enumerate(batches, start=1):
            if step > epoch_steps or not active:
                break
            if ranks:
                x, y, index = ranks.shard(x, y, index)
            for student in active:
                student.step(x, y, index)
            bar.update(1)
            # Reading values syncs the device, so check and refresh the display only now and then.
            if step % 10 == 0 or step == epoch_steps:
                for student in list(active):
                    loss = student.running_loss()
                    if not (ranks.all_finite(loss, device) if ranks else math.isfinite(loss)):
                        student.failure = (
                            f"{student.description}: loss became {loss} in epoch {epoch}; "
                            "lower --lr or use --precision fp32"
                        )
                        active.remove(student)
                        if len(group) > 1:
                            bar.write(f"{student.failure} (dropped; the others go on)", file=sys.stderr)
                if active:
                    lead = active[0]
                    bar.set_postfix(
                        epoch=f"{epoch}/{config.epochs}",
                        loss="/".join(f"{s.running_loss():.4f}" for s in active),
                        acc=f"{lead.correct.item() / lead.seen:.3f}",
                        img_s=f"{step * len(y) / (time.perf_counter() - epoch_start):.0f}",
                        refresh=False,
                    )
        if len(group) == 1:  # alone, its time is the wall time, data preparation included
            group[0].epoch_seconds = time.perf_counter() - epoch_start
        for student in active:
            _end_epoch(student, epoch, data, config, device, precision, bar if progress else None, ranks)
        validated = list(active)  # every one of them reports this epoch, one given up below included
        if give_up is not None and epoch < config.epochs:
            for student in list(active):
                reason = give_up(student.description, student.result.history)
                if reason is not None:
                    student.result.stopped_early = reason
                    active.remove(student)
                    if progress:
                        bar.write(f"{student.description}: {reason}", file=sys.stderr)
        if store is not None:
            state = _state(group, active, shuffle_generator, device, time.perf_counter() - started, sessions)
            if ranks and rank_store is not None:
                rank_store.save(epoch, {key: state[key] for key in _RANK_KEYS})
                ranks.barrier()
                if ranks.is_main:
                    store.save(epoch, state)
                ranks.barrier()  # no rank leaves (a time limit, the end) before the shared state is written
            else:
                store.save(epoch, state)
        if on_epoch is not None and (ranks is None or ranks.is_main):
            for student in validated:
                on_epoch(student.description, student.result.history[-1])
        # the next epoch is predicted to take as long as this one did, validation and saving included
        if deadline is not None and store is not None and (epoch < config.epochs or stage_follows) and active:
            past = time.monotonic() + (time.perf_counter() - epoch_start) > deadline
            if ranks:  # the ranks' clocks differ a little: all stop together when one would pass it
                past = ranks.any(past, device)
            if past:
                bar.close()
                raise TrainingPaused(epoch, config.epochs, store.directory)
    bar.close()
    if store is not None and all(s.failure is not None for s in group) and (ranks is None or ranks.is_main):
        # nothing left to continue: resumed, the same job would only diverge again (and `ikd train`'s advised
        # lower --lr would be refused as another job)
        remove_state(store.directory)
    results: list[TrainResult | TrainingDiverged] = []
    for student in group:
        student.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # saved as is
        if student.failure is not None:
            results.append(TrainingDiverged(student.failure, epochs=len(student.result.history) + 1))
            continue
        result = student.result
        result.last_val_accuracy = result.history[-1].val_accuracy
        result.sessions, result.augment = sessions, augment
        result.earlier_seconds = seconds_before / len(group)
        result.seconds = time.perf_counter() - started if len(group) == 1 else student.seconds
        if student.best_state is not None:
            student.model.load_state_dict(student.best_state)
        results.append(result)
    if len(group) > 1 and progress:
        print(f"{label}: {len(group)} models in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return results


def _end_epoch(
    student: _Student,
    epoch: int,
    data: DataSplits,
    config: TrainConfig,
    device: torch.device,
    precision: Precision,
    bar,
    ranks: distributed.Group | None = None,
) -> None:
    eval_start = time.perf_counter()
    seen = student.seen
    if ranks:  # every rank scores rank 0's model; the epoch's train metrics cover all ranks' shards
        ranks.copy_buffers_from_main(student.model)
        student.sums = {name: ranks.sum(total) for name, total in student.sums.items()}
        student.correct = ranks.sum(student.correct)
        seen = int(ranks.sum(torch.tensor(seen, device=device)).item())

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return evaluate(
            model, data.val, mean=data.mean, std=data.std, device=device, precision=precision,
            batch_size=config.eval_batch_size,
        )  # fmt: skip

    val = validate(student.model)
    ema_val = validate(student.ema.module) if student.ema is not None else None
    seconds = student.epoch_seconds + time.perf_counter() - eval_start
    student.seconds += seconds
    record = EpochRecord(
        epoch=epoch,
        lr=student.last_lr,
        train={name: total.item() / seen for name, total in student.sums.items()}
        | {"accuracy": student.correct.item() / seen},
        val_accuracy=val["accuracy"],
        val_loss=val["loss"],
        images_per_s=seen / max(student.epoch_seconds, 1e-9),
        seconds=seconds,
        ema_val_accuracy=ema_val["accuracy"] if ema_val is not None else None,
        ema_val_loss=ema_val["loss"] if ema_val is not None else None,
        machine=student.result.machine,
    )
    result = student.result
    result.history.append(record)
    # The kept weights are the epoch's better of raw and EMA, judged on validation only.
    use_ema = record.kept_accuracy > record.val_accuracy
    if record.kept_accuracy > result.best_val_accuracy:
        result.best_epoch, result.best_val_accuracy = epoch, record.kept_accuracy
        result.best_weights = "ema" if use_ema else "raw"
        weights = student.ema.module if use_ema and student.ema is not None else student.model
        student.best_state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
    if bar is not None:
        terms = " ".join(f"{name} {value:.4f}" for name, value in record.train.items())
        ema = f", EMA {record.ema_val_accuracy:.4f}" if record.ema_val_accuracy is not None else ""
        bar.write(
            f"{student.description} epoch {epoch}/{config.epochs}: train {terms} | val acc "
            f"{record.val_accuracy:.4f}{ema} (best {result.best_val_accuracy:.4f}) | "
            f"{record.images_per_s:.0f} img/s, {record.seconds:.0f} s",
            file=sys.stderr,
        )


def _job(
    group: list[_Student],
    descriptions: list[str],
    data: DataSplits,
    config: TrainConfig,
    augment: str,
    device: torch.device,
    precision: Precision,
    ranks: distributed.Group | None = None,
) -> dict[str, Any]:
    """Everything that must match for a saved state to be this job's (StateStore digests it)."""

    def tensors(module: Any) -> list | None:
        if not isinstance(module, torch.nn.Module):
            return None
        return [
            [name, list(t.shape), str(t.dtype)]
            for name, t in module.state_dict().items()
            if isinstance(t, torch.Tensor)  # not extra state (e.g. a random stream's position)
        ]

    document: dict[str, Any] = {
        # what `auto` became here (a state saved in bf16 on one machine is not continued in fp32 on
        # another), and the augmentation it resolved to (the dataset's own, named or not, is one job)
        "config": config.model_dump() | {"device": device.type, "precision": precision.name, "augment": augment},
        "models": [[d, tensors(s.model), tensors(s.objective)] for d, s in zip(descriptions, group, strict=True)],
        "data": [data.name, len(data.train), len(data.val), list(data.mean), list(data.std)],
        # what shapes do not show: the loss settings (a --force rerun may change them) and the spec (dropout)
        "objectives": [[_described(s.model), _described(s.objective)] for s in group],
    }
    if ranks:  # each rank's slice of a batch depends on their number (absent alone: older states stay valid)
        document["world_size"] = ranks.world_size
    return document


def _described(part: Any) -> Any:
    """A student's spec or an objective's settings, for the job document (None: nothing to add)."""
    if hasattr(part, "job_description"):
        return part.job_description()
    spec = getattr(part, "spec", None)
    return spec.to_json_dict() if spec is not None else None


def _older_fingerprints(job: dict[str, Any], config: TrainConfig, augment: str) -> tuple[str, ...]:
    """The fingerprints older ikds gave `job`, whose states it resumes: until 2026-12-06 the resolved
    augmentation was part of the data, config.augment stayed as given and the objectives' settings were
    not in it; until 2026-12-05 device and precision stayed as given (auto) too."""
    job = {key: value for key, value in job.items() if key != "objectives"}
    data = [*job["data"], augment]
    resolved = job["config"] | {"augment": config.augment}
    return (
        job_fingerprint(job | {"config": resolved, "data": data}),
        job_fingerprint(job | {"config": config.model_dump(), "data": data}),
    )


def _current_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved job document in today's layout (_job): before 2026-12-06 the resolved augmentation was the
    data's last entry; config.augment then held it as given."""
    data = saved.get("data")
    if not (isinstance(data, list) and len(data) == 6 and isinstance(saved.get("config"), dict)):
        return saved
    return saved | {"config": saved["config"] | {"augment": data[5]}, "data": data[:5]}


# What differs between the ranks of a data-parallel run: their random streams (dropout draws on each
# rank's own slice). Everything else is the same on every rank and saved once, by rank 0.
_RANK_KEYS = ("torch_rng", "cuda_rng")


def _agreed_state(
    store: StateStore, rank_store: StateStore, ranks: distributed.Group, device: torch.device
) -> tuple[SavedState | None, list[str]]:
    """The state every rank of a data-parallel run resumes: the newest epoch whose shared state and
    every rank's own random streams are all intact (None: start over), the shared state with this
    rank's streams in it; and one line per file this rank passed over. Every rank reads rank 0's
    list of epochs and all of them agree on the choice, so none resumes alone or waits on the others."""
    epochs = ranks.main_values(store.epochs(), device)
    usable, skipped = [], []
    newest: dict[int, tuple] = {}  # this rank's newest intact pair, kept: usually the agreed one
    for epoch in epochs:
        (shared, why_not), (own, own_why_not) = store.try_load(epoch), rank_store.try_load(epoch)
        skipped += [f"{reason}; passed over" for reason in (why_not, own_why_not) if reason]
        usable.append(shared is not None and own is not None)
        if usable[-1] and not newest:
            newest[epoch] = (shared, own)
    agreed = [epoch for epoch, ok in zip(epochs, ranks.every(usable, device), strict=True) if ok]
    if not agreed:
        return None, skipped
    shared, own = newest.get(agreed[0]) or (store.try_load(agreed[0])[0], rank_store.try_load(agreed[0])[0])
    if shared is None or own is None:  # intact a moment ago on this rank: only if changed under us
        raise CheckpointError(f"{store.directory}: the training state changed while it was being read")
    return SavedState(store.path(agreed[0]), agreed[0], shared | {key: own[key] for key in _RANK_KEYS}), skipped


def _state(
    group: list[_Student],
    active: list[_Student],
    shuffle: torch.Generator,
    device: torch.device,
    seconds: float,
    sessions: int,
) -> dict[str, Any]:
    """Everything the next epoch depends on, and the bookkeeping that the result reports."""
    return {
        "seconds": seconds,
        "sessions": sessions,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "shuffle_rng": shuffle.get_state(),
        "students": [
            {
                "model": s.model.state_dict(),
                "objective": s.objective.state_dict() if isinstance(s.objective, torch.nn.Module) else None,
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                "scaler": s.scaler.state_dict(),
                "ema": s.ema.state_dict() if s.ema is not None else None,
                "rng_state": s.rng_state,
                "best_state": s.best_state,
                "best_epoch": s.result.best_epoch,
                "best_val_accuracy": s.result.best_val_accuracy,
                "best_weights": s.result.best_weights,
                "stopped_early": s.result.stopped_early,
                "history": [asdict(record) for record in s.result.history],
                "failure": s.failure,
                "active": s in active,
                "seconds": s.seconds,
            }
            for s in group
        ],
    }


def _restore(
    state: dict[str, Any], group: list[_Student], shuffle: torch.Generator, device: torch.device
) -> list[_Student]:
    """Put a saved state back into a freshly built group; returns the students still training."""
    try:
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        shuffle.set_state(state["shuffle_rng"])
        for student, saved in zip(group, state["students"], strict=True):
            student.model.load_state_dict(saved["model"])
            if saved["objective"] is not None:
                student.objective.load_state_dict(saved["objective"])  # type: ignore[attr-defined]
            student.optimizer.load_state_dict(saved["optimizer"])
            student.scheduler.load_state_dict(saved["scheduler"])
            student.scaler.load_state_dict(saved["scaler"])
            if student.ema is not None:
                student.ema.load_state_dict(saved["ema"])
            student.rng_state = saved["rng_state"]
            student.best_state = saved["best_state"]
            student.result.best_epoch = saved["best_epoch"]
            student.result.best_val_accuracy = saved["best_val_accuracy"]
            student.result.best_weights = saved["best_weights"]
            student.result.stopped_early = saved.get("stopped_early")  # absent from states before it existed
            student.result.history = [EpochRecord(**record) for record in saved["history"]]
            student.failure = saved["failure"]
            student.seconds = saved["seconds"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"saved training state does not fit this job ({type(exc).__name__}: {exc})") from None
    return [s for s, saved in zip(group, state["students"], strict=True) if saved["active"]]
