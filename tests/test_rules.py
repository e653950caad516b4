"""The campaign's rules on made-up records: nothing here trains."""

from __future__ import annotations

import pytest

from ikd import rules
from ikd.config import SearchConfig, load_config
from ikd.diff import config_differences
from ikd.lineage import Latency, Lineage, NodeKind, NodeRecord, Status
from ikd.resume import grown_from


def node(
    node_id: str,
    val: float | None,
    *,
    params: int = 1000,
    status: str = "candidate",
    generation: int = 1,
    parent: str | None = "g0-teacher",
    teachers: tuple[str, ...] = (),
    epochs: int = 2,
    compression: float = 1.0,
    macs: int = 0,
    arch: dict | None = None,
) -> NodeRecord:
    return NodeRecord(
        id=node_id,
        generation=generation,
        parent=parent,
        teachers=list(teachers),
        status=Status(status),
        arch={"made-up": node_id} if arch is None else arch,
        params=params,
        size_bytes_fp32=4 * params,
        macs=macs,
        compression=compression,
        val_accuracy=val,
        epochs=epochs,
    )


ROOT = node("g0-teacher", 0.95, params=100_000, status="teacher", generation=0, parent=None, epochs=10)


def search(**keys):
    return load_config(None, {f"search.{k}": v for k, v in keys.items()}).search


def test_a_child_within_both_tolerances_is_accepted():
    parent = node("g1-depth", 0.945, status="accepted")
    assert rules.rejection(node("g2-width", 0.94), parent, ROOT, search(max_drop=1.0, max_step_drop=1.0)) is None


def test_max_drop_names_the_root_floor():
    parent = node("g1-depth", 0.945, status="accepted")
    reason = rules.rejection(node("g2-width", 0.939), parent, ROOT, search(max_drop=1.0, max_step_drop=5.0))
    assert reason == "val 93.90% < root 95.00% - max_drop 1.0"


def test_max_step_drop_names_the_parent_floor():
    # within 1 point of the root (94.5 >= 94.0), but 0.6 below a parent that scored above the root
    parent = node("g1-depth", 0.951, status="accepted")
    reason = rules.rejection(node("g2-width", 0.945), parent, ROOT, search(max_drop=1.0, max_step_drop=0.5))
    assert reason == "val 94.50% < parent 95.10% - max_step_drop 0.5"


def test_a_failed_child_is_rejected_with_its_own_reason():
    failed = node("g1-width", None, status="failed").model_copy(update={"reason": "loss diverged"})
    assert rules.rejection(failed, ROOT, ROOT, search()) == "loss diverged"


def test_a_child_exactly_at_the_floor_is_not_lost_to_rounding():
    # 5,945/6,000 against a root of 5,963/6,000 less 0.3 points: exactly at the floor
    assert not rules.falls_short(100 * 5945 / 6000, 100 * 5963 / 6000, 0.3)
    assert rules.falls_short(100 * 5944 / 6000, 100 * 5963 / 6000, 0.3)


def test_targets():
    small = node("g3-depth", 0.94, params=900, compression=111.1)
    assert rules.target_reached(small, search()) is None
    assert "900 <= 1,000 params" in (rules.target_reached(small, search(target_params=1000)) or "")
    assert "111.1x smaller" in (rules.target_reached(small, search(target_compression=100)) or "")
    assert rules.target_reached(small, search(target_compression=200)) is None
    costly = node("g3-slim75", 0.94, params=900, macs=90_000_000)
    assert "90,000,000 <= 90,000,000 MACs" in (rules.target_reached(costly, search(target_macs=90_000_000)) or "")
    assert rules.target_reached(costly, search(target_macs=89_999_999)) is None


def timing(ms: float, teacher_ms: float | None, *, batch: int = 1) -> Latency:
    return Latency(
        runtime="onnxruntime",
        batch=batch,
        median_ms=ms,
        repeats=3,
        rounds=200,
        threads=1,
        device="a CPU",
        teacher_ms=teacher_ms,
    )


