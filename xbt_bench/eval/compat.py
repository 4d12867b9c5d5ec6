"""Compatibility metrics: does a backfill-free upgrade beat the old model on the old gallery?

``method`` means method->old (new query encoder, old gallery), ``old`` old->old and ``new``
new->new (full backfill); each is a metrics dict as ``RetrievalResult.metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from .retrieval import METRIC_KEYS, RECALL_KEYS, RetrievalResult

# The settings (query encoder -> gallery encoder) a result reports.
OLD_OLD, NEW_NEW, METHOD_OLD = "old->old", "new->new", "method->old"
SETTINGS = (OLD_OLD, NEW_NEW, METHOD_OLD)


def _value(metrics: Mapping[str, float], key: str, setting: str) -> float:
    if key not in metrics:
        raise InputError(f"{setting} metrics have no '{key}' (they have {sorted(metrics)})")
    return float(metrics[key])


def compatibility(
    method: Mapping[str, float], old: Mapping[str, float], keys: Sequence[str] = RECALL_KEYS
) -> dict:
    """Per metric of ``keys`` and rsum: ``held`` (method->old > old->old, strictly) and
    ``margin`` (method - old); ``cells_held`` of ``cells_total`` count ``keys`` only."""
    reported = list(dict.fromkeys([*keys, "rsum"]))
    margin = {k: _value(method, k, "method") - _value(old, k, "old") for k in reported}
    held = {k: _value(method, k, "method") > _value(old, k, "old") for k in reported}
    return {
        "held": held,
        "margin": margin,
        "cells_held": sum(held[k] for k in keys),
        "cells_total": len(keys),
    }


def gain_share(
    method: Mapping[str, float],
    old: Mapping[str, float],
    new: Mapping[str, float],
    keys: Sequence[str] = METRIC_KEYS,
) -> dict[str, float | None]:
    """Per metric, (method - old) / (new - old): the share of the full-backfill gain kept
    without backfilling (None where new == old)."""
    shares: dict[str, float | None] = {}
    for key in keys:
        m, o, n = _value(method, key, "method"), _value(old, key, "old"), _value(new, key, "new")
        shares[key] = None if n == o else (m - o) / (n - o)
    return shares


def flip_rates(old_hits: np.ndarray, method_hits: np.ndarray) -> dict[str, float]:
    """Percent of queries that flip at R@1: ``nfr`` right under old->old but wrong under
    method->old (negative flips), ``pfr`` wrong then right (positive flips)."""
    old_hits, method_hits = np.asarray(old_hits), np.asarray(method_hits)
    if old_hits.dtype != bool or method_hits.dtype != bool:
        raise InputError(
            f"hits must be boolean arrays, got {old_hits.dtype} and {method_hits.dtype}"
        )
    if old_hits.ndim != 1 or old_hits.shape != method_hits.shape or old_hits.size == 0:
        raise InputError(
            "old_hits and method_hits must be non-empty 1-D arrays over the same queries, got "
            f"shapes {old_hits.shape} and {method_hits.shape}"
        )
    return {
        "nfr": 100.0 * float(np.mean(old_hits & ~method_hits)),
        "pfr": 100.0 * float(np.mean(~old_hits & method_hits)),
    }


def retrieval_flip_rates(old: RetrievalResult, method: RetrievalResult) -> dict[str, float]:
    """``flip_rates`` for both directions: ``t2i_nfr``, ``t2i_pfr``, ``i2t_nfr``, ``i2t_pfr``."""
    rates: dict[str, float] = {}
    for direction in ("t2i", "i2t"):
        hits = getattr(old, f"{direction}_hit1"), getattr(method, f"{direction}_hit1")
        rates |= {f"{direction}_{k}": v for k, v in flip_rates(*hits).items()}
    return rates


def compatibility_matrix(
    results: Mapping[tuple[int, int], RetrievalResult], metric: str
) -> np.ndarray:
    """M[i, j] = ``metric`` with query model i and gallery model j (i >= j), NaN above the
    diagonal; ``results`` as returned by ``retrieval_matrix``."""
    n = 1 + max((i for i, _ in results), default=-1)
    missing = [(i, j) for i in range(n) for j in range(i + 1) if (i, j) not in results]
    if n == 0 or missing:
        raise InputError(f"chain results lack the (query, gallery) pairs {missing or [(0, 0)]}")
    matrix = np.full((n, n), np.nan)
    for (i, j), result in results.items():
        matrix[i, j] = _value(result.metrics, metric, f"chain ({i}, {j})")
    return matrix


def average_compatibility(matrix: np.ndarray) -> float:
    """Share of pairs i > j with M[i, j] > M[j, j]: how often model i's queries beat model j's
    own queries on model j's gallery (``matrix`` from ``compatibility_matrix``)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise InputError(
            f"average compatibility needs a square [n, n] matrix of a chain of n >= 2 models, "
            f"got shape {matrix.shape}"
        )
    rows, cols = np.tril_indices(len(matrix), k=-1)
    below, diagonal = matrix[rows, cols], np.diag(matrix)
    if not (np.isfinite(below).all() and np.isfinite(diagonal).all()):
        raise InputError("M[i, j] must be finite for every i >= j")
    return float(np.mean(below > diagonal[cols]))
