"""Loss functions of distillation, usable on their own: the KD terms (Hinton's KL, DKD), logit
standardization and the FitNets hint.

Every KD term is computed in float32 (inputs may be bf16 under autocast) and averaged over the
batch, not over classes, and is scaled by T^2 so that its gradient scale does not depend on T.
"""

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


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each sample's logits z-scored over the classes, (z - mean(z)) / std(z), in float32.

    Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
    Distillation"): applied to the student's and the teacher's logits separately before the softened
    softmax, it lets the student match the shape of the teacher's logits rather than their scale,
    and makes a KD term invariant to a per-sample shift and positive scale of either's logits. std is
    the paper's population standard deviation (divisor K, the number of classes), floored at `eps`,
    so that a sample with all logits equal gives zeros (a uniform softmax) rather than NaN. The
    authors' code divides by K - 1 (torch.std): the same loss at a temperature sqrt(K / (K - 1))
    times ours (1.054 for 10 classes).
    """
    logits = logits.float()
    centred = logits - logits.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / std.clamp_min(eps)


def _dkd_parts(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) of logits already divided by the temperature, float32.

    Either side may be shifted per sample (log-probabilities serve as well as logits). All in log
    space: the target/non-target masses from logsumexps, the non-target distributions as softmaxes
    over the non-target logits alone, so a confident teacher (1 - p_t underflowing) gives no NaN.
    """
    n, classes = student.shape
    if classes < 2:
        raise ValueError(f"DKD needs at least 2 classes, got {classes}")
    others = torch.ones_like(student, dtype=torch.bool).scatter_(1, labels.view(-1, 1), False)

    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_target = z[others].view(n, classes - 1)
        log_total = torch.logsumexp(z, dim=1)
        # log of the binary distribution [p_target, 1 - p_target], and the non-target logits
        log_binary = torch.stack([z.gather(1, labels.view(-1, 1)).squeeze(1), torch.logsumexp(non_target, dim=1)], 1)
        return log_binary - log_total.unsqueeze(1), non_target

    s_binary, s_others = split(student)
    t_binary, t_others = split(teacher)
    tckd = (t_binary.exp() * (t_binary - s_binary)).sum(dim=1)
    t_hat, s_hat = F.log_softmax(t_others, dim=1), F.log_softmax(s_others, dim=1)
    nckd = (t_hat.exp() * (t_hat - s_hat)).sum(dim=1)
    return tckd, nckd


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) of Decoupled KD at `temperature`, without the T^2 factor.

    With p = softmax(teacher/T), q = softmax(student/T) and t the label:
      TCKD = KL([p_t, 1 - p_t] || [q_t, 1 - q_t])   (binary: target against non-target mass)
      NCKD = KL(p_hat || q_hat), p_hat_i = p_i / (1 - p_t) over the classes i != t.
    Per sample, Hinton's KL(p || q) = TCKD + (1 - p_t) * NCKD (Zhao et al. 2022, eq. 3).
    """
    return _dkd_parts(student_logits.float() / temperature, teacher_logits.float() / temperature, labels)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled Knowledge Distillation (Zhao et al., CVPR 2022): T^2 * (alpha * TCKD + beta * NCKD),
    averaged over the batch; see `dkd_terms`. The defaults are the paper's CIFAR values (with T = 4).

    Without the paper's linear warm-up of the DKD weight over the first epochs: the caller scales
    the term if it wants one.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


def soft_target_dkd_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """`dkd_loss` against given target log-probabilities (already softened at `temperature`, finite),
    e.g. the log of the mean distribution of several teachers. Log-probabilities rather than
    probabilities: a mean distribution's tiny non-target masses would round to 0 and lose NCKD."""
    tckd, nckd = _dkd_parts(student_logits.float() / temperature, teacher_log_probs.float(), labels)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


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
        # height and width apart: a user's teacher (ikd.external) may hint from a map that is not square
        size = tuple(min(a, b) for a, b in zip(projected.shape[-2:], teacher_features.shape[-2:], strict=True))
        projected = F.adaptive_avg_pool2d(projected, size) if tuple(projected.shape[-2:]) != size else projected
        # pooled in fp32: a live teacher's bf16 features (autocast) and the same features cached as fp32
        # then give the same target, as the cache promises
        target = teacher_features.float()
        target = F.adaptive_avg_pool2d(target, size) if tuple(target.shape[-2:]) != size else target
        return F.mse_loss(projected.float(), target)
