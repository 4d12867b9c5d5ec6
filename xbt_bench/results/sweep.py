"""What ``xbt-bench sweep`` writes: a method's recall against the number of image–text pairs
it trained on, ``<pair>/<dataset>/<method>.sweep.json``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from xbt_bench.scoring import SweepPoint

from .base import path_component
from .run import MethodResult


class SweepResult(MethodResult):
    """One method refitted on the first ``n`` training images for each point (0 pairs: stage 1
    alone), each fit's method→old scored on ``split``; ``references`` are old→old and new→new
    on that split, ``config`` the settings every point shares (``pairs`` aside)."""

    kind = "sweep"
    command = "xbt-bench sweep --pair {pair} --method {method}"

    split: str = Field(min_length=1)
    seed: int
    points: list[SweepPoint] = Field(min_length=1)
    references: dict[str, dict[str, float]] = Field(
        description="old->old and new->new metrics on the split"
    )
    wall_time_s: float = Field(ge=0, description="the whole sweep of this method")

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/<method>.sweep.json``."""
        return self.folder() / f"{path_component(self.method)}.sweep.json"
