"""Closed-form methods: ``procrustes`` (an orthogonal map fitted on text pairs) and ``slerp``
(spherical interpolation between the OLD query and the Procrustes-mapped NEW query)."""

from __future__ import annotations

from typing import cast

import numpy as np

from ..data.base import ImageTextSet
from ..models.projection import procrustes_map
from .base import FitContext, FittedMethod, Side, measured
from .configs import SlerpConfig, parse_config


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_text_procrustes(ctx: FitContext) -> np.ndarray:
    """The orthogonal map W [d_new, d_old] from NEW's to OLD's text embeddings of the corpus."""
    return procrustes_map(ctx.embed_corpus("new"), ctx.embed_corpus("old"))


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


@measured
def fit_procrustes(ctx: FitContext) -> FittedMethod:
    """NEW queries mapped by the text-fitted orthogonal map into OLD's space (no OLD at query)."""
    parse_config("procrustes", ctx.config)
    weight = fit_text_procrustes(ctx)
    d_new, d_old = weight.shape
    return FittedMethod(
        name="procrustes",
        gallery="old",
        dim=d_old,
        image_encoder=lambda data: _normalize(
            ctx.embed("new", data, "image", count=False) @ weight
        ),
        text_encoder=lambda data: _normalize(ctx.embed("new", data, "text", count=False) @ weight),
        info={"old_dim": d_old, "new_dim": d_new, "corpus_texts": len(ctx.text_corpus.texts)},
    )


@measured
def fit_slerp(ctx: FitContext) -> FittedMethod:
    """SLERP(OLD query, Procrustes(NEW query), α), α fixed or chosen on ``support`` by rsum of
    method→old retrieval (ties go to the earlier grid value). Needs OLD at query time."""
    from ..eval import evaluate_retrieval

    cfg = cast(SlerpConfig, parse_config("slerp", ctx.config))
    weight = fit_text_procrustes(ctx)

    def queries(data: ImageTextSet, side: Side, alpha: float) -> np.ndarray:
        old = ctx.embed("old", data, side, count=False)
        mapped = ctx.embed("new", data, side, count=False) @ weight
        return slerp(old, mapped, alpha)

    scores: dict[str, float] = {}
    if cfg.alpha is None:
        support = ctx.support
        old_images = ctx.embed("old", support, "image")
        old_texts = ctx.embed("old", support, "text")
        new_images = ctx.embed("new", support, "image") @ weight
        new_texts = ctx.embed("new", support, "text") @ weight
        for alpha in cfg.alpha_grid:
            result = evaluate_retrieval(
                text_queries=slerp(old_texts, new_texts, alpha),
                image_gallery=old_images,
                image_queries=slerp(old_images, new_images, alpha),
                text_gallery=old_texts,
                caption_image=support.caption_image,
            )
            scores[f"{alpha:g}"] = round(result.metrics["rsum"], 4)
        best = max(range(len(cfg.alpha_grid)), key=lambda i: (scores[f"{cfg.alpha_grid[i]:g}"], -i))
        alpha = float(cfg.alpha_grid[best])
    else:
        alpha = float(cfg.alpha)
    return FittedMethod(
        name="slerp",
        gallery="old",
        dim=weight.shape[1],
        image_encoder=lambda data: queries(data, "image", alpha),
        text_encoder=lambda data: queries(data, "text", alpha),
        config=cfg.model_dump(),
        info={"alpha": alpha, "support_rsum_by_alpha": scores, "support": ctx.support.key},
        needs_old_at_query=True,
    )
