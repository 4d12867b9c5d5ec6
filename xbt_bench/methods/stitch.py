"""``stitch``: the ablation that shows what XBT's stage 2 adds (docs/methods.md).

Caption queries are stage 1's ψ₀(N_txt(t)); image queries are normalize(N_img(x)·P), with P the
orthogonal NEW→OLD map fitted on the corpus's text pairs that stage 1 initialises ψ's skip with.
It trains stage 1 only and uses no image–text pair: OLD's part in training is its text
embeddings of the corpus. Its settings are stage 1's and it extends ``xbt`` (a pair file's
``[methods.xbt]`` table applies to it), so with the same settings and seed it reads the very ψ₀
checkpoint that ``xbt`` trains on: ``xbt``'s margin over ``stitch`` is stage 2's contribution.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import register_method
from .base import FitContext, FittedMethod, Side
from .stage1 import ProjectionConfig, map_embeddings, pretrain_projection
from .stage2 import mapped_spec, projection_method


class StitchConfig(ProjectionConfig):
    """Stage 1's settings (those of ``xbt``'s stage 1): ψ₀ for captions, its initial map P for
    images."""


@register_method(
    "stitch",
    settings=StitchConfig,
    kind="trained",
    trains="stage 1",
    training_needs="text embeddings",
    notes="ablation: ψ₀ for captions, the text-fitted Procrustes map for images; no image–text "
    "pairs. xbt's margin over it is what stage 2 adds",
    extends="xbt",
)
def fit_stitch(ctx: FitContext, settings: StitchConfig) -> FittedMethod:
    """Stage 1 on text (xbt's ψ₀ for the same settings and seed), then caption queries
    ψ₀(N_txt(t)) and image queries normalize(N_img(x)·P); no OLD at query time."""
    stage1 = pretrain_projection(ctx, settings)

    def combine(side: Side, vectors: dict[str, np.ndarray]) -> np.ndarray:
        if side == "image":
            return stage1.procrustes_mapped(vectors["new"])
        return map_embeddings(stage1.psi, vectors["new"], ctx.device)

    stage1_only = projection_method(ctx, "stitch", stage1)
    return dataclasses.replace(
        stage1_only,
        query=ctx.query_path({"new": ctx.new.get()}, combine),
        export=mapped_spec(stage1.psi, image_map=stage1.text_procrustes),
        info={
            **stage1_only.info,
            "image_queries": "normalize(N_img · P), P the text-fitted orthogonal map (ψ's "
            "initial skip)",
        },
    )
