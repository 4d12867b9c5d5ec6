"""``linear``: a general linear map from NEW's space into OLD's, fitted on text pairs by ridge
least squares (closed form). Where Procrustes keeps NEW's geometry (a rotation), this map may
stretch it: it shows how much of the gap between two spaces a rotation leaves (see
``xbt-bench pairs diagnose``: orthogonal vs linear R²)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from . import register_method
from .base import FitContext, FittedMethod, matrix_spec
from .settings import MethodConfig


class LinearConfig(MethodConfig):
    """Ridge least squares W = argmin ||N W − O||² + λ·n·||W||² on the corpus's text pairs."""

    ridge: float = Field(1e-3, ge=0, description="ridge weight λ (per text pair)")


def ridge_map(source: np.ndarray, target: np.ndarray, ridge: float) -> np.ndarray:
    """W [d_s, d_t] minimising ||source W − target||² + ridge·n·||W||² (float64 solve)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    gram = source.T @ source + ridge * len(source) * np.eye(source.shape[1])
    return np.linalg.solve(gram, source.T @ target).astype(np.float32)


@register_method(
    "linear",
    settings=LinearConfig,
    kind="closed form",
    trains="closed form",
    training_needs="text embeddings",
    notes="general linear map (ridge least squares) fitted on text pairs",
)
def fit_linear(ctx: FitContext, settings: LinearConfig) -> FittedMethod:
    """NEW queries mapped by the text-fitted linear map into OLD's space (no OLD at query)."""
    weight = ridge_map(ctx.embed_corpus("new"), ctx.embed_corpus("old"), settings.ridge)
    return FittedMethod(
        name="linear",
        gallery="old",
        dim=weight.shape[1],
        query=ctx.query_path({"new": ctx.new.get()}, lambda side, vectors: vectors["new"] @ weight),
        info={"map": f"ridge least squares [{weight.shape[0]} x {weight.shape[1]}]"},
        export=matrix_spec(weight),
    )
