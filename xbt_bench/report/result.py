"""Run results: one typed JSON file per (pair, dataset, method), the only input of the reports.

Layout: ``<results_dir>/<pair>/<dataset>/<method>.json``; a run with an approximate FAISS index
writes ``<method>.approx-<index>.json`` beside it, so it never replaces the exact one.

A result holds every evaluated split in ``splits`` (metrics per setting, flips, an optional
chain matrix); ``split`` names the primary split, whose ``metrics``, ``compatibility``,
``flips`` and ``chain_matrix`` are repeated at the top level of the JSON for readers that want
one number. ``compatibility`` is derived from ``metrics`` (never stored separately), so the two
cannot disagree.

A sweep over the number of image-text pairs (``recall vs n_pairs`` plot) is recorded in
``sweep``: one ``SweepPoint(n_pairs, metrics)`` per fit, ``metrics`` being that fit's
``method->old`` metrics on the primary split.

Partial-backfill curves (``xbt-bench backfill``) are recorded in ``backfill``
(:class:`Backfill`: per split and order, one ``BackfillPoint(fraction, metrics)`` per share of
the gallery re-embedded, with the calibration and orders chosen on support), and the embedding
throughputs the run measured in ``throughputs`` (the cost model's input). Both are optional, so
files written before them load unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from xbt_bench import __version__
from xbt_bench.atomic import write_json
from xbt_bench.errors import ConfigError, NotFoundError, validation_message
from xbt_bench.eval.compat import (
    METHOD_OLD,
    NEW_NEW,
    OLD_OLD,
    SETTINGS,
    average_compatibility,
    compatibility,
    gain_share,
)
from xbt_bench.eval.retrieval import METRIC_KEYS, RECALL_KEYS
from xbt_bench.methods.base import Cost

Setting = Literal["old->old", "new->new", "method->old"]
SETTING_PATTERN = re.compile(r"^[^\s>]+->[^\s>]+$")
# Keys a result file must carry (issue 6.2); derived keys are written but rebuilt on load.
REQUIRED_KEYS = (
    "pair",
    "old",
    "new",
    "method",
    "dataset",
    "split",
    "metrics",
    "compatibility",
    "cost",
    "config",
    "seed",
    "versions",
    "git_revision",
    "date",
)
DERIVED_KEYS = ("metrics", "compatibility", "flips", "chain_matrix")


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def collect_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a result depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    distributions = {
        "torch": ("torch",),
        "open_clip": ("open_clip_torch",),
        "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
        "numpy": ("numpy",),
    }
    for key, names in distributions.items():
        for name in names:
            try:
                versions[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    versions["xbt_bench"] = __version__
    return versions


def git_revision(path: Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), with ``+dirty``
    when tracked files under ``path`` changed (the code, not results written beside it); None
    outside a git repository or before the first commit."""
    where = str(path or Path(__file__).resolve().parents[1])

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        revision = git("rev-parse", "--verify", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")


def _check_metrics(metrics: Mapping[str, Mapping[str, float]]) -> None:
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
        _check_recalls(f"metrics[{setting!r}]", values)


# How far a stored rsum may be from the sum of its six stored recalls (hand-rounded files).
RSUM_TOLERANCE = 0.1


def _check_recalls(where: str, values: Mapping[str, float]) -> None:
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


class ChainMatrix(BaseModel):
    """A chain's compatibility matrices: ``matrices[metric][i][j]`` with query model i and
    gallery model j (i >= j; None above the diagonal), and average compatibility per metric."""

    model_config = ConfigDict(extra="forbid")

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

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "average_compatibility"}
        return data


class SplitResult(BaseModel):
    """One split's numbers: metrics per setting (``old->old``, ``new->new``, ``method->old``,
    or ``vI->vJ`` for chains; a trained method's ``method->old`` is the mean over its seeds),
    their 95% bootstrap intervals over the split's images, the paired intervals of the margins
    method->old − old->old, each seed's method->old metrics, R@1 flip rates (mean over seeds),
    and a chain's matrices."""

    model_config = ConfigDict(extra="forbid")

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

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in ("compatibility", "seed_std")}
        return data

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        _check_metrics(value)
        return value

    @field_validator("seed_metrics")
    @classmethod
    def _valid_seed_metrics(cls, value: list[dict[str, float]]) -> list[dict[str, float]]:
        for metrics in value:
            _check_metrics({METHOD_OLD: metrics})
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


