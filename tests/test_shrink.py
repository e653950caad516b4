"""Shrink operators always give a valid, strictly smaller spec; inheritance copies the right weights."""

import pytest
import torch

from ikd.arch import PRESETS, ArchSpec, preset
from ikd.errors import ConfigError
from ikd.inherit import inherit_weights
from ikd.model import build_model
from ikd.shrink import cuts_per_block, get_operator, shrink_block, shrink_depth, shrink_stage, shrink_width


def shrunk(spec: ArchSpec | None) -> ArchSpec:
    assert spec is not None, "the operator found nothing to shrink"
    return spec


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("operator", ["depth", "width", "block", "stage"])
def test_operators_shrink_until_they_cannot(name, operator):
    spec = preset(name, in_channels=1, image_size=28, num_classes=10)
    shrink = get_operator(operator)
    steps = 0
    while (child := shrink(spec)) is not None:
        assert child.num_params() < spec.num_params()
        ArchSpec.model_validate(child.to_json_dict())  # still valid
        assert build_model(child).eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
        spec, steps = child, steps + 1
    assert steps > 0
    if operator == "stage":
        assert len(spec.blocks) == 1
    else:
        assert sum(map(len, spec.blocks)) == 1 if operator == "depth" else max(map(max, spec.blocks)) == 1


def test_depth_drops_the_most_expensive_conv_and_empty_blocks():
    spec = preset("vgg16", in_channels=3, image_size=32, num_classes=10)
    assert shrunk(shrink_depth(spec)).blocks == [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512]]
    one_conv_last = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[8, 8], [64]])
    assert shrunk(shrink_depth(one_conv_last)).blocks == [[8, 8]]


def test_stage_drops_the_last_block_whole_and_its_child_inherits_the_rest_in_place():
    spec = ArchSpec(in_channels=1, image_size=28, num_classes=10, blocks=[[4, 4], [8], [8]])
    child = shrunk(shrink_stage(spec))
    assert child.blocks == [[4, 4], [8]] and get_operator("stage")(spec) == child
    assert shrink_stage(ArchSpec(in_channels=1, image_size=28, num_classes=10, blocks=[[64, 64]])) is None
    # each kept block starts from its own parent block (block 1 must not take the dropped block 2's filters)
    parent, student = build_model(spec, seed=0), build_model(child, seed=1)
    inherit_weights(student, parent)
    for name, value in student.blocks.state_dict().items():
        assert torch.equal(value, parent.blocks.state_dict()[name]), name
    # the head reads 8 channels before and after: it is kept too
    assert torch.equal(student.head.state_dict()["0.weight"], parent.head.state_dict()["0.weight"])


def test_width_scales_convs_and_head():
    spec = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[64, 64], [3]], head=[100])
    child = shrunk(shrink_width(spec, 0.5))
    assert child.blocks == [[32, 32], [2]] and child.head == [50] and child.in_channels == 3
    with pytest.raises(ConfigError):
        shrink_width(spec, 1.5)
    with pytest.raises(ConfigError, match="depth, width, block"):
        get_operator("prune")


def test_block_narrows_only_the_block_where_that_saves_most():
    # the chain's 1232x MNIST student: halving block 3 saves 6,384 params, block 4 2,496, block 1 278
    spec = ArchSpec(in_channels=1, image_size=28, num_classes=10, blocks=[[4, 4], [8, 8], [16, 16, 16], [32]])
    child = shrunk(shrink_block(spec, 0.5))
    assert child.blocks == [[4, 4], [8, 8], [8, 8, 8], [32]] and child.num_params() == 5566
    assert shrunk(get_operator("block", 0.75)(spec)).blocks == [[4, 4], [8, 8], [12, 12, 12], [32]]
    # a tie (halving either block leaves 135 params) goes to the later block, as depth's does
    tied = ArchSpec(in_channels=2, image_size=8, num_classes=3, blocks=[[2], [8]])
    assert shrunk(shrink_block(tied, 0.5)).blocks == [[2], [4]]
    assert tied.model_copy(update={"blocks": [[1], [8]]}).num_params() == 135 == shrunk(shrink_block(tied)).num_params()
    headed = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[4], [4]], head=[6])
    assert shrunk(shrink_block(headed, 0.5)).head == [6]  # the head keeps its widths
    ones = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[1], [1, 1]])
    assert shrink_block(ones, 0.5) is None  # nothing left to narrow


