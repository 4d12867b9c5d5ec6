"""One decision per pair: every way of upgrading (:mod:`xbt_bench.report.cost`) with the recall
it gives in each direction served and its whole bill, ranked by one stated rule
(:data:`RANK_RULE`). ``xbt-bench decide`` prints the card; the published page shows it with a
Pareto plot of recall against total cost over a horizon the reader picks.

Recall is R@1 on the pair's primary split, from the result files: the full backfill's is
new→new, a backfill-free method's its method→old, a partial backfill's the point of its
random-order curve at that share. The first two carry 95% bootstrap intervals; a curve point
carries none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from xbt_bench.report.cost import (
    QUERY_SIDE,
    Bill,
    Figure,
    Profile,
    Scale,
    Way,
    bill,
    bytes_text,
    hours_text,
    money_text,
    ms_text,
    pair_gallery,
    pair_results,
    upgrade_ways,
)
from xbt_bench.results import ResultSet

HELD_95, HELD, NOT_HELD = "✓*", "✓", "✗"
TIER_REASON = {
    0: "beats OLD's R@1 in every direction served with 95% confidence",
    1: "beats OLD's R@1 on the mean in every direction served, not with 95% confidence",
    2: "does not beat OLD's R@1 in every direction served",
}
RANK_RULE = (
    "Ranking rule: first the ways that beat today's system (OLD's queries on OLD's gallery, "
    "old→old) at R@1 in every direction served with 95% confidence (✓*: the paired bootstrap "
    "interval of the margin lies above 0; for the full backfill, new→new's interval lies "
    "wholly above old→old's), then those that beat it on the mean only (✓; a partial "
    "backfill's curve point has no interval, so ✓ is its best), then the rest (✗); within each "
    "group, the lowest total cost over the horizon first (money when the profile has a price, "
    "else device-hours: the one-off work, plus every query served for the horizon), ties to "
    "the higher mean R@1. A way the profile cannot price goes last in its group."
)


@dataclass(frozen=True)
class Recall:
    """R@1 of one direction: the way's value, its 95% interval (None for a curve point), OLD's
    value (old→old) and the criterion's mark."""

    value: float
    interval: tuple[float, float] | None
    old: float
    mark: str

    def text(self) -> str:
        """``value [lo–hi] mark``."""
        if self.interval is None:
            return f"{self.value:.1f} {self.mark}"
        low, high = self.interval
        return f"{self.value:.1f} [{low:.1f}–{high:.1f}] {self.mark}"


@dataclass(frozen=True)
class Option:
    """One way with its bill, its recall per direction served, its group and total cost."""

    bill: Bill
    recall: dict[str, Recall]
    tier: int
    total: Figure  # device-hours over the horizon
    cost: float  # what ranks it: money or device-hours over the horizon (inf: unknown)
    reason: str = ""

    @property
    def mean_r1(self) -> float:
        """Mean R@1 over the directions served."""
        return sum(r.value for r in self.recall.values()) / len(self.recall)


def _interval(intervals: dict | None, setting: str, key: str) -> tuple[float, float] | None:
    values = (intervals or {}).get(setting, {}).get(key)
    return None if values is None else (float(values[0]), float(values[1]))


def way_recalls(
    found: ResultSet, pair: str, way: Way, directions: Sequence[str]
) -> dict[str, Recall] | None:
    """R@1 of ``way`` in each of ``directions`` on the pair's primary split (module docstring),
    with the criterion's mark; None when the results hold no recall for it."""
    mine = pair_results(found.runs, pair)
    anchor = mine.get("new") or max(mine.values(), key=lambda r: r.date)
    split = anchor.split
    references = anchor.splits[split]
    out = {}
    for direction in directions:
        key = f"{direction}_r1"
        old = references.metrics[OLD_OLD][key]
        if way.kind == "full backfill":
            value = references.metrics[NEW_NEW][key]
            interval = _interval(references.intervals, NEW_NEW, key)
            old_interval = _interval(references.intervals, OLD_OLD, key)
            confident = interval is not None and old_interval is not None
            confident = confident and interval[0] > old_interval[1]  # type: ignore[index]
            mark = HELD_95 if confident else HELD if value > old else NOT_HELD
        elif way.kind == "backfill-free":
            result = mine[way.method]
            if split not in result.splits:
                return None
            data = result.splits[split]
            value = data.metrics[METHOD_OLD][key]
            interval = _interval(data.intervals, METHOD_OLD, key)
            compat = data.compatibility
            held = compat is not None and compat.held[key]
            confident = held and compat is not None and bool((compat.held_95 or {}).get(key))
            mark = HELD_95 if confident else HELD if held else NOT_HELD
        else:
            point = _curve_point(found, pair, way, split)
            if point is None:
                return None
            value, interval = point[key], None
            mark = HELD if value > old else NOT_HELD
        out[direction] = Recall(value, interval, old, mark)
    return out


