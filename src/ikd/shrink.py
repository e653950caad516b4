"""Shrink operators: derive a strictly smaller child ArchSpec from a parent.

The paper's two ways to build a student:
  depth -- "reduce the number of blocks": drop one conv layer; a block that empties is dropped.
  width -- "reduce block size": scale every conv (and hidden head) width by a factor.
  block -- "reduce block size" one block at a time: scale the widths of the block where that saves
           the most parameters, a gentler step than width where halving everything fails.
  stage -- "reduce the number of blocks" in one step: drop the last block whole, with its pooling,
           the other blocks keeping their widths (where late blocks run on 1x1 maps, e.g. VGG on
           28x28 MNIST, their weights mostly never meet a pixel).
and one that shrinks layers unevenly, from a measure of the parent's trained weights:
  slim  -- drop the conv channels with the smallest BatchNorm scale |gamma| across the whole
           network (one global threshold, Liu et al. 2017, "Learning Efficient Convolutional
           Networks through Network Slimming"), until a share of the parameters is gone.
Each operator returns None when it cannot make the spec smaller (one conv left, widths of 1,
every layer at its floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ikd.arch import ArchSpec, Objective
from ikd.errors import ConfigError


@dataclass(frozen=True)
class Operator:
    """What the search needs to know of an operator besides its function (get_operator): the search
    key listing its factors, one child per factor (None: one child), the other search keys it reads,
    whether it ranks the parent's trained channels (BatchNorm scales), and whether it cuts in one
    block (then search.cut_sites can have it propose a cut in several)."""

    factor: str | None = None
    options: tuple[str, ...] = ()
    needs_scales: bool = False
    one_block: bool = False  # cuts in one block, so it can propose a cut per block (search.cut_sites)

    def search_keys(self) -> tuple[str, ...]:
        return ((self.factor,) if self.factor else ()) + self.options

    @property
    def inherit_by(self) -> Inheritance:
        """Which of the parent's channels its child starts from: those it ranked first by BatchNorm scale
        (the ones it kept), else the largest by L1 norm (ikd.inherit)."""
        return "bn-scale" if self.needs_scales else "l1"


OPERATORS = {
    "depth": Operator(options=("cut_sites",), one_block=True),
    "width": Operator(factor="width_factor"),
    "block": Operator(factor="width_factor", options=("cut_sites",), one_block=True),
    "slim": Operator(
        factor="slim_fraction", options=("slim_min_channels", "slim_by_share", "slim_round_to"), needs_scales=True
    ),
    "stage": Operator(),
}
DEFAULT_WIDTH_FACTOR = 0.5
Inheritance = Literal["l1", "bn-scale"]  # ikd.inherit.inherit_weights's `by`
DEFAULT_SLIM_FRACTION = 0.5
DEFAULT_SLIM_MIN_CHANNELS = 8

# A cut made in one block: (the block's index, the child).
Cut = tuple[int, ArchSpec]

# The parent's BatchNorm scales |gamma|, one value per output channel of every conv, nested like
# ArchSpec.blocks (block -> conv -> channel); ikd.inherit.bn_scales reads them off a model.
Scales = list[list[list[float]]]


@dataclass(frozen=True)
class Candidate:
    """A proposed child: its node id, the operator that made it, its spec, and which of the
    same-architecture siblings it is (they differ only in seed)."""

    node_id: str
    operator: str
    spec: ArchSpec
    seed_index: int = 0
    inherit_by: Inheritance = "l1"  # Operator.inherit_by of the operator that shaped it


def inherit_by(operator: str | None) -> Inheritance:
    """How a child shaped by `operator` inherits (a retry: as its near miss was shaped)."""
    known = OPERATORS.get(operator or "")
    return known.inherit_by if known is not None else "l1"


def _without_conv(spec: ArchSpec, block: int) -> ArchSpec:
    blocks = [list(b) for b in spec.blocks]
    del blocks[block][-1]
    if not blocks[block]:
        del blocks[block]
    return spec.model_copy(update={"blocks": blocks})


def depth_cuts(spec: ArchSpec, objective: Objective = "params") -> list[Cut]:
    """Every block's depth cut (its last conv dropped; a block that empties is dropped), as (block, child),
    the one that saves the most parameters first (MACs per image under `objective` macs; the later block on
    ties); only children smaller than `spec` by that measure."""
    if sum(len(b) for b in spec.blocks) <= 1:
        return []
    return _most_saving_first(spec, [_without_conv(spec, i) for i in range(len(spec.blocks))], objective)


def shrink_depth(spec: ArchSpec, objective: Objective = "params") -> ArchSpec | None:
    """Drop the last conv of the block where that saves the most parameters (later block on ties), or
    the most MACs per image under `objective` macs.

    By parameters, in a VGG that is the last conv of the widest, deepest block, so the network loses its
    most expensive layers first and whole blocks disappear from the end, as in the paper; by MACs, a conv
    of the early blocks, which see the largest feature maps.
    """
    return _first_child(depth_cuts(spec, objective))


def _most_saving_first(spec: ArchSpec, children: list[ArchSpec], objective: Objective) -> list[Cut]:
    """`children` (one per block, in block order) as cuts, the smallest by `objective` first (the later
    block on ties), without those no smaller than `spec`: dropping a narrow last conv can widen what the
    head reads ([[512, 8]] -> [[512]]). Two blocks whose cuts make the same child (dropping either of two
    like one-conv blocks) give it once, as the first."""
    cuts = sorted(enumerate(children), key=lambda cut: (cut[1].size(objective), -cut[0]))
    distinct: list[Cut] = []
    for block, child in cuts:
        if child.size(objective) < spec.size(objective) and all(child != other for _, other in distinct):
            distinct.append((block, child))
    return distinct


def _first_child(cuts: list[Cut]) -> ArchSpec | None:
    return cuts[0][1] if cuts else None


def shrink_stage(spec: ArchSpec) -> ArchSpec | None:
    """Drop the last block (its convs and its pooling); the head then reads the block before it."""
    if len(spec.blocks) <= 1:
        return None
    child = spec.model_copy(update={"blocks": [list(b) for b in spec.blocks[:-1]]})
    return child if child.num_params() < spec.num_params() else None


def _scaler(factor: float) -> Callable[[int], int]:
    if not 0 < factor < 1:
        raise ConfigError(f"width factor {factor}: expected a number between 0 and 1")
    return lambda width: max(1, math.ceil(width * factor))


def shrink_width(spec: ArchSpec, factor: float = DEFAULT_WIDTH_FACTOR) -> ArchSpec | None:
    """Scale every conv and hidden head width by `factor` (rounded up, at least 1)."""
    scale = _scaler(factor)

    child = spec.model_copy(
        update={
            "blocks": [[scale(w) for w in block] for block in spec.blocks],
            "head": [scale(w) for w in spec.head],
        }
    )
    return child if child.num_params() < spec.num_params() else None


def channel_ranking(scales: Sequence[float]) -> list[int]:
    """One layer's channel indices, most important first: by |scale|, ties to the lower index.

    The slim operator keeps a prefix of this ranking in every layer, and ikd.inherit copies exactly
    that prefix of the parent's channels, so a slim child starts from the channels that were chosen.
    """
    return sorted(range(len(scales)), key=lambda i: (-abs(scales[i]), i))


def shrink_slim(
    spec: ArchSpec,
    scales: Scales,
    fraction: float = DEFAULT_SLIM_FRACTION,
    min_channels: int = DEFAULT_SLIM_MIN_CHANNELS,
    by_share: bool = False,
    round_to: int = 1,
) -> ArchSpec | None:
    """Remove the network's least important conv channels until `fraction` of the parameters is gone.

    A channel's importance is its |BatchNorm scale| divided by the mean |scale| of its layer; all
    channels are ranked on that one scale and removed least important first (a single threshold
    across layers), so layers lose different shares of their width. Why relative to the layer: the
    network computes the same function when one layer's BatchNorm scales and shifts are all
    multiplied by a constant c > 0 (ReLU and max-pool commute with it, and the next layer's
    BatchNorm divides it out; for the last conv the head's weights can absorb it), so the level of a
    layer's raw |gamma| is set by the training dynamics, not by importance, and raw values of two
    layers only compare when training pins that level (Network Slimming's L1 penalty on gamma).
    Within a layer the order is `channel_ranking`'s. No conv keeps fewer than `min_channels` (or its
    width, if smaller); the head is unchanged. None when no channel can go.

    With `by_share`, a channel's importance is instead its share of what its layer still keeps: its
    relative scale over the sum of the relative scales of the layer's remaining channels. Removing
    channels from a layer then makes its remaining ones dearer, so wide layers give up channels
    before narrow ones and the widths flatten (VGG-16's 512-wide layers narrow first while its first
    block keeps 64), the direction of the shapes Network Slimming finds for VGGs; without it, layers
    of alike scales lose alike shares of their width, and a VGG's first layers narrow as fast as its
    last. (Dividing by the parameters a channel saves instead was tried and rejected: that greedy
    favours alternating narrow and wide layers, 8-channel bottlenecks between 300-wide convs.)

    With `round_to` > 1, every conv's width becomes a multiple of it: a parent's odd widths are first
    cut down to the multiple below (their least important channels), then channels leave a layer
    `round_to` at a time, a group ranked by the mean importance of its channels. No conv goes below
    `min_channels` rounded up to a multiple of `round_to`; a conv that started narrower than that keeps
    its width, odd or not. CPU and GPU convolution kernels work on channel blocks (an AVX-512 register
    holds 16 fp32 or 32 bf16 values), so odd widths waste part of every block.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"slim fraction {fraction}: expected a number between 0 and 1")
    if min_channels < 1:
        raise ConfigError(f"slim min_channels {min_channels}: expected at least 1")
    if round_to < 1:
        raise ConfigError(f"slim round_to {round_to}: expected at least 1")
    layers = [list(layer) for block in scales for layer in block]
    widths = [w for block in spec.blocks for w in block]
    same_nesting = [len(block) for block in scales] == [len(block) for block in spec.blocks]
    if not same_nesting or [len(layer) for layer in layers] != widths:
        raise ValueError("scales must hold one value per conv channel of the spec, nested like its blocks")
    # Each layer gives up channels from the bottom of channel_ranking up, so it always keeps a prefix
    # of its ranking; each step takes the layer whose next cut (one channel, or the group down to the
    # next multiple of round_to) is least important (with by_share, relative to what its layer still
    # keeps, which changes as the layer narrows). Ties go to the earlier layer.
    floor = round_to * math.ceil(min_channels / round_to)  # a multiple of round_to, so every cut lands on one
    queues = []
    for values in layers:
        mean = sum(abs(v) for v in values) / len(values) or 1.0  # a layer of zero scales: all importance 0
        bottom_up = channel_ranking(values)[::-1][: len(values) - min(len(values), floor)]
        queues.append([abs(values[i]) / mean for i in bottom_up])
    taken = [0] * len(layers)
    kept = [float(len(values)) for values in layers]  # each layer's importance still there (mean 1 each)

    def next_cut(layer: int) -> list[float]:
        size = widths[layer] % round_to or round_to
        cut = queues[layer][taken[layer] : taken[layer] + size]
        return cut if len(cut) == size else []

    def remove(layer: int, cut: list[float]) -> None:
        kept[layer] -= sum(cut)
        taken[layer] += len(cut)
        widths[layer] -= len(cut)

    for layer in range(len(layers)):  # odd widths (a parent slimmed without round_to) align first
        if widths[layer] % round_to and (cut := next_cut(layer)):
            remove(layer, cut)
    target = (1 - fraction) * spec.num_params()
    child = _with_widths(spec, widths)
    while child.num_params() > target:
        cuts = {layer: cut for layer in range(len(layers)) if (cut := next_cut(layer))}
        if not cuts:
            break
        keys = [(sum(cut) / len(cut), layer) for layer, cut in cuts.items()]
        if by_share:
            keys = [(value / max(kept[layer], 1e-12), layer) for value, layer in keys]
        _, layer = min(keys)
        remove(layer, cuts[layer])
        child = _with_widths(spec, widths)
    return child if child != spec else None  # nothing could go