def test_the_speedup_target_reads_the_timing_taken_beside_the_root_at_its_batch():
    fast = node("g3-depth", 0.94).model_copy(update={"speedup_timing": timing(0.5, 2.0)})
    reason = rules.target_reached(fast, search(target_speedup=4))
    assert reason is not None and "runs 4.00x faster than the root" in reason and "0.500 vs 2.000 ms" in reason
    assert rules.target_reached(fast, search(target_speedup=4.01)) is None
    assert rules.target_reached(fast, search(target_speedup=2, speedup_batch=64)) is None  # timed at 1, not 64
    batched = node("g3-depth", 0.94).model_copy(update={"speedup_timing": timing(20.0, 100.0, batch=64)})
    assert rules.target_reached(batched, search(target_speedup=5, speedup_batch=64)) is not None
    # export's timings are not the decision's, nor is a timing with no root beside it
    exported = node("g3-depth", 0.94).model_copy(update={"latency": [timing(0.5, 2.0)]})
    alone = node("g3-depth", 0.94).model_copy(update={"speedup_timing": timing(0.5, None)})
    for untimed in (exported, alone):
        assert rules.speedup_timing(untimed, 1) is None
        assert rules.target_reached(untimed, search(target_speedup=2)) is None


def test_budget_counts_every_candidate_epoch():
    assert rules.budget_allows(spent=8, children=1, per_child=2, budget=10)
    assert not rules.budget_allows(spent=8, children=2, per_child=2, budget=10)
    assert rules.budget_allows(spent=10**6, children=9, per_child=9, budget=None)
    two_stage = load_config(None, {"student.epochs": 3, "student.hint_stage": "two-stage", "student.hint_epochs": 2})
    assert rules.epochs_per_child(two_stage) == 5
    no_hint = load_config(None, {"student.epochs": 3, "student.hint_stage": "two-stage", "loss.gamma": 0.0})
    assert rules.epochs_per_child(no_hint) == 3


def test_survivors_are_the_smallest_then_the_most_accurate():
    kept = [node("a", 0.90, params=500), node("b", 0.93, params=300), node("c", 0.94, params=300)]
    assert [n.id for n in rules.survivors(kept, search())] == ["c"]
    tree = load_config(None, {"search.strategy": "parent-children", "search.select": "tree", "search.beam": 2}).search
    assert [n.id for n in rules.survivors(kept, tree)] == ["c", "b"]


def test_a_tree_keeps_one_child_per_architecture():
    # two branches reached one shape (depth then width, width then depth): the beam takes the more
    # accurate twin and the next distinct child, not the same architecture twice
    shape = {"blocks": [[4], [8, 8]]}
    kept = [
        node("g2-b0-depth", 0.80, params=300, arch=shape),
        node("g2-b1-width", 0.85, params=300, arch=shape),
        node("g2-b1-depth", 0.90, params=700),
    ]
    tree = load_config(None, {"search.strategy": "parent-children", "search.select": "tree", "search.beam": 2}).search
    assert [n.id for n in rules.survivors(kept, tree)] == ["g2-b1-width", "g2-b1-depth"]


def test_frontier_is_the_latest_accepted_generation():
    lineage = Lineage(config={}, nodes=[ROOT])
    assert rules.frontier(lineage) == [ROOT]
    g1 = node("g1-depth", 0.95, status="accepted")
    g2 = [
        node("g2-b", 0.94, status="accepted", generation=2, params=800),
        node("g2-a", 0.94, status="accepted", generation=2, params=700),
        node("g2-c", 0.99, status="rejected", generation=2, params=10),
    ]
    lineage = Lineage(config={}, nodes=[ROOT, g1, *g2])
    assert [n.id for n in rules.frontier(lineage)] == ["g2-a", "g2-b"]


def test_stop_before_a_generation():
    g2 = node("g2-depth", 0.94, status="accepted", generation=2, params=900, compression=111.1)
    assert rules.stop_before(3, [g2], search(max_generations=2)) == "max_generations (2) reached"
    assert rules.stop_before(3, [g2], search(max_generations=5)) is None
    reason = rules.stop_before(3, [g2], search(max_generations=5, target_params=1000))
    assert reason is not None and reason.startswith("target reached: g2-depth")
    reason = rules.stop_before(3, [g2], search(max_generations=2, target_params=1000))  # both: the target's
    assert reason is not None and reason.startswith("target reached: g2-depth")
    assert rules.stop_before(1, [ROOT], search(target_compression=2)) is None  # the root is no accepted child


