"""The distillation objective: the KD term against the formula by hand, hint pairing, caching."""

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ikd.arch import ArchSpec, preset
from ikd.data import ImageSet
from ikd.errors import ConfigError
from ikd.losses import HintRegressor, kd_loss
from ikd.model import build_model
from ikd.objective import (
    LossWeights,
    build_objective,
    cache_teacher_outputs,
    hint_blocks,
)
from ikd.views import Views


def test_kd_loss_matches_the_formula_by_hand():
    torch.manual_seed(0)
    s, t, temperature = torch.randn(4, 5), torch.randn(4, 5), 3.0
    expected = 0.0
    for i in range(4):
        p = [math.exp(v / temperature) for v in t[i].tolist()]
        q = [math.exp(v / temperature) for v in s[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
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


def grad_of(parameter: torch.Tensor) -> torch.Tensor:
    assert parameter.grad is not None, "every parameter takes part in the loss"
    return parameter.grad.clone()


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
    cache = cache_teacher_outputs(
        teacher,
        images,
        mean=mean,
        std=std,
        hint_blocks=[block] if gamma else [],
        device=torch.device("cpu"),
        batch_size=7,
    )
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
        results.append((terms, [grad_of(p) for p in student.parameters()]))
    (live_terms, live_grads), (cached_terms, cached_grads) = results
    for name in ("loss", "kd", "ce", "hint"):
        assert torch.allclose(live_terms[name], cached_terms[name], atol=1e-6), name
    for a, b in zip(live_grads, cached_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_cache_filled_in_bf16_holds_what_the_live_teacher_gives_inside_a_bf16_step():
    from ikd.objective import LiveTeacher
    from ikd.runtime import resolve_precision

    teacher, spec, images, weights = _setup(1.0)
    block = build_objective(build_model(spec, seed=1), teacher, weights).links[0].hint_block
    assert block is not None
    mean, std, cpu = (0.5,), (0.25,), torch.device("cpu")
    bf16, fp32 = (resolve_precision(name, cpu) for name in ("bf16", "fp32"))

    def cache(precision):
        return cache_teacher_outputs(
            teacher, images, mean=mean, std=std, hint_blocks=[block], device=cpu, precision=precision, batch_size=20
        )

    x = (images.images.float() / 255 - 0.5) / 0.25
    with bf16.autocast():  # as inside a student's training step
        live = LiveTeacher(teacher, [block])(x, torch.arange(20))
    in_bf16, in_fp32 = cache(bf16), cache(fp32)
    assert torch.equal(in_bf16.logits, live.logits.float())
    assert torch.equal(in_bf16.features[block], live.features[block].float())
    assert not torch.equal(in_fp32.logits, in_bf16.logits)  # the precision did reach the cache


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
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's teacher is not frozen in place


def _two_teachers():
    teacher, spec, images, _ = _setup()
    second = build_model(ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[8], [8]]), seed=5)
    x = (images.images[:6].float() / 255 - 0.5) / 0.25
    return [teacher, second], spec, x, images.labels[:6]


# --- the loss against its formula, written out with plain torch ops -----------------------------

SMALL: dict[str, Any] = {"in_channels": 1, "image_size": 8, "num_classes": 3}


def hand_kd(student_logits, target_probs, T):
    """T^2 * KL(target || softmax(student / T)): summed over classes, averaged over the batch."""
    q = torch.softmax(student_logits / T, dim=1)
    return (target_probs * (target_probs.log() - q.log())).sum(dim=1).mean() * T**2


def hand_hint(student_features, teacher_features, conv):
    """FitNets: a 1x1 conv (a matrix over channels, plus bias) on the student's map, the larger map
    averaged over square patches down to the smaller one, then the mean squared difference."""
    projected = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], student_features)
    projected = projected + conv.bias[None, :, None, None]

    def pool_to(x, size):
        n, c, h, _ = x.shape
        k = h // size
        return x.reshape(n, c, size, k, size, k).mean(dim=(3, 5))

    size = min(projected.shape[-1], teacher_features.shape[-1])
    return ((pool_to(projected, size) - pool_to(teacher_features, size)) ** 2).mean()