def block_cuts(spec: ArchSpec, factor: float = DEFAULT_WIDTH_FACTOR, objective: Objective = "params") -> list[Cut]:
    """Every block's width cut (its conv widths scaled by `factor`, rounded up, at least 1) as (block, child),
    the one that saves the most parameters first (MACs under `objective` macs; the later block on ties)."""
    scale = _scaler(factor)
    children = []
    for i, block in enumerate(spec.blocks):
        blocks = [list(b) for b in spec.blocks]
        blocks[i] = [scale(w) for w in block]
        children.append(spec.model_copy(update={"blocks": blocks}))
    return _most_saving_first(spec, children, objective)


def shrink_block(
    spec: ArchSpec, factor: float = DEFAULT_WIDTH_FACTOR, objective: Objective = "params"
) -> ArchSpec | None:
    """Scale one block's conv widths by `factor` (rounded up, at least 1): the block where that saves the
    most parameters (later block on ties), or MACs under `objective` macs, as shrink_depth picks its conv.
    The other blocks and the head keep their widths, so the network narrows where it is most expensive first."""
    return _first_child(block_cuts(spec, factor, objective))


def _with_widths(spec: ArchSpec, widths: list[int]) -> ArchSpec:
    """`spec` with its conv widths replaced, in order, by `widths`."""
    flat = iter(widths)
    return spec.model_copy(update={"blocks": [[next(flat) for _ in block] for block in spec.blocks]})


