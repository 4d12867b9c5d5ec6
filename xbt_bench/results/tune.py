"""What ``xbt-bench tune`` writes: a method's tuned settings for a pair, with the trial table,
``<pair>/tuned/<method>.json`` (one file per method, so two tunes never write the same file).
``run`` reads it as input (:func:`tuned_settings`): the tuned values of the searched settings
replace the defaults and the pair file's, and each result says so (its settings' sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import ResultFile, jsonable, path_component

TUNED_DIR = "tuned"


class Budget(BaseModel):
    """What one method may spend on tuning: ``trials`` fits, each at most ``max_steps`` stage-2
    steps and ``max_proj_steps`` stage-1 steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    max_proj_steps: int = Field(ge=1)

    def caps(self) -> dict[str, int]:
        """The step cap of each step-counting setting."""
        return {"steps": self.max_steps, "proj_steps": self.max_proj_steps}

    def label(self) -> str:
        """``12 trials, ≤ 600 stage-2 and ≤ 3000 stage-1 steps each``."""
        return (
            f"{self.trials} trials, ≤ {self.max_steps} stage-2 and ≤ {self.max_proj_steps} "
            "stage-1 steps each"
        )


class Trial(BaseModel):
    """One fit of the study: its searched settings, the objective and the support metrics."""

    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=0)
    params: dict[str, Any]
    value: float | None = Field(description="the objective on support; None if it failed")
    metrics: dict[str, float] = Field(default_factory=dict, description="support metrics")
    cells_held: int | None = Field(None, description="support cells above old→old")
    seconds: float = Field(ge=0)
    state: Literal["complete", "failed"]
    note: str = ""

    @field_validator("params", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return jsonable(value)


class TuneResult(ResultFile):
    """A method's study on a pair's ``support`` split: the objective, the budget, the best
    settings found (``best``: the searched settings only) and every trial (trial 0 is the
    method's configured settings, so the best is never worse than them on support)."""

    kind = "tune"
    command = "xbt-bench tune --pair {pair} --method {method}"
    leading = ("pair", "old", "new", "method", "support", "objective")

    pair: str = Field(min_length=1)
    old: str
    new: str
    method: str = Field(min_length=1)
    support: str = Field(description="the split every trial was scored on")
    objective: str
    study: str = Field(description="the Optuna study's name")
    storage: str = Field(description="where the study lives, relative to $XBT_BENCH_HOME")
    sampler: str
    seed: int
    budget: Budget
    searched: list[str] = Field(description="the settings the space searched")
    space: dict[str, str] = Field(description="each searched setting's range, as searched")
    best: dict[str, Any]
    best_value: float
    best_trial: int
    configured_value: float | None = Field(
        description="the objective of trial 0, the method's settings before tuning"
    )
    trials: list[Trial]
    fingerprints: dict[str, str] = Field(default_factory=dict)

    @field_validator("best", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return jsonable(value)

    def relative_path(self) -> Path:
        """``<pair>/tuned/<method>.json``."""
        return Path(path_component(self.pair)) / TUNED_DIR / f"{path_component(self.method)}.json"

    def provenance(self) -> dict[str, Any]:
        """What a run result records about the tuned settings it used."""
        return {
            "file": self.relative_path().as_posix(),
            "study": self.study,
            "objective": self.objective,
            "budget": self.budget.label(),
            "support": self.support,
            "support_score": round(self.best_value, 4),
            "configured_score": (
                None if self.configured_value is None else round(self.configured_value, 4)
            ),
            "best_trial": self.best_trial,
            "date": self.date.isoformat(timespec="seconds"),
        }


def tuned_settings(results_dir: str | Path, pair: str, method: str) -> TuneResult | None:
    """The tune result of ``method`` on ``pair`` under ``results_dir``, or None when it was
    never tuned there (a damaged or outdated file is a one-line error, never ignored)."""
    path = Path(results_dir) / path_component(pair) / TUNED_DIR / f"{path_component(method)}.json"
    return TuneResult.from_json(path) if path.is_file() else None
