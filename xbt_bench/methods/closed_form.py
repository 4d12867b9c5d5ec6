"""Closed-form methods: ``procrustes`` (an orthogonal map fitted on text pairs) and ``slerp``
(SLERP-BC: spherical interpolation between the OLD query and the Procrustes-mapped NEW query).

``slerp`` runs the protocol of its authors (Ricci, Biondi and Pernici, NeurIPS 2026; their code:
github.com/miccunifi/SLERP_backward_compatibility, ``main.py`` and ``slerp_bc/method.py``):

- the orthogonal map is fitted on a *support modality*: ``text`` (their main table; here the
  pair's text corpus, as ``procrustes``), ``image`` (the training pairs' images) or ``both``;
- the map is the **zero-padded** one of their code (``map = "zero-padded"``, the default): OLD's
  space is zero-padded to max(d_old, d_new), so a mapped NEW query keeps its unit norm and its
  components beyond d_old when it is interpolated; ``map = "rectangular"`` (their paper's
  appendix) keeps only the d_old columns and renormalises. The two rank identically at α = 1
  and differ in between when d_new > d_old;
- α is chosen **per retrieval direction** (image→text from the image queries, text→image from
  the caption queries) on the ``support`` split by Recall@1 over ``alpha_grid``, ties to the
  smaller α. ``alpha_selection = "rsum"`` is the single α chosen by rsum that xbt-bench v0.1
  used (a variant); a fixed ``alpha`` skips the selection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import Field

from ..linalg import procrustes_map
from . import register_method
from .base import SIDES, Cost, FitContext, FittedMethod, Side, Which, matrix_spec
from .settings import MethodConfig

DIRECTIONS = {"i2t": "image", "t2i": "text"}  # retrieval direction -> the side of its queries
SIDE_DIRECTION = {side: direction for direction, side in DIRECTIONS.items()}
# What slerp and xbt-hybrid show on the leaderboard: the interpolation weight of each direction.
ALPHA_REPORT = {"alpha_i2t": "α I2T", "alpha_t2i": "α T2I"}


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def slerp(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Row-wise spherical interpolation from ``a`` (alpha 0) to ``b`` (alpha 1), unit rows out."""
    a, b = _normalize(np.asarray(a, np.float64)), _normalize(np.asarray(b, np.float64))
    cos = np.clip((a * b).sum(axis=1, keepdims=True), -1.0, 1.0)
    theta = np.arccos(cos)
    sin = np.sin(theta)
    close = sin < 1e-6  # nearly parallel: the linear blend is exact enough
    safe = np.where(close, 1.0, sin)
    w_a = np.where(close, 1.0 - alpha, np.sin((1.0 - alpha) * theta) / safe)
    w_b = np.where(close, alpha, np.sin(alpha * theta) / safe)
    return _normalize(w_a * a + w_b * b).astype(np.float32)


@register_method(
    "procrustes",
    kind="closed form",
    trains="closed form",
    training_needs="text embeddings",
    notes="orthogonal map fitted on text pairs; smaller side zero-padded",
)
def fit_procrustes(ctx: FitContext, settings: MethodConfig) -> FittedMethod:
    """NEW queries mapped by the text-fitted orthogonal map into OLD's space (no OLD at query)."""
    weight = ctx.text_procrustes()
    d_new, d_old = weight.shape

    return FittedMethod(
        name="procrustes",
        gallery="old",
        dim=d_old,
        query=ctx.query_path(
            {"new": ctx.new.get()}, lambda side, vectors: _normalize(vectors["new"] @ weight)
        ),
        info={"old_dim": d_old, "new_dim": d_new, "corpus_texts": len(ctx.text_corpus.texts)},
        export=matrix_spec(weight),
    )


class AlphaSettings(MethodConfig):
    """How the interpolation weight α between OLD's query (α = 0) and the other one (α = 1) is
    chosen on support (slerp, xbt-hybrid)."""

    alpha_selection: Literal["per-direction", "rsum"] = Field(
        "per-direction",
        description="per-direction: one α per retrieval direction by R@1 on support (the "
        "authors' protocol); rsum: one α for both directions by rsum (a variant)",
    )
    alpha: float | None = Field(
        None, ge=0, le=1, description="fixed weight for both directions; None chooses on support"
    )
    alpha_grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        min_length=1,
        description="candidate weights; ties go to the smaller α",
    )


class SlerpConfig(AlphaSettings):
    """SLERP between the OLD query (α = 0) and the Procrustes-mapped NEW query (α = 1)."""

    support_modality: Literal["text", "image", "both"] = Field(
        "text",
        description="what the map is fitted on: the text corpus, the training pairs' images, "
        "or both",
    )
    map: Literal["zero-padded", "rectangular"] = Field(
        "zero-padded",
        description="zero-padded (the authors' code: mapped queries keep their extra dimensions "
        "while interpolated) or rectangular (their appendix: only OLD's dimensions)",
    )