def cuts_per_block(
    name: str, spec: ArchSpec, factor: float | None = None, objective: Objective = "params"
) -> list[Cut]:
    """The cuts of a one-block operator (depth, block) in every block where one makes `spec` smaller, the
    most saving first: the first is what get_operator's function returns."""
    if name == "depth":
        return depth_cuts(spec, objective)
    if name == "block":
        return block_cuts(spec, DEFAULT_WIDTH_FACTOR if factor is None else factor, objective)
    raise ValueError(f"{name!r} does not cut in one block")


def get_operator(
    name: str,
    factor: float | None = None,
    *,
    scales: Scales | None = None,
    min_channels: int = DEFAULT_SLIM_MIN_CHANNELS,
    by_share: bool = False,
    round_to: int = 1,
    objective: Objective = "params",
) -> Callable[[ArchSpec], ArchSpec | None]:
    """The shrink operator `name`. `factor` is width's and block's scale (default DEFAULT_WIDTH_FACTOR) or
    slim's share of parameters to remove (default DEFAULT_SLIM_FRACTION); slim also needs the
    parent's `scales`, keeps at least `min_channels` per conv and, with `by_share`, ranks channels by
    their share of what their layer still keeps and keeps widths multiples of `round_to` (shrink_slim).
    depth and block pick where to cut by `objective` (search.objective); the others cut alike either way."""
    if name == "depth":
        return lambda spec: shrink_depth(spec, objective)
    if name == "stage":
        return shrink_stage
    if name in ("width", "block"):
        width_factor = DEFAULT_WIDTH_FACTOR if factor is None else factor
        if name == "block":
            return lambda spec: shrink_block(spec, width_factor, objective)
        return lambda spec: shrink_width(spec, width_factor)
    if name == "slim":
        if scales is None:
            raise ConfigError("the slim operator ranks the parent's channels: it needs their BatchNorm scales")
        fraction = DEFAULT_SLIM_FRACTION if factor is None else factor
        parent_scales = scales
        return lambda spec: shrink_slim(spec, parent_scales, fraction, min_channels, by_share, round_to)
    raise ConfigError(f"unknown shrink operator {name!r}; expected one of {', '.join(OPERATORS)}")