def test_lineage_kinds_students_and_epochs_spent():
    external = ROOT.model_copy(update={"arch": {"external": "MyNet"}})
    nodes = [
        ROOT,
        node("g1-depth", 0.95, status="accepted", epochs=3),
        node("g1-width", 0.5, status="rejected", epochs=3),
        node("g2-depth", None, status="failed", generation=2, parent="g1-depth", epochs=1),
        node("expert1-x", 0.9, status="expert", generation=0, parent=None, epochs=0),
        node("baseline-scratch", 0.9, status="baseline", parent=None, epochs=7),
    ]
    lineage = Lineage(config={}, nodes=nodes)
    assert [n.kind for n in nodes] == [
        NodeKind.TEACHER,
        NodeKind.STUDENT,
        NodeKind.STUDENT,
        NodeKind.STUDENT,
        NodeKind.EXPERT,
        NodeKind.BASELINE,
    ]
    assert external.kind is NodeKind.EXTERNAL and external.arch_summary() == "external: MyNet"
    assert [n.id for n in lineage.students()] == ["g1-depth", "g1-width", "g2-depth"]
    assert lineage.epochs_spent() == 7
    assert lineage.epochs_spent(lineage.chain(lineage.node("g2-depth"))) == 4  # g1-depth + g2-depth


def test_resume_helpers():
    assert config_differences({"a": 1, "s": {"x": 1, "y": 2}}, {"a": 1, "s": {"x": 3, "y": 2}, "b": 0}) == [
        "b: None -> 0",
        "s.x: 1 -> 3",
    ]
    nodes = [
        ROOT,
        node("g1", 0.9),
        node("g2", 0.9, parent="g1"),
        node("p", 0.9, parent=None, teachers=("g2",)),
        node("other", 0.9),
    ]
    assert grown_from(nodes, {"g1"}) == {"g2", "p"}
    assert grown_from(nodes, {"other"}) == set()


@pytest.mark.parametrize("bad", [{"external": "X"}])
def test_an_external_node_has_no_spec(bad):
    from ikd.errors import ConfigError

    with pytest.raises(ConfigError, match="user-supplied module"):
        ROOT.model_copy(update={"arch": bad}).spec()


NO_LATE_CUT = (1.0, 1.0, 1.0, 1.0)  # a campaign whose candidates cut their error no further after any epoch


@pytest.mark.parametrize(
    "curve,epochs,later,stops",
    [
        # needed 0.70: an error of 0.30 at most
        ([0.50], 5, NO_LATE_CUT, False),  # one epoch: no gain seen yet
        ([0.50, 0.52], 5, NO_LATE_CUT, True),  # 0.48 / (0.50/0.48)^(3 x 2) = 0.376 > 0.30
        ([0.50, 0.56], 5, NO_LATE_CUT, False),  # 0.44 / (0.50/0.44)^(3 x 2) = 0.204
        ([0.60, 0.62, 0.64], 4, NO_LATE_CUT, True),  # 0.36 / (0.38/0.36)^(1 x 2) = 0.323
        ([0.60, 0.62, 0.66], 4, NO_LATE_CUT, False),  # 0.34 / (0.38/0.34)^2 = 0.272
        ([0.50, 0.45, 0.46], 5, NO_LATE_CUT, True),  # falling: its best cut is 0.55/0.54, from 0.50 -> 0.465
        ([0.50, 0.52, 0.53, 0.55, 0.56], 5, NO_LATE_CUT, False),  # done: the decision is the normal one
        ([0.50, 0.52], 5, (), False),  # too few candidates have trained all their epochs: no evidence
        # flat so far, but a candidate of the campaign cut its error 1.27-fold after epoch 2: 0.48 / 1.27^2 = 0.298
        ([0.52, 0.52], 5, (1.0, 1.27, 1.0, 1.0), False),
        ([0.52, 0.52], 5, (1.0, 1.26, 1.0, 1.0), True),  # 0.48 / 1.26^2 = 0.302 > 0.30
    ],
)
def test_hopeless_stops_only_what_cannot_plausibly_reach_the_floor(curve, epochs, later, stops):
    reason = rules.hopeless(curve, epochs, needed=0.70, slack=2.0, later=later)
    assert (reason is not None) == stops, reason
    if reason is not None:
        assert f"after epoch {len(curve)}/{epochs}" in reason and "70.00% needed" in reason


