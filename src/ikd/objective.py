"""The distillation objective: one loss with three named terms.

    loss = alpha * KD(s, t)  +  beta * CE(y, s)  +  gamma * hint

The KD term (`LossWeights.kd`) is Hinton's T^2 * KL(softmax(t/T) || softmax(s/T)) ("kl", the
default), or Decoupled KD (Zhao et al. 2022; "dkd"): T^2 * (dkd_alpha * TCKD + dkd_beta * NCKD), the
KL split into the target-vs-rest binary KL and the KL among the non-target classes. With
`standardize`, the student's and the teacher's logits are each z-scored per sample before the
softened softmax (logit standardization, Sun et al. 2024); CE always sees the raw logits.

The hint is FitNets' (Romero et al. 2015): the MSE between a teacher block's output and a learned
1x1-conv regressor applied to a student block's output. The regressor trains with the student
and is never part of the student that is saved or exported.

Which blocks are paired (documented rule, `hint_blocks`): the student's middle block (FitNets'
"guided layer" is in the middle of the student), and the teacher block whose output has the same
spatial resolution, nearest in relative depth; when no teacher block has that resolution, the
teacher block nearest in relative depth (ties: nearest resolution), with the larger map
average-pooled to the smaller one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from ikd.arch import ArchSpec
from ikd.data import ImageSet, iterate_batches, to_device
from ikd.errors import ConfigError
from ikd.external import NO_HINT_LAYER, ExternalTeacher, Teacher
from ikd.losses import (
    HintRegressor,
    dkd_loss,
    kd_loss,
    soft_target_dkd_loss,
    soft_target_kd_loss,
    standardize_logits,
)
from ikd.model import VGG
from ikd.runtime import Precision, training_layout
from ikd.strict import Strict
from ikd.views import Views, viewed_logits


class LossWeights(Strict):
    """Weights of the three terms, the softmax temperature and which KD term."""

    # bounded: the T^2 scale of the KD term overflows a float past 1e154
    temperature: float = Field(default=4.0, gt=0, le=1000, description="softmax temperature T of the KD term")
    alpha: float = Field(default=0.9, ge=0, description="weight of the T^2-scaled KD term (`loss.kd`)")
    beta: float = Field(default=0.1, ge=0, description="weight of cross-entropy with the labels")
    gamma: float = Field(
        default=1.0,
        ge=0,
        description="weight of the FitNets hint (0 = no hint); see benchmarks/results/distill_ablation_mnist.md",
    )
    kd: Literal["kl", "dkd"] = Field(
        default="kl",
        description="the KD term: kl = KL between the softened distributions (Hinton et al. 2015); dkd = "
        "Decoupled KD (Zhao et al. 2022), dkd_alpha * TCKD + dkd_beta * NCKD (the paper warms it up: kd_warmup)",
    )
    kd_warmup: float = Field(
        default=0.0,
        ge=0,
        description="epochs over which the KD term's weight rises linearly from 0 to alpha, step by step (DKD's "
        "warm-up: 20 of 240 epochs in the paper; it keeps a large NCKD weight from swamping a fresh student's "
        "first steps); 0 = none",
    )
    dkd_alpha: float = Field(
        default=1.0,
        ge=0,
        description="with kd: dkd, weight of TCKD, the binary KL of target against non-target probability mass",
    )
    dkd_beta: float = Field(
        default=8.0,
        ge=0,
        description="with kd: dkd, weight of NCKD, the KL among the non-target classes (paper's CIFAR value 8)",
    )
    teacher_views: Views = Field(
        default="none",
        description="average each teacher's logits over views of the image before the KD term: flip = the image "
        "and its mirror image (one more teacher forward per batch), flip-shift = that pair and the pair shifted a "
        "pixel two ways (5 more); for teachers trained with flips (and crops); the hint stays the plain image's",
    )
    standardize: bool = Field(
        default=False,
        description="z-score each sample's student and teacher logits before the softened softmax (logit "
        "standardization, Sun et al. 2024; with kl or dkd); temperature is then their base temperature, e.g. 2",
    )

    @model_validator(mode="after")
    def _something_to_learn(self) -> LossWeights:
        if not (self.alpha or self.beta or self.gamma):
            raise ValueError("alpha, beta and gamma are all 0: expected at least one term to train on")
        return self


def hint_blocks(student: ArchSpec, teacher: ArchSpec) -> tuple[int, int]:
    """(student block, teacher block) to pair for the hint; see the module docstring for the rule."""
    s_block = (len(student.blocks) - 1) // 2
    s_depth = s_block / max(len(student.blocks) - 1, 1)
    s_size = student.block_output_sizes()[s_block]
    t_sizes = teacher.block_output_sizes()

    def distance(t_block: int) -> tuple[float, float]:
        depth_gap = abs(t_block / max(len(teacher.blocks) - 1, 1) - s_depth)
        return depth_gap, abs(math.log2(t_sizes[t_block] / s_size))

    same_size = [t for t, size in enumerate(t_sizes) if size == s_size]
    return s_block, min(same_size or range(len(t_sizes)), key=distance)


@dataclass
class TeacherOutputs:
    """What objectives need from one teacher for one batch: logits and hint features by block."""

    logits: torch.Tensor
    features: dict[int, torch.Tensor]


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype the running autocast computes in on `device`, None outside autocast."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _in_teacher_layout(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The batch in the layout the teacher runs fastest in under the running autocast. Each student
    takes a batch in its own layout; the teacher in its own, so its outputs are the same for any group
    of students, and the same whether it runs live or fills a cache."""
    return x.contiguous(memory_format=training_layout(teacher, x.device, _autocast_dtype(x.device)))


