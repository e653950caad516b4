"""The slim operator: one global threshold on layer-relative BatchNorm scales gives uneven widths, and
a slim child inherits exactly the channels that threshold kept."""

import json

import pytest
import torch
from conftest import campaign_args
from test_search import campaign_config

from ikd import cli, training_pass
from ikd.arch import ArchSpec, preset
from ikd.campaign import compress
from ikd.checkpoint import load_model
from ikd.config import load_config
from ikd.errors import ConfigError
from ikd.inherit import bn_scales, inherit_weights
from ikd.model import VGG, build_model
from ikd.shrink import channel_ranking, get_operator, inherit_by, shrink_slim
from ikd.strategy import propose

# Conv widths 8, 8 | 16: 2,034 parameters in all (convs 88 + 592 + 1,184, head 170).
SPEC = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[8, 8], [16]])
LOW_1, LOW_2 = [0, 3], [1, 5, 9, 14]  # the unimportant channels of the second and third conv
KEEP_1 = [i for i in range(8) if i not in LOW_1]
KEEP_2 = [i for i in range(16) if i not in LOW_2]


def hand_set_scales(low1: float = 0.125, low2: float = 0.25) -> list[list[list[float]]]:
    """Layer 0 flat at 0.1875 (below layer 2's low channels in raw terms, but all alike: 1.0 relative
    to their mean); layers 1 and 2 at 1.0 with a few channels low (relative 0.16 and 0.31 by default).
    Every value is exact in float32, so a model holding them gives them back unchanged."""
    conv1 = [low1 if i in LOW_1 else 1.0 for i in range(8)]
    conv2 = [low2 if i in LOW_2 else 1.0 for i in range(16)]
    return [[[0.1875] * 8, conv1], [conv2]]


