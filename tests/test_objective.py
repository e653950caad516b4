"""The distillation objective: the KD term against the formula by hand, hint pairing, caching."""

import math

import pytest
import torch
import torch.nn.functional as F

from ikd.arch import ArchSpec, preset
from ikd.data import ImageSet
from ikd.losses import kd_loss
from ikd.model import build_model
from ikd.objective import (
    LossWeights,
    build_objective,
    cache_teacher_outputs,
    hint_blocks,
)


def test_kd_loss_matches_the_formula_by_hand():
    torch.manual_seed(0)
    s, t, temperature = torch.randn(4, 5), torch.randn(4, 5), 3.0
    expected = 0.0
    for i in range(4):
        p = [math.exp(v / temperature) for v in t[i].tolist()]
        q = [math.exp(v / temperature) for v in s[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 4 * temperature**2  # batch mean, not class mean; times T^2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_hint_pairs_student_middle_with_teacher_of_same_resolution():
    teacher = preset("vgg16", in_channels=3, image_size=32, num_classes=10)  # outputs 16, 8, 4, 2, 1
    student = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[8], [16], [32]])  # 16, 8, 4
    assert hint_blocks(student, teacher) == (1, 1)
    four_blocks = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[8], [8], [8], [8]])
    assert hint_blocks(four_blocks, teacher) == (1, 1)
    # no teacher block at the student's resolution: nearest relative depth
    tiny_teacher = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[8], [8]])  # 16, 8
    deep_student = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[4]] * 5)  # middle: 4x4
    assert hint_blocks(deep_student, tiny_teacher) == (2, 1)


def _setup(gamma=1.0):
    torch.manual_seed(0)
    teacher = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[8], [16], [16]]), seed=0)
    student_spec = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[4], [6]])
    images = ImageSet(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (20,)))
    return teacher, student_spec, images, LossWeights(gamma=gamma)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_cached_and_live_teacher_give_the_same_loss_and_gradients(gamma):
    teacher, spec, images, weights = _setup(gamma)
    mean, std = (0.5,), (0.25,)
    live_student = build_model(spec, seed=1)
    cached_student = build_model(spec, seed=1)
    live = build_objective(live_student, teacher, weights)
    block = live.teacher.hint_block
    cache = cache_teacher_outputs(teacher, images, mean=mean, std=std, hint_block=block,
                                  device=torch.device("cpu"), batch_size=7)
    cached = build_objective(cached_student, teacher, weights, cached=cache)
    if cached.regressor is not None:
        cached.regressor.load_state_dict(live.regressor.state_dict())
    index = torch.tensor([3, 17, 0, 9, 4])
    x = (images.images[index].float() / 255 - 0.5) / 0.25
    y = images.labels[index]
    results = []
    for student, objective in ((live_student, live), (cached_student, cached)):
        student.train()
        _, terms = objective(student, x, y, index)
        terms["loss"].backward()
        results.append((terms, [p.grad.clone() for p in student.parameters()]))
    (live_terms, live_grads), (cached_terms, cached_grads) = results
    for name in ("loss", "kd", "ce", "hint"):
        assert torch.allclose(live_terms[name], cached_terms[name], atol=1e-6), name
    for a, b in zip(live_grads, cached_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_objective_terms_are_weighted_and_regressor_stays_out_of_the_student():
    teacher, spec, images, _ = _setup()
    weights = LossWeights(temperature=2.0, alpha=0.3, beta=0.5, gamma=2.0)
    student = build_model(spec, seed=1)
    objective = build_objective(student, teacher, weights)
    x = images.images[:6].float() / 255
    y = images.labels[:6]
    logits, terms = objective(student, x, y, torch.arange(6))
    expected = 0.3 * terms["kd"] + 0.5 * terms["ce"] + 2.0 * terms["hint"]
    assert torch.allclose(terms["loss"], expected)
    assert terms["ce"] == pytest.approx(F.cross_entropy(logits, y).item())
    assert terms["hint"] > 0
    assert not any(name.startswith("regressor") for name in student.state_dict())
    assert len(list(objective.parameters())) == 2  # the 1x1 conv's weight and bias
    assert all(not p.requires_grad for p in teacher.parameters())