class LiveTeacher:
    """Runs the eval-mode teacher on each batch, once per batch however many students ask; its logits are
    averaged over `views` of each image (ikd.views), its hint features are the plain image's.

    Students trained together (ikd.train.train_models) are handed the very same batch tensors, so
    the batch's index tensor identifies it: the second student of a batch gets the first's outputs.
    """

    def __init__(self, teacher: Teacher, hint_blocks=(), views: Views = "none"):
        # No gradient reaches the teacher (its forward runs under no_grad), so its parameters are left
        # as the caller had them: freezing them in place once made a copied-out student untrainable.
        self.teacher = teacher.eval()
        self.hint_blocks = frozenset(hint_blocks)
        self.views = views
        self._last: tuple[torch.Tensor, TeacherOutputs] | None = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> TeacherOutputs:
        if self._last is not None and self._last[0] is index:
            return self._last[1]
        x = _in_teacher_layout(self.teacher, x)
        if self.hint_blocks:
            logits, features = self.teacher.forward_features(x)
            viewed = viewed_logits(self.teacher, x, self.views, plain=logits)
            outputs = TeacherOutputs(viewed, {b: features[b] for b in self.hint_blocks})
        else:
            outputs = TeacherOutputs(viewed_logits(self.teacher, x, self.views), {})
        self._last = (index, outputs)
        return outputs


class CachedTeacher:
    """Teacher outputs computed once for every training image and looked up by index.

    Valid only without augmentation, when the teacher would see the same images every epoch.
    """

    def __init__(self, logits: torch.Tensor, features: dict[int, torch.Tensor] | None = None, views: Views = "none"):
        self.logits, self.features, self.views = logits, features or {}, views
        self.hint_blocks = frozenset(self.features)
        self._last: tuple[torch.Tensor, TeacherOutputs] | None = None

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> TeacherOutputs:
        # gathered once per batch, as LiveTeacher runs once: every student trained beside the first
        # gets the same tensors (each gather copies the batch's rows of every cached block)
        if self._last is not None and self._last[0] is index:
            return self._last[1]
        rows = to_device(index, self.logits.device)
        features = {b: to_device(f[rows], x.device) for b, f in self.features.items()}
        outputs = TeacherOutputs(to_device(self.logits[rows], x.device), features)
        self._last = (index, outputs)
        return outputs


TeacherSource = LiveTeacher | CachedTeacher


@dataclass
class TeacherLink:
    """One teacher as one student sees it: where its outputs come from, its KD weight, its hint."""

    source: TeacherSource
    weight: float = 1.0
    hint_block: int | None = None  # teacher block for this teacher's hint (None: no hint from it)
    student_block: int | None = None