def _fit_map(ctx: FitContext, settings: SlerpConfig) -> np.ndarray:
    """The NEW→OLD map fitted on the support modality (zero-padded or rectangular)."""
    padded = settings.map == "zero-padded"
    if settings.support_modality == "text":
        return ctx.text_procrustes(padded=padded)
    new, old = (
        [ctx.embed("new", ctx.train_pairs, "image")],
        [ctx.embed("old", ctx.train_pairs, "image")],
    )
    if settings.support_modality == "both":
        new.append(ctx.embed_corpus("new"))
        old.append(ctx.embed_corpus("old"))
    return procrustes_map(np.concatenate(new), np.concatenate(old), padded=padded)


def choose_alphas(
    old: dict[Side, np.ndarray],
    mapped: dict[Side, np.ndarray],
    caption_image: np.ndarray,
    grid: list[float],
    selection: str,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """α per direction (``i2t``, ``t2i``) chosen on support embeddings, and the support score
    of every α: R@1 of each direction (``per-direction``) or rsum (``rsum``, one α for both).
    ``old[side]`` are OLD's embeddings (also the gallery), ``mapped[side]`` NEW's mapped ones,
    padded to the same width; ties go to the smaller α."""
    from ..eval import evaluate_retrieval

    d_old = old["image"].shape[1]
    scores: dict[str, dict[str, float]] = {"i2t": {}, "t2i": {}, "rsum": {}}
    for alpha in grid:
        result = evaluate_retrieval(
            text_queries=slerp(old["text"], mapped["text"], alpha)[:, :d_old],
            image_gallery=old["image"][:, :d_old],
            image_queries=slerp(old["image"], mapped["image"], alpha)[:, :d_old],
            text_gallery=old["text"][:, :d_old],
            caption_image=caption_image,
        )
        for key, metric in (("i2t", "i2t_r1"), ("t2i", "t2i_r1"), ("rsum", "rsum")):
            scores[key][f"{alpha:g}"] = round(result.metrics[metric], 4)

    def best(key: str) -> float:
        return min(grid, key=lambda alpha: (-scores[key][f"{alpha:g}"], alpha))

    if selection == "rsum":
        alpha = best("rsum")
        return {"i2t": alpha, "t2i": alpha}, {"rsum": scores["rsum"]}
    return {direction: best(direction) for direction in DIRECTIONS}, {
        direction: scores[direction] for direction in DIRECTIONS
    }


def alpha_report(alphas: dict[str, float]) -> dict[str, float | str]:
    """The leaderboard's view of α per direction (:data:`ALPHA_REPORT`)."""
    return {f"alpha_{direction}": alphas[direction] for direction in DIRECTIONS}


def _padded(x: np.ndarray, width: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, width - x.shape[1])))


@register_method(
    "slerp",
    settings=SlerpConfig,
    kind="closed form",
    trains="closed form",
    old_at_query=True,
    training_needs="OLD embeddings of the pairs",
    notes="SLERP-BC: OLD query interpolated with Procrustes(NEW query); α per direction on support",
    report=ALPHA_REPORT,
)
def fit_slerp(ctx: FitContext, settings: SlerpConfig) -> FittedMethod:
    """SLERP-BC's protocol (module docstring). Needs OLD at query time."""
    weight = _fit_map(ctx, settings)
    uses_pairs = settings.support_modality != "text"  # the map is fitted on their images
    d_old = ctx.old.get().embed_dim
    width = weight.shape[1]

    def old_and_mapped(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _padded(old, width), new @ weight

    scores: dict[str, dict[str, float]] = {}
    if settings.alpha is None:
        support = {
            side: old_and_mapped(ctx.embed("old", ctx.support, side),
                                 ctx.embed("new", ctx.support, side))
            for side in SIDES
        }  # fmt: skip
        alphas, scores = choose_alphas(
            {side: pair[0] for side, pair in support.items()},
            {side: pair[1] for side, pair in support.items()},
            ctx.support.caption_image,
            settings.alpha_grid,
            settings.alpha_selection,
        )
    else:
        alphas = {direction: float(settings.alpha) for direction in DIRECTIONS}

    def combine(side: Side, vectors: Mapping[Which, np.ndarray]) -> np.ndarray:
        alpha = alphas[SIDE_DIRECTION[side]]
        return slerp(*old_and_mapped(vectors["old"], vectors["new"]), alpha)[:, :d_old]

    return FittedMethod(
        name="slerp",
        gallery="old",
        dim=d_old,
        query=ctx.query_path({"old": ctx.old.get(), "new": ctx.new.get()}, combine),
        report=alpha_report(alphas),
        cost=Cost(image_text_pairs=ctx.train_pairs.n_images if uses_pairs else 0),
        info={
            "alpha": alphas,
            "support_score_by_alpha": scores,
            "support": ctx.support.key,
            "support_modality": settings.support_modality,
            "map": f"{settings.map} [{weight.shape[0]} x {weight.shape[1]}]",
        },
        export=matrix_spec(weight, {side: alphas[d] for d, side in DIRECTIONS.items()}),
    )
