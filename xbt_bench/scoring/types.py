"""What scoring produces: typed numbers of one split (metrics per setting, intervals, flips, a
chain's matrices, the compatibility criterion) and of a partial backfill (curves, the
calibration and orders chosen on support). Result files (:mod:`xbt_bench.results`) are made of
these; derived fields (``compatibility``, ``seed_std``, ``average_compatibility``) are computed
from the stored ones, never stored separately, so the two cannot disagree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from ..errors import NotFoundError
from ..eval.compat import (
    METHOD_OLD,
    NEW_NEW,
    OLD_OLD,
    SETTINGS,
    average_compatibility,
    compatibility,
    gain_share,
)
from ..eval.retrieval import METRIC_KEYS, RECALL_KEYS
from ..record import Record

SETTING_PATTERN = re.compile(r"^[^\s>]+->[^\s>]+$")


def check_metrics(metrics: Mapping[str, Mapping[str, float]]) -> None:
    """ValueError unless every setting reads ``QUERY->GALLERY`` and has every metric of
    :data:`METRIC_KEYS`, finite, and consistent (:func:`check_recalls`)."""
    for setting, values in metrics.items():
        if not SETTING_PATTERN.match(setting):
            raise ValueError(
                f"setting {setting!r} must read QUERY->GALLERY with an ASCII '->', "
                f"e.g. {METHOD_OLD!r}"
            )
        missing = [k for k in METRIC_KEYS if k not in values]
        if missing:
            raise ValueError(f"metrics[{setting!r}] lacks {missing} (needs {list(METRIC_KEYS)})")
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics[{setting!r}] has non-finite values for {bad}")
        check_recalls(f"metrics[{setting!r}]", values)


# How far a stored rsum may be from the sum of its six stored recalls (hand-rounded files).
RSUM_TOLERANCE = 0.1


def check_recalls(where: str, values: Mapping[str, float]) -> None:
    """ValueError unless every recall lies in [0, 100], rsum in [0, 600] and equals the sum of
    the six recalls, and R@1 <= R@5 <= R@10 in each direction (a hit at 1 is a hit at 5)."""
    out = [k for k in RECALL_KEYS if not 0 <= values[k] <= 100]
    if out:
        raise ValueError(f"{where}: {out[0]}={values[out[0]]:g} is not a recall in [0, 100] %")
    if not 0 <= values["rsum"] <= 600:
        raise ValueError(f"{where}: rsum={values['rsum']:g} is not in [0, 600]")
    total = sum(values[k] for k in RECALL_KEYS)
    if abs(values["rsum"] - total) > RSUM_TOLERANCE:
        raise ValueError(
            f"{where}: rsum={values['rsum']:g} is not the sum of its six recalls ({total:g})"
        )
    for direction in ("t2i", "i2t"):
        at = [values[f"{direction}_r{k}"] for k in (1, 5, 10)]
        if not at[0] <= at[1] <= at[2]:
            raise ValueError(
                f"{where}: {direction} R@1, R@5, R@10 = {at[0]:g}, {at[1]:g}, {at[2]:g} do not "
                "grow with K"
            )


class Compatibility(BaseModel):
    """The compatibility criterion on one split, per metric: does method->old beat old->old on
    the mean (``held``), and with 95% confidence (``held_95``: the paired bootstrap interval of
    the margin lies above 0; None when no interval was computed)?"""

    model_config = ConfigDict(extra="forbid")

    held: dict[str, bool]
    margin: dict[str, float]
    cells_held: int = Field(ge=0)
    cells_total: int = Field(gt=0)
    gain_share: dict[str, float | None]
    margin_interval: dict[str, list[float]] | None = None
    held_95: dict[str, bool] | None = None
    cells_held_95: int | None = None

    @classmethod
    def from_metrics(
        cls,
        method: Mapping[str, float],
        old: Mapping[str, float],
        new: Mapping[str, float],
        margin_interval: Mapping[str, list[float]] | None = None,
    ) -> Compatibility:
        """The criterion and gain shares of ``method`` (method->old) against old and new, and
        with ``margin_interval`` (paired intervals of method − old) the criterion at 95%."""
        criterion = compatibility(method, old)
        confident = None
        if margin_interval is not None:
            confident = {key: margin_interval[key][0] > 0 for key in criterion["held"]}
        return cls(
            **criterion,
            gain_share=gain_share(method, old, new),
            margin_interval=dict(margin_interval) if margin_interval is not None else None,
            held_95=confident,
            cells_held_95=(
                sum(confident[key] for key in RECALL_KEYS) if confident is not None else None
            ),
        )


class ChainMatrix(Record):
    """A chain's compatibility matrices: ``matrices[metric][i][j]`` with query model i and
    gallery model j (i >= j; None above the diagonal), and average compatibility per metric."""

    models: list[str] = Field(min_length=2)
    matrices: dict[str, list[list[float | None]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _lower_triangular(self) -> ChainMatrix:
        n = len(self.models)
        for metric, rows in self.matrices.items():
            if len(rows) != n or any(len(row) != n for row in rows):
                raise ValueError(f"matrices[{metric!r}] must be {n}x{n} (one row per model)")
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    if j <= i and (value is None or not math.isfinite(value)):
                        raise ValueError(f"matrices[{metric!r}][{i}][{j}] must be a number")
                    if j > i and value is not None:
                        raise ValueError(
                            f"matrices[{metric!r}][{i}][{j}] (above diagonal) must be null"
                        )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def average_compatibility(self) -> dict[str, float]:
        """AC per metric: share of pairs i > j with M[i][j] > M[j][j]."""
        return {metric: average_compatibility(self.array(metric)) for metric in self.matrices}

    def array(self, metric: str) -> np.ndarray:
        """``matrices[metric]`` as a float array with NaN above the diagonal."""
        if metric not in self.matrices:
            raise NotFoundError(
                f"chain matrix has no metric {metric!r} (has {sorted(self.matrices)})"
            )
        rows = self.matrices[metric]
        return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)

    @classmethod
    def from_arrays(cls, models: Sequence[str], matrices: Mapping[str, np.ndarray]) -> ChainMatrix:
        """Build from ``compatibility_matrix`` arrays (NaN above the diagonal)."""
        return cls(
            models=list(models),
            matrices={
                metric: [
                    [None if j > i else float(v) for j, v in enumerate(row)]
                    for i, row in enumerate(np.asarray(array, dtype=float))
                ]
                for metric, array in matrices.items()
            },
        )



class BaselineMargin(Record):
    """A method's method→old minus another method's (its declared ``baseline``) on the same
    queries: the margin of the seeds' means per metric and its paired 95% bootstrap interval
    (seeds paired in order, hits averaged over them)."""

    method: str = Field(min_length=1, description="the baseline method")
    margin: dict[str, float]
    interval: dict[str, list[float]]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def significant(self) -> dict[str, bool]:
        """Per metric: does the interval lie above 0 (the method beats its baseline at 95%)?"""
        return {key: bounds[0] > 0 for key, bounds in self.interval.items()}


class SplitResult(Record):
    """One split's numbers: metrics per setting (``old->old``, ``new->new``, ``method->old``,
    or ``vI->vJ`` for chains; a trained method's ``method->old`` is the mean over its seeds),
    their 95% bootstrap intervals over the split's images, the paired intervals of the margins
    method->old − old->old, each seed's method->old metrics, R@1 flip rates (mean over seeds),
    and a chain's matrices."""

    metrics: dict[str, dict[str, float]] = Field(min_length=1)
    intervals: dict[str, dict[str, list[float]]] | None = Field(
        None, description="per setting and metric, the 95% bootstrap interval [lo, hi]"
    )
    margin_intervals: dict[str, list[float]] | None = Field(
        None, description="per metric, the paired 95% interval of method->old − old->old"
    )
    seed_metrics: list[dict[str, float]] = Field(
        default_factory=list, description="method->old metrics of each seed, in seed order"
    )
    flips: dict[str, float] | None = None
    chain_matrix: ChainMatrix | None = None
    baseline_margin: BaselineMargin | None = Field(
        None, description="method->old minus the method's declared baseline's, paired"
    )
    images: int | None = Field(
        None, ge=1, description="images in the split (how wide its intervals are depends on it)"
    )


    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_metrics(value)
        return value

    @field_validator("seed_metrics")
    @classmethod
    def _valid_seed_metrics(cls, value: list[dict[str, float]]) -> list[dict[str, float]]:
        for metrics in value:
            check_metrics({METHOD_OLD: metrics})
        return value

    @field_validator("flips")
    @classmethod
    def _valid_flips(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = [k for k, v in (value or {}).items() if not 0 <= v <= 100]
        if bad:
            raise ValueError(f"flip rate {bad[0]}={value[bad[0]]:g} is not in [0, 100] %")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def compatibility(self) -> Compatibility | None:
        """The criterion for ``method->old`` (None when the split has no method->old)."""
        if not all(s in self.metrics for s in SETTINGS):
            return None
        return Compatibility.from_metrics(
            self.metrics[METHOD_OLD],
            self.metrics[OLD_OLD],
            self.metrics[NEW_NEW],
            self.margin_intervals,
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def seed_std(self) -> dict[str, float] | None:
        """Standard deviation of method->old over seeds per metric (None under two seeds)."""
        if len(self.seed_metrics) < 2:
            return None
        keys = self.seed_metrics[0]
        return {
            key: round(float(np.std([m[key] for m in self.seed_metrics], ddof=1)), 4)
            for key in keys
        }


# --- production indexes (issue 22, item 3) ---


class IndexSplit(Record):
    """One split searched through production FAISS indexes (``xbt-bench run --index``):
    ``indexed`` holds what the indexes return, scored as an exact split is (metrics per setting,
    intervals, the margins over old→old through the same index, flips); ``exact`` the same
    settings with exact search; ``searches`` the index each gallery had (``old images``,
    ``old captions``, ``new images``, ``new captions``). old→old and method→old search the one
    index of OLD's gallery, trained on OLD's vectors; new→new searches an index of the same kind
    trained on NEW's gallery (the rebuild a full backfill needs). ``loss`` is exact − indexed,
    ``extra_loss`` what method→old loses beyond old→old's own loss."""

    searches: dict[str, str] = Field(min_length=1)
    indexed: SplitResult
    exact: dict[str, dict[str, float]] = Field(min_length=1)
    loss_intervals: dict[str, dict[str, list[float]]] = Field(
        default_factory=dict,
        description="per setting and metric, the paired 95% interval of exact − indexed",
    )
    extra_loss_intervals: dict[str, list[float]] | None = Field(
        None,
        description="per metric, the paired 95% interval of method->old's loss − old->old's",
    )

    @field_validator("exact")
    @classmethod
    def _valid_exact(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_metrics(value)
        return value

    @model_validator(mode="after")
    def _same_settings(self) -> IndexSplit:
        if set(self.exact) != set(self.indexed.metrics):
            raise ValueError(
                f"exact metrics are for settings {sorted(self.exact)}, the indexed ones for "
                f"{sorted(self.indexed.metrics)}"
            )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def loss(self) -> dict[str, dict[str, float]]:
        """Per setting and metric, the recall the index loses against exact search (points;
        negative where the index happens to rank a positive higher)."""
        return {
            setting: {
                key: round(value - self.indexed.metrics[setting][key], 4)
                for key, value in metrics.items()
            }
            for setting, metrics in self.exact.items()
        }

    @computed_field  # type: ignore[prop-decorator]
    @property
    def extra_loss(self) -> dict[str, float] | None:
        """Per metric, method→old's loss minus old→old's (None without method→old): how much
        more a query mapped into OLD's space loses through OLD's index than OLD's own query."""
        if METHOD_OLD not in self.exact:
            return None
        loss = self.loss
        return {k: round(v - loss[OLD_OLD][k], 4) for k, v in loss[METHOD_OLD].items()}


class SweepPoint(BaseModel):
    """The method fitted on ``n_pairs`` image-text pairs: its method->old metrics."""

    model_config = ConfigDict(extra="forbid")

    n_pairs: int = Field(ge=0)
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        check_metrics({METHOD_OLD: value})
        return value


class BackfillPoint(BaseModel):
    """Recall on a gallery whose share ``fraction`` of items holds NEW's embeddings."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(ge=0, le=1)
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        check_metrics({"partial->mixed": value})
        return value


class CalibrationChoice(BaseModel):
    """How one direction's two parts' scores were put on one scale before the merge: the
    candidate with the highest R@1 on support (``support_r1``: every candidate's mean over the
    backfill fractions strictly between 0 and 1, random order; ties to the simpler one, in the
    order none, affine, quantile, isotonic). ``affine``: NEW's scores become
    ``scale * s + shift``; ``quantile`` and ``isotonic``: each part's scores go through its own
    increasing map fitted on support (``knots[part]`` = [x, y], ``part`` old or new)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "affine", "quantile", "isotonic"]
    scale: float = 1.0
    shift: float = 0.0
    fitted: list[float] = Field(
        default_factory=list, description="the affine map fitted on support: [scale, shift]"
    )
    knots: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="a monotone map's knots per part: {old, new: [x, y]}"
    )
    support_r1: dict[str, float] = Field(default_factory=dict)


class OrderChoice(BaseModel):
    """One order in which items are re-embedded, scored on support: mean R@1 of both
    directions over the fractions strictly between 0 and 1; an informed order is ``kept`` (its
    curves reported) only when it beats the random order there."""

    model_config = ConfigDict(extra="forbid")

    support_r1: float
    kept: bool


class BackfillCurves(BaseModel):
    """Partial-backfill curves of one method: recall against the share of the gallery
    re-embedded with NEW, per evaluation split and order (``curves[split][order]``, points by
    ascending fraction), with the calibration and the orders chosen on ``support``. The OLD
    part is searched with the method's queries, the NEW part with NEW's; a fraction 0 is the
    method's own method→old (old→old for ``old``), 1 is new→new."""

    model_config = ConfigDict(extra="forbid")

    fractions: list[float] = Field(min_length=1)
    seed: int = Field(description="seed of the random order")
    support: str
    calibration: dict[str, CalibrationChoice]
    orders: dict[str, OrderChoice]
    curves: dict[str, dict[str, list[BackfillPoint]]]

    @model_validator(mode="after")
    def _consistent(self) -> BackfillCurves:
        kept = {name for name, order in self.orders.items() if order.kept}
        for split, by_order in self.curves.items():
            if set(by_order) != kept:
                raise ValueError(
                    f"backfill curves of split {split!r} are for orders {sorted(by_order)}, "
                    f"the kept orders are {sorted(kept)}"
                )
            for order, points in by_order.items():
                if [p.fraction for p in points] != self.fractions:
                    raise ValueError(
                        f"backfill curve {split}/{order} must have one point per fraction "
                        f"{self.fractions}"
                    )
        return self
