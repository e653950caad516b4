"""Build a network from an ArchSpec. Its forward can also return every block's output (for hints);
NormalizedModel puts one behind its own input normalisation (for exported graphs and timing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ikd.arch import ArchSpec, pooled_size


def _block(in_channels: int, widths: list[int], size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    if pooled_size(size) != size:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A VGG-family network; `spec` is kept so the model can always be saved with its description."""

    def __init__(self, spec: ArchSpec, seed: int | None = None):
        super().__init__()
        self.spec = spec
        channels = [spec.in_channels] + [block[-1] for block in spec.blocks[:-1]]
        self.blocks = nn.ModuleList(
            _block(cin, widths, size)
            for cin, widths, size in zip(channels, spec.blocks, spec.block_input_sizes(), strict=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        width = spec.feature_width
        for hidden in spec.head:
            head += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if spec.dropout:
                head.append(nn.Dropout(spec.dropout))
            width = hidden
        head.append(nn.Linear(width, spec.num_classes))
        self.head = nn.Sequential(*head)
        self._init_weights(None if seed is None else torch.Generator().manual_seed(seed))

    def _init_weights(self, generator: torch.Generator | None) -> None:
        # Every tensor is re-initialised here, so a seed alone fixes the initial weights.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01, generator=generator)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the output of every block (after its pool)."""
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(torch.flatten(self.pool(x), 1)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(torch.flatten(self.pool(x), 1))


def build_model(spec: ArchSpec, seed: int | None = None) -> VGG:
    """A freshly initialised network; the same spec and seed always give the same weights."""
    return VGG(spec, seed)


class Ensemble(nn.Module):
    """Several classifiers of the same classes as one: the log of the mean of their softmax probabilities,
    which argmax and cross-entropy read as logits (each member's scale of logits counts alike)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(member(x).float(), dim=1) for member in self.members]).mean(0)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()  # a probability that underflowed stays finite


class NormalizedModel(nn.Module):
    """The model behind its own input normalisation: it takes images scaled to [0, 1]."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)