def test_a_cut_beyond_any_float_leaves_a_candidate_hopeful_instead_of_crashing():
    # a perfect epoch (error at its 1e-4 floor) after a poor one: its ratio to the power of the epochs
    # left, then the slack, raised OverflowError before the epoch's state was saved, on every rerun
    assert rules.hopeless([0.5, 0.9], 5, needed=0.99, slack=2000.0, later=(1.5, 2.0, 1.2, 1.1)) is None
    assert rules.hopeless([0.1, 0.99], 300, needed=0.999, slack=2.0, later=(1.5,) * 299) is None


def test_a_steep_climb_far_below_the_floor_is_hopeless_in_error_but_not_in_points():
    # A recorded MNIST child (quarter width): 68.9% then 80.8% after 2 of 5 epochs, 86.5% at the end,
    # against a 99.08% floor. Its 11.9-point climb, extrapolated in points, reaches past 100%; its
    # error cut, 0.311/0.192 = 1.62-fold, gives 1.62^(3 x 2) = 18-fold: 0.192 -> 0.0106, above 0.0092.
    assert rules.hopeless([0.689, 0.808], 5, needed=0.9908, slack=2.0, later=(1.5, 2.0, 1.5, 1.2))
    # the same start with the floor of a 90% campaign trains on
    assert rules.hopeless([0.689, 0.808], 5, needed=0.90, slack=2.0, later=(1.5, 2.0, 1.5, 1.2)) is None


def test_late_error_ratios_are_the_most_any_fully_trained_candidate_cut_its_error_after_each_epoch():
    def trained(node_id: str, curve: list[float], reason: str = "") -> NodeRecord:
        record = node(node_id, max(curve), status="rejected", epochs=len(curve))
        return record.model_copy(update={"val_curve": curve, "reason": reason})

    first = trained("g1-width", [0.90, 0.91, 0.95, 0.94])  # after epoch 1: 0.10/0.05, 2: 0.09/0.05, 3: 0.05/0.06
    assert rules.late_error_ratios(Lineage(config={}, nodes=[ROOT]), 4) == ()
    assert rules.late_error_ratios(Lineage(config={}, nodes=[ROOT, first]), 4) == ()  # one is not evidence
    lineage = Lineage(
        config={},
        nodes=[
            ROOT,
            first,
            trained("g1-depth", [0.80, 0.70, 0.85, 0.87]),  # 0.20/0.13, 0.30/0.13, 0.15/0.13
            # stopped early: its curve says nothing about late gains
            trained("g2-width", [0.50, 0.99], reason="val 99% < root; stopped after epoch 2/4: ..."),
        ],
    )
    assert rules.late_error_ratios(lineage, 4) == pytest.approx((2.0, 0.30 / 0.13, 0.15 / 0.13))
    perfect = trained("g2-depth", [0.98, 1.0, 1.0, 1.0])  # a perfect epoch: a large ratio, not a division by 0
    assert rules.late_error_ratios(lineage.model_copy(update={"nodes": [*lineage.nodes, perfect]}), 4)[0] == (
        pytest.approx(0.02 / rules.MIN_ERROR)
    )


def test_a_child_is_roomy_when_it_clears_its_floor_by_the_accept_margin():
    parent = node("g1-depth", 0.95, status="accepted")  # floor: 95.0 - 0.3 = 94.7
    at_floor, above = node("g2-width", 0.947), node("g2-depth", 0.949)
    assert rules.margin(at_floor, parent, ROOT, search(max_drop=1.0, max_step_drop=0.3)) == pytest.approx(0.0)
    assert rules.margin(above, parent, ROOT, search(max_drop=1.0, max_step_drop=0.3)) == pytest.approx(0.2)
    assert rules.margin(node("x", 0.94), parent, ROOT, search(max_drop=1.0, max_step_drop=0.3)) == pytest.approx(-0.7)
    for margin, roomy in [(0.0, (True, True)), (0.2, (False, True)), (0.21, (False, False))]:
        strict = search(max_drop=1.0, max_step_drop=0.3, accept_margin=margin)
        assert (rules.roomy(at_floor, parent, ROOT, strict), rules.roomy(above, parent, ROOT, strict)) == roomy
    # a child that falls short is never roomy, whatever the margin
    assert not rules.roomy(node("x", 0.94), parent, ROOT, search(max_drop=1.0, max_step_drop=0.3))


