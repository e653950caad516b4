"""The paired (McNemar) comparison against hand-computed binomial tails."""

import pytest
import torch

from ikd.compare import compare_predictions

LABELS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


def predictions_right_on(positions):
    wrong = (LABELS + 1) % 10
    return torch.where(torch.isin(torch.arange(len(LABELS)), torch.tensor(positions)), LABELS, wrong)


def test_counts_only_the_disagreements_and_the_exact_two_sided_tail():
    a = predictions_right_on([0, 1, 2, 3])
    b = predictions_right_on([0, 1])
    result = compare_predictions(a, b, LABELS)
    assert (result.n, result.a_correct, result.b_correct, result.only_a, result.only_b) == (12, 4, 2, 2, 0)
    # two disagreements, both to a: P(X = 2) + P(X = 0) for X ~ Binomial(2, 1/2)
    assert result.p_value == pytest.approx(0.25 + 0.25)
    assert result.difference == pytest.approx(100 * 2 / 12)


def test_ten_to_none_is_far_from_chance_and_symmetric():
    a = predictions_right_on(list(range(10)))
    b = predictions_right_on([])
    ab, ba = compare_predictions(a, b, LABELS), compare_predictions(b, a, LABELS)
    assert ab.p_value == pytest.approx(2 * 0.5**10) == ba.p_value
    assert ab.difference == -ba.difference and (ab.only_a, ab.only_b) == (ba.only_b, ba.only_a)


def test_disagreements_that_cancel_or_none_at_all_are_chance():
    mixed = compare_predictions(predictions_right_on([0, 1, 2]), predictions_right_on([0, 3, 4]), LABELS)
    assert (mixed.only_a, mixed.only_b, mixed.difference) == (2, 2, 0.0) and mixed.p_value == pytest.approx(1.0)
    same = compare_predictions(LABELS, LABELS, LABELS)
    assert (same.only_a, same.only_b, same.p_value) == (0, 0, 1.0)


def test_predictions_for_other_images_are_refused():
    with pytest.raises(ValueError, match="same images"):
        compare_predictions(LABELS[:5], LABELS, LABELS)
