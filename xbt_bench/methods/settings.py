"""Method settings: one validated, frozen pydantic class per method, recorded with each result.

A method's effective settings are its defaults, updated by the pair file's ``[methods.NAME]``
table, updated by command-line overrides (``--set KEY=VALUE``). Unknown keys are errors that
suggest the closest known key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, did_you_mean, validation_message


class MethodConfig(BaseModel):
    """Base of every method's settings (no settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


def describe_settings(cls: type[MethodConfig]) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` of each setting of ``cls``."""
    defaults = cls().model_dump()
    return [
        (name, repr(defaults[name]), field.description or "")
        for name, field in cls.model_fields.items()
    ]