def test_survivors_prefer_a_roomy_child_to_a_smaller_narrow_one():
    kept = [node("small", 0.947, params=300), node("large", 0.949, params=500), node("mid", 0.948, params=400)]
    assert [n.id for n in rules.survivors(kept, search())] == ["small"]
    assert [n.id for n in rules.survivors(kept, search(), narrow={"small"})] == ["mid"]
    # with every child narrow, the smallest is kept after all
    assert [n.id for n in rules.survivors(kept, search(), narrow={"small", "mid", "large"})] == ["small"]
    tree = load_config(None, {"search.strategy": "parent-children", "search.select": "tree", "search.beam": 2}).search
    assert [n.id for n in rules.survivors(kept, tree, narrow={"small"})] == ["mid", "large"]


def test_the_floor_is_the_stricter_of_both_tolerances():
    search = SearchConfig(max_drop=2.0, max_step_drop=0.5)
    root, parent = node("root", 0.90), node("p", 0.89)
    assert rules.floor(parent, root, search) == pytest.approx(0.885)  # parent - 0.5 beats root - 2
    assert rules.floor(node("p", 0.95), root, search) == pytest.approx(0.945)
    assert rules.floor(node("p", 0.88), node("root", 0.95), search) == pytest.approx(0.93)


def test_the_early_stop_note_is_what_a_re_decision_keeps_of_a_reason():
    stopped = f"{rules.STOPPED_EARLY} 2/5: val 97.20% with its error cut 1.5-fold reaches 98.00% < 99.00% needed"
    assert rules.early_stop_note(f"val 97.20% < root 99.40% - max_drop 0.3; {stopped}") == stopped
    assert rules.early_stop_note(stopped) == stopped
    assert rules.early_stop_note("val 97.20% < root 99.40% - max_drop 0.3") is None


def test_a_near_miss_is_one_that_falls_short_by_at_most_retry_within():
    parent = node("g1-depth", 0.95, status="accepted")
    keys = {"max_drop": 1.0, "max_step_drop": 1.0}  # floor 94.00%
    assert not rules.near_miss(node("g2", 0.9395), parent, ROOT, search(**keys))  # retries off by default
    on = search(**keys, retry_within=0.1)
    assert rules.near_miss(node("g2", 0.9395), parent, ROOT, on)  # 0.05 short
    assert rules.near_miss(node("g2", 0.939), parent, ROOT, on)  # exactly 0.1 short
    assert not rules.near_miss(node("g2", 0.9385), parent, ROOT, on)  # 0.15 short
    assert not rules.near_miss(node("g2", 0.94), parent, ROOT, on)  # within tolerance: nothing to retry
    assert not rules.near_miss(node("g2", None), parent, ROOT, on)  # failed
    stopped = node("g2", 0.9395).model_copy(update={"reason": f"{rules.STOPPED_EARLY} 2/5: hopeless"})
    assert not rules.near_miss(stopped, parent, ROOT, on)
    assert rules.near_miss_id(rules.retry_id("g2-block")) == "g2-block"
    retry = node(rules.retry_id("g2"), 0.9395).model_copy(update={"operator": rules.RETRY})
    assert not rules.near_miss(retry, parent, ROOT, on)  # one second chance


def test_a_retry_or_a_user_modules_first_student_is_not_evidence_for_early_rejection():
    # a retry's curve is another, longer schedule, a first student's one from random weights: their late
    # epochs are not an inheriting candidate's
    curve = [0.90, 0.95, 0.96]
    fresh = [node(f"g1-{i}", 0.96).model_copy(update={"val_curve": curve}) for i in range(2)]
    steep = {"val_curve": [0.5, 0.6, 0.99]}
    retry = fresh[0].model_copy(update={"id": "g1-0-retry", "operator": rules.RETRY, **steep})
    first = fresh[0].model_copy(update={"id": "g1-student", "operator": rules.FIRST_STUDENT, **steep})
    lineage = Lineage(config={}, nodes=[ROOT, *fresh])
    ratios = rules.late_error_ratios(lineage, 3)
    for other in (retry, first):
        assert (
            ratios and rules.late_error_ratios(lineage.model_copy(update={"nodes": [ROOT, *fresh, other]}), 3) == ratios
        )
    assert rules.late_error_ratios(Lineage(config={}, nodes=[ROOT, fresh[0], first]), 3) == ()  # one is not evidence


