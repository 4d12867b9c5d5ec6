"""Scoring: the rules of the game, as pure functions from embeddings to typed numbers.

Below the commands that fit methods (``run``, ``sweep``, ``backfill``, ``tune``) and above the
retrieval primitives of :mod:`xbt_bench.eval`: recalls of a query set against a gallery
(:func:`score`), a split's references and a method's scores against them (intervals, margins,
flips: :func:`method_split`), a chain's compatibility matrices (:func:`chain_split`), a
partial backfill's curves (:func:`backfill_curves`) and a pair's diagnostics
(:func:`pair_diagnostics`). Nothing here fits, embeds or reads files.
"""

from .backfill import backfill_curves
from .diagnostics import PairDiagnostics, pair_diagnostics
from .splits import (
    References,
    chain_split,
    index_split,
    mean_metrics,
    method_split,
    query_hits,
    score,
)
from .types import (
    BackfillCurves,
    BackfillPoint,
    BaselineMargin,
    CalibrationChoice,
    ChainMatrix,
    Compatibility,
    IndexSplit,
    OrderChoice,
    SplitResult,
    SweepPoint,
    check_metrics,
)

__all__ = [
    "BackfillCurves",
    "BackfillPoint",
    "BaselineMargin",
    "CalibrationChoice",
    "ChainMatrix",
    "Compatibility",
    "IndexSplit",
    "OrderChoice",
    "PairDiagnostics",
    "References",
    "SplitResult",
    "SweepPoint",
    "backfill_curves",
    "chain_split",
    "check_metrics",
    "index_split",
    "mean_metrics",
    "pair_diagnostics",
    "method_split",
    "query_hits",
    "score",
]
