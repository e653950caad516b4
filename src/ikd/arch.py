"""ArchSpec: a plain, JSON-serialisable description of a VGG-family network.

A spec, not a class, describes every model ikd builds, so any node of a lineage can be rebuilt
from its JSON alone. Size and cost (parameters, bytes, multiply-accumulates) are computed from
the spec without building the network.

Layout of the network a spec describes (see `ikd.model.VGG`):
  for each block: [3x3 conv (padding 1, no bias) -> BatchNorm -> ReLU] per width, then a 2x2
  max-pool that halves the spatial size (floor) -- *skipped when the size is already 1*, so deep
  presets still work on 8x8 inputs (VGG-16 on 8x8: 8 -> 4 -> 2 -> 1 -> 1 -> 1);
  then global average pooling to 1x1 (a no-op when the features are already 1x1, and what makes
  a shallower or wider spec valid at any input size), then the head: Linear(+ReLU+Dropout) per
  hidden width, and a final Linear to the classes.
"""

from __future__ import annotations

import itertools
import re
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ikd.errors import ConfigError

# Standard CIFAR-style VGG widths (Simonyan & Zisserman configurations A, B, D, E).
PRESET_BLOCKS: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}
PRESETS = tuple(PRESET_BLOCKS)
Objective = Literal["params", "macs"]  # search.objective: what "smallest" means to the search

FP32_BYTES = 4
# BatchNorm keeps running_mean and running_var (fp32) and num_batches_tracked (int64) per layer.
_BN_BUFFER_BYTES_PER_CHANNEL = 2 * FP32_BYTES
_BN_COUNTER_BYTES = 8


class ArchSpec(BaseModel):
    """A VGG-family architecture. `blocks[i]` lists the output widths of block i's 3x3 convs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(gt=0)
    image_size: int = Field(gt=0)
    num_classes: int = Field(gt=1)
    blocks: list[list[int]]
    head: list[int] = Field(default_factory=list, description="hidden widths of the classifier")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("blocks")
    @classmethod
    def _blocks_valid(cls, blocks: list[list[int]]) -> list[list[int]]:
        if not blocks or any(not block for block in blocks):
            raise ValueError("needs at least one block, and every block at least one conv")
        if any(width <= 0 for block in blocks for width in block):
            raise ValueError("conv widths must be positive")
        return blocks

    @field_validator("head")
    @classmethod
    def _head_valid(cls, head: list[int]) -> list[int]:
        if any(width <= 0 for width in head):
            raise ValueError("head widths must be positive")
        return head

    # --- derived geometry -------------------------------------------------------------------
    @property
    def feature_width(self) -> int:
        return self.blocks[-1][-1]

    def block_input_sizes(self) -> list[int]:
        """Spatial size entering each block (the pool after a block is skipped at size 1)."""
        sizes, size = [], self.image_size
        for _ in self.blocks:
            sizes.append(size)
            size = pooled_size(size)
        return sizes

    def block_output_sizes(self) -> list[int]:
        return [pooled_size(size) for size in self.block_input_sizes()]

    def convs(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, spatial size) of every conv, in order."""
        layers, channels = [], self.in_channels
        for block, size in zip(self.blocks, self.block_input_sizes(), strict=True):
            for width in block:
                layers.append((channels, width, size))
                channels = width
        return layers

    def linears(self) -> list[tuple[int, int]]:
        widths = [self.feature_width, *self.head, self.num_classes]
        return list(itertools.pairwise(widths))

    # --- size and cost ----------------------------------------------------------------------
    def num_params(self) -> int:
        """Trainable parameters: conv weights, BatchNorm scale and shift, linear weights and biases."""
        conv = sum(cin * cout * 9 + 2 * cout for cin, cout, _ in self.convs())
        linear = sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.linears())
        return conv + linear

    def live_params(self) -> int:
        """The parameters that can change an output at this input size. A 3x3 conv (padding 1) on a
        1x1 map meets a pixel only through its centre tap: the other 8 of 9 weights multiply padding,
        whatever the input (VGG-16's last block on 28x28 MNIST: 6.3 M of its 14.7 M parameters).
        `num_params` counts them, as they are stored; this counts a network without them."""
        return self.num_params() - sum(8 * cin * cout for cin, cout, size in self.convs() if size == 1)

    def size_bytes_fp32(self) -> int:
        """Memory of the parameters in fp32: the footprint compression results are quoted in."""
        return self.num_params() * FP32_BYTES

    def stored_tensor_bytes(self) -> int:
        """Bytes of every tensor in the saved state dict (fp32 parameters plus BatchNorm buffers)."""
        buffers = sum(_BN_BUFFER_BYTES_PER_CHANNEL * cout + _BN_COUNTER_BYTES for _, cout, _ in self.convs())
        return self.size_bytes_fp32() + buffers

    def macs(self) -> int:
        """Multiply-accumulates per image in convs and linears (BN, ReLU and pooling not counted)."""
        conv = sum(cin * cout * 9 * size * size for cin, cout, size in self.convs())
        linear = sum(fan_in * fan_out for fan_in, fan_out in self.linears())
        return conv + linear

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        return self.in_channels, self.image_size, self.image_size

    def size(self, objective: Objective = "params") -> int:
        """The size search.objective orders by: parameters (memory) or MACs per image (compute)."""
        return self.macs() if objective == "macs" else self.num_params()

    def summary(self) -> str:
        """Compact one-line description, e.g. `64x2-128x2-256x3 | head 512`."""
        return layout_line(self.blocks, self.head)

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")


