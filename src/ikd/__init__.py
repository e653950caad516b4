"""ikd: compress convolutional networks by iterative knowledge distillation.

    import ikd
    lineage = ikd.compress("configs/digits-demo.yaml", overrides={"run_dir": "runs/x"})

`ikd.compress` is `ikd.campaign.compress`, imported on first use so that `import ikd` stays light.
"""

from __future__ import annotations

from typing import Any

from ikd._version import __version__

__all__ = ["__version__", "compress"]


def __getattr__(name: str) -> Any:
    if name == "compress":
        from ikd.campaign import compress

        return compress
    raise AttributeError(f"module 'ikd' has no attribute {name!r}")