def test_depth_and_block_cut_where_the_objective_saves_most():
    # two blocks of equal convs: the same parameters, but the first block's see a 4x larger feature map
    spec = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[32, 32], [32, 32]])
    assert shrunk(shrink_depth(spec)).blocks == [[32, 32], [32]]  # a tie in parameters: the later block
    by_macs = shrunk(shrink_depth(spec, "macs"))
    assert by_macs.blocks == [[32], [32, 32]] and by_macs.macs() < shrunk(shrink_depth(spec)).macs()
    assert get_operator("depth", objective="macs")(spec) == by_macs
    # a later block twice as wide: halving it saves more parameters, halving the first more MACs
    wider = spec.model_copy(update={"blocks": [[32, 32], [64, 64]]})
    assert shrunk(shrink_block(wider, 0.5)).blocks == [[32, 32], [32, 32]]
    assert shrunk(shrink_block(wider, 0.5, "macs")).blocks == [[16, 16], [64, 64]]
    assert get_operator("block", 0.5, objective="macs")(wider) == shrink_block(wider, 0.5, "macs")


def test_depth_inheritance_keeps_surviving_layers_exactly():
    parent_spec = ArchSpec(in_channels=1, image_size=8, num_classes=4, blocks=[[4, 6], [8, 8]], head=[5])
    parent = build_model(parent_spec, seed=0)
    child = build_model(shrunk(shrink_depth(parent_spec)), seed=1)
    stats = inherit_weights(child, parent)
    assert stats["fresh"] == 0
    for name, tensor in child.state_dict().items():
        if name.startswith(("blocks.0", "blocks.1.0", "blocks.1.1")):
            assert torch.equal(tensor, parent.state_dict()[name]), name
    assert torch.equal(child.state_dict()["head.0.weight"], parent.state_dict()["head.0.weight"])


def test_a_child_without_a_middle_block_inherits_the_blocks_after_it_from_their_own_layers():
    # a one-conv middle block cheap to drop (after block or slim narrowed it): its successors move down
    parent_spec = ArchSpec(in_channels=1, image_size=8, num_classes=4, blocks=[[4], [16], [4]])
    child_spec = shrunk(shrink_depth(parent_spec))
    assert child_spec.blocks == [[4], [4]]
    parent, child = build_model(parent_spec, seed=0), build_model(child_spec, seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking BatchNorms: a fresh one is all ones and zeros in every block
        for norm in (m for m in parent.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for name in ("weight", "bias", "running_mean"):
                tensor = getattr(norm, name)
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    inherit_weights(child, parent)
    mine, theirs = child.state_dict(), parent.state_dict()
    moved = [n for n in mine if n.startswith("blocks.1.") and n.endswith(("weight", "bias", "running_mean"))]
    assert len(moved) == 4  # the conv's weight and its BatchNorm's three
    for name in moved:
        # the parent's last block (4 channels, kept whole and in order), not its removed 16-wide one
        source = theirs[name.replace("blocks.1.", "blocks.2.", 1)]
        if mine[name].dim() == 1:
            assert torch.equal(mine[name], source), name
        else:  # the conv: every output row, over input channels the parent's conv had (16 in, 4 kept)
            assert mine[name].shape == (4, 4, 3, 3) and source.shape == (4, 16, 3, 3)
            for j in range(4):
                assert any(torch.equal(mine[name][:, j], source[:, k]) for k in range(16)), (name, j)


def distinct_running_vars(model: torch.nn.Module) -> None:
    """A trained-looking variance per channel: a fresh BatchNorm's are all ones, and any choice of them matches."""
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            assert norm.running_var is not None
            norm.running_var.copy_(torch.arange(1.0, norm.num_features + 1))


def test_width_inheritance_keeps_largest_l1_filters_and_matching_inputs():
    parent_spec = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[4], [6]])
    parent = build_model(parent_spec, seed=0)
    distinct_running_vars(parent)
    child = build_model(shrunk(shrink_width(parent_spec, 0.5)), seed=1)
    inherit_weights(child, parent)
    mine, theirs = child.state_dict(), parent.state_dict()
    w0 = theirs["blocks.0.0.weight"]
    kept0 = torch.sort(torch.topk(w0.abs().sum(dim=(1, 2, 3)), 2).indices).values
    assert torch.equal(mine["blocks.0.0.weight"], w0[kept0])
    w1 = theirs["blocks.1.0.weight"]
    kept1 = torch.sort(torch.topk(w1.abs().sum(dim=(1, 2, 3)), 3).indices).values
    assert torch.equal(mine["blocks.1.0.weight"], w1[kept1][:, kept0])
    assert torch.equal(mine["head.0.weight"], theirs["head.0.weight"][:, kept1])
    assert torch.equal(mine["blocks.0.1.running_var"], theirs["blocks.0.1.running_var"][kept0])


