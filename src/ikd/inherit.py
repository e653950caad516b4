"""Initialise a child network from its parent's weights instead of at random.

Convs are matched by position (block index, conv index within the block; after a middle block a
depth step removed, the later blocks match the parent's one further on): a depth-shrunk child
keeps the surviving layers' weights unchanged; a narrower conv keeps the parent's filters with the
largest L1 norm (`by="l1"`, Li et al. 2017, for width children) or the channels with the largest
BatchNorm scale |gamma| (`by="bn-scale"`, `ikd.shrink.channel_ranking`: the ranking the slim
operator chose its widths by, so a slim child starts from exactly the channels it kept), and the
next layer keeps the matching input channels, so the kept filters still see what they were trained
on. (A conv followed by BatchNorm computes the same thing when its filter is scaled, so gamma is
arguably the better signal for width children too; unmeasured, so they keep L1.) Hidden head
layers, which have no BatchNorm, keep the rows with the largest L1 norm. Layers with no
counterpart keep their fresh initialisation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ikd.errors import ConfigError
from ikd.model import VGG
from ikd.shrink import Scales, channel_ranking


def _convs_by_position(model: VGG) -> dict[tuple[int, int], tuple[nn.Conv2d, nn.BatchNorm2d]]:
    found = {}
    for b, block in enumerate(model.blocks):
        convs = [m for m in block.children() if isinstance(m, nn.Conv2d)]
        norms = [m for m in block.children() if isinstance(m, nn.BatchNorm2d)]
        for j, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            found[(b, j)] = (conv, norm)
    return found


def _top_l1(weight: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` slices along `dim` with the largest L1 norm."""
    other = [d for d in range(weight.dim()) if d != dim]
    norms = weight.abs().sum(dim=other)
    return torch.sort(torch.topk(norms, keep).indices).values


def _top_scale(norm: nn.BatchNorm2d, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` channels first in `channel_ranking` of the layer's |gamma|."""
    return torch.tensor(sorted(channel_ranking(norm.weight.detach().abs().tolist())[:keep]), dtype=torch.long)


def bn_scales(model: nn.Module) -> Scales:
    """|BatchNorm scale| of every conv's output channels, nested like the spec's blocks: what the
    slim operator ranks."""
    if not isinstance(model, VGG):
        raise ConfigError(f"the slim operator ranks a VGG's BatchNorm scales; {type(model).__name__} is not one")
    scales: Scales = [[] for _ in model.blocks]
    for (b, _), (_, norm) in _convs_by_position(model).items():
        scales[b].append(norm.weight.detach().abs().cpu().tolist())
    return scales


def _block_map(child: VGG, parent: VGG) -> list[int]:
    """The parent block each child block continues: the same index, except after a one-conv middle
    block a depth step removed, where the later blocks moved down one (matched by position, block b
    would inherit the filters of the removed block, and the parent's last block would go unused)."""
    c, p = child.spec.blocks, parent.spec.blocks
    if len(c) == len(p) - 1 and c != p[:-1]:  # not the last block dropped (stage, or depth's last conv)
        gap = next((d for d in range(len(p)) if len(p[d]) == 1 and p[:d] + p[d + 1 :] == c), len(c))
        return [b if b < gap else b + 1 for b in range(len(c))]
    return list(range(len(c)))


@torch.no_grad()
def inherit_weights(child: VGG, parent: VGG, *, by: Literal["l1", "bn-scale"] = "l1") -> dict[str, int]:
    """Copy what fits from `parent` into `child` in place; returns counts of layers inherited/fresh."""
    parent_convs = _convs_by_position(parent)
    # The previous conv's parent layer and the output channels it kept (both None when it was fresh):
    # the next layer picks its inputs to match.
    previous_kept: torch.Tensor | None = None
    previous_parent_key: tuple[int, int] | None = None
    parent_order = list(parent_convs)
    stats = {"inherited": 0, "fresh": 0}
    block_map = _block_map(child, parent)

    for (b, j), (conv, norm) in _convs_by_position(child).items():
        key = (block_map[b], j)  # the parent conv in its place
        source = parent_convs.get(key)
        if source is None or not all(
            c <= p for c, p in zip(conv.weight.shape[:2], source[0].weight.shape[:2], strict=True)
        ):
            stats["fresh"] += 1
            previous_kept, previous_parent_key = None, None
            continue
        p_conv, p_norm = source
        out_idx = (
            _top_scale(p_norm, conv.out_channels).to(p_conv.weight.device)
            if by == "bn-scale"
            else _top_l1(p_conv.weight, conv.out_channels, dim=0)
        )
        if (
            previous_kept is not None
            and previous_parent_key is not None
            and parent_order.index(key) == parent_order.index(previous_parent_key) + 1
            and len(previous_kept) == conv.in_channels
        ):
            in_idx = previous_kept  # feeds directly on the previous layer's kept channels
        else:
            in_idx = _top_l1(p_conv.weight, conv.in_channels, dim=1)
        conv.weight.copy_(p_conv.weight[out_idx][:, in_idx])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, name).copy_(getattr(p_norm, name)[out_idx])
        previous_kept, previous_parent_key = out_idx, key
        stats["inherited"] += 1

    # The head: the first linear reads the last conv's channels; hidden layers keep top-L1 rows.
    child_linears = [m for m in child.head if isinstance(m, nn.Linear)]
    parent_linears = [m for m in parent.head if isinstance(m, nn.Linear)]
    last_parent_conv = parent_order[-1]
    head_in = previous_kept if previous_parent_key == last_parent_conv else None
    if len(child_linears) == len(parent_linears):
        for c_lin, p_lin in zip(child_linears, parent_linears, strict=True):
            if c_lin.out_features > p_lin.out_features or c_lin.in_features > p_lin.in_features:
                head_in = None
                stats["fresh"] += 1
                continue
            out_idx = (
                torch.arange(p_lin.out_features)
                if c_lin.out_features == p_lin.out_features
                else _top_l1(p_lin.weight, c_lin.out_features, dim=0)
            )
            if head_in is None or len(head_in) != c_lin.in_features:
                head_in = _top_l1(p_lin.weight, c_lin.in_features, dim=1)
            c_lin.weight.copy_(p_lin.weight[out_idx][:, head_in])
            c_lin.bias.copy_(p_lin.bias[out_idx])
            head_in = out_idx
            stats["inherited"] += 1
    else:
        stats["fresh"] += len(child_linears)
    return stats
