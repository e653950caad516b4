"""The base of every settings model (campaign config sections, loss weights): unknown keys, NaN or
infinite numbers and a yes/no where a number is expected are refused, not read as something else."""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    # an infinite learning rate or EMA horizon is no setting: refused like NaN, not trained into NaN
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `epochs: true` as 1 epoch; YAML's yes/no is never a count or a rate
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in _members(annotation) and {int, float} & set(_members(annotation)):
                raise ValueError(f"{str(value).lower()} is a yes/no; expected a number")
        return value


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits, one level down (int | None -> int, NoneType)."""
    args = get_args(annotation)
    return args if args and get_origin(annotation) is not list else (annotation,)