def _curve_point(found: ResultSet, pair: str, way: Way, split: str) -> dict[str, float] | None:
    for backfill in found.backfills:
        if (backfill.pair, backfill.method) != (pair, way.method):
            continue
        points = backfill.backfill.curves.get(split, {}).get("random", [])
        for point in points:
            if math.isclose(point.fraction, way.fraction):
                return point.metrics
    return None


def _tier(recall: dict[str, Recall]) -> int:
    marks = {r.mark for r in recall.values()}
    return 2 if NOT_HELD in marks else 1 if HELD in marks else 0


def decide(
    found: ResultSet,
    pair: str,
    scale: Scale,
    profile: Profile,
    fractions: Sequence[float] | None = None,
) -> list[Option]:
    """Every way of upgrading ``pair`` at ``scale`` on ``profile``, with its recall, ranked
    by :data:`RANK_RULE`, each with the reason of its place."""
    gallery = pair_gallery(found.runs, pair)
    options = []
    for way in upgrade_ways(found, pair, fractions):
        recall = way_recalls(found, pair, way, scale.directions)
        if recall is None:
            continue
        item = bill(way, scale, profile, gallery)
        hours = item.total_hours(scale.horizon_days)
        cost = hours.value if hours.value is not None else math.inf
        if profile.price is not None:
            cost *= profile.price
        options.append(Option(item, recall, _tier(recall), hours, cost))
    options.sort(key=lambda o: (o.tier, o.cost, -o.mean_r1, o.bill.way.name))
    return [_with_reason(option, options, scale, profile) for option in options]


def _with_reason(option: Option, ranked: list[Option], scale: Scale, profile: Profile) -> Option:
    group = [o for o in ranked if o.tier == option.tier]
    lost = [
        f"{d.upper()} ({r.value - r.old:+.1f} points)"
        for d, r in option.recall.items()
        if r.mark == NOT_HELD
    ]
    why = TIER_REASON[option.tier]
    if lost:
        why = f"does not beat OLD's R@1 in {' and '.join(lost)}"
    elif option.tier == 1 and option.bill.way.kind == "partial backfill":
        why += " (a curve point has no interval)"
    unit = profile.currency if profile.price is not None else "device-h"
    days = f"{scale.horizon_days:g} days"
    if math.isinf(option.cost):
        where = f"cost unknown ({hours_text(option.total)})"
    elif option is group[0]:
        where = f"the cheapest of its group over {days}"
    else:
        first = group[0]
        where = (
            f"costs {_amount(option.cost, unit)} over {days}, "
            f"{_ratio(option.cost, first.cost)} the group's cheapest ({first.bill.way.name})"
        )
    return Option(option.bill, option.recall, option.tier, option.total, option.cost,
                  f"{why}; {where}")  # fmt: skip


def _amount(cost: float, unit: str) -> str:
    return f"{cost:,.3g} {unit}" if cost < 1000 else f"{cost:,.0f} {unit}"


def _ratio(cost: float, base: float) -> str:
    if base <= 0:
        return f"+{cost - base:,.3g} over"
    return f"{cost / base:,.2f}×"


def card_frame(options: Sequence[Option], scale: Scale, profile: Profile) -> pd.DataFrame:
    """The decision card as a table: one row per way, in rank order."""
    rows = []
    for rank, option in enumerate(options, start=1):
        item = option.bill
        row = {"#": str(rank), "way": item.way.name}
        for direction, recall in option.recall.items():
            row[f"{direction.upper()} R@1 [95%]"] = recall.text()
        row["one-off device-h"] = hours_text(item.one_off_hours)
        if profile.price is not None:
            row[f"one-off {profile.currency}"] = money_text(item.one_off_hours, profile)
        row["added latency ms (" + "/".join(QUERY_SIDE[d] for d in scale.directions) + ")"] = (
            " / ".join(ms_text(item.added_ms[d], signed=True) for d in scale.directions)
        )
        per_day = f"{hours_text(item.query_hours_per_day)} ({_signed_hours(item)})"
        row["query device-h/day (Δ OLD)"] = per_day
        if profile.price is not None:
            row[f"query {profile.currency}/day"] = money_text(item.query_hours_per_day, profile)
        row["storage peak"] = bytes_text(item.storage_bytes)
        row["OLD kept"] = "yes" if item.old_at_query else "no"
        label = f"total {scale.horizon_days:g} d"
        row[label + (f" {profile.currency}" if profile.price is not None else " device-h")] = (
            money_text(option.total, profile) if profile.price is not None
            else hours_text(option.total)
        )  # fmt: skip
        row["why here"] = option.reason
        rows.append(row)
    return pd.DataFrame(rows)


