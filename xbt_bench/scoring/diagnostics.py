"""Pair diagnostics: how alike two models' embedding spaces are, before any method is run.

From the OLD and NEW embeddings of one image–caption split (and, optionally, of a text corpus
to fit maps on) :func:`pair_diagnostics` reports (:class:`PairDiagnostics`)

- per model: the modality gap ‖mean(image) − mean(text)‖ and the mean cosine of each caption
  with its image;
- linear CKA between OLD and NEW on the same texts and on the same images;
- how well an orthogonal NEW→OLD map fitted on texts (zero-padded Procrustes) explains OLD on
  texts and transfers to images (R², mean squared residual), with a general least-squares
  linear map's R² on texts for reference (definitions in :mod:`xbt_bench.eval.diagnostics`);
- the capability gap: new→new minus old→old retrieval (R@1 both ways, rsum), scored with
  :func:`~xbt_bench.scoring.score` as every method is.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..eval.diagnostics import (
    linear_cka,
    linear_map,
    map_fit,
    matched_cosine,
    modality_gap,
    unit_rows,
)
from ..eval.retrieval import Embeddings
from ..linalg import procrustes_map
from .splits import score

CAPABILITY_KEYS = ("t2i_r1", "i2t_r1", "rsum")


class ModelGeometry(BaseModel):
    """One model's embeddings of the split."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(gt=0)
    modality_gap: float = Field(description="‖mean(image) − mean(text)‖ of unit embeddings")
    matched_cosine: float = Field(description="mean cosine of each caption with its image")


class MapFit(BaseModel):
    """An orthogonal NEW→OLD map fitted on texts: how much of OLD it explains."""

    model_config = ConfigDict(extra="forbid")

    fit_texts: int = Field(gt=0, description="text pairs the maps were fitted on")
    r2_texts: float = Field(description="R² of the orthogonal map on the split's captions")
    r2_images: float = Field(description="R² of the same map on the split's images (transfer)")
    residual_texts: float = Field(ge=0, description="mean squared residual on captions")
    residual_images: float = Field(ge=0, description="mean squared residual on images")
    linear_r2_texts: float = Field(description="R² of a general least-squares map on captions")


class CapabilityGap(BaseModel):
    """new→new minus old→old on the split."""

    model_config = ConfigDict(extra="forbid")

    t2i_r1: float
    i2t_r1: float
    rsum: float
    rsum_percent: float = Field(description="the rsum gap in percent of old→old's rsum")


class PairDiagnostics(BaseModel):
    """The diagnostics of one pair on one split (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    old: ModelGeometry
    new: ModelGeometry
    cka_texts: float = Field(description="linear CKA of OLD and NEW on the same captions")
    cka_images: float = Field(description="linear CKA of OLD and NEW on the same images")
    procrustes: MapFit
    capability_gap: CapabilityGap
    retrieval: dict[str, dict[str, float]] = Field(
        description="old→old and new→new metrics on the split (keys old, new)"
    )


def pair_diagnostics(
    old: Embeddings,
    new: Embeddings,
    caption_image: np.ndarray,
    *,
    fit_texts_old: np.ndarray | None = None,
    fit_texts_new: np.ndarray | None = None,
) -> PairDiagnostics:
    """Geometry of OLD and NEW on one split, their likeness, and NEW's capability gain.

    ``old`` and ``new`` embed the same images and captions (``caption_image[c]`` is caption
    ``c``'s image). The orthogonal and linear NEW→OLD maps are fitted on ``fit_texts_new`` →
    ``fit_texts_old`` (paired rows, e.g. a text corpus; default: the split's own captions) and
    scored on the split's captions (``r2_texts``) and images (``r2_images``: transfer to the
    other modality).
    """
    old_images, old_texts = unit_rows(old.images, "old images"), unit_rows(old.texts, "old texts")
    new_images, new_texts = unit_rows(new.images, "new images"), unit_rows(new.texts, "new texts")
    if len(old_images) != len(new_images) or len(old_texts) != len(new_texts):
        raise InputError(
            f"OLD and NEW must embed the same items: images {len(old_images)} vs "
            f"{len(new_images)}, texts {len(old_texts)} vs {len(new_texts)}"
        )
    if (fit_texts_old is None) != (fit_texts_new is None):
        raise InputError("give both fit_texts_old and fit_texts_new, or neither")
    if fit_texts_old is None or fit_texts_new is None:
        fit_old, fit_new = old_texts, new_texts
    else:
        fit_old = unit_rows(fit_texts_old, "fit_texts_old")
        fit_new = unit_rows(fit_texts_new, "fit_texts_new")
        if len(fit_old) != len(fit_new):
            raise InputError(
                f"fit texts must be paired: {len(fit_old)} OLD rows vs {len(fit_new)} NEW rows"
            )
    rotation = procrustes_map(fit_new, fit_old)
    on_texts = map_fit(new_texts, old_texts, rotation)
    on_images = map_fit(new_images, old_images, rotation)
    retrieval = {
        name: score(Embeddings(images, texts), Embeddings(images, texts), caption_image).metrics
        for name, images, texts in (("old", old_images, old_texts), ("new", new_images, new_texts))
    }
    gap = {key: retrieval["new"][key] - retrieval["old"][key] for key in CAPABILITY_KEYS}
    return PairDiagnostics(
        old=_geometry(old_images, old_texts, caption_image),
        new=_geometry(new_images, new_texts, caption_image),
        cka_texts=linear_cka(old_texts, new_texts),
        cka_images=linear_cka(old_images, new_images),
        procrustes=MapFit(
            fit_texts=len(fit_old),
            r2_texts=on_texts["r2"],
            r2_images=on_images["r2"],
            residual_texts=on_texts["residual"],
            residual_images=on_images["residual"],
            linear_r2_texts=map_fit(new_texts, old_texts, linear_map(fit_new, fit_old))["r2"],
        ),
        capability_gap=CapabilityGap(
            **gap, rsum_percent=100.0 * gap["rsum"] / retrieval["old"]["rsum"]
        ),
        retrieval=retrieval,
    )


def _geometry(images: np.ndarray, texts: np.ndarray, caption_image: np.ndarray) -> ModelGeometry:
    return ModelGeometry(
        dim=int(images.shape[1]),
        modality_gap=modality_gap(images, texts),
        matched_cosine=matched_cosine(images, texts, caption_image),
    )
