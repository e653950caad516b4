"""Paired comparison of two classifiers on the same images: is a difference more than chance?

Two students that differ by 0.1 point on 10,000 images may differ on 10 images or on 300. The
exact McNemar test looks only at the images the two disagree on: if neither model is better, each
disagreement is equally likely to go either way, so the count one model wins is Binomial(n, 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairedComparison:
    n: int  # images compared
    a_correct: int
    b_correct: int
    only_a: int  # images model a classifies correctly and model b does not
    only_b: int
    p_value: float  # exact McNemar, two-sided: no disagreement at all reads 1.0

    @property
    def difference(self) -> float:
        """Accuracy of a minus accuracy of b, in points."""
        return 100 * (self.a_correct - self.b_correct) / max(self.n, 1)

    def summary(self, a: str = "a", b: str = "b") -> str:
        return (
            f"{a} - {b}: {self.difference:+.2f} points; {self.only_a} images only {a} gets right, "
            f"{self.only_b} only {b}; McNemar p = {self.p_value:.3g}"
        )


def compare_predictions(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> PairedComparison:
    """Compare two models' predicted classes for the same images, in the same order."""
    if not a.shape == b.shape == labels.shape or a.ndim != 1:
        raise ValueError(
            f"paired predictions need one class per image for the same images: got shapes "
            f"{tuple(a.shape)}, {tuple(b.shape)} and labels {tuple(labels.shape)}"
        )
    right_a, right_b = a.cpu() == labels.cpu(), b.cpu() == labels.cpu()
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    # imported here: scipy.stats is most of a second of every ikd command's start, and only this needs it
    from scipy.stats import binomtest

    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return PairedComparison(
        n=int(labels.numel()),
        a_correct=int(right_a.sum()),
        b_correct=int(right_b.sum()),
        only_a=only_a,
        only_b=only_b,
        p_value=float(p_value),
    )
