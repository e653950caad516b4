"""Loss functions of distillation, usable on their own: the KD term and the FitNets hint."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch (not over classes).

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al. 2015).
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_target_kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """`kd_loss` against given target probabilities (already softened at `temperature`), e.g. the
    mean distribution of several teachers."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_probs.float(), reduction="batchmean")
    return kl * temperature**2


class HintRegressor(nn.Module):
    """Maps student features to the teacher's channel count (1x1 conv) and spatial size (avg-pool)."""

    def __init__(self, student_channels: int, teacher_channels: int, seed: int | None = None):
        super().__init__()
        self.project = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        if seed is not None:  # a seeded start, independent of whatever used the global RNG before
            generator = torch.Generator().manual_seed(seed)
            nn.init.kaiming_uniform_(self.project.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(student_channels)
            assert self.project.bias is not None  # nn.Conv2d's default bias=True
            nn.init.uniform_(self.project.bias, -bound, bound, generator=generator)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        projected = self.project(student_features)
        size = min(projected.shape[-1], teacher_features.shape[-1])
        projected = F.adaptive_avg_pool2d(projected, size) if projected.shape[-1] != size else projected
        target = (
            F.adaptive_avg_pool2d(teacher_features, size) if teacher_features.shape[-1] != size else teacher_features
        )
        return F.mse_loss(projected.float(), target.float())