def confident(model, factor=30.0):
    """Scale the classifier: untrained networks give near-uniform softmaxes, and a KD term of 1e-4 is
    mostly rounding; these give terms of order 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(factor)
    return model


def test_hint_loss_is_fitnets_by_hand():
    torch.manual_seed(0)
    student = build_model(ArchSpec(**SMALL, blocks=[[4], [6], [6]]), seed=1).eval()  # maps 4, 2, 1
    teacher = build_model(ArchSpec(**SMALL, blocks=[[8]]), seed=5)  # one 4x4 map: pooled down to 2x2
    objective = build_objective(student, teacher, LossWeights(alpha=0.0, beta=0.0, gamma=1.0), seed=0)
    link = objective.links[0]
    assert (link.student_block, link.hint_block) == (1, 0)  # the student's middle block, the only teacher block
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    _, terms = objective(student, x, y, torch.arange(5))
    with torch.no_grad():
        expected = hand_hint(
            student.forward_features(x)[1][1], teacher.forward_features(x)[1][0], objective.regressors[0].project
        )
    assert terms["hint"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)  # alpha = beta = 0

    # the other way round (an external teacher's layer can be the smaller map): the student's is pooled
    regressor = HintRegressor(6, 8, seed=3)
    student_map, teacher_map = torch.randn(2, 6, 8, 8), torch.randn(2, 8, 2, 2)
    with torch.no_grad():
        assert regressor(student_map, teacher_map).item() == pytest.approx(
            hand_hint(student_map, teacher_map, regressor.project).item(), rel=1e-5
        )
    # a user's teacher may hint from a map that is not square: each side pooled to the smaller one
    tall = torch.randn(2, 8, 8, 4)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(
            torch.nn.functional.adaptive_avg_pool2d(regressor.project(student_map), (8, 4)), tall
        )
        assert regressor(student_map, tall).item() == pytest.approx(expected.item(), rel=1e-5)

    # hint pre-training (alpha = beta = 0) leaves the head out of the graph: no gradient for weight decay
    student.zero_grad(set_to_none=True)
    objective(student, x, y, torch.arange(5))[1]["loss"].backward()
    assert all(p.grad is None for p in student.head.parameters())


@pytest.mark.parametrize("aggregate", ["mean-kd", "mean-probs"])
def test_several_teachers_at_a_temperature_with_a_hint_each_by_hand(aggregate):
    torch.manual_seed(0)
    student = confident(build_model(ArchSpec(**SMALL, blocks=[[4], [6], [6]]), seed=1).eval())  # maps 4, 2, 1
    teachers = [
        confident(build_model(ArchSpec(**SMALL, blocks=[[8], [16], [16]]), seed=0)),  # a 2x2 map: as it is
        confident(build_model(ArchSpec(**SMALL, blocks=[[8]]), seed=5)),
    ]  # a 4x4 map: pooled
    T, alpha, beta, gamma = 3.0, 0.7, 0.2, 0.5
    objective = build_objective(
        student,
        teachers,
        LossWeights(temperature=T, alpha=alpha, beta=beta, gamma=gamma),
        teacher_weights=[3.0, 1.0],
        hints="each",
        aggregate=aggregate,
        seed=0,
    )
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 2, 1, 0])
    _, terms = objective(student, x, y, torch.arange(6))
    with torch.no_grad():
        logits, student_maps = student.forward_features(x)
        outputs = [teacher.forward_features(x) for teacher in teachers]
        p = [torch.softmax(teacher_logits / T, dim=1) for teacher_logits, _ in outputs]
        if aggregate == "mean-kd":  # the weighted mean of each teacher's KD term
            kd = 0.75 * hand_kd(logits, p[0], T) + 0.25 * hand_kd(logits, p[1], T)
        else:  # one KD term against the weighted mean of the softened distributions
            kd = hand_kd(logits, 0.75 * p[0] + 0.25 * p[1], T)
        ce = -torch.log_softmax(logits, dim=1)[torch.arange(6), y].mean()
        hint = (
            hand_hint(student_maps[1], outputs[0][1][1], objective.regressors[0].project)
            + hand_hint(student_maps[1], outputs[1][1][0], objective.regressors[1].project)
        ) / 2
    for name, value in (("kd", kd), ("ce", ce), ("hint", hint), ("loss", alpha * kd + beta * ce + gamma * hint)):
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    # the teachers and the temperature matter: T = 1 or one teacher alone would give another KD term
    assert kd.item() != pytest.approx(hand_kd(logits, p[0], T).item(), rel=1e-3)


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
    assert kd_series(0.5, 3) != kd_series(0.5, 4)  # and the seed is used: another one drops other teachers
    dropped = kd_series(1.0, 3)  # everyone dropped -> one teacher at random
    singles = {build_objective(student, [t], weights)(student, x, y, torch.arange(6))[1]["kd"].item() for t in teachers}
    assert all(any(abs(d - v) < 1e-6 for v in singles) for d in dropped)
    assert len({round(d, 6) for d in dropped}) == 2  # both teachers were picked at some point


def test_a_teacher_of_weight_0_never_teaches_even_when_drop_leaves_it_alone():
    teachers, spec, x, y = _two_teachers()
    student = build_model(spec, seed=1)
    weights = LossWeights(gamma=0.0)

    def kd(objective):
        return objective(student, x, y, torch.arange(6))[1]["kd"].item()

    first_alone = kd(build_objective(student, [teachers[0]], weights))
    dropping = build_objective(student, teachers, weights, teacher_weights=[1.0, 0.0], drop=0.9, seed=3)
    assert {round(kd(dropping), 6) for _ in range(20)} == {round(first_alone, 6)}
    # all of weight 0 (none validated): they teach alike, not a division by zero
    both = kd(build_objective(student, teachers, weights, teacher_weights=[0.0, 0.0]))
    assert both == pytest.approx(kd(build_objective(student, teachers, weights)))


def test_hints_from_each_teacher_have_their_own_regressor():
    teachers, spec, x, y = _two_teachers()
    student = build_model(spec, seed=1)
    first = build_objective(student, teachers, LossWeights(), hints="parent")
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
    for student, objective in zip(students, objectives, strict=True):
        objective(student, x, y, index)
    assert len(calls) == 1
    objectives[0](students[0], x, y, torch.arange(6))  # a new batch runs it again
    assert len(calls) == 2


def test_the_teacher_drop_stream_travels_in_the_state_dict():
    # a resumed training must drop the same teachers from the same batches as one never stopped
    teachers, spec, x, y = _two_teachers()
    student = build_model(spec, seed=1)
    weights = LossWeights(gamma=0.0)

    def kd(objective):
        return [objective(student, x, y, torch.arange(6))[1]["kd"].item() for _ in range(12)]

    running = build_objective(student, teachers, weights, drop=0.5, seed=3)
    kd(running)  # part-way through its stream
    saved = running.state_dict()
    resumed = build_objective(student, teachers, weights, drop=0.5, seed=3)
    resumed.load_state_dict(saved)
    fresh = build_objective(student, teachers, weights, drop=0.5, seed=3)
    expected = kd(running)
    assert kd(resumed) == expected != kd(fresh)


@pytest.mark.parametrize("kd", ["kl", "dkd"])
def test_the_kd_warm_up_raises_alpha_step_by_step_and_only_while_training(kd):
    teacher, spec, images, _ = _setup()
    student = confident(build_model(spec, seed=1))
    weights = LossWeights(temperature=2.0, alpha=0.8, beta=0.3, gamma=0.5, kd=kd, kd_warmup=1.5)
    objective = build_objective(student, confident(teacher), weights, steps_per_epoch=2)  # 3 steps of warm-up
    x, y = images.images[:6].float() / 255, images.labels[:6]

    def alpha_used(terms):
        """The KD weight the loss was built with: loss = alpha * kd + 0.3 * ce + 0.5 * hint."""
        return ((terms["loss"] - 0.3 * terms["ce"] - 0.5 * terms["hint"]) / terms["kd"]).item()

    with torch.no_grad():  # validation-like calls take no step
        assert alpha_used(objective(student, x, y, torch.arange(6))[1]) == pytest.approx(0.8 / 3, rel=1e-4)
    student.eval()
    assert alpha_used(objective(student, x, y, torch.arange(6))[1]) == pytest.approx(0.8 / 3, rel=1e-4)
    student.train()
    used = [alpha_used(objective(student, x, y, torch.arange(6))[1]) for _ in range(5)]
    assert used == pytest.approx([0.8 / 3, 0.8 * 2 / 3, 0.8, 0.8, 0.8], rel=1e-4)
    # a resumed training goes on at the same weight: the count is in the state dict
    resumed = build_objective(student, teacher, weights, steps_per_epoch=2)
    assert resumed.kd_scale() == pytest.approx(1 / 3)
    resumed.load_state_dict(objective.state_dict())
    assert resumed.kd_scale() == 1.0
    # without a warm-up the loss is alpha * kd bit for bit, from the first step
    plain = build_objective(student, teacher, weights.model_copy(update={"kd_warmup": 0.0}))
    terms = plain(student, x, y, torch.arange(6))[1]
    assert torch.equal(terms["loss"], 0.8 * terms["kd"] + 0.3 * terms["ce"] + 0.5 * terms["hint"])
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        build_objective(student, teacher, weights)


def hand_dkd(student_logits, target_probs, y, T, dkd_alpha, dkd_beta):
    """Decoupled KD by its definition from the target distribution p and q = softmax(student / T):
    T^2 * batch mean of dkd_alpha * KL([p_t, 1 - p_t] || [q_t, 1 - q_t]) + dkd_beta * KL(p_hat || q_hat),
    with p_hat, q_hat the non-target probabilities divided by their sum."""
    p, q = target_probs.double(), torch.softmax(student_logits.double() / T, dim=1)
    total = 0.0
    for i, t in enumerate(y.tolist()):
        others = [j for j in range(p.shape[1]) if j != t]
        b, c = torch.stack([p[i, t], 1 - p[i, t]]), torch.stack([q[i, t], 1 - q[i, t]])
        p_hat, q_hat = p[i, others] / p[i, others].sum(), q[i, others] / q[i, others].sum()
        tckd = (b * (b / c).log()).sum()
        nckd = (p_hat * (p_hat / q_hat).log()).sum()
        total += dkd_alpha * tckd.item() + dkd_beta * nckd.item()
    return total / len(y) * T**2


def hand_standardize(logits):
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / centred.pow(2).mean(dim=1, keepdim=True).sqrt()


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("aggregate", ["mean-kd", "mean-probs"])
def test_dkd_and_kl_with_two_teachers_by_hand(aggregate, standardize):
    torch.manual_seed(0)
    student = confident(build_model(ArchSpec(**SMALL, blocks=[[4], [6]]), seed=1).eval(), factor=10.0)
    teachers = [
        confident(build_model(ArchSpec(**SMALL, blocks=[[8], [16], [16]]), seed=0), factor=10.0),
        confident(build_model(ArchSpec(**SMALL, blocks=[[8]]), seed=5), factor=10.0),
    ]
    T, alpha, beta, dkd_alpha, dkd_beta = 2.0, 0.7, 0.2, 1.5, 6.0
    weights = LossWeights(
        temperature=T,
        alpha=alpha,
        beta=beta,
        gamma=0.0,
        kd="dkd",
        dkd_alpha=dkd_alpha,
        dkd_beta=dkd_beta,
        standardize=standardize,
    )
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 2, 1, 0])

    def objective_terms(w):
        objective = build_objective(student, teachers, w, teacher_weights=[3.0, 1.0], aggregate=aggregate, seed=0)
        return objective(student, x, y, torch.arange(6))[1]

    terms = objective_terms(weights)
    with torch.no_grad():
        logits = student(x)
        raw = [teacher(x) for teacher in teachers]
        prepare = hand_standardize if standardize else (lambda z: z)
        s = prepare(logits.double())
        p = [torch.softmax(prepare(t.double()) / T, dim=1) for t in raw]
        if aggregate == "mean-kd":  # the weighted mean of each teacher's DKD term
            kd = sum(tw * hand_dkd(s, pi, y, T, dkd_alpha, dkd_beta) for tw, pi in zip((0.75, 0.25), p, strict=True))
        else:  # DKD against the weighted mean of the softened distributions
            kd = hand_dkd(s, 0.75 * p[0] + 0.25 * p[1], y, T, dkd_alpha, dkd_beta)
        ce = -torch.log_softmax(logits, dim=1)[torch.arange(6), y].mean().item()  # CE sees the raw logits
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-4)  # float32 logs: KLs of ~0.05 come to ~2e-5
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(alpha * kd + beta * ce, rel=1e-4)
    # NCKD's weight and standardization each change the KD term
    assert objective_terms(weights.model_copy(update={"dkd_beta": 5.0}))["kd"].item() != pytest.approx(kd, rel=1e-3)
    # kd: kl through the same path (standardized or not, either aggregate) is Hinton's KL, not DKD
    with torch.no_grad():
        if aggregate == "mean-kd":
            kl = sum(tw * hand_kd(s, pi, T).item() for tw, pi in zip((0.75, 0.25), p, strict=True))
        else:
            kl = hand_kd(s, 0.75 * p[0] + 0.25 * p[1], T).item()
    assert objective_terms(weights.model_copy(update={"kd": "kl"}))["kd"].item() == pytest.approx(kl, rel=1e-4)
    assert kl != pytest.approx(kd, rel=1e-3)
    flipped = weights.model_copy(update={"standardize": not standardize})
    assert objective_terms(flipped)["kd"].item() != pytest.approx(kd, rel=1e-3)


def test_standardized_kl_with_a_cached_teacher_by_hand():
    from ikd.objective import CachedTeacher

    torch.manual_seed(0)
    student = confident(build_model(ArchSpec(**SMALL, blocks=[[4], [6]]), seed=1).eval(), factor=10.0)
    teacher_logits = torch.randn(10, 3) * 5
    T = 2.0
    weights = LossWeights(temperature=T, gamma=0.0, standardize=True)
    objective = build_objective(student, [None], weights, sources=[CachedTeacher(teacher_logits)])
    x, y, index = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 1]), torch.tensor([7, 2, 9, 0])
    _, terms = objective(student, x, y, index)
    with torch.no_grad():
        target = torch.softmax(hand_standardize(teacher_logits[index]) / T, dim=1)
        expected = hand_kd(hand_standardize(student(x)), target, T)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_cached_teacher_gathers_a_batch_once_for_every_student_trained_beside():
    from ikd.objective import CachedTeacher

    logits, features = torch.randn(10, 3), {1: torch.randn(10, 4, 2, 2)}
    teacher = CachedTeacher(logits, features)
    x, index = torch.randn(2, 1, 8, 8), torch.tensor([7, 2])
    first = teacher(x, index)
    assert teacher(x, index) is first  # the second student of the batch: no second gather
    assert torch.equal(first.logits, logits[index]) and torch.equal(first.features[1], features[1][index])
    other = teacher(x, torch.tensor([7, 2]))  # the next batch (another index tensor, even with equal rows)
    assert other is not first and torch.equal(other.logits, first.logits)


def test_a_pooled_hint_target_is_the_same_from_bf16_features_and_their_fp32_copy():
    # a live teacher under bf16 autocast hands bf16 features; the cache holds them as fp32: pooled in
    # bf16, the two targets differed by up to 2e-3
    from ikd.losses import HintRegressor

    regressor = HintRegressor(6, 8, seed=3)
    student = torch.randn(2, 6, 2, 2)
    live = (torch.randn(2, 8, 5, 5) * 30).to(torch.bfloat16)
    assert torch.equal(regressor(student, live), regressor(student, live.float()))


def test_teacher_views_average_the_teachers_logits_over_its_views_and_keep_the_plain_images_hint():
    from ikd.objective import LiveTeacher

    teacher, spec, images, _ = _setup(1.0)
    with torch.no_grad():  # larger weights than the init's, so that a view left out would show
        for p in teacher.parameters():
            p.mul_(3.0)
    block = build_objective(build_model(spec, seed=1), teacher, LossWeights()).links[0].hint_block
    assert block is not None
    x = (images.images.float() / 255 - 0.5) / 0.25
    teacher.eval()
    with torch.no_grad():
        plain = teacher(x)
        mirrored = (plain + teacher(x.flip(-1))) / 2
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[..., :-2, :-2], padded[..., 2:, 2:]
        pairs = [(teacher(v) + teacher(v.flip(-1))) / 2 for v in (up_left, down_right)]
        shifted = (mirrored + (pairs[0] + pairs[1]) / 2) / 2
    assert not torch.allclose(mirrored, plain, atol=1e-3) and not torch.allclose(shifted, mirrored, atol=1e-3)
    index = torch.arange(20)
    cases: list[tuple[Views, torch.Tensor]] = [("none", plain), ("flip", mirrored), ("flip-shift", shifted)]
    for views, expected in cases:
        for hinted in ([block], []):
            outputs = LiveTeacher(teacher, hinted, views)(x, index)
            assert torch.allclose(outputs.logits, expected, atol=1e-5), (views, hinted)
            if hinted:
                assert torch.equal(outputs.features[block], teacher.forward_features(x)[1][block])
        cache = cache_teacher_outputs(
            teacher, images, mean=(0.5,), std=(0.25,), hint_blocks=[block], device=torch.device("cpu"), views=views
        )
        assert cache.views == views and torch.allclose(cache.logits, expected, atol=1e-5), views


def test_the_objective_distils_from_the_viewed_logits_and_refuses_outputs_over_other_views():
    teacher, spec, images, _ = _setup(0.0)
    student = build_model(spec, seed=1)
    x, y, index = images.images[:6].float() / 255, images.labels[:6], torch.arange(6)
    flipped = build_objective(student, teacher, LossWeights(gamma=0.0, teacher_views="flip"))
    teacher.eval()
    with torch.no_grad():
        target = (teacher(x) + teacher(x.flip(-1))) / 2
        _, terms = flipped(student, x, y, index)
    assert terms["kd"].item() == pytest.approx(kd_loss(student(x), target, 4.0).item(), rel=1e-5)
    plain_cache = cache_teacher_outputs(teacher, images, mean=(0.0,), std=(1.0,), device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"views 'none'.*asks for 'flip'"):
        build_objective(student, teacher, LossWeights(gamma=0.0, teacher_views="flip"), sources=[plain_cache])
    # a state saved before the key existed still resumes: the default is left out of the job
    assert "teacher_views" not in build_objective(student, teacher, LossWeights()).job_description()["weights"]
    assert flipped.job_description()["weights"]["teacher_views"] == "flip"