def test_bn_scale_inheritance_keeps_largest_gamma_channels_and_matching_inputs():
    parent_spec = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[4], [6]], head=[5])
    parent = build_model(parent_spec, seed=0)
    # BatchNorm scales set by hand, ranked neither like the filters' L1 norms nor by index
    gammas = {"blocks.0.1.weight": [2.0, 0.3, -1.0, 0.1], "blocks.1.1.weight": [0.5, 0.2, 3.0, -0.1, 0.4, 0.6]}
    parent.load_state_dict({name: torch.tensor(values) for name, values in gammas.items()}, strict=False)
    distinct_running_vars(parent)
    child = build_model(shrunk(shrink_width(parent_spec, 0.5)), seed=1)
    inherit_weights(child, parent, by="bn-scale")
    mine, theirs = child.state_dict(), parent.state_dict()
    kept0, kept1 = torch.tensor([0, 2]), torch.tensor([0, 2, 5])
    w0 = theirs["blocks.0.0.weight"]
    assert not torch.equal(torch.sort(torch.topk(w0.abs().sum(dim=(1, 2, 3)), 2).indices).values, kept0)
    assert torch.equal(mine["blocks.0.0.weight"], w0[kept0])
    assert torch.equal(mine["blocks.1.0.weight"], theirs["blocks.1.0.weight"][kept1][:, kept0])
    assert torch.equal(mine["blocks.0.1.weight"], theirs["blocks.0.1.weight"][kept0])
    assert torch.equal(mine["blocks.0.1.running_var"], theirs["blocks.0.1.running_var"][kept0])
    # the hidden head layer has no BatchNorm: it keeps its rows with the largest L1 norm
    h0 = theirs["head.0.weight"]
    rows = torch.sort(torch.topk(h0.abs().sum(dim=1), 3).indices).values
    assert torch.equal(mine["head.0.weight"], h0[rows][:, kept1])
    assert torch.equal(mine["head.2.weight"], theirs["head.2.weight"][:, rows])


def test_depth_gives_no_child_that_is_not_smaller():
    # dropping a narrow last conv widens what the head reads: 512 channels into it instead of 8
    spec = ArchSpec(in_channels=3, image_size=8, num_classes=100, blocks=[[512, 8]], head=[])
    assert spec.model_copy(update={"blocks": [[512]]}).num_params() > spec.num_params()
    assert shrink_depth(spec) is None


def test_cuts_per_block_lists_every_blocks_cut_most_saving_first():
    spec = ArchSpec(in_channels=3, image_size=32, num_classes=10, blocks=[[8, 8], [64, 64], [32, 32]])
    by_params = cuts_per_block("depth", spec)
    assert [block for block, _ in by_params] == [1, 2, 0]
    assert [child.blocks for _, child in by_params] == [
        [[8, 8], [64], [32, 32]],
        [[8, 8], [64, 64], [32]],
        [[8], [64, 64], [32, 32]],
    ]
    assert by_params[0][1] == shrink_depth(spec)  # the operator's one child is the first cut
    sizes = [child.num_params() for _, child in by_params]
    assert sizes == sorted(sizes) and sizes[-1] < spec.num_params()
    by_macs = cuts_per_block("depth", spec, objective="macs")
    assert by_macs[0][0] == 1 and by_macs[0][1] == shrink_depth(spec, "macs")
    assert [child.macs() for _, child in by_macs] == sorted(child.macs() for _, child in by_macs)
    halved = cuts_per_block("block", spec, 0.5)
    assert [child.blocks for _, child in halved] == [
        [[8, 8], [32, 32], [32, 32]],
        [[8, 8], [64, 64], [16, 16]],
        [[4, 4], [64, 64], [32, 32]],
    ]
    assert halved[0][1] == shrink_block(spec, 0.5) and cuts_per_block("block", spec)[0] == halved[0]
    # a cut that saves nothing is not offered: a block of widths 1 cannot narrow
    ones = spec.model_copy(update={"blocks": [[1], [64, 64], [32, 32]]})
    assert [block for block, _ in cuts_per_block("block", ones, 0.5)] == [1, 2]
    with pytest.raises(ValueError, match="width"):
        cuts_per_block("width", spec)
