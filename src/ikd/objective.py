"""The distillation objective: one loss with three named terms.

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T))  +  beta * CE(y, s)  +  gamma * hint

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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from ikd.arch import ArchSpec
from ikd.data import ImageSet, iterate_batches
from ikd.errors import ConfigError
from ikd.external import ExternalTeacher
from ikd.losses import HintRegressor, kd_loss
from ikd.model import VGG


class LossWeights(BaseModel):
    """Weights of the three terms and the softmax temperature."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=4.0, gt=0, description="softmax temperature T of the KD term")
    alpha: float = Field(default=0.9, ge=0, description="weight of the T^2-scaled KL term")
    beta: float = Field(default=0.1, ge=0, description="weight of cross-entropy with the labels")
    gamma: float = Field(default=1.0, ge=0, description="weight of the FitNets hint (0 = no hint); see benchmarks/results/distill_ablation_mnist.md")


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
    """What the objective needs from the teacher for one batch."""

    logits: torch.Tensor
    hint_features: torch.Tensor | None


class LiveTeacher:
    """Runs the (frozen, eval-mode) teacher on every batch."""

    def __init__(self, teacher: VGG, hint_block: int | None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.hint_block = hint_block

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> TeacherOutputs:
        if self.hint_block is None:
            return TeacherOutputs(self.teacher(x), None)
        logits, features = self.teacher.forward_features(x)
        return TeacherOutputs(logits, features[self.hint_block])


class CachedTeacher:
    """Teacher outputs computed once for every training image and looked up by index.

    Valid only without augmentation, when the teacher would see the same images every epoch.
    """

    def __init__(self, logits: torch.Tensor, hint_features: torch.Tensor | None, hint_block: int | None):
        self.logits, self.hint_features, self.hint_block = logits, hint_features, hint_block

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> TeacherOutputs:
        index = index.to(self.logits.device)
        features = None if self.hint_features is None else self.hint_features[index].to(x.device)
        return TeacherOutputs(self.logits[index].to(x.device), features)


class DistillationObjective(nn.Module):
    """Callable as `(student, x, y, index) -> (logits, {"kd", "ce", "hint", "loss"})`.

    As an nn.Module its parameters are the hint regressor's, which train alongside the student.
    """

    def __init__(self, teacher: LiveTeacher | CachedTeacher, weights: LossWeights,
                 hint_student_block: int | None, regressor: HintRegressor | None):
        super().__init__()
        self.teacher = teacher
        self.weights = weights
        self.hint_student_block = hint_student_block
        self.regressor = regressor

    def forward(self, student: VGG, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        target = self.teacher(x, index)
        w = self.weights
        if self.regressor is not None:
            logits, features = student.forward_features(x)
            hint = self.regressor(features[self.hint_student_block], target.hint_features)
        else:
            logits, hint = student(x), torch.zeros((), device=x.device)
        kd = kd_loss(logits, target.logits, w.temperature)
        ce = F.cross_entropy(logits.float(), y)
        loss = w.alpha * kd + w.beta * ce + w.gamma * hint
        return logits, {"loss": loss, "kd": kd.detach(), "ce": ce.detach(), "hint": hint.detach()}


@torch.inference_mode()
def cache_teacher_outputs(teacher: VGG, images: ImageSet, *, mean, std, hint_block: int | None,
                          device: torch.device, batch_size: int = 1000, progress: bool = False) -> CachedTeacher:
    """Run the teacher once over `images` (in order) and keep its outputs.

    Hint features are kept at fp32 on the CPU; at MNIST scale a middle VGG-16 block is about
    1.3 GB, the price of never running the teacher again.
    """
    teacher = teacher.eval()
    logits, features = [], []
    batches = iterate_batches(images, batch_size, mean=mean, std=std, device=device)
    for x, _ in tqdm(batches, total=-(-len(images) // batch_size), desc="caching teacher outputs",
                     unit="batch", disable=not progress, leave=False):
        if hint_block is None:
            logits.append(teacher(x).float().cpu())
        else:
            out, feats = teacher.forward_features(x)
            logits.append(out.float().cpu())
            features.append(feats[hint_block].float().cpu())
    return CachedTeacher(torch.cat(logits), torch.cat(features) if features else None, hint_block)


def hint_pairing(student: ArchSpec, teacher: VGG | ExternalTeacher) -> tuple[int, int, int]:
    """(student block, teacher block, teacher channels) of the hint.

    A VGG teacher follows `hint_blocks`; an external teacher offers one named layer (block 0),
    paired with the student's middle block.
    """
    if isinstance(teacher, ExternalTeacher):
        if teacher.hint_channels is None:
            raise ConfigError("the external teacher has no hint_layer; name one, or set loss.gamma to 0")
        return (len(student.blocks) - 1) // 2, 0, teacher.hint_channels
    s_block, t_block = hint_blocks(student, teacher.spec)
    return s_block, t_block, teacher.spec.blocks[t_block][-1]


def teacher_hint_block(student: ArchSpec, teacher: VGG | ExternalTeacher, weights: LossWeights) -> int | None:
    """The teacher block whose output the hint needs (None without a hint): what to cache."""
    return hint_pairing(student, teacher)[1] if weights.gamma > 0 else None


def build_objective(student: VGG, teacher: VGG | ExternalTeacher, weights: LossWeights, *,
                    cached: CachedTeacher | None = None, seed: int | None = None) -> DistillationObjective:
    """The objective for one student: pairs hint blocks, makes the regressor, picks the teacher source.

    `cached` (from `cache_teacher_outputs` for `teacher_hint_block(...)`) replaces running the
    teacher on every batch; pass it only when training without augmentation. `seed` fixes the
    regressor's initial weights.
    """
    if weights.gamma > 0:
        s_block, t_block, t_channels = hint_pairing(student.spec, teacher)
        regressor = HintRegressor(student.spec.blocks[s_block][-1], t_channels, seed)
    else:
        s_block = t_block = regressor = None
    if cached is not None and cached.hint_block != t_block:
        raise ValueError(f"cached teacher outputs hold block {cached.hint_block}, this student needs {t_block}")
    source = cached if cached is not None else LiveTeacher(teacher, t_block)
    return DistillationObjective(source, weights, s_block, regressor)
