"""What ``xbt-bench run`` writes: one :class:`RunResult` per (pair, dataset, method).

Layout: ``<results_dir>/<pair>/<dataset>/<method>.json``, always exact search; a run with
``--index KIND`` also writes ``<method>.index-<name>.json`` (:mod:`xbt_bench.results.index`).
The other commands write their own files beside it (``<method>.sweep.json``,
``<method>.backfill.json``, ...).

A result holds every evaluated split in ``splits`` (metrics per setting, intervals, flips, an
optional chain matrix); ``split`` names the primary split, whose ``metrics``,
``compatibility``, ``flips`` and ``chain_matrix`` are repeated at the top level of the JSON for
readers that want one number. ``compatibility`` is derived from ``metrics`` (never stored
separately), so the two cannot disagree. ``report`` holds what the method declared for the
leaderboard (e.g. slerp's α per direction), with labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from xbt_bench.embed.throughput import EmbeddingThroughput
from xbt_bench.errors import ConfigError
from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from xbt_bench.eval.index_cost import IndexBuildRates
from xbt_bench.methods.base import Cost
from xbt_bench.methods.latency import QueryLatency
from xbt_bench.record import Record
from xbt_bench.scoring import ChainMatrix, Compatibility, SplitResult

from .base import ResultFile, jsonable, path_component

Setting = Literal["old->old", "new->new", "method->old"]
# Keys a run file must carry; the derived ones are written but rebuilt on load.
REQUIRED_KEYS = ("pair", "old", "new", "method", "dataset", "split", "cost", "config", "seed")
DERIVED_KEYS = ("metrics", "compatibility", "flips", "chain_matrix")


class MethodResult(ResultFile):
    """A file about one method on one pair and dataset: the pair's models, what was scored
    (each model's identity and each split's data fingerprint) and the method's settings."""

    leading = ("pair", "old", "new", "method", "dataset", "quick")

    pair: str = Field(min_length=1)
    old: str
    new: str
    method: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict, description="the method's settings")
    fingerprints: dict[str, str] = Field(
        default_factory=dict,
        description="what the numbers were scored on: each model's identity (name and weights "
        "hash) and each evaluation split's data fingerprint",
    )
    quick: bool = Field(
        False,
        description="a --quick run (fewer steps, pairs and texts: a smoke run): marked wherever "
        "it is shown, never ranked with full runs unless asked",
    )

    @field_validator("config", mode="before")
    @classmethod
    def _plain_config(cls, value: Any) -> Any:
        return jsonable(value)

    @model_validator(mode="before")
    @classmethod
    def _quick_from_config(cls, data: Any) -> Any:
        """A file written before ``quick`` had its own field recorded it in ``config``."""
        if isinstance(data, dict) and "quick" not in data:
            config = data.get("config")
            if isinstance(config, dict) and config.get("quick") is True:
                data = {**data, "quick": True}
        return data

    def folder(self) -> Path:
        """``<pair>/<dataset>``: where the method's files live under a results folder."""
        return Path(path_component(self.pair)) / path_component(self.dataset)


class ReportValue(BaseModel):
    """One value a method declared for the leaderboard, with its label (e.g. ``α I2T``)."""

    model_config = ConfigDict(extra="forbid")

    label: str
    value: float | str


class Needs(BaseModel):
    """What a method needs to be deployed: the leaderboard group it is ranked in, whether its
    queries need OLD, what of OLD it needs while it trains, and the image–text pairs it used."""

    model_config = ConfigDict(extra="forbid")

    group: Literal["OLD retired", "OLD kept at query time", "reference"]
    old_at_query: bool
    training: Literal[
        "nothing", "text embeddings", "OLD embeddings of the pairs", "OLD forward passes"
    ]
    image_text_pairs: int = Field(ge=0)