def millions(count: int) -> str:
    """A count in millions to three significant figures or so (MACs per image: 313 for VGG-16 on
    CIFAR-10, 0.052 for a digits student), never in scientific notation."""
    value = count / 1e6
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{decimals}f}"


def pooled_size(size: int) -> int:
    """Spatial size after a block's 2x2 max-pool; the pool is skipped when size is already 1."""
    return size // 2 if size >= 2 else size


LAYOUT_EXAMPLE = "16x2-32x2-64/48/32"
MAX_LAYOUT_WIDTH = 1 << 16  # a wider conv is a typo, not a network (its weights alone would be > 100 GB)
MAX_LAYOUT_REPEAT = 100  # convs in a `WIDTHxCONVS` block
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits


def layout_line(blocks: list[list[int]], head: list[int]) -> str:
    """The one-line layout of blocks and head widths, e.g. `64x2-128x2-256/192/128 | head 512`."""
    parts = [f"{block[0]}x{len(block)}" if len(set(block)) == 1 else "/".join(map(str, block)) for block in blocks]
    return "-".join(parts) + (f" | head {'-'.join(map(str, head))}" if head else "")


def _bounded(part: str, what: str, most: int) -> int:
    if not _NUMBER.fullmatch(part.strip()) or not 0 < int(part) <= most:
        raise ValueError(f"{part.strip()!r} is not {what} (a whole number from 1 to {most})")
    return int(part)


def parse_layout(text: str) -> tuple[list[list[int]], list[int]]:
    """Blocks and head widths of a layout line, as `layout_line` (and `ikd lineage`) writes it: blocks
    joined by `-`, each `WIDTHxCONVS` or its widths joined by `/`, then `| head W-W` if any. E.g.
    `64x2-128x2-256/192/128` or `16x2-32x2 | head 64`. ValueError names what is wrong. (A block of more
    than MAX_LAYOUT_REPEAT equal convs, or a width over MAX_LAYOUT_WIDTH, is refused: typos, not networks.)"""
    convs, bar, head = text.partition("|")
    head = head.strip()
    if bar and not head.startswith("head "):
        raise ValueError(f"expected `| head WIDTH-WIDTH` after the blocks, got {'|' + head!r}")
    blocks = []
    for block in convs.strip().split("-"):
        if "x" in block:
            size, _, times = block.partition("x")
            repeat = _bounded(times, "a number of convs", MAX_LAYOUT_REPEAT)
            blocks.append([_bounded(size, "a width", MAX_LAYOUT_WIDTH)] * repeat)
        else:
            blocks.append([_bounded(part, "a width", MAX_LAYOUT_WIDTH) for part in block.split("/")])
    widths = head.removeprefix("head ").split("-") if bar else []
    return blocks, [_bounded(part, "a width", MAX_LAYOUT_WIDTH) for part in widths]


def check_arch(name: str) -> str:
    """A preset's name, or a layout line written the one way `layout_line` writes it (so two spellings of
    one network are one architecture to a resumed run); else ValueError saying what was expected."""
    return name if name in PRESET_BLOCKS else layout_line(*_layout_of(name))


def _layout_of(name: str) -> tuple[list[list[int]], list[int]]:
    """`parse_layout` for a name that is not a preset, its ValueError saying what was expected."""
    expected = f"expected a preset ({', '.join(PRESETS)}) or a layout such as {LAYOUT_EXAMPLE!r}"
    if not name.strip()[:1].isdigit():  # a name, not a layout: the parser's detail would not help
        raise ValueError(expected)
    try:
        return parse_layout(name)
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None


def preset(name: str, *, in_channels: int, image_size: int, num_classes: int) -> ArchSpec:
    """A standard VGG (CIFAR-style: no 4096-wide head, a single linear classifier), or the network a
    layout line describes (see `parse_layout`)."""
    try:
        blocks, head = (PRESET_BLOCKS[name], []) if name in PRESET_BLOCKS else _layout_of(name)
    except ValueError as exc:
        raise ConfigError(f"architecture {name!r}: {exc}") from None
    return ArchSpec(
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        blocks=[list(block) for block in blocks],
        head=head,
    )


class InputShape(Protocol):
    """What a network is fitted to: a dataset's images and classes."""

    @property
    def in_channels(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def num_classes(self) -> int: ...


def preset_for(name: str, data: InputShape) -> ArchSpec:
    """`preset` fitted to `data`'s images and classes."""
    return preset(name, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes)