def parent_with(scales: list[list[list[float]]], dead_shift: bool = False) -> VGG:
    """A parent whose BatchNorm scales are `scales`; every other tensor random. With `dead_shift`
    the channels whose scale is 0 get shift 0 too: they output nothing."""
    parent = build_model(SPEC, seed=0)
    norms = [m for m in parent.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm, values in zip(norms, [layer for block in scales for layer in block], strict=True):
            gamma = torch.tensor(values)
            shift = torch.randn(len(values), generator=generator)
            state = {
                "weight": gamma,
                "bias": shift * (gamma != 0) if dead_shift else shift,
                "running_mean": torch.randn(len(values), generator=generator),
                "running_var": torch.rand(len(values), generator=generator) + 0.5,
            }
            norm.load_state_dict(state, strict=False)
        for linear in (m for m in parent.modules() if isinstance(m, torch.nn.Linear)):
            linear.weight.normal_(generator=generator)
            linear.bias.normal_(generator=generator)
    return parent.eval()


def slimmed(spec: ArchSpec | None) -> ArchSpec:
    assert spec is not None, "slim found nothing to remove"
    return spec


def test_channel_ranking_orders_by_magnitude_then_index():
    assert channel_ranking([1.0, 2.0, -2.0, 0.5, 2.0]) == [1, 2, 4, 0, 3]


def test_one_threshold_across_layers_gives_uneven_widths():
    assert SPEC.num_params() == 2034
    # 34% of 2,034 is gone once the six low channels are: 1,334 params (after five: 1,400 > 1,342)
    child = slimmed(shrink_slim(SPEC, hand_set_scales(), 0.34, min_channels=2))
    assert child.blocks == [[8, 6], [12]] and child.num_params() == 1334
    # Layer 0's gammas are below layer 2's low ones in raw terms but all alike, so relative to their
    # layer they rank above every low channel: raw |gamma| would have cut layer 0 before layer 2.
    assert (child.head, child.in_channels, child.num_classes) == (SPEC.head, 1, 10)
    # a smaller step takes the least important first: layer 1's two (0.16 relative, below layer 2's 0.31)
    assert slimmed(shrink_slim(SPEC, hand_set_scales(), 0.2, min_channels=2)).blocks == [[8, 6], [16]]


def test_by_share_narrows_wide_layers_first_and_flattens_the_widths():
    vgg16 = preset("vgg16", in_channels=1, image_size=28, num_classes=10)
    flat = [[[1.0] * w for w in block] for block in vgg16.blocks]
    # by the layer mean, alike layers lose alike: ties go to the earlier layer, the first blocks go first
    assert slimmed(shrink_slim(vgg16, flat, 0.75, min_channels=8)).blocks[0] == [8, 8]
    child = slimmed(shrink_slim(vgg16, flat, 0.75, min_channels=8, by_share=True))
    widths = [w for block in child.blocks for w in block]
    assert widths[:4] == [64, 64, 128, 128]  # the first two blocks keep every channel
    assert max(widths[4:]) - min(widths[4:]) <= 1  # the rest are cut to one common width
    assert child.num_params() <= 0.25 * vgg16.num_params() < _one_wider(child, widths).num_params()
    keys = {"search.operators": ["slim"], "search.slim_fraction": 0.75, "search.slim_by_share": True}
    assert [c.spec for c in propose(vgg16, load_config(None, keys).search, "g1-", flat)] == [child]


def _one_wider(spec: ArchSpec, widths: list[int]) -> ArchSpec:
    """`spec` with its narrowest capped conv one channel wider: what slim had before its last cut."""
    widened = list(widths)
    widened[max(range(4, len(widths)), key=lambda i: (-widths[i], i))] += 1
    flat = iter(widened)
    return spec.model_copy(update={"blocks": [[next(flat) for _ in block] for block in spec.blocks]})


def test_by_share_still_takes_unimportant_channels_first():
    # the six low channels go before any channel of the flat layer, as without by_share
    child = slimmed(shrink_slim(SPEC, hand_set_scales(), 0.34, min_channels=2, by_share=True))
    assert child.blocks == [[8, 6], [12]]
    keys = {"search.operators": ["slim"], "search.slim_fraction": 0.34, "search.slim_min_channels": 2}
    search = load_config(None, keys | {"search.slim_by_share": True}).search
    assert [c.spec for c in propose(SPEC, search, "g1-", hand_set_scales())] == [child]


def test_round_to_cuts_groups_ranked_by_their_mean():
    # one channel at a time, layer 1's two lows (0.16 relative) go first; in groups of 4, layer 1's
    # next group holds two of its 1.28s too (mean 0.72), so layer 2's four lows (0.31) go first
    assert slimmed(shrink_slim(SPEC, hand_set_scales(), 0.1, min_channels=2)).blocks == [[8, 7], [16]]
    assert slimmed(shrink_slim(SPEC, hand_set_scales(), 0.1, min_channels=2, round_to=4)).blocks == [[8, 8], [12]]


def test_round_to_keeps_every_width_a_multiple():
    vgg16 = preset("vgg16", in_channels=1, image_size=28, num_classes=10)
    flat = [[[1.0] * w for w in block] for block in vgg16.blocks]
    child = slimmed(shrink_slim(vgg16, flat, 0.75, min_channels=8, by_share=True, round_to=16))
    widths = [w for block in child.blocks for w in block]
    assert widths[:4] == [64, 64, 128, 128] and all(w % 16 == 0 for w in widths)
    assert child.num_params() <= 0.25 * vgg16.num_params()
    keys = {"search.operators": ["slim"], "search.slim_fraction": 0.75, "search.slim_by_share": True}
    search = load_config(None, keys | {"search.slim_round_to": 16}).search
    assert [c.spec for c in propose(vgg16, search, "g1-", flat)] == [child]
    # the floor is round_to: the default ranking cuts VGG-16's first blocks to 16, not to min_channels 8
    assert slimmed(shrink_slim(vgg16, flat, 0.75, min_channels=8, round_to=16)).blocks[0] == [16, 16]


def test_round_to_first_aligns_an_odd_width():
    odd = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[6, 10], [13]])
    flat = [[[1.0] * 6, [1.0] * 10], [[1.0] * 13]]
    # every odd width is cut down to a multiple first (2, 2 and 1 channels), even past the target
    assert slimmed(shrink_slim(odd, flat, 0.01, min_channels=2, round_to=4)).blocks == [[4, 8], [12]]
    # then whole groups: ties go to the earlier layer
    assert slimmed(shrink_slim(odd, flat, 0.6, min_channels=2, round_to=4)).blocks == [[4, 4], [12]]
    # a conv narrower than round_to keeps its width; a step that cannot cut a whole group gives None
    narrow = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[3, 4], [4]])
    assert shrink_slim(narrow, [[[1.0] * 3, [1.0] * 4], [[1.0] * 4]], 0.5, min_channels=2, round_to=4) is None


