"""Scoring a partial backfill: a method's curves of recall against the share of the gallery
re-embedded with NEW (:mod:`xbt_bench.eval.backfill` for the merge, the calibration and the
orders). The calibration and the orders are chosen on the support split, then applied
unchanged to every evaluation split; a method with several fits (seeds) gets the mean of its
fits' curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..eval.backfill import (
    BackfillPlan,
    BackfillSet,
    MonotoneCalibration,
    ScoreCalibration,
    plan_backfill,
)
from .splits import mean_metrics
from .types import BackfillCurves, BackfillPoint, CalibrationChoice, OrderChoice


def backfill_curves(
    support: BackfillSet,
    splits: Mapping[str, Sequence[BackfillSet]],
    fractions: Sequence[float],
    seed: int,
    support_name: str,
) -> BackfillCurves:
    """The curves of every split of ``splits`` (one :class:`BackfillSet` per fit of the
    method: the mean of their points) at ``fractions`` (sorted, unique), in the random order
    (``seed``) and every informed order that beat it on ``support``, with the calibration
    chosen on ``support`` (named ``support_name`` in the result)."""
    fractions = sorted(set(fractions))
    plan = plan_backfill(support, fractions, seed)
    kept = [name for name, keep in plan.kept.items() if keep]
    curves: dict[str, dict[str, list[BackfillPoint]]] = {}
    for split, sets in splits.items():
        curves[split] = {}
        for order in kept:
            by_fit = [
                one.curve(plan.order(order, one, seed), fractions, plan.calibration)
                for one in sets
            ]
            curves[split][order] = [
                BackfillPoint(
                    fraction=fraction, metrics=mean_metrics([c[i].metrics for c in by_fit])
                )
                for i, fraction in enumerate(fractions)
            ]
    return BackfillCurves(
        fractions=fractions,
        seed=seed,
        support=support_name,
        calibration=calibration_choices(plan),
        orders={
            name: OrderChoice(support_r1=plan.order_r1[name], kept=plan.kept[name])
            for name in plan.order_r1
        },
        curves=curves,
    )


def calibration_choices(plan: BackfillPlan) -> dict[str, CalibrationChoice]:
    """What ``plan`` chose per direction, with the fitted affine map, the chosen monotone map's
    knots and every candidate's support score."""
    out = {}
    for direction, kind in plan.chosen.items():
        chosen = plan.calibration[direction]
        affine = plan.fitted[direction]["affine"]
        out[direction] = CalibrationChoice(
            kind=kind,
            scale=chosen.scale if isinstance(chosen, ScoreCalibration) else 1.0,
            shift=chosen.shift if isinstance(chosen, ScoreCalibration) else 0.0,
            fitted=[affine.scale, affine.shift],
            knots=(
                {"old": list(map(list, chosen.old_knots)), "new": list(map(list, chosen.new_knots))}
                if isinstance(chosen, MonotoneCalibration)
                else {}
            ),
            support_r1=plan.calibration_r1[direction],
        )
    return out
