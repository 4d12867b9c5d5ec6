"""The upgrade's cost model: estimated device-hours and wall time of a full backfill, of XBT,
and of a partial backfill at each fraction, for a gallery of N items.

Everything is linear in what was measured: a backfill embeds its items with NEW at NEW's
measured throughput (rows per device-second, from the embedding cache entries a run used:
``RunResult.throughputs``), spread over ``devices`` devices; XBT costs its measured training
time (stage 1 and stage 2, ``Cost.training_time_s``) plus embedding its training texts (the
stage-1 corpus with OLD and NEW, the training captions' anchors with NEW), whatever N is. A
user's hardware replaces any measured number through a small TOML file (:class:`Hardware`).
The numbers are estimates: they extrapolate a throughput measured on the run's machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xbt_bench.errors import ConfigError, NotFoundError, validation_message
from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW
from xbt_bench.results import ResultSet, RunResult

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
ESTIMATE_NOTE = (
    "Estimate: linear in throughputs measured by this suite on the run's device (or entered "
    "with --hardware); real pipelines add I/O, scheduling and failures."
)


class Hardware(BaseModel):
    """Throughputs a user enters for their hardware (a TOML file); each replaces the measured
    value, unset ones keep it.

    .. code-block:: toml

        device = "8x A100"          # a label for the table
        devices = 8                 # devices that embed the gallery in parallel
        new_image_per_s = 2400      # images NEW embeds per second on one device
        new_text_per_s = 30000      # texts NEW embeds per second on one device
        old_text_per_s = 50000      # texts OLD embeds per second on one device
        xbt_training_hours = 1.5    # device-hours of XBT's training (stages 1 and 2)
    """

    model_config = ConfigDict(extra="forbid")

    device: str | None = None
    devices: int = Field(1, ge=1)
    new_image_per_s: float | None = Field(None, gt=0)
    new_text_per_s: float | None = Field(None, gt=0)
    old_text_per_s: float | None = Field(None, gt=0)
    xbt_training_hours: float | None = Field(None, ge=0)

    @classmethod
    def from_toml(cls, path: str | Path) -> Hardware:
        """Read a hardware file; ConfigError naming the file and the bad key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(f"hardware file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"hardware file {path} is not valid TOML: {error}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            where, message, _ = validation_message(error)
            known = ", ".join(cls.model_fields)
            raise ConfigError(
                f"hardware file {path}: {where}: {message} (keys: {known})"
            ) from None


@dataclass(frozen=True)
class CostInputs:
    """What the estimate is computed from, each number with where it came from (``sources``)."""

    device: str
    devices: int
    new_item_per_s: float  # NEW's throughput on the gallery's side (images or texts)
    new_text_per_s: float
    old_text_per_s: float
    xbt_training_s: float  # device-seconds of XBT's training
    xbt_texts_old: int  # texts XBT embeds with OLD (the stage-1 corpus)
    xbt_texts_new: int  # texts XBT embeds with NEW (the corpus and the captions' anchors)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """One way to upgrade and what it costs: NEW embeddings computed, device-hours, wall
    hours, and (when results have them) the R@1 it gives, T2I/I2T."""

    plan: str
    embedded: int
    device_hours: float
    wall_hours: float
    recall: str = ""


def estimate(
    inputs: CostInputs,
    gallery_size: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    recalls: dict[str, str] | None = None,
) -> list[Plan]:
    """The cost of a full backfill of ``gallery_size`` items, of XBT, and of a partial
    backfill at each of ``fractions``: device-hours = items / throughput (the backfill), or
    training time + its texts / throughput (XBT); wall hours = device-hours / devices for a
    backfill (embedding splits across devices), device-hours for XBT (one device).
    ``recalls[plan]`` adds what each plan gives."""
    if gallery_size < 1:
        raise ConfigError(f"--gallery-size must be at least 1, got {gallery_size}")
    recalls = recalls or {}
    backfill_h = gallery_size / inputs.new_item_per_s / 3600
    xbt_s = (
        inputs.xbt_training_s
        + inputs.xbt_texts_old / inputs.old_text_per_s
        + inputs.xbt_texts_new / inputs.new_text_per_s
    )
    plans = [
        Plan("full backfill", gallery_size, backfill_h, backfill_h / inputs.devices,
             recalls.get("full backfill", "")),  # fmt: skip
        Plan("xbt (nothing re-embedded)", inputs.xbt_texts_new, xbt_s / 3600, xbt_s / 3600,
             recalls.get("xbt", "")),  # fmt: skip
    ]
    for fraction in fractions:
        items = int(round(fraction * gallery_size))
        hours = items / inputs.new_item_per_s / 3600
        name = f"partial backfill {100 * fraction:g}%"
        plans.append(Plan(name, items, hours, hours / inputs.devices, recalls.get(name, "")))
    return plans


def plans_frame(plans: Sequence[Plan], inputs: CostInputs) -> pd.DataFrame:
    """The plans as a table with human units."""
    rows = []
    for plan in plans:
        row = {
            "plan": plan.plan,
            "NEW embeddings": f"{plan.embedded:,}",
            f"device-hours ({inputs.device})": _hours(plan.device_hours),
            f"wall time ({inputs.devices} device{'s' * (inputs.devices > 1)})": _duration(
                plan.wall_hours
            ),
        }
        if any(p.recall for p in plans):
            row["R@1 T2I/I2T (test)"] = plan.recall or "–"
        rows.append(row)
    return pd.DataFrame(rows)


def _hours(hours: float) -> str:
    if hours >= 100:
        return f"{hours:,.0f}"
    return f"{hours:.3g}" if hours >= 0.001 else f"{hours:.1e}"


def _duration(hours: float) -> str:
    seconds = hours * 3600
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _pair_results(results: Sequence[RunResult], pair: str) -> list[RunResult]:
    mine = [r for r in results if r.pair == pair and r.approximate_index is None]
    if not mine:
        pairs = sorted({r.pair for r in results})
        raise NotFoundError(
            f"no results for pair {pair!r} (results are for {', '.join(pairs) or 'no pair'}); "
            f"run `xbt-bench run --pair {pair}` first"
        )
    return sorted(mine, key=lambda r: r.date, reverse=True)


def cost_inputs(
    results: Sequence[RunResult],
    pair: str,
    gallery_side: str = "image",
    hardware: Hardware | None = None,
    hardware_label: str = "--hardware",
) -> CostInputs:
    """The estimate's inputs for ``pair``: throughputs measured in its newest results (NEW on
    ``gallery_side`` and on text, OLD on text) and XBT's training time and texts from its
    ``xbt`` result, each replaced by ``hardware`` where it gives one. NotFoundError naming what
    is missing and how to provide it."""
    hardware = hardware or Hardware()
    mine = _pair_results(results, pair)
    sources: dict[str, str] = {}

    def measured(model: str, side: str, entered: float | None, key: str) -> tuple[float, str]:
        if entered is not None:
            sources[key] = f"entered ({hardware_label})"
            return entered, hardware.device or "your hardware"
        for result in mine:
            for t in result.throughputs:
                if (t.model, t.side) == (model, side):
                    sources[key] = (
                        f"measured: {t.rows:,} rows in {t.device_seconds:.1f} device-s on "
                        f"{t.device} ({result.method} run of {result.date:%Y-%m-%d})"
                    )
                    return t.rows_per_s, t.device
        raise NotFoundError(
            f"no measured {model.upper()} {side} throughput in the results of {pair!r}; rerun "
            f"`xbt-bench run --pair {pair}` (results record it) or give {key} in a --hardware "
            "TOML file"
        )

    entered = hardware.new_image_per_s if gallery_side == "image" else hardware.new_text_per_s
    item_rate, device = measured("new", gallery_side, entered, f"new_{gallery_side}_per_s")
    new_text, _ = measured("new", "text", hardware.new_text_per_s, "new_text_per_s")
    old_text, _ = measured("old", "text", hardware.old_text_per_s, "old_text_per_s")
    xbt = next((r for r in mine if r.method == "xbt"), None)
    if xbt is None:
        raise NotFoundError(
            f"no xbt result for pair {pair!r}; run `xbt-bench run --pair {pair} --method xbt` "
            "(its result records the training time) first"
        )
    if hardware.xbt_training_hours is not None:
        training_s = 3600 * hardware.xbt_training_hours
        sources["xbt_training"] = f"entered ({hardware_label})"
    else:
        training_s = xbt.cost.training_time_s
        sources["xbt_training"] = (
            f"measured: {training_s:.1f} s of training steps on {xbt.cost.device} "
            f"(stage 1 + stage 2, xbt run of {xbt.date:%Y-%m-%d})"
        )
    corpus = int(xbt.info.get("stage1", {}).get("corpus_texts", 0))
    anchors = int(xbt.info.get("stage2", {}).get("pair_captions", 0))
    return CostInputs(
        device=hardware.device or device,
        devices=hardware.devices,
        new_item_per_s=item_rate,
        new_text_per_s=new_text,
        old_text_per_s=old_text,
        xbt_training_s=training_s,
        xbt_texts_old=corpus,
        xbt_texts_new=corpus + anchors,
        sources=sources,
    )


def _r1(metrics: dict[str, float]) -> str:
    return f"{metrics['t2i_r1']:.1f}/{metrics['i2t_r1']:.1f}"


def plan_recalls(found: ResultSet, pair: str, fractions: Sequence[float]) -> dict[str, str]:
    """What each plan gives on the pair's primary split, from its result files: new→new for the
    full backfill, xbt's method→old, and at each fraction the random-order backfill curves of
    ``old`` (OLD's queries on the OLD part) and ``xbt``."""
    mine = _pair_results(found.runs, pair)
    out: dict[str, str] = {}
    first = mine[0]
    out["full backfill"] = _r1(first.metrics[NEW_NEW])
    by_method = {r.method: r for r in mine}
    if "xbt" in by_method and METHOD_OLD in by_method["xbt"].metrics:
        out["xbt"] = _r1(by_method["xbt"].metrics[METHOD_OLD])
    curves = {b.method: b.backfill for b in found.backfills if b.pair == pair}
    for fraction in fractions:
        parts = []
        for method in ("old", "xbt"):
            backfill = curves.get(method)
            if backfill is None or fraction not in backfill.fractions:
                continue
            points = backfill.curves.get(first.split, {}).get("random", [])
            point = next((p for p in points if p.fraction == fraction), None)
            if point is not None:
                parts.append(f"{_r1(point.metrics)} ({method} queries)")
        if parts:
            out[f"partial backfill {100 * fraction:g}%"] = "; ".join(parts)
    return out


# --- honest inputs (issue 25): no smoke run's numbers, and each rate's doubts said -------------


def full_result_set(found: ResultSet, pair: str, allow_quick: bool = False) -> ResultSet:
    """``found`` without --quick runs (and their backfill curves), what ``cost`` estimates
    from: a smoke run's training time and throughputs are not a method's cost. ConfigError when
    ``pair``'s results are all quick, or its ``xbt`` result is, unless ``allow_quick``."""
    if allow_quick:
        return found
    mine = [r for r in found.runs if r.pair == pair and r.approximate_index is None]
    quick = [r for r in mine if r.quick]
    quick_xbt = any(r.method == "xbt" for r in quick)
    full_xbt = any(r.method == "xbt" and not r.quick for r in mine)
    if quick and (len(quick) == len(mine) or (quick_xbt and not full_xbt)):
        steps = next((r.config.get("steps") for r in quick if r.method == "xbt"), None)
        what = f"xbt's {steps}-step training" if steps else "their training"
        raise ConfigError(
            f"the results of pair {pair!r} in {found.root} are --quick runs: {what} and their "
            "throughputs are a smoke run's, not a cost; rerun `xbt-bench run --pair "
            f"{pair}` without --quick, or pass --allow-quick to estimate from them anyway"
        )
    kept = [(r, p) for r, p in zip(found.runs, found.run_files, strict=True) if not r.quick]
    return replace(
        found,
        runs=[r for r, _ in kept],
        run_files=[p for _, p in kept],
        backfills=[b for b in found.backfills if not b.quick],
        sweeps=[s for s in found.sweeps if not s.quick],
    )


# A measured rate this many times above or below the median of the others is flagged.
FAR_FACTOR = 2.0


def throughput_doubts(results: Sequence[RunResult], pair: str) -> dict[str, str]:
    """For each rate ``cost`` takes from ``pair``'s newest result that measured it, a note
    when it is doubtful: measured while other processes kept the machine busy (the share of the
    CPUs they used, recorded in the embedding cache's manifests), or more than
    :data:`FAR_FACTOR` times away from the median of the same rate in the other results here;
    keyed like :attr:`CostInputs.sources`."""
    mine = _pair_results(results, pair)
    doubts: dict[str, str] = {}
    for model, side in (("new", "image"), ("new", "text"), ("old", "text")):
        found = [
            (result, t)
            for result in mine
            for t in result.throughputs
            if (t.model, t.side) == (model, side)
        ]
        if not found:
            continue
        result, chosen = found[0]
        notes = []
        if chosen.busy:
            notes.append(
                f"measured while other processes used {100 * (chosen.other_cpu_share or 0):.0f}% "
                "of the CPUs"
            )
        others = [t.rows_per_s for r, t in found[1:] if t.device == chosen.device]
        if others:
            median = float(pd.Series(others).median())
            ratio = chosen.rows_per_s / median if median > 0 else 1.0
            if not 1 / FAR_FACTOR <= ratio <= FAR_FACTOR:
                notes.append(
                    f"{chosen.rows_per_s:,.0f} rows/s is {max(ratio, 1 / ratio):.1f}x "
                    f"{'above' if ratio > 1 else 'below'} the median of {len(others)} other "
                    f"measurement(s) here ({median:,.0f} rows/s)"
                )
        if notes:
            doubts[f"{model}_{side}_per_s"] = (
                f"DOUBTFUL ({result.method} run of {result.date:%Y-%m-%d %H:%M}): "
                + "; ".join(notes)
                + "; rerun on a quiet machine or give it in --hardware"
            )
    return doubts