class DistillationObjective(nn.Module):
    """Callable as `(student, x, y, index) -> (logits, {"kd", "ce", "hint", "loss"})`.

    With several teachers the KD term aggregates them (`aggregate`):
      mean-kd     the weighted mean of each teacher's KD term;
      mean-probs  one KD term against the weighted mean of the teachers' softened distributions.
    Both hold for either KD term (`weights.kd`). DKD with mean-probs is DKD against the mean
    distribution: its target/non-target split and its non-target distribution are those of the
    mean (so TCKD + (1 - p_t) * NCKD is still KL against the mean). With `weights.standardize` each
    teacher's logits are standardized before its softmax, then averaged.
    `drop` > 0 leaves each teacher out of a batch's KD term with that probability (never all of
    them). A teacher of weight 0 is left out of every batch (unless all are 0: then they count
    alike). The hint term is the mean of the hints of the teachers that give one; each has its own
    regressor. As an nn.Module its parameters are those regressors, which train with the student.
    With `weights.kd_warmup` the KD term's weight is alpha * min(step / (kd_warmup * steps_per_epoch),
    1) at the step-th training step (counting from 1); the count is training state.
    """

    def __init__(
        self,
        links: list[TeacherLink],
        weights: LossWeights,
        regressors: list[HintRegressor | None],
        aggregate: str = "mean-kd",
        drop: float = 0.0,
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        teacher_digests: Sequence[str] = (),
    ):
        super().__init__()
        self.teacher_digests = list(teacher_digests)
        if weights.kd_warmup and not steps_per_epoch:
            raise ConfigError("loss.kd_warmup is in epochs: the objective needs the steps_per_epoch it trains with")
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate {aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        self.links, self.weights, self.aggregate, self.drop = links, weights, aggregate, drop
        self.regressors = nn.ModuleList([r if r is not None else nn.Identity() for r in regressors])
        self._hinted = [i for i, r in enumerate(regressors) if r is not None]
        self._hints = [(i, *self._hint_blocks(i)) for i in self._hinted]  # (teacher, student block, its block)
        # a teacher of weight 0 (weighting by a validation accuracy it lacks) never teaches: teacher drop
        # could otherwise leave it alone in a batch, at full weight; all of weight 0 teach alike
        self._teaching = [i for i, link in enumerate(links) if link.weight > 0] or list(range(len(links)))
        self._drop_generator = torch.Generator().manual_seed(seed or 0)
        self._warmup_steps = weights.kd_warmup * (steps_per_epoch or 0)
        self._steps = 0  # training steps taken (forwards with a gradient), for the KD warm-up

    def job_description(self) -> dict[str, Any]:
        """What this objective computes, for a training state's job (ikd.train): a state saved under other
        loss settings, teacher weights or hints belongs to another job."""
        # kd_warmup and teacher_views joined the weights later: left out at their defaults, so a state saved
        # before them still resumes
        later = {"kd_warmup": 0.0, "teacher_views": "none"}
        return {
            "weights": self.weights.model_dump(exclude={k for k, v in later.items() if getattr(self.weights, k) == v}),
            "aggregate": self.aggregate,
            "drop": self.drop,
            "teachers": [[link.weight, link.hint_block, link.student_block] for link in self.links],
        } | ({"teacher_digests": self.teacher_digests} if self.teacher_digests else {})

    # The drop stream and the step count are part of the training state (nn.Module's extra state), so a
    # resumed training drops the same teachers from the same batches, at the same warm-up weight, as one
    # never interrupted.
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"drop_generator": self._drop_generator.get_state(), "steps": torch.tensor(self._steps)}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self._drop_generator.set_state(state["drop_generator"])
        self._steps = int(state["steps"]) if "steps" in state else 0  # states saved before the warm-up: no count

    def kd_scale(self) -> float:
        """The share of alpha the KD term gets at the next training step (1 after the warm-up)."""
        return min((self._steps + 1) / self._warmup_steps, 1.0) if self._warmup_steps else 1.0

    def _kd_teachers(self) -> list[int]:
        teaching = self._teaching
        if self.drop <= 0 or len(teaching) == 1:
            return teaching
        kept = (torch.rand(len(teaching), generator=self._drop_generator) >= self.drop).nonzero().flatten().tolist()
        kept = kept or [int(torch.randint(len(teaching), (1,), generator=self._drop_generator))]
        return [teaching[k] for k in kept]

    def _hint_blocks(self, i: int) -> tuple[int, int]:
        """(student block, teacher block) of teacher i's hint: set on every link with a regressor."""
        link = self.links[i]
        assert link.student_block is not None and link.hint_block is not None, f"teacher {i} gives no hint"
        return link.student_block, link.hint_block

    def forward(self, student: VGG, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        kd_teachers = self._kd_teachers()
        outputs = {i: self.links[i].source(x, index) for i in sorted(set(kd_teachers) | set(self._hinted))}
        if self._hinted:
            logits, features = student.forward_features(x)
            hint = torch.stack(
                [
                    self.regressors[i](features[s_block], outputs[i].features[t_block])
                    for i, s_block, t_block in self._hints
                ]
            ).mean()
        else:
            logits, hint = student(x), torch.zeros((), device=x.device)
        if len(kd_teachers) == 1:
            teacher_weights = [1.0]
        else:
            total = sum(self.links[i].weight for i in kd_teachers)
            teacher_weights = [self.links[i].weight / total if total > 0 else 1 / len(kd_teachers) for i in kd_teachers]
        kd = self._kd(logits, y, [outputs[i].logits for i in kd_teachers], teacher_weights)
        scale = self.kd_scale()
        if student.training and torch.is_grad_enabled():
            self._steps += 1
        return self._terms(logits, y, kd, hint, scale)

    def _kd(
        self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: list[torch.Tensor], teacher_weights: list[float]
    ) -> torch.Tensor:
        """The KD term against one teacher, or several aggregated (class docstring), in float32."""
        w = self.weights
        T = w.temperature

        def prepare(z: torch.Tensor) -> torch.Tensor:
            return standardize_logits(z) if w.standardize else z.float()

        def one(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
            if w.kd == "dkd":
                return dkd_loss(student, teacher, y, T, w.dkd_alpha, w.dkd_beta)
            return kd_loss(student, teacher, T)

        student, teachers = prepare(logits), [prepare(t) for t in teacher_logits]
        if len(teachers) == 1:
            return one(student, teachers[0])
        pairs = list(zip(teacher_weights, teachers, strict=True))
        # sums of tensors (sum's 0 start only when empty, and there is always a teacher)
        if self.aggregate == "mean-kd":
            return cast(torch.Tensor, sum(tw * one(student, t) for tw, t in pairs))
        if w.kd == "dkd":  # the log of the mean distribution, kept in log space for NCKD's small masses
            log_probs = torch.logsumexp(
                torch.stack([math.log(tw) + F.log_softmax(t / T, dim=1) for tw, t in pairs if tw > 0]), dim=0
            )
            return soft_target_dkd_loss(student, log_probs, y, T, w.dkd_alpha, w.dkd_beta)
        probs = cast(torch.Tensor, sum(tw * F.softmax(t / T, dim=1) for tw, t in pairs))
        return soft_target_kd_loss(student, probs, T)

    def _terms(self, logits: torch.Tensor, y: torch.Tensor, kd: torch.Tensor, hint: torch.Tensor, kd_scale: float):
        w = self.weights
        ce = F.cross_entropy(logits.float(), y)
        # a term weighted 0 is left out, not multiplied by 0: hint pre-training (alpha = beta = 0) then gives
        # the head no gradient at all, so weight decay does not shrink what it does not train
        alpha = w.alpha * kd_scale if kd_scale < 1 else w.alpha  # exactly alpha after the warm-up, bit for bit
        weighted = [weight * term for weight, term in ((alpha, kd), (w.beta, ce), (w.gamma, hint)) if weight]
        loss = functools.reduce(operator.add, weighted)  # left to right, as alpha * kd + beta * ce + gamma * hint
        return logits, {"loss": loss, "kd": kd.detach(), "ce": ce.detach(), "hint": hint.detach()}


AGGREGATES = ("mean-kd", "mean-probs")


@torch.inference_mode()
def cache_teacher_outputs(
    teacher: Teacher,
    images: ImageSet,
    *,
    mean,
    std,
    hint_blocks=(),
    device: torch.device,
    precision: Precision | None = None,
    batch_size: int = 128,
    progress: bool = False,
    views: Views = "none",
) -> CachedTeacher:
    """Run the teacher once over `images` (in order) and keep its logits and the named blocks' outputs.

    `precision`: the students' training precision; the teacher runs under its autocast (and in its
    layout), as a live teacher would inside their training steps. `views`: as LiveTeacher's.

    Batch 128, not larger: a VGG-16's activations at batch 1000 overflow the CPU's caches, and the
    pass ran 23% slower (14.4 s against 11.1 s per 6,000 MNIST images on a 2-core Xeon).

    Hint features are kept at fp32 on the CPU; at MNIST scale a middle VGG-16 block is about
    1.3 GB, the price of never running the teacher again.
    """
    teacher = teacher.eval()
    hint_blocks = sorted(set(hint_blocks))
    logits: list[torch.Tensor] = []
    features: dict[int, list[torch.Tensor]] = {b: [] for b in hint_blocks}
    batches = iterate_batches(images, batch_size, mean=mean, std=std, device=device)
    for x, _ in tqdm(
        batches,
        total=-(-len(images) // batch_size),
        desc="caching teacher outputs",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            x = _in_teacher_layout(teacher, x)
            if not hint_blocks:
                logits.append(viewed_logits(teacher, x, views).float().cpu())
                continue
            out, feats = teacher.forward_features(x)
            logits.append(viewed_logits(teacher, x, views, plain=out).float().cpu())
        for b in hint_blocks:
            features[b].append(feats[b].float().cpu())
    return CachedTeacher(torch.cat(logits), {b: torch.cat(f) for b, f in features.items()}, views)


def hint_pairing(student: ArchSpec, teacher: Teacher) -> tuple[int, int, int]:
    """(student block, teacher block, teacher channels) of the hint.

    A VGG teacher follows `hint_blocks`; an external teacher offers one named layer (block 0),
    paired with the student's middle block.
    """
    if isinstance(teacher, ExternalTeacher):
        if teacher.hint_channels is None:
            raise ConfigError(NO_HINT_LAYER)
        return (len(student.blocks) - 1) // 2, 0, teacher.hint_channels
    s_block, t_block = hint_blocks(student, teacher.spec)
    return s_block, t_block, teacher.spec.blocks[t_block][-1]


def teacher_hint_blocks(
    student: ArchSpec, teachers: list, weights: LossWeights, hints: str = "parent"
) -> list[int | None]:
    """For each teacher, the block whose output the student's hint needs (None: no hint from that
    teacher): the first teacher gives the hint, or every one with `hints="each"`. What to cache."""
    if hints not in ("parent", "each"):
        raise ConfigError(f"hints {hints!r}: expected 'parent' or 'each'")
    return [
        hint_pairing(student, teacher)[1] if weights.gamma > 0 and (hints == "each" or i == 0) else None
        for i, teacher in enumerate(teachers)
    ]


def teacher_hint_block(student: ArchSpec, teacher: Teacher, weights: LossWeights) -> int | None:
    """The teacher block whose output the hint needs (None without a hint): what to cache."""
    return teacher_hint_blocks(student, [teacher], weights)[0]


def build_objective(
    student: VGG,
    teachers,
    weights: LossWeights,
    *,
    sources: Sequence[TeacherSource] | None = None,
    teacher_weights: list[float] | None = None,
    hints: str = "parent",
    aggregate: str = "mean-kd",
    drop: float = 0.0,
    seed: int | None = None,
    steps_per_epoch: int | None = None,
    teacher_digests: Sequence[str] = (),
) -> DistillationObjective:
    """The objective for one student taught by one teacher or several.

    `teachers`: a model, or a list (the first is the one that gives the hint with `hints="parent"`;
    `hints="each"` gives every teacher a hint with its own regressor). `sources`, aligned with
    `teachers`, say where outputs come from: a CachedTeacher (from `cache_teacher_outputs` with the
    blocks `teacher_hint_block` names; only without augmentation) or a LiveTeacher shared by
    students trained together; by default each teacher runs live. `seed` fixes the regressors'
    initial weights and the teacher-drop stream. `steps_per_epoch` (ikd.train.steps_per_epoch): what
    `weights.kd_warmup` counts its epochs in. `teacher_digests` (ikd.external.module_digest of each teacher):
    part of the training state's job, so a training is not resumed under other teachers.
    """
    teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    hint_blocks = teacher_hint_blocks(student.spec, teachers, weights, hints)
    sources_or_live: list[TeacherSource | None] = list(sources) if sources else [None] * len(teachers)
    teacher_weights = teacher_weights or [1.0] * len(teachers)
    if not (len(sources_or_live) == len(teacher_weights) == len(teachers)):
        raise ValueError("teachers, sources and teacher_weights must have the same length")
    links, regressors = [], []
    for i, (teacher, source, weight, t_block) in enumerate(
        zip(teachers, sources_or_live, teacher_weights, hint_blocks, strict=True)
    ):
        s_block = regressor = None
        if t_block is not None:
            s_block, _, t_channels = hint_pairing(student.spec, teacher)
            regressor = HintRegressor(student.spec.blocks[s_block][-1], t_channels, None if seed is None else seed + i)
        if source is None:
            source = LiveTeacher(teacher, [t_block] if t_block is not None else [], views=weights.teacher_views)
        elif t_block is not None and t_block not in source.hint_blocks:
            raise ValueError(
                f"teacher {i}'s outputs hold blocks {sorted(source.hint_blocks)}, this student needs {t_block}"
            )
        elif weights.alpha and source.views != weights.teacher_views:
            raise ValueError(
                f"teacher {i}'s outputs are over views {source.views!r}, the loss asks for {weights.teacher_views!r}"
            )
        links.append(TeacherLink(source, weight, t_block, s_block))
        regressors.append(regressor)
    return DistillationObjective(
        links,
        weights,
        regressors,
        aggregate=aggregate,
        drop=drop,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        teacher_digests=teacher_digests,
    )
