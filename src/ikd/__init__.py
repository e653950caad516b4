"""ikd: compress convolutional networks by iterative knowledge distillation.

    import ikd
    lineage = ikd.compress("configs/digits-demo.yaml", overrides={"run_dir": "runs/x"})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ikd._version import __version__

__all__ = ["__version__", "compress"]

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from ikd.arch import ArchSpec
    from ikd.config import CampaignConfig
    from ikd.lineage import Lineage


def compress(config: CampaignConfig | dict[str, Any] | str | Path | None = None, *,
             overrides: dict[str, Any] | None = None, progress: bool = True, force: bool = False,
             teacher: torch.nn.Module | None = None, hint_layer: str | None = None,
             student: ArchSpec | None = None) -> Lineage:
    """Run or resume a campaign from a CampaignConfig, a dict of config keys, or a YAML path.

    `overrides` maps dotted keys (e.g. "search.max_drop") to values, as the CLI flags do.
    `teacher`: your own trained module (images normalised with the dataset's mean/std -> logits)
    as the root, with its hint read from the submodule named `hint_layer`; the chain then starts
    from `student` (default: vgg11 fitted to the data) and shrinks from there.
    """
    from ikd.config import CampaignConfig, load_config
    from ikd.search import compress as run_campaign

    if isinstance(config, CampaignConfig):
        config = config.model_dump()
    if isinstance(config, dict):  # whole sections first, then the dotted overrides on top
        config = load_config(None, {**config, **(overrides or {})})
    else:
        config = load_config(config, overrides)
    return run_campaign(config, progress=progress, force=force, teacher=teacher, hint_layer=hint_layer,
                        student=student)