class SweepPoint(BaseModel):
    """The method fitted on ``n_pairs`` image-text pairs: its method->old metrics."""

    model_config = ConfigDict(extra="forbid")

    n_pairs: int = Field(ge=0)
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        _check_metrics({METHOD_OLD: value})
        return value


class BackfillPoint(BaseModel):
    """Recall on a gallery whose share ``fraction`` of items holds NEW's embeddings."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(ge=0, le=1)
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        _check_metrics({"partial->mixed": value})
        return value


class CalibrationChoice(BaseModel):
    """How one direction's NEW-part scores were put on the OLD part's scale before the merge:
    ``affine`` (``scale * s + shift``, fitted on support) or ``none``, whichever had the higher
    R@1 on support (``support_r1``: mean over the backfill fractions strictly between 0 and 1,
    random order), ties to ``none``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "affine"]
    scale: float = 1.0
    shift: float = 0.0
    fitted: list[float] = Field(
        default_factory=list, description="the affine map fitted on support: [scale, shift]"
    )
    support_r1: dict[str, float] = Field(default_factory=dict)


class OrderChoice(BaseModel):
    """One order in which items are re-embedded, scored on support: mean R@1 of both
    directions over the fractions strictly between 0 and 1; an informed order is ``kept`` (its
    curves reported) only when it beats the random order there."""

    model_config = ConfigDict(extra="forbid")

    support_r1: float
    kept: bool


class Backfill(BaseModel):
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
    def _consistent(self) -> Backfill:
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


class EmbeddingThroughput(BaseModel):
    """How fast a model embedded on the run's machine: ``rows`` images or texts in
    ``device_seconds`` (summed over the cache entries the run used, from their manifests;
    seconds times the ranks that shared the work)."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["old", "new"]
    side: Literal["image", "text"]
    rows: int = Field(gt=0)
    device_seconds: float = Field(gt=0)
    device: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rows_per_s(self) -> float:
        """Rows embedded per device-second."""
        return self.rows / self.device_seconds

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "rows_per_s"}
        return data


def path_component(value: str) -> str:
    """``value`` as one safe path component: itself when it is one, else a readable slug plus a
    short hash of the whole value (``folder:/data/a/b`` -> ``folder_data_a_b-3f2a9c1d``), so two
    values never share a component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip(".") or "_"
    if safe == value:
        return safe
    return f"{safe[:60]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