def test_the_floor_holds_and_nothing_removable_gives_none():
    scales = hand_set_scales()
    assert slimmed(shrink_slim(SPEC, scales, 0.99, min_channels=2)).blocks == [[2, 2], [2]]
    assert slimmed(shrink_slim(SPEC, scales, 0.99, min_channels=8)).blocks == [[8, 8], [8]]
    assert slimmed(shrink_slim(SPEC, scales, 0.99, min_channels=12)).blocks == [[8, 8], [12]]  # narrower: kept
    assert shrink_slim(SPEC, scales, 0.5, min_channels=16) is None
    at_floor = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=[[2, 2], [2]])
    assert shrink_slim(at_floor, [[[1.0, 2.0], [1.0, 1.0]], [[3.0, 0.0]]], 0.5, min_channels=2) is None


def test_slim_checks_its_arguments():
    with pytest.raises(ConfigError, match="slim fraction"):
        shrink_slim(SPEC, hand_set_scales(), 1.0)
    with pytest.raises(ConfigError, match="slim round_to 0"):
        shrink_slim(SPEC, hand_set_scales(), 0.5, round_to=0)
    with pytest.raises(ValueError, match="one value per conv channel"):
        shrink_slim(SPEC, [[[1.0] * 8, [1.0] * 8], [[1.0] * 15]], 0.5)
    with pytest.raises(ConfigError, match="BatchNorm scales"):
        get_operator("slim")
    assert get_operator("slim", 0.34, scales=hand_set_scales(), min_channels=2)(SPEC) == shrink_slim(
        SPEC, hand_set_scales(), 0.34, min_channels=2
    )


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_slim_shrinks_until_every_layer_is_at_its_floor(name):
    spec = preset(name, in_channels=1, image_size=28, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    steps = 0
    while True:
        scales = [[torch.rand(w, generator=generator).tolist() for w in block] for block in spec.blocks]
        child = shrink_slim(spec, scales, 0.5, min_channels=4)
        if child is None:
            break
        assert child.num_params() < spec.num_params()
        ArchSpec.model_validate(child.to_json_dict())
        assert build_model(child).eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
        spec, steps = child, steps + 1
    assert steps > 2 and all(w == 4 for block in spec.blocks for w in block)


def test_inheritance_keeps_exactly_the_highest_gamma_channels():
    parent = parent_with(hand_set_scales())
    assert bn_scales(parent) == hand_set_scales()
    child = build_model(slimmed(shrink_slim(SPEC, bn_scales(parent), 0.34, min_channels=2)), seed=5)
    assert inherit_weights(child, parent, by="bn-scale") == {"inherited": 4, "fresh": 0}
    mine, theirs = child.state_dict(), parent.state_dict()
    keep1, keep2 = torch.tensor(KEEP_1), torch.tensor(KEEP_2)
    assert torch.equal(mine["blocks.0.0.weight"], theirs["blocks.0.0.weight"])
    assert torch.equal(mine["blocks.0.3.weight"], theirs["blocks.0.3.weight"][keep1])
    assert torch.equal(mine["blocks.1.0.weight"], theirs["blocks.1.0.weight"][keep2][:, keep1])  # inputs match
    for stat in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(mine[f"blocks.0.4.{stat}"], theirs[f"blocks.0.4.{stat}"][keep1]), stat
        assert torch.equal(mine[f"blocks.1.1.{stat}"], theirs[f"blocks.1.1.{stat}"][keep2]), stat
    assert torch.equal(mine["head.0.weight"], theirs["head.0.weight"][:, keep2])
    assert torch.equal(mine["head.0.bias"], theirs["head.0.bias"])
    assert child.eval()(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_a_child_slimmed_of_dead_channels_computes_its_parents_function():
    """Channels with gamma = beta = 0 output nothing: removing them, and the weights that read
    them, leaves the function unchanged, but only if every kept weight lines up with its channel."""
    parent = parent_with(hand_set_scales(0.0, 0.0), dead_shift=True)
    child = build_model(slimmed(shrink_slim(SPEC, bn_scales(parent), 0.34, min_channels=2)), seed=5)
    inherit_weights(child, parent, by="bn-scale")
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(child.eval()(images), parent(images))


def test_propose_offers_one_slim_child_per_fraction_and_skips_slim_without_scales():
    search = load_config(None, {"search.operators": ["slim", "width"], "search.slim_min_channels": 2}).search
    assert search.factors("slim_fraction") == [0.5, 0.25]
    candidates = propose(SPEC, search, "g1-", hand_set_scales())
    assert [c.node_id for c in candidates] == ["g1-width", "g1-slim50", "g1-slim25"]  # smallest first
    assert candidates[1].operator == "slim"
    # a slim child starts from the channels slim kept; so does a retry of one (it is that shape again)
    assert [c.inherit_by for c in candidates] == ["l1", "bn-scale", "bn-scale"]
    assert (inherit_by("slim"), inherit_by("retry"), inherit_by("width")) == ("bn-scale", "l1", "l1")
    assert candidates[1].spec == shrink_slim(SPEC, hand_set_scales(), 0.5, min_channels=2)
    assert [c.node_id for c in propose(SPEC, search, "g1-", None)] == ["g1-width"]
    one = search.model_copy(update={"slim_fraction": 0.34, "operators": ["slim"]})
    assert [(c.node_id, c.spec.blocks) for c in propose(SPEC, one, "g1-", hand_set_scales())] == [
        ("g1-slim", [[8, 6], [12]])
    ]


@pytest.mark.parametrize("fraction", [0.0, 1.0, [0.5, 1.2], []])
def test_slim_fraction_is_validated(fraction):
    with pytest.raises(ConfigError, match=r"search\.slim_fraction"):
        load_config(None, {"search.slim_fraction": fraction})


def test_a_slim_campaign_records_the_uneven_child_it_chose(tmp_path, tiny_teacher):
    run = tmp_path / "run"
    assert cli.main(campaign_args(tiny_teacher, run, "--operators", "slim")) == 0
    lineage = json.loads((run / "lineage.json").read_text())
    nodes = {n["id"]: n for n in lineage["nodes"]}
    teacher, _ = load_model(tiny_teacher)
    expected = slimmed(shrink_slim(teacher.spec, bn_scales(teacher), 0.5, min_channels=8))
    child = nodes["g1-slim50"]
    assert child["operator"] == "slim" and child["status"] == "accepted" and child["parent"] == "g0-teacher"
    assert ArchSpec.model_validate(child["arch"]) == expected
    assert "g1-slim25" not in nodes  # larger than the child that passed: not trained
    ratios = {
        w / p for b, pb in zip(expected.blocks, teacher.spec.blocks, strict=True) for w, p in zip(b, pb, strict=True)
    }
    assert len(ratios) > 1, f"uniform widths {expected.blocks}"
    assert child["params"] <= teacher.spec.num_params() / 2
    assert load_model(run / "nodes" / "g1-slim50")[0].spec == expected


def test_a_slim_child_trains_from_random_init_when_inheritance_is_off(tmp_path, tiny_teacher, monkeypatch):
    config = campaign_config(tmp_path / "run", tiny_teacher, operators=["slim"], slim_fraction=0.3, max_generations=1)
    config = config.model_copy(update={"student": config.student.model_copy(update={"inherit": False})})
    inherited = []
    monkeypatch.setattr(training_pass, "inherit_weights", lambda *args, **kwargs: inherited.append(args))
    lineage = compress(config, progress=False)
    assert inherited == []  # no student took weights from its parent
    child = lineage.node("g1-slim")
    assert child.status == "accepted" and child.loss["inherit"] is False
    assert child.val_accuracy is not None and child.val_accuracy > 0.3  # well above chance (0.1) after one epoch
