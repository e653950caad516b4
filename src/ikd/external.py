"""Bring your own teacher: any trained nn.Module that maps images to logits can be the root.

The hint layer is named by module path (as in `model.named_modules()`) and read with a forward
hook; its output must be a feature map (N, C, H, W). The module sees batches normalised with the
dataset's per-channel mean and std, like every ikd model.
"""

from __future__ import annotations

import torch
from torch import nn

from ikd.errors import ConfigError


class ExternalTeacher(nn.Module):
    """Wraps a user's module so the objective can ask it for logits and one hint feature map."""

    def __init__(self, module: nn.Module, hint_layer: str | None, example: torch.Tensor):
        super().__init__()
        self.module = module.eval()
        self.hint_layer = hint_layer
        self.hint_channels: int | None = None
        self._captured: torch.Tensor | None = None
        if hint_layer is not None:
            names = [name for name, _ in module.named_modules() if name]
            if hint_layer not in names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise ConfigError(f"hint_layer {hint_layer!r} is not a submodule of the teacher; it has: {shown}")
            module.get_submodule(hint_layer).register_forward_hook(self._capture)
            with torch.no_grad():
                _, (features,) = self.forward_features(example)
            if features.dim() != 4:
                raise ConfigError(
                    f"hint_layer {hint_layer!r} outputs shape {tuple(features.shape)}; "
                    "expected a feature map (N, C, H, W)"
                )
            self.hint_channels = features.shape[1]

    def _capture(self, module, inputs, output) -> None:
        self._captured = output

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and a one-element list: the hint layer's output (block index 0)."""
        self._captured = None
        logits = self.module(x)
        if self.hint_layer is None:
            return logits, []
        if self._captured is None:  # a submodule the teacher's forward never calls
            raise ConfigError(f"hint_layer {self.hint_layer!r} is not called in the teacher's forward pass")
        return logits, [self._captured]
