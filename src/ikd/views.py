"""Views of an image a trained model has learnt to answer alike, and its logits averaged over them.

`flip` averages the logits of each image and its mirror image; `flip-shift` averages that pair (weight
1/2) with the pair moved one pixel up-left and one down-right (weight 1/2), as airbench's multi-crop
test-time augmentation. A model trained on mirror images (and, for the shifts, on padded crops) has
learnt those views; `fitting_views` says which, from its training augmentation. Used at test time
(`ikd eval --tta`) and for a teacher's targets (`loss.teacher_views`).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Views = Literal["none", "flip", "flip-shift"]
VIEWS: tuple[str, ...] = get_args(Views)
# what each view needs the training to have shown the model (parts of an augmentation's name)
VIEW_NEEDS: dict[str, tuple[str, ...]] = {"none": (), "flip": ("flip",), "flip-shift": ("flip", "crop")}
VIEW_PASSES = {"none": 1, "flip": 2, "flip-shift": 6}  # forward passes per image: the compute they cost


def fitting_views(augment: str | None) -> tuple[str, ...]:
    """The views a model trained with this augmentation has learnt."""
    return tuple(views for views in VIEWS if all(part in (augment or "") for part in VIEW_NEEDS[views]))


def unfitting_views(views: str, augment: str | None, model: str, flag: str) -> str | None:
    """Why `model`, trained with `augment`, cannot be asked for `views` (None: it can), in one line that names
    the flag or key (`flag`) that asked for them."""
    if views in (fitting := fitting_views(augment)):
        return None
    trained = f"with augmentation {augment!r}" if augment else "with no augmentation on record"
    return (
        f"{flag} {views}: {model} was trained {trained}, never on such views ({' and '.join(VIEW_NEEDS[views])} "
        f"needed), so its answers on them say nothing about it; use {flag} {fitting[-1]}"
    )


def viewed_logits(
    model: torch.nn.Module, x: torch.Tensor, views: Views, plain: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's logits for a batch, averaged over the views (fp32 when there are several). `plain`: the
    model's logits for `x` itself when the caller has them already (one forward fewer)."""
    if views == "none":
        return model(x) if plain is None else plain

    def mirrored_pair(batch: torch.Tensor, unflipped: torch.Tensor | None = None) -> torch.Tensor:
        unflipped = model(batch) if unflipped is None else unflipped
        return (unflipped.float() + model(batch.flip(-1)).float()) / 2

    logits = mirrored_pair(x, plain)
    if views == "flip":
        return logits
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # the training crops' padding
    shifted = (mirrored_pair(padded[..., :-2, :-2]) + mirrored_pair(padded[..., 2:, 2:])) / 2
    return (logits + shifted) / 2
