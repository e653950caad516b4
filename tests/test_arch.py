"""Spec arithmetic: parameters, stored bytes and MACs computed from the spec match the real model."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ikd.arch import LAYOUT_EXAMPLE, PRESETS, ArchSpec, check_arch, parse_layout, pooled_size, preset
from ikd.errors import ConfigError
from ikd.model import Ensemble, build_model

INPUTS = [(3, 32), (1, 28), (1, 8)]


def count_macs_with_hooks(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of convs and linears, counted from the shapes seen at run time."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += output[0].numel() * kernel

    def linear_hook(module, inputs, output):
        nonlocal total
        total += module.in_features * module.out_features

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(conv_hook)
        elif isinstance(module, nn.Linear):
            module.register_forward_hook(linear_hook)
    model.eval()
    with torch.no_grad():
        model(x)
    return total


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("channels,size", INPUTS)
def test_spec_arithmetic_matches_model(name, channels, size):
    spec = preset(name, in_channels=channels, image_size=size, num_classes=10)
    model = build_model(spec)
    assert spec.num_params() == sum(p.numel() for p in model.parameters())
    assert spec.macs() == count_macs_with_hooks(model, torch.zeros(1, channels, size, size))
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert spec.stored_tensor_bytes() == stored
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)


def count_live_params(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Parameters with a gradient on random images: a conv weight counts only for the kernel taps
    that received one, so taps that only ever multiply padding drop out."""
    model.train()
    model(torch.randn(*shape)).square().sum().backward()
    live = 0
    for parameter in model.parameters():
        assert parameter.grad is not None
        if parameter.dim() == 4:
            taps = int((parameter.grad.abs().sum(dim=(0, 1)) > 0).sum())
            live += parameter.numel() // 9 * taps
        else:
            live += parameter.numel()
    return live


@pytest.mark.parametrize(
    "spec",
    [
        preset("vgg16", in_channels=1, image_size=28, num_classes=10),  # the last block on 1x1 maps
        preset("vgg11", in_channels=3, image_size=32, num_classes=10),  # 2x2 at the end: every tap meets a pixel
        preset("vgg11", in_channels=1, image_size=8, num_classes=10),  # three blocks on 1x1 maps
        ArchSpec(in_channels=1, image_size=5, num_classes=3, blocks=[[4], [3, 2], [2]], head=[6]),
    ],
    ids=lambda spec: f"{spec.summary()}@{spec.image_size}",
)
def test_live_params_are_those_a_gradient_reaches(spec):
    # 64 seeded images: with 4 unseeded ones a 2-channel layer's ReLUs were all off for every image in
    # 11 of 200 draws (a tap with no gradient though it meets pixels); 64 missed none of 200
    torch.manual_seed(0)
    live = count_live_params(build_model(spec), (64, spec.in_channels, spec.image_size, spec.image_size))
    assert spec.live_params() == live <= spec.num_params()


def test_vgg16_on_mnist_has_6_3_million_parameters_that_never_meet_a_pixel():
    spec = preset("vgg16", in_channels=1, image_size=28, num_classes=10)
    assert spec.num_params() - spec.live_params() == 3 * 512 * 512 * 8  # block 5: 8 of 9 taps, 3 convs
    assert preset("vgg16", in_channels=3, image_size=32, num_classes=10).live_params() == 14_724_042


def test_vgg16_layout_and_known_size():
    spec = preset("vgg16", in_channels=3, image_size=32, num_classes=10)
    assert [len(b) for b in spec.blocks] == [2, 2, 3, 3, 3]
    assert [b[0] for b in spec.blocks] == [64, 128, 256, 512, 512]
    # 13 bias-free convs (14,710,464) + BN scale/shift (8,448) + Linear(512, 10) (5,130).
    assert spec.num_params() == 14_724_042
    assert spec.size_bytes_fp32() == 4 * 14_724_042
    assert spec.block_output_sizes() == [16, 8, 4, 2, 1]


def test_pooling_is_skipped_once_spatial_size_is_one():
    spec = preset("vgg16", in_channels=1, image_size=8, num_classes=10)
    assert spec.block_input_sizes() == [8, 4, 2, 1, 1]
    assert spec.block_output_sizes() == [4, 2, 1, 1, 1]
    assert preset("vgg16", in_channels=1, image_size=28, num_classes=10).block_output_sizes() == [14, 7, 3, 1, 1]
    assert pooled_size(1) == 1 and pooled_size(3) == 1 and pooled_size(7) == 3