def test_a_final_student_is_checked_against_the_test_its_search_answer_passed():
    answer = node("g2-width", 0.94, status="accepted", generation=2, parent="g1-width")
    chain = [ROOT, node("g1-width", 0.945, params=5000, status="accepted"), answer]
    rules_ = search(max_drop=2.0, max_step_drop=0.5)
    searched = Lineage(config={}, nodes=chain)
    assert rules.final_rejection(searched, rules_) is None and searched.final() == answer  # no final distillation
    final = node("final", 0.9405, status="final", generation=2, parent="g2-width")
    assert rules.final_rejection(Lineage(config={}, nodes=[*chain, final]), rules_) is None
    # a few images below the answer, within its tolerances: the longer training stays the answer
    within = Lineage(config={}, nodes=[*chain, final.model_copy(update={"val_accuracy": 0.9401})])
    assert rules.final_rejection(within, rules_) is None and within.final().id == "final"
    # under the parent's floor (94.5 - 0.5): the answer passed, the final student would not
    lower = final.model_copy(update={"val_accuracy": 0.9399})
    why = rules.final_rejection(Lineage(config={}, nodes=[*chain, lower]), rules_)
    assert why is not None and "parent 94.50% - max_step_drop 0.5" in why
    # what the campaign records: then the search's answer is the campaign's
    marked = Lineage(config={}, nodes=[*chain, lower.model_copy(update={"reason": f"not kept: by validation ({why})"})])
    assert marked.final() == answer and marked.distilled() is not None
    assert rules.final_not_kept(marked) == f"by validation ({why})"
    # the chain spent the final's epochs choosing: the baselines get them either way
    assert marked.baseline_budget() == within.baseline_budget() == sum(n.epochs for n in [*chain[1:], final])


def test_a_retry_is_trained_only_while_it_could_take_a_place_in_the_generation():
    # floor 94.0 (max_drop 1 from 95.0); accept_margin 0.2: roomy from 94.2
    keys = dict(max_drop=1.0, max_step_drop=100.0, retry_within=0.5, accept_margin=0.2)
    near = node("g1-depth", 0.938, params=900, arch={"shape": "depth"})
    small = [node(f"g1-w{i}", 0.95, params=500 + i, arch={"shape": i}) for i in range(2)]
    narrow = node("g1-narrow", 0.941, params=400, arch={"shape": "narrow"})  # passed, without room
    larger = node("g1-big", 0.95, params=950, arch={"shape": "big"})
    twins = [node(f"g1-w0-s{i}", 0.95, params=500, arch={"shape": 0}) for i in range(2)]
    best, tree = search(**keys), search(strategy="parent-children", select="tree", beam=2, **keys)
    assert rules.near_miss(near, ROOT, ROOT, best)

    def could(siblings, config):
        return rules.retry_could_be_chosen(near, [near, *siblings], ROOT, ROOT, config)

    assert not could(small[:1], best)  # select best: one smaller roomy child takes the only place
    assert could([narrow, larger], best)  # a narrow one or a larger one leaves it a chance
    assert could(small[:1], tree)  # a beam of 2: one place is still open
    assert not could(small, tree)  # both taken (a tree retried every near miss)
    assert could(twins, tree)  # two seeds of one shape fill one place: the beam keeps one child per shape


def test_a_root_without_parameters_is_a_valid_record_and_a_negative_count_is_not():
    import pydantic

    # a user's teacher module may hold none (a frozen TorchScript module keeps its weights as constants)
    assert node("g0-teacher", 0.9, params=0, status="teacher", generation=0, parent=None).params == 0
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0"):
        node("g1-width", 0.9, params=-3)
