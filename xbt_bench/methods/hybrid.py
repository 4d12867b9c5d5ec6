"""``xbt-hybrid``: XBT's query interpolated with OLD's own query, for a system that still runs
OLD at query time (during a backfill, say).

The query is slerp(O(x), φ(x), α) with φ XBT's compatible encoder: α = 0 is OLD's own query
(old→old), α = 1 is XBT's. As ``slerp`` does for SLERP-BC, α is chosen per retrieval direction
on the ``support`` split by Recall@1, ties to the smaller α (:func:`choose_alphas`). XBT is
fitted exactly as the ``xbt`` method (its settings extend xbt's, and it trains under xbt's
name), so a run that has trained ``xbt`` reuses its checkpoints and its query embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from . import register_method
from .base import SIDES, FitContext, FittedMethod, Side, Which
from .closed_form import (
    ALPHA_REPORT,
    DIRECTIONS,
    SIDE_DIRECTION,
    AlphaSettings,
    alpha_report,
    choose_alphas,
    slerp,
)
from .stage2 import fit_stage2
from .xbt import XbtConfig


class HybridConfig(XbtConfig, AlphaSettings):
    """XBT's settings (as the ``xbt`` method's) plus how α is chosen on support."""


@register_method(
    "xbt-hybrid",
    settings=HybridConfig,
    kind="trained",
    trains="stages 1+2 (xbt's checkpoints)",
    old_at_query=True,
    training_needs="OLD embeddings of the pairs",
    notes="XBT's query SLERP'd with OLD's own query; α per direction on support",
    extends="xbt",
    report=ALPHA_REPORT,
    needs_models=True,
)
def fit_xbt_hybrid(ctx: FitContext, settings: HybridConfig) -> FittedMethod:
    """slerp(OLD query, XBT query, α) with α per direction chosen on support (module doc).
    Needs OLD at query time."""
    xbt_settings = XbtConfig(**{key: getattr(settings, key) for key in XbtConfig.model_fields})
    xbt = fit_stage2(ctx, "xbt", xbt_settings)  # xbt's name: the same checkpoint folders
    encoders = {"image": xbt.encode_images, "text": xbt.encode_texts}

    scores: dict[str, dict[str, float]] = {}
    if settings.alpha is None:
        old = {side: ctx.embed("old", ctx.support, side) for side in SIDES}
        ours = {side: encoders[side](ctx.support) for side in SIDES}
        alphas, scores = choose_alphas(
            old, ours, ctx.support.caption_image, settings.alpha_grid, settings.alpha_selection
        )
    else:
        alphas = {direction: float(settings.alpha) for direction in DIRECTIONS}

    def combine(side: Side, vectors: Mapping[Which, np.ndarray]) -> np.ndarray:
        ours = xbt.query.combine(side, {which: vectors[which] for which in xbt.query.encoders})
        return slerp(vectors["old"], ours, alphas[SIDE_DIRECTION[side]])

    return FittedMethod(
        name="xbt-hybrid",
        gallery="old",
        dim=xbt.dim,
        query=ctx.query_path({"old": ctx.old.get(), **xbt.query.encoders}, combine),
        cost=xbt.cost,
        report=alpha_report(alphas),
        info={
            **xbt.info,
            "alpha": alphas,
            "support_score_by_alpha": scores,
            "support": ctx.support.key,
        },
        export=replace(xbt.export, alpha={side: alphas[d] for d, side in DIRECTIONS.items()}),
    )