class GalleryShape(Record):
    """What the evaluated gallery holds (the primary split): its images, its captions, and the
    dimension of a vector in OLD's and in NEW's space; the upgrade bill's captions per item and
    bytes per item come from it."""

    split: str
    images: int = Field(gt=0)
    captions: int = Field(gt=0)
    old_dim: int = Field(gt=0)
    new_dim: int = Field(gt=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def captions_per_image(self) -> float:
        """Captions per gallery item (an image with its captions)."""
        return self.captions / self.images


class RunResult(MethodResult):
    """One (pair, dataset, method) run: metrics of every split and setting, compatibility,
    flips, cost, config, the method's declared report, provenance."""

    kind = "run"
    command = "xbt-bench run --pair {pair} --method {method}"
    leading = (
        "pair", "old", "new", "method", "dataset", "quick", "split", "setting", *DERIVED_KEYS
    )

    split: str = Field(min_length=1, description="the primary split, mirrored at the top level")
    setting: Setting = Field(
        METHOD_OLD,
        description="the setting the method deploys: method->old, or old->old / new->new for "
        "the reference methods old and new",
    )
    splits: dict[str, SplitResult] = Field(min_length=1)
    applicable: bool = True
    not_applicable_reason: str | None = None
    cost: Cost
    report: dict[str, ReportValue] = Field(
        default_factory=dict, description="what the method declared for the leaderboard"
    )
    info: dict[str, Any] = Field(default_factory=dict)
    training_curves: dict[str, list[dict[str, float]]] = Field(
        default_factory=dict, description="per training stage, {step, loss, lr, ...} points"
    )
    throughputs: list[EmbeddingThroughput] = Field(
        default_factory=list, description="OLD's and NEW's measured embedding throughput"
    )
    seed: int
    seeds: list[int] = Field(
        default_factory=list, description="every training seed a trained method ran with"
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="cached artifacts, by path relative to $XBT_BENCH_HOME",
    )
    # A fair contest (issue 21): what the method needs, and where its settings came from.
    needs: Needs | None = Field(None, description="deployment group and what it needs")
    settings_source: dict[str, str] = Field(
        default_factory=dict,
        description="per setting: default, pair file, tuned, --quick or --set",
    )
    tuned: dict[str, Any] | None = Field(
        None, description="the tune result its tuned settings came from (study, budget, score)"
    )
    # --- issue 22 (the upgrade bill): query-time cost, index build rates, the gallery's shape ---
    query_latency: QueryLatency | None = Field(
        None,
        description="the method's query encoder timed on the run's device, per side at batch 1 "
        "and 256, next to OLD's own (None: a result written before latencies were recorded)",
    )
    index_build: IndexBuildRates | None = Field(
        None, description="FAISS index build rates measured on OLD's gallery on the run's machine"
    )
    gallery: GalleryShape | None = Field(
        None, description="images, captions and OLD's and NEW's dimensions of the gallery"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_top_level(cls, data: Any) -> Any:
        """Accept a file with only the top-level primary split (no ``splits``); drop the
        derived mirror keys otherwise."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        mirror = {k: data.pop(k) for k in DERIVED_KEYS if k in data}
        if "splits" not in data and "metrics" in mirror and "split" in data:
            data["splits"] = {data["split"]: mirror}
        return data

    @field_validator("info", mode="before")
    @classmethod
    def _plain_info(cls, value: Any) -> Any:
        return jsonable(value)

    @field_validator("training_curves")
    @classmethod
    def _curves_have_loss(
        cls, value: dict[str, list[dict[str, float]]]
    ) -> dict[str, list[dict[str, float]]]:
        for stage, points in value.items():
            if any("step" not in p or "loss" not in p for p in points):
                raise ValueError(f"training_curves[{stage!r}] points need 'step' and 'loss'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunResult:
        if self.split not in self.splits:
            raise ValueError(f"primary split {self.split!r} is not in splits {list(self.splits)}")
        if not self.applicable and not self.not_applicable_reason:
            raise ValueError("a result with applicable=false needs not_applicable_reason")
        needed = (OLD_OLD, NEW_NEW) + ((self.setting,) if self.applicable else ())
        for name, split in self.splits.items():
            missing = [s for s in needed if s not in split.metrics]
            if missing:
                raise ValueError(f"splits[{name!r}].metrics lacks settings {missing}")
            counted = len(split.seed_metrics)
            if counted and self.seeds and counted != len(self.seeds):
                raise ValueError(
                    f"splits[{name!r}] has {counted} seed_metrics for {len(self.seeds)} seeds"
                )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """The primary split's metrics per setting."""
        return self.splits[self.split].metrics

    @computed_field  # type: ignore[prop-decorator]
    @property
    def compatibility(self) -> Compatibility | None:
        """The primary split's compatibility criterion (None without method->old)."""
        return self.splits[self.split].compatibility

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flips(self) -> dict[str, float] | None:
        """The primary split's R@1 flip rates."""
        return self.splits[self.split].flips

    @computed_field  # type: ignore[prop-decorator]
    @property
    def chain_matrix(self) -> ChainMatrix | None:
        """The primary split's chain matrices (chains only)."""
        return self.splits[self.split].chain_matrix

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/<method>.json``."""
        return self.folder() / f"{path_component(self.method)}.json"

    @classmethod
    def from_data(cls, data: dict[str, Any], path: Path) -> RunResult:
        """Validate a run file's object; a one-line error naming the keys it lacks."""
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ConfigError(
                f"result file {path} lacks the keys {missing}; rerun the command that wrote "
                "it, or delete it"
            )
        return super().from_data(data, path)
