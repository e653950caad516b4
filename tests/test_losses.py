"""The KD variants against their papers' formulas by hand: DKD (Zhao et al. 2022) and logit
standardization (Sun et al. 2024), and the config keys that select them."""

import math

import pytest
import torch

from ikd.config import validate_config
from ikd.errors import ConfigError
from ikd.losses import dkd_loss, dkd_terms, kd_loss, soft_target_dkd_loss, standardize_logits
from ikd.objective import LossWeights


def softmax(row, T):
    exps = [math.exp(v / T) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def hand_dkd_rows(s, t, labels, T):
    """(TCKD, NCKD, teacher's p_target, KL) per sample, with plain Python floats."""
    rows = []
    for s_row, t_row, label in zip(s.tolist(), t.tolist(), labels.tolist(), strict=True):
        p, q = softmax(t_row, T), softmax(s_row, T)
        tckd = kl([p[label], 1 - p[label]], [q[label], 1 - q[label]])
        p_hat = [v / (1 - p[label]) for j, v in enumerate(p) if j != label]
        q_hat = [v / (1 - q[label]) for j, v in enumerate(q) if j != label]
        rows.append((tckd, kl(p_hat, q_hat), p[label], kl(p, q)))
    return rows


def hand_dkd(s, t, labels, T, alpha, beta):
    rows = hand_dkd_rows(s, t, labels, T)
    return sum(alpha * tckd + beta * nckd for tckd, nckd, _, _ in rows) / len(rows) * T**2


def batch(seed=0, n=5, classes=4, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    s = torch.randn(n, classes, generator=generator) * scale
    t = torch.randn(n, classes, generator=generator) * scale
    return s, t, torch.randint(0, classes, (n,), generator=generator)


def test_dkd_loss_matches_the_paper_by_hand():
    s, t, labels = batch()
    T, alpha, beta = 4.0, 1.0, 8.0
    expected = hand_dkd(s, t, labels, T, alpha, beta)
    assert dkd_loss(s, t, labels, T, alpha, beta).item() == pytest.approx(expected, rel=1e-5)
    assert dkd_loss(s, t, labels, T).item() == pytest.approx(expected, rel=1e-5)  # the paper's CIFAR defaults
    # each weight, the temperature and the labels matter
    for wrong in (
        dkd_loss(s, t, labels, T, alpha, 7.0),
        dkd_loss(s, t, labels, T, 0.5, beta),
        dkd_loss(s, t, labels, 2.0, alpha, beta),
        dkd_loss(s, t, (labels + 1) % 4, T, alpha, beta),
    ):
        assert wrong.item() != pytest.approx(expected, rel=1e-3)
    T2, alpha2, beta2 = 2.0, 0.3, 2.5
    assert dkd_loss(s, t, labels, T2, alpha2, beta2).item() == pytest.approx(
        hand_dkd(s, t, labels, T2, alpha2, beta2), rel=1e-5
    )
    assert dkd_loss(t, t, labels, T).item() == pytest.approx(0.0, abs=1e-6)


def test_tckd_plus_nckd_weighted_by_the_non_target_mass_is_kd():
    # Zhao et al. eq. 3: per sample, KL(p || q) = TCKD + (1 - p_t) * NCKD
    s, t, labels = batch(seed=1, n=6, classes=5)
    T = 3.0
    tckd, nckd = dkd_terms(s, t, labels, T)
    rows = hand_dkd_rows(s, t, labels, T)
    for i, (hand_tckd, hand_nckd, p_target, hand_kl) in enumerate(rows):
        assert tckd[i].item() == pytest.approx(hand_tckd, rel=1e-5, abs=2e-6)  # float32 logs: absolute error
        assert nckd[i].item() == pytest.approx(hand_nckd, rel=1e-5, abs=2e-6)  # float32 logs: absolute error
        assert hand_tckd + (1 - p_target) * hand_nckd == pytest.approx(hand_kl, rel=1e-9)
        weighted = tckd[i] + (1 - p_target) * nckd[i]
        assert weighted.item() == pytest.approx(kd_loss(s[i : i + 1], t[i : i + 1], T).item() / T**2, rel=1e-5)
    # so alpha = beta = 1 is KD with NCKD's weight raised from (1 - p_t) to 1: never below KD
    assert dkd_loss(s, t, labels, T, 1.0, 1.0).item() > kd_loss(s, t, T).item()
    weights = torch.tensor([1 - p for _, _, p, _ in rows])
    assert ((tckd + weights * nckd).mean() * T**2).item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_dkd_stays_finite_when_the_teacher_is_certain():
    # 1 - p_t rounds to 0 in float32 here; the log-space computation still gives NCKD
    s, t, labels = batch(seed=2)
    t = t.clone()
    t[torch.arange(5), labels] = 400.0
    s.requires_grad_(True)
    loss = dkd_loss(s, t, labels, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and s.grad is not None and torch.isfinite(s.grad).all()
    _, nckd = dkd_terms(s, t, labels, 1.0)
    assert (nckd > 0).all()


def test_soft_target_dkd_against_one_teachers_log_probs_is_dkd():
    s, t, labels = batch(seed=3)
    T = 4.0
    log_probs = torch.log_softmax(t / T, dim=1)
    assert soft_target_dkd_loss(s, log_probs, labels, T, 1.0, 8.0).item() == pytest.approx(
        dkd_loss(s, t, labels, T, 1.0, 8.0).item(), rel=1e-5
    )


def test_standardize_logits_by_hand():
    s, _, _ = batch(seed=4)
    out = standardize_logits(s)
    for row, got in zip(s.tolist(), out.tolist(), strict=True):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))  # the paper's divisor K
        assert got == pytest.approx([(v - mean) / std for v in row], rel=1e-5, abs=1e-6)
    assert standardize_logits(torch.full((2, 3), 7.0)).tolist() == [[0.0] * 3] * 2  # uniform, not NaN


@pytest.mark.parametrize("kd", ["kl", "dkd"])
def test_standardization_makes_the_kd_term_blind_to_shift_and_scale(kd):
    s, t, labels = batch(seed=5, scale=3.0)
    generator = torch.Generator().manual_seed(6)
    scale = torch.rand(5, 1, generator=generator) * 4 + 0.25  # per sample, positive
    shift = torch.randn(5, 1, generator=generator) * 10
    T = 2.0

    def term(student, teacher, standardize):
        if standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        return (dkd_loss(student, teacher, labels, T) if kd == "dkd" else kd_loss(student, teacher, T)).item()

    base = term(s, t, True)
    assert term(scale * s + shift, t, True) == pytest.approx(base, rel=1e-4)
    assert term(s, scale.flip(0) * t - shift, True) == pytest.approx(base, rel=1e-4)
    assert term(s, t, False) != pytest.approx(term(scale * s + shift, t, False), rel=1e-2)  # without: it changes


def test_dkd_and_standardization_compute_in_float32_under_autocast():
    s, t, labels = batch(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dkd_loss(standardize_logits(s.bfloat16()), standardize_logits(t.bfloat16()), labels, 2.0)
    assert low.dtype == torch.float32
    exact = dkd_loss(standardize_logits(s.bfloat16().float()), standardize_logits(t.bfloat16().float()), labels, 2.0)
    assert low.item() == pytest.approx(exact.item(), rel=1e-5)


def test_loss_defaults_are_plain_kd():
    weights = LossWeights()
    assert (weights.kd, weights.standardize, weights.dkd_alpha, weights.dkd_beta) == ("kl", False, 1.0, 8.0)


@pytest.mark.parametrize(
    "loss, key",
    [
        ({"kd": "js"}, "loss.kd"),
        ({"kd": "dkd", "dkd_beta": -1}, "loss.dkd_beta"),
        ({"dkd_alpha": -0.5}, "loss.dkd_alpha"),
        ({"standardize": "maybe"}, "loss.standardize"),
        ({"dkd_gamma": 1.0}, "loss.dkd_gamma"),
    ],
)
def test_the_config_rejects_bad_kd_options_in_one_line(loss, key):
    with pytest.raises(ConfigError) as error:
        validate_config({"loss": loss}, "campaign.yaml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("campaign.yaml: ") and key in message
    config = validate_config({"loss": {"kd": "dkd", "standardize": True, "dkd_alpha": 0.5, "dkd_beta": 4}}, "ok")
    assert (config.loss.kd, config.loss.standardize, config.loss.dkd_beta) == ("dkd", True, 4.0)
