"""Closed-form maps between embedding spaces (numpy only), shared by methods and diagnostics."""

from __future__ import annotations

import numpy as np

from .console import warn
from .errors import XbtError

_WARNED: set[tuple[str, int, int]] = set()


def warn_if_underdetermined(rows: int, dim: int, what: str) -> bool:
    """Warn in one line (once per process and case) when a map or a statistic is fitted on
    fewer ``rows`` than the dimension ``dim``: with n < d a map fits any n pairs exactly (R² and
    CKA near 1 whatever the models), so its numbers say nothing. Returns whether it warned."""
    if rows >= dim or (what, rows, dim) in _WARNED:
        return False
    _WARNED.add((what, rows, dim))
    warn(
        f"warning: {what} has {rows} rows for {dim} dimensions (n < d): a map fitted on it "
        "fits any pairs exactly, so R², CKA and the map itself mean little; give at least "
        f"{dim} (better 10x more) texts or items"
    )
    return True


def procrustes_map(source: np.ndarray, target: np.ndarray, *, padded: bool = False) -> np.ndarray:
    """The orthogonal map W minimising ||source @ W - target||_F over paired rows.

    ``source`` [n, d_s] and ``target`` [n, d_t]. When d_s != d_t the target is zero-padded to
    d = max(d_s, d_t) and W is the orthogonal solution of that square problem, as the SLERP-BC
    authors' code computes it: [d_s, d] with ``padded``, so a mapped row keeps its unit norm
    and its components beyond d_t; otherwise its first d_t columns, [d_s, d_t] (the
    rectangular map: orthonormal columns when d_s >= d_t). Both give the same rankings of a
    mapped query against a d_t-dimensional gallery; they differ once a mapped query is mixed
    with another vector (SLERP).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or target.ndim != 2 or len(source) != len(target):
        raise XbtError(
            f"procrustes needs paired [n, d] arrays, got shapes {source.shape} and {target.shape}"
        )
    if len(source) == 0:
        raise XbtError("procrustes needs at least one pair of embeddings; the corpus is empty")
    d_source, d_target = source.shape[1], target.shape[1]
    width = max(d_source, d_target)
    padded_target = np.zeros((len(target), width))
    padded_target[:, :d_target] = target
    u, _, vt = np.linalg.svd(source.T @ padded_target, full_matrices=False)
    rotation = u @ vt
    return (rotation if padded else rotation[:, :d_target]).astype(np.float32)
