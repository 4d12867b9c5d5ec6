"""The base of the typed records that are written to JSON with their derived fields: a derived
(``computed_field``) value is written for readers but rebuilt from the stored fields when the
record is read back, so the two can never disagree."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Record(BaseModel):
    """A pydantic model that refuses unknown keys and ignores its own computed fields on input."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            derived = cls.model_computed_fields
            data = {k: v for k, v in data.items() if k not in derived}
        return data