def _signed_hours(item: Bill) -> str:
    added = item.added_query_hours_per_day
    if added.value is None:
        return "?"
    return ("+" if added.value >= 0 else "−") + hours_text(Figure(abs(added.value)))


def today_line(found: ResultSet, pair: str, scale: Scale) -> str:
    """Today's system, the reference every way is ranked against: OLD→OLD's R@1 per
    direction served."""
    mine = pair_results(found.runs, pair)
    anchor = mine.get("new") or max(mine.values(), key=lambda r: r.date)
    data = anchor.splits[anchor.split]
    parts = []
    for direction in scale.directions:
        key = f"{direction}_r1"
        interval = _interval(data.intervals, OLD_OLD, key)
        shown = "" if interval is None else f" [{interval[0]:.1f}–{interval[1]:.1f}]"
        parts.append(f"{direction.upper()} {data.metrics[OLD_OLD][key]:.1f}{shown}")
    return (
        f"Today (old→old, split {anchor.split}): R@1 " + ", ".join(parts)
        + " — the recall every way is ranked against."  # fmt: skip
    )


def recommendation(options: Sequence[Option]) -> str:
    """One sentence: the first way and why."""
    if not options:
        return "No way of upgrading could be priced from these results."
    first = options[0]
    return f"Recommended: {first.bill.way.name} — {first.reason}."


def pareto_points(options: Sequence[Option], profile: Profile) -> list[dict]:
    """What the page's Pareto plot draws: per way its name, group, one-off cost and cost per
    day of queries (money or device-hours), and R@1 per direction."""
    factor = profile.price if profile.price is not None else 1.0
    points = []
    for option in options:
        item = option.bill
        one_off, per_day = item.one_off_hours.value, item.query_hours_per_day.value
        if one_off is None or per_day is None:
            continue
        points.append(
            {
                "way": item.way.name,
                "tier": option.tier,
                "one_off": one_off * factor,
                "per_day": per_day * factor,
                **{f"{d}_r1": r.value for d, r in option.recall.items()},
            }
        )
    return points


def card_lines(options: Sequence[Option], scale: Scale, profile: Profile, top: int) -> list[str]:
    """The decision card as text: each way in rank order (the first ``top``; 0: all) with its
    recall, one-off cost, query time, storage, whether OLD keeps running, and why it ranks
    there."""
    shown = options if top <= 0 else options[:top]
    lines = []
    for rank, option in enumerate(shown, start=1):
        item = option.bill
        recall = "  ".join(f"{d.upper()} {r.text()}" for d, r in option.recall.items())
        one_off = f"one-off {hours_text(item.one_off_hours)} device-h"
        if profile.price is not None:
            one_off += f" ({money_text(item.one_off_hours, profile)})"
        latency = " / ".join(
            f"{ms_text(item.added_ms[d], signed=True)} ms per {QUERY_SIDE[d]} query"
            for d in scale.directions
        )
        queries = f"queries {hours_text(item.query_hours_per_day)} device-h/day"
        queries += f" ({_signed_hours(item)} vs OLD's own)"
        if profile.price is not None:
            queries += f", {money_text(item.query_hours_per_day, profile)}/day"
        total_cost = (
            money_text(option.total, profile) if profile.price is not None
            else f"{hours_text(option.total)} device-h"
        )  # fmt: skip
        lines += [
            f"{rank:>2}. {item.way.name}: {recall}",
            f"    {one_off} · added latency {latency} · {queries}",
            f"    storage {bytes_text(item.storage_bytes)} at peak, "
            f"{bytes_text(item.final_bytes)} after · OLD kept running: "
            f"{'yes' if item.old_at_query else 'no'} · total over {scale.horizon_days:g} days "
            f"{total_cost}",
            f"    why #{rank}: {option.reason}",
        ]
    if len(shown) < len(options):
        lines.append(f"... {len(options) - len(shown)} more ways (--top 0 shows every one)")
    return lines
