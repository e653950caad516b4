"""Shrink operators: derive a strictly smaller child ArchSpec from a parent.

The paper's two ways to build a student:
  depth -- "reduce the number of blocks": drop one conv layer; a block that empties is dropped.
  width -- "reduce block size": scale every conv (and hidden head) width by a factor.
Each operator returns None when it cannot make the spec smaller (one conv left, widths of 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ikd.arch import ArchSpec
from ikd.errors import ConfigError

OPERATORS = ("depth", "width")
DEFAULT_WIDTH_FACTOR = 0.5


@dataclass(frozen=True)
class Candidate:
    """A proposed child: its node id, the operator that made it, its spec, and which of the
    same-architecture siblings it is (they differ only in seed)."""

    node_id: str
    operator: str
    spec: ArchSpec
    seed_index: int = 0


def _without_conv(spec: ArchSpec, block: int) -> ArchSpec:
    blocks = [list(b) for b in spec.blocks]
    del blocks[block][-1]
    if not blocks[block]:
        del blocks[block]
    return spec.model_copy(update={"blocks": blocks})


def shrink_depth(spec: ArchSpec) -> ArchSpec | None:
    """Drop the last conv of the block where that saves the most parameters (later block on ties).

    In a VGG that is the last conv of the widest, deepest block, so the network loses its most
    expensive layers first and whole blocks disappear from the end, as in the paper.
    """
    if sum(len(b) for b in spec.blocks) <= 1:
        return None
    candidates = [_without_conv(spec, i) for i in range(len(spec.blocks))]
    return min(reversed(candidates), key=lambda child: child.num_params())


def shrink_width(spec: ArchSpec, factor: float = DEFAULT_WIDTH_FACTOR) -> ArchSpec | None:
    """Scale every conv and hidden head width by `factor` (rounded up, at least 1)."""
    if not 0 < factor < 1:
        raise ConfigError(f"width factor {factor}: expected a number between 0 and 1")

    def scale(width: int) -> int:
        return max(1, math.ceil(width * factor))

    child = spec.model_copy(
        update={
            "blocks": [[scale(w) for w in block] for block in spec.blocks],
            "head": [scale(w) for w in spec.head],
        }
    )
    return child if child.num_params() < spec.num_params() else None


def get_operator(name: str, width_factor: float | None = None) -> Callable[[ArchSpec], ArchSpec | None]:
    """The shrink operator `name`; `width_factor` (default DEFAULT_WIDTH_FACTOR) is the width's."""
    if name == "depth":
        return shrink_depth
    if name == "width":
        factor = DEFAULT_WIDTH_FACTOR if width_factor is None else width_factor
        return lambda spec: shrink_width(spec, factor)
    raise ConfigError(f"unknown shrink operator {name!r}; expected one of {', '.join(OPERATORS)}")