class RunResult(BaseModel):
    """One (pair, dataset, method) run: metrics of every split and setting, compatibility,
    flips, cost, config, provenance. Reads and writes itself as JSON (atomic)."""

    model_config = ConfigDict(extra="forbid")

    pair: str = Field(min_length=1)
    old: str
    new: str
    method: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
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
    config: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    training_curves: dict[str, list[dict[str, float]]] = Field(
        default_factory=dict, description="per training stage, {step, loss, lr, ...} points"
    )
    sweep: list[SweepPoint] = Field(default_factory=list)
    backfill: Backfill | None = Field(
        None, description="partial-backfill curves (`xbt-bench backfill`); None when not run"
    )
    throughputs: list[EmbeddingThroughput] = Field(
        default_factory=list, description="OLD's and NEW's measured embedding throughput"
    )
    seed: int
    seeds: list[int] = Field(
        default_factory=list, description="every training seed a trained method ran with"
    )
    approximate_index: str | None = Field(
        None, description="FAISS factory string of an approximate index; None for exact search"
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="cached artifacts, by path relative to $XBT_BENCH_HOME",
    )
    fingerprints: dict[str, str] = Field(
        default_factory=dict,
        description="what the numbers were scored on: each model's identity (name and weights "
        "hash) and each evaluation split's data fingerprint",
    )
    versions: dict[str, str] = Field(default_factory=collect_versions)
    git_revision: str | None = Field(default_factory=git_revision)
    date: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

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

    @field_validator("config", "info", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        return _jsonable(value)

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

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, identity and headline numbers first."""
        data = self.model_dump(mode="json")
        first = ["pair", "old", "new", "method", "dataset", "split", "setting", *DERIVED_KEYS]
        return {**{k: data[k] for k in first}, **data}

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/<method>.json`` (``.approx-<index>.json`` for approximate search)."""
        name = path_component(self.method)
        if self.approximate_index is not None:
            name += f".approx-{path_component(self.approximate_index)}"
        return Path(path_component(self.pair)) / path_component(self.dataset) / f"{name}.json"

    def path_in(self, results_dir: str | Path) -> Path:
        """Where this result lives under ``results_dir``."""
        return Path(results_dir) / self.relative_path()

    def to_json(self, path: str | Path) -> Path:
        """Write the result atomically to ``path`` and return it."""
        write_json(path, self.to_dict())
        return Path(path)

    def save(self, results_dir: str | Path) -> Path:
        """Write the result atomically to its place under ``results_dir``."""
        return self.to_json(self.path_in(results_dir))

    @classmethod
    def from_json(cls, path: str | Path) -> RunResult:
        """Read a result file; ConfigError naming the file and the problem if it is malformed."""
        path = Path(path)
        fix = "rerun the run that wrote it, or delete it"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise NotFoundError(f"result file {path} does not exist") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"result file {path} is not valid JSON ({error}); {fix}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"result file {path} must hold a JSON object; {fix}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ConfigError(f"result file {path} lacks the keys {missing}; {fix}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            where, message, _ = validation_message(error)
            raise ConfigError(
                f"result file {path} is malformed at {where}: {message}; {fix}"
            ) from error


def result_files(results_dir: str | Path) -> list[Path]:
    """Every ``<pair>/<dataset>/<method>.json`` under ``results_dir`` (temp files skipped)."""
    root = Path(results_dir)
    return sorted(p for p in root.glob("*/*/*.json") if not p.name.startswith("."))


def load_results(results_dir: str | Path) -> list[RunResult]:
    """All results under ``results_dir``, checked to belong together (:func:`check_results`);
    NotFoundError when there are none, ConfigError naming the first malformed file."""
    root = Path(results_dir)
    hint = "run `xbt-bench run --pair NAME` first, or pass --results-dir"
    if not root.is_dir():
        raise NotFoundError(f"results folder {root} does not exist; {hint}")
    files = result_files(root)
    if not files:
        raise NotFoundError(f"no result files (<pair>/<dataset>/<method>.json) in {root}; {hint}")
    results = [RunResult.from_json(path) for path in files]
    check_results(results, files)
    return results


def check_results(results: Sequence[RunResult], files: Sequence[Path]) -> None:
    """ConfigError naming both files when two results would share a leaderboard table without
    belonging together: the same method twice on one (pair, dataset, split, search), or two
    results of one table scored against different references (old→old or new→new numbers, or
    the models and data they were scored on). A table ranks only results of one run's world."""
    seen: dict[tuple, tuple[RunResult, Path]] = {}
    references: dict[tuple, tuple[RunResult, Path]] = {}
    for result, path in zip(results, files, strict=True):
        for split, data in result.splits.items():
            table = (result.pair, result.dataset, split, result.approximate_index)
            where = f"{result.pair} · {result.dataset} · split {split}"
            key = (*table, result.method)
            if key in seen:
                raise ConfigError(
                    f"{seen[key][1]} and {path} are both {result.method!r} on {where}; a "
                    "leaderboard ranks one result per method: delete one of them (or keep it in "
                    "another results folder)"
                )
            seen[key] = (result, path)
            if table not in references:
                references[table] = (result, path)
                continue
            first, first_path = references[table]
            theirs = first.splits[split]
            differs = [s for s in (OLD_OLD, NEW_NEW) if data.metrics[s] != theirs.metrics[s]]
            differs += [
                f"{name} fingerprint"
                for name in ("old", "new", f"data:{split}")
                if name in result.fingerprints
                and name in first.fingerprints
                and result.fingerprints[name] != first.fingerprints[name]
            ]
            if differs:
                raise ConfigError(
                    f"{path} and {first_path} are on the same table ({where}) but were scored "
                    f"against different references ({', '.join(differs)} differ): their "
                    "margins are not comparable. Rerun one of them, or keep them in separate "
                    "results folders"
                )
