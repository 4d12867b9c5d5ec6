"""Pair diagnostics: how alike two models' embedding spaces are, before any method is run.

From the OLD and NEW embeddings of one image–caption split (and, optionally, of a text corpus
to fit maps on) :func:`pair_diagnostics` reports

- per model: the modality gap ‖mean(image) − mean(text)‖ and the mean cosine of each caption
  with its image;
- linear CKA between OLD and NEW on the same texts and on the same images;
- how well an orthogonal NEW→OLD map fitted on texts (zero-padded Procrustes) explains OLD on
  texts and transfers to images (R², mean squared residual), with a general least-squares
  linear map's R² on texts for reference;
- the capability gap: new→new minus old→old retrieval (R@1 both ways, rsum).

**R²** of a map M on rows (x_i, y_i), x in NEW's space and y in OLD's:
ŷ_i = normalize(x_i M) (the mapped query, as retrieval uses it), and
R² = 1 − SS_res / SS_tot with SS_res = Σ‖y_i − ŷ_i‖² and SS_tot = Σ‖y_i − ȳ‖², ȳ the mean of
the targets y. It is 1 for a perfect map, 0 for a map no better than predicting OLD's mean,
and negative for a worse one. The **residual** is SS_res / n: for unit rows it is
2 − 2·mean cos(y_i, ŷ_i).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .retrieval import evaluate_retrieval

_CAPABILITY_KEYS = ("t2i_r1", "i2t_r1", "rsum")


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"{name} must be a non-empty [n, d] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise InputError(f"{name} has non-finite or all-zero rows; embeddings must be directions")
    return x / norms


def modality_gap(images: np.ndarray, texts: np.ndarray) -> float:
    """‖mean(images) − mean(texts)‖ of L2-normalised rows (0: no gap; at most 2)."""
    return float(np.linalg.norm(_unit(images, "images").mean(0) - _unit(texts, "texts").mean(0)))


def matched_cosine(images: np.ndarray, texts: np.ndarray, caption_image: np.ndarray) -> float:
    """Mean cosine of each caption with its own image."""
    images, texts = _unit(images, "images"), _unit(texts, "texts")
    return float(np.einsum("ij,ij->i", texts, images[np.asarray(caption_image)]).mean())


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n items (dims may differ).

    CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y: 1 when Y is a rotation and
    uniform scaling of X, invariant to both, below 1 when the spaces are stretched differently.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise InputError(f"CKA needs paired [n, d] arrays with n >= 2, got {x.shape} and {y.shape}")
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def orthogonal_map(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal map W [d_s, d_t] minimising ‖source W − target‖_F, zero-padding the
    smaller dimension (W is the top-left block of the square solution), as `procrustes` does."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.ndim != 2 or target.ndim != 2 or len(source) != len(target) or len(source) == 0:
        raise InputError(f"a map needs paired [n, d] rows, got {source.shape} and {target.shape}")
    d_s, d_t = source.shape[1], target.shape[1]
    cross = np.zeros((max(d_s, d_t), max(d_s, d_t)))
    cross[:d_s, :d_t] = source.T @ target
    u, _, vt = np.linalg.svd(cross)
    return (u @ vt)[:d_s, :d_t]


def linear_map(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares linear map W [d_s, d_t] (no intercept) from ``source`` to ``target``."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    return np.linalg.lstsq(source, target, rcond=None)[0]


def map_fit(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """R² and mean squared residual of ``normalize(source @ weight)`` against ``target``
    (unit rows; see the module docstring for the definitions)."""
    source, target = _unit(source, "source"), _unit(target, "target")
    predicted = _unit(source @ weight, "mapped source")
    ss_res = float(((target - predicted) ** 2).sum())
    ss_tot = float(((target - target.mean(0)) ** 2).sum())
    if ss_tot == 0:
        raise InputError("R² needs targets that vary; every target row is the same")
    return {"r2": 1.0 - ss_res / ss_tot, "residual": ss_res / len(target)}


def pair_diagnostics(
    old_images: np.ndarray,
    old_texts: np.ndarray,
    new_images: np.ndarray,
    new_texts: np.ndarray,
    caption_image: np.ndarray,
    *,
    fit_texts_old: np.ndarray | None = None,
    fit_texts_new: np.ndarray | None = None,
) -> dict[str, Any]:
    """Geometry of OLD and NEW on one split, their likeness, and NEW's capability gain.

    ``old_*``/``new_*`` embed the same images and captions (``caption_image[c]`` is caption
    ``c``'s image). The orthogonal and linear NEW→OLD maps are fitted on ``fit_texts_new`` →
    ``fit_texts_old`` (paired rows, e.g. a text corpus; default: the split's own captions) and
    scored on the split's captions (``r2_texts``) and images (``r2_images``: transfer to the
    other modality).
    """
    old_images, old_texts = _unit(old_images, "old_images"), _unit(old_texts, "old_texts")
    new_images, new_texts = _unit(new_images, "new_images"), _unit(new_texts, "new_texts")
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
        fit_old, fit_new = (
            _unit(fit_texts_old, "fit_texts_old"),
            _unit(fit_texts_new, "fit_texts_new"),
        )
        if len(fit_old) != len(fit_new):
            raise InputError(
                f"fit texts must be paired: {len(fit_old)} OLD rows vs {len(fit_new)} NEW rows"
            )
    models = {
        name: {
            "dim": int(images.shape[1]),
            "modality_gap": modality_gap(images, texts),
            "matched_cosine": matched_cosine(images, texts, caption_image),
        }
        for name, images, texts in (
            ("old", old_images, old_texts),
            ("new", new_images, new_texts),
        )
    }
    rotation = orthogonal_map(fit_new, fit_old)
    on_texts = map_fit(new_texts, old_texts, rotation)
    on_images = map_fit(new_images, old_images, rotation)
    retrieval = {}
    for name, images, texts in (("old", old_images, old_texts), ("new", new_images, new_texts)):
        retrieval[name] = evaluate_retrieval(
            text_queries=texts,
            image_gallery=images,
            image_queries=images,
            text_gallery=texts,
            caption_image=caption_image,
        ).metrics
    gap = {key: retrieval["new"][key] - retrieval["old"][key] for key in _CAPABILITY_KEYS}
    gap["rsum_percent"] = 100.0 * gap["rsum"] / retrieval["old"]["rsum"]
    return {
        **models,
        "cka_texts": linear_cka(old_texts, new_texts),
        "cka_images": linear_cka(old_images, new_images),
        "procrustes": {
            "fit_texts": len(fit_old),
            "r2_texts": on_texts["r2"],
            "r2_images": on_images["r2"],
            "residual_texts": on_texts["residual"],
            "residual_images": on_images["residual"],
            "linear_r2_texts": map_fit(new_texts, old_texts, linear_map(fit_new, fit_old))["r2"],
        },
        "capability_gap": gap,
        "retrieval": retrieval,
    }
