"""What ``xbt-bench backfill`` writes: a method's partial-backfill curves,
``<pair>/<dataset>/<method>.backfill.json``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from xbt_bench.scoring import BackfillCurves

from .base import path_component
from .run import MethodResult


class BackfillResult(MethodResult):
    """Recall while the gallery is re-embedded with NEW (:class:`BackfillCurves`: per split
    and order, with the calibration and orders chosen on support), from the method's fits with
    ``seeds``; ``references[split]`` are old→old and new→new on each split."""

    kind = "backfill"
    command = "xbt-bench backfill --pair {pair} --method {method}"

    seeds: list[int] = Field(min_length=1)
    backfill: BackfillCurves
    references: dict[str, dict[str, dict[str, float]]] = Field(
        description="per split, old->old and new->new metrics"
    )

    @model_validator(mode="after")
    def _references_of_every_split(self) -> BackfillResult:
        missing = sorted(set(self.backfill.curves) - set(self.references))
        if missing:
            raise ValueError(f"references lack the splits {missing} that have curves")
        return self

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/<method>.backfill.json``."""
        return self.folder() / f"{path_component(self.method)}.backfill.json"
