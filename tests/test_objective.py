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
    block = live.links[0].hint_block
    cache = cache_teacher_outputs(teacher, images, mean=mean, std=std, hint_blocks=[block] if gamma else [],
                                  device=torch.device("cpu"), batch_size=7)
    cached = build_objective(cached_student, teacher, weights, sources=[cache])
    cached.regressors.load_state_dict(live.regressors.state_dict())
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
    assert not any("regressor" in name for name in student.state_dict())
    assert len(list(objective.parameters())) == 2  # the 1x1 conv's weight and bias
    assert all(not p.requires_grad for p in teacher.parameters())


def _two_teachers():
    teacher, spec, images, _ = _setup()
    second = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[8], [8]]), seed=5)
    x = (images.images[:6].float() / 255 - 0.5) / 0.25
    return [teacher, second], spec, x, images.labels[:6]


@pytest.mark.parametrize("aggregate", ["mean-kd", "mean-probs"])
def test_several_teachers_aggregate_as_documented(aggregate):
    teachers, spec, x, y = _two_teachers()
    weights = LossWeights(temperature=1.0, alpha=1.0, beta=0.0, gamma=0.0)
    student = build_model(spec, seed=1)
    objective = build_objective(student, teachers, weights, teacher_weights=[3.0, 1.0], aggregate=aggregate)
    logits, terms = objective(student, x, y, torch.arange(6))
    T = 1.0
    with torch.no_grad():
        s = torch.softmax(logits / T, 1)
        p = [torch.softmax(t(x) / T, 1) for t in teachers]

        def kl(target):  # by hand: sum_c p log(p/q), averaged over the batch, times T^2
            return (target * (target.log() - s.log())).sum(1).mean() * T**2

        if aggregate == "mean-kd":
            expected = 0.75 * kl(p[0]) + 0.25 * kl(p[1])
        else:
            expected = kl(0.75 * p[0] + 0.25 * p[1])
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-3)


def test_teacher_drop_never_drops_everyone_and_is_seeded():
    teachers, spec, x, y = _two_teachers()
    student = build_model(spec, seed=1)
    weights = LossWeights(gamma=0.0)

    def kd_series(drop, seed):
        objective = build_objective(student, teachers, weights, drop=drop, seed=seed)
        return [objective(student, x, y, torch.arange(6))[1]["kd"].item() for _ in range(12)]

    full = kd_series(0.0, 0)
    assert len(set(full)) == 1
    assert kd_series(0.5, 3) == kd_series(0.5, 3)
    dropped = kd_series(1.0, 3)  # everyone dropped -> one teacher at random
    singles = {build_objective(student, [t], weights)(student, x, y, torch.arange(6))[1]["kd"].item() for t in teachers}
    assert all(any(abs(d - v) < 1e-6 for v in singles) for d in dropped)
    assert len({round(d, 6) for d in dropped}) == 2  # both teachers were picked at some point


def test_hints_from_each_teacher_have_their_own_regressor():
    teachers, spec, x, y = _two_teachers()
    student = build_model(spec, seed=1)
    first = build_objective(student, teachers, LossWeights(), hints="first")
    each = build_objective(student, teachers, LossWeights(), hints="each")
    assert len(list(first.parameters())) == 2 and len(list(each.parameters())) == 4
    assert each(student, x, y, torch.arange(6))[1]["hint"] > 0


def test_a_shared_live_teacher_runs_once_per_batch():
    teachers, spec, x, y = _two_teachers()
    calls = []
    first_conv = next(m for m in teachers[0].modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda *args: calls.append(1))
    from ikd.objective import LiveTeacher, teacher_hint_block

    students = [build_model(spec, seed=s) for s in (1, 2)]
    block = teacher_hint_block(spec, teachers[0], LossWeights())
    shared = LiveTeacher(teachers[0], [block])
    objectives = [build_objective(s, teachers[0], LossWeights(), sources=[shared]) for s in students]
    index = torch.arange(6)
    for student, objective in zip(students, objectives):
        objective(student, x, y, index)
    assert len(calls) == 1
    objectives[0](students[0], x, y, torch.arange(6))  # a new batch runs it again
    assert len(calls) == 2
