"""Geometry of embedding spaces: the measures behind the pair diagnostics
(:func:`xbt_bench.scoring.pair_diagnostics`) and the toy models' cards.

- :func:`modality_gap`: ‖mean(image) − mean(text)‖ of unit rows; :func:`matched_cosine`: the
  mean cosine of each caption with its image; :func:`intra_cosine`: the mean cosine of
  distinct rows of one modality;
- :func:`linear_cka`: linear CKA of two representations of the same items;
- :func:`map_fit`: how well a NEW→OLD map explains OLD (R², residual), with
  :func:`linear_map` a general least-squares map.

**R²** of a map M on rows (x_i, y_i), x in NEW's space and y in OLD's:
ŷ_i = normalize(x_i M) (the mapped query, as retrieval uses it), and
R² = 1 − SS_res / SS_tot with SS_res = Σ‖y_i − ŷ_i‖² and SS_tot = Σ‖y_i − ȳ‖², ȳ the mean of
the targets y. It is 1 for a perfect map, 0 for a map no better than predicting OLD's mean,
and negative for a worse one. The **residual** is SS_res / n: for unit rows it is
2 − 2·mean cos(y_i, ŷ_i).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as float64 unit rows; InputError naming ``name`` for a non-[n, d] array or a
    non-finite or all-zero row."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"{name} must be a non-empty [n, d] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise InputError(f"{name} has non-finite or all-zero rows; embeddings must be directions")
    return x / norms


def modality_gap(images: np.ndarray, texts: np.ndarray) -> float:
    """‖mean(images) − mean(texts)‖ of L2-normalised rows (0: no gap; at most 2)."""
    images, texts = unit_rows(images, "images"), unit_rows(texts, "texts")
    return float(np.linalg.norm(images.mean(0) - texts.mean(0)))


def intra_cosine(x: np.ndarray, name: str = "rows") -> float:
    """Mean cosine of distinct rows of ``x`` (after L2 normalisation): how tightly one
    modality clusters (0 for spread-out directions, 1 when every row is the same)."""
    x = unit_rows(x, name)
    total, n = x.sum(axis=0), len(x)
    if n < 2:
        raise InputError(f"{name}: the mean cosine of distinct rows needs at least 2 rows")
    return float((total @ total - n) / (n * (n - 1)))


def matched_cosine(images: np.ndarray, texts: np.ndarray, caption_image: np.ndarray) -> float:
    """Mean cosine of each caption with its own image."""
    images, texts = unit_rows(images, "images"), unit_rows(texts, "texts")
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


def linear_map(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares linear map W [d_s, d_t] (no intercept) from ``source`` to ``target``."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    return np.linalg.lstsq(source, target, rcond=None)[0]


def map_fit(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """R² and mean squared residual of ``normalize(source @ weight)`` against ``target``
    (unit rows; see the module docstring for the definitions)."""
    source, target = unit_rows(source, "source"), unit_rows(target, "target")
    predicted = unit_rows(source @ weight, "mapped source")
    ss_res = float(((target - predicted) ** 2).sum())
    ss_tot = float(((target - target.mean(0)) ** 2).sum())
    if ss_tot == 0:
        raise InputError("R² needs targets that vary; every target row is the same")
    return {"r2": 1.0 - ss_res / ss_tot, "residual": ss_res / len(target)}