def test_block_features_have_the_spec_shapes():
    spec = ArchSpec(in_channels=3, image_size=32, num_classes=5, blocks=[[8], [16, 16]], head=[32], dropout=0.1)
    model = build_model(spec)
    logits, features = model.forward_features(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 5)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 16, 16), (16, 8, 8)]
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(model(x), model.forward_features(x)[0])


def test_spec_round_trips_through_json(tmp_path):
    spec = ArchSpec(in_channels=1, image_size=28, num_classes=10, blocks=[[4, 8], [16]], head=[12])
    assert ArchSpec.model_validate(json.loads(json.dumps(spec.to_json_dict()))) == spec
    # the stored-bytes figure is the tensor payload of the saved safetensors file
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(spec).state_dict().items()}, str(path))
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size - 8 - header == spec.stored_tensor_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        {"blocks": []},
        {"blocks": [[]]},
        {"blocks": [[8, 0]]},
        {"head": [-1]},
        {"image_size": 0},
        {"num_classes": 1},
        {"unknown_key": 1},
    ],
)
def test_invalid_specs_are_rejected(bad):
    document = {"in_channels": 3, "image_size": 32, "num_classes": 10, "blocks": [[8]]} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):  # refused for that key, not another
        ArchSpec.model_validate(document)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="vgg11, vgg13, vgg16, vgg19"):
        preset("vgg99", in_channels=3, image_size=32, num_classes=10)


@pytest.mark.parametrize(
    "blocks,head",
    [([[64, 64], [128, 128], [256, 256, 256]], []), ([[3], [3], [2, 3], [5, 45], [452, 512]], []), ([[16]], [64, 8])],
)
def test_a_layout_line_builds_the_spec_whose_summary_it_is(blocks, head):
    spec = ArchSpec(in_channels=1, image_size=8, num_classes=10, blocks=blocks, head=head)
    assert preset(spec.summary(), in_channels=1, image_size=8, num_classes=10) == spec
    assert parse_layout(spec.summary()) == (blocks, head)


@pytest.mark.parametrize(
    "line,why",
    [
        ("16x0", "'0' is not a number of convs"),
        ("16x101", "'101' is not a number of convs (a whole number from 1 to 100)"),
        ("16x2-", "'' is not a width"),
        ("0x2", "'0' is not a width"),
        ("99999x1", "from 1 to 65536"),
        ("16/a", "'a' is not a width"),
        ("16x\uff12", "'\uff12' is not a number of convs"),  # a full-width 2: a digit to str.isdigit()
        ("16x2 | 64", "`| head WIDTH-WIDTH`"),
        ("16x2 | head", "`| head WIDTH-WIDTH`"),
    ],
)
def test_a_bad_layout_line_says_what_is_wrong(line, why):
    with pytest.raises(ValueError, match="expected a preset") as caught:
        check_arch(line)
    assert why in str(caught.value)
    with pytest.raises(ConfigError, match="expected a preset"):
        preset(line, in_channels=1, image_size=8, num_classes=10)


@pytest.mark.parametrize("name", ["vgg12", "resnet18", "", " vgg16"])
def test_a_name_that_is_no_preset_is_told_the_presets_without_a_parser_detail(name):
    with pytest.raises(ValueError) as caught:
        check_arch(name)
    assert str(caught.value) == f"expected a preset (vgg11, vgg13, vgg16, vgg19) or a layout such as {LAYOUT_EXAMPLE!r}"


def test_a_layout_is_kept_written_one_way_so_a_resumed_run_sees_the_same_architecture():
    assert check_arch(" 016x2-32/32 \n") == check_arch("16x2-32x2") == "16x2-32x2"
    assert check_arch("8/8 | head 064") == "8x2 | head 64"


def test_an_ensemble_scores_the_log_of_its_members_mean_probabilities():
    spec = ArchSpec(in_channels=1, image_size=8, num_classes=3, blocks=[[4], [4]])
    members = [build_model(spec, seed=seed).eval() for seed in (0, 1)]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        by_hand = ((members[0](x).softmax(1) + members[1](x).softmax(1)) / 2).log()
        got = Ensemble(members)(x)
    assert torch.allclose(got, by_hand, atol=1e-6)
    assert torch.allclose(got.exp().sum(1), torch.ones(5))  # a distribution: cross-entropy reads it as logits
