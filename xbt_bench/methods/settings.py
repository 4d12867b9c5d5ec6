"""Method settings: one validated, frozen pydantic class per method, recorded with each result.

A method's effective settings are its defaults, updated by the pair file's ``[methods.NAME]``
table, updated by command-line overrides (``--set KEY=VALUE``). Unknown keys are errors that
suggest the closest known key; so are non-finite numbers (``lr=inf``). Bounds that depend on
the models or the data (a batch larger than the data, a LoRA rank above a layer's width) are
checked when the method is fitted (:func:`batch_size`, :func:`xbt_bench.models.lora.add_lora`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, did_you_mean, validation_message


class MethodConfig(BaseModel):
    """Base of every method's settings (no settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def unknown_settings(cls: type[MethodConfig], keys: Iterable[str]) -> list[str]:
    """The ``keys`` that ``cls`` has no field for."""
    return [key for key in keys if key not in cls.model_fields]


def parse_settings(
    method: str, cls: type[MethodConfig], values: Mapping[str, Any] | MethodConfig | None
) -> MethodConfig:
    """``values`` over ``cls``'s defaults, validated; ConfigError naming the method, the bad
    key and the closest known one."""
    if isinstance(values, cls):
        return values
    values = dict(values.model_dump() if isinstance(values, BaseModel) else values or {})
    for key in unknown_settings(cls, values):
        hint = did_you_mean(key, cls.model_fields, known="its settings")
        raise ConfigError(f"method {method!r} has no setting {key!r}; {hint}")
    try:
        return cls(**values)
    except ValidationError as error:
        field, message, _ = validation_message(error)
        where = f"setting {field}={values[field]!r}" if field in values else "settings"
        raise ConfigError(f"method {method!r}: {where}: {message}") from None


def batch_size(settings: MethodConfig, field: str, available: int, what: str) -> int:
    """The batch that setting ``field`` of ``settings`` takes from ``available`` items (``what``
    they are, for the message): the setting, or all the items when the default is larger (a
    small dataset); ConfigError when a batch that was set (pair file, ``--set``) exceeds them."""
    batch = int(getattr(settings, field))
    if batch > available and field in settings.model_fields_set:
        raise ConfigError(
            f"setting {field}={batch} is larger than the {available} {what}; set it to at most "
            f"{available}"
        )
    return min(batch, available)


def describe_settings(cls: type[MethodConfig]) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` of each setting of ``cls``."""
    defaults = cls().model_dump()
    return [
        (name, repr(defaults[name]), field.description or "")
        for name, field in cls.model_fields.items()
    ]
