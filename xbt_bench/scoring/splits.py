"""Scoring one split: query and gallery embeddings in, typed numbers out.

Every command that scores (``run``, ``sweep``, ``backfill``, ``tune``, ``pairs diagnose``) calls
these functions; none of them fits a method or reads a file. A query set is scored against a
gallery with exact FAISS search (:func:`score`); the references old→old and new→new of a split
are scored once (:class:`References`); a method's seeds are scored against them
(:func:`method_split`: the seeds' mean, each seed's metrics, 95% bootstrap intervals over the
split's images, the paired intervals of the margins over old→old and the R@1 flip rates); a
chain's cells make its compatibility matrices (:func:`chain_split`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import XbtError
from ..eval.bootstrap import QueryHits, paired_margin_intervals, recall_intervals
from ..eval.compat import (
    METHOD_OLD,
    NEW_NEW,
    OLD_OLD,
    compatibility_matrix,
    retrieval_flip_rates,
)
from ..eval.retrieval import METRIC_KEYS, Embeddings, RetrievalResult, evaluate_retrieval
from .types import ChainMatrix, SplitResult


def score(
    queries: Embeddings, gallery: Embeddings, caption_image: np.ndarray, label: str = "a split"
) -> RetrievalResult:
    """Exact FAISS retrieval of ``queries`` (image and caption queries) against ``gallery``
    (images and captions of the same split), ``caption_image[c]`` being caption c's image;
    XbtError naming ``label`` and the problem when the arrays do not fit together."""
    try:
        return evaluate_retrieval(
            text_queries=np.asarray(queries.texts),
            image_gallery=np.asarray(gallery.images),
            image_queries=np.asarray(queries.images),
            text_gallery=np.asarray(gallery.texts),
            caption_image=caption_image,
        )
    except ValueError as error:
        raise XbtError(f"cannot score {label}: {error}") from error


def mean_metrics(values: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over ``values`` (one dict per seed)."""
    return {key: float(np.mean([v[key] for v in values])) for key in values[0]}


def query_hits(scored: Sequence[RetrievalResult], caption_image: np.ndarray) -> QueryHits:
    """Per-query hits of ``scored`` (one result per seed), for the bootstrap."""
    return QueryHits.from_ranks(
        [s.t2i_ranks for s in scored], [s.i2t_ranks for s in scored], caption_image
    )


@dataclass(frozen=True)
class References:
    """old→old and new→new on one split with their 95% bootstrap intervals: what every method
    of the split is compared with (scored once per split)."""

    old_old: RetrievalResult
    new_new: RetrievalResult
    intervals: dict[str, dict[str, list[float]]]
    caption_image: np.ndarray

    @classmethod
    def score(
        cls, old: Embeddings, new: Embeddings, caption_image: np.ndarray
    ) -> References:
        """OLD's and NEW's own retrieval on the split (each model's queries against its own
        gallery), with intervals."""
        old_old, new_new = (score(own, own, caption_image) for own in (old, new))
        intervals = {
            setting: recall_intervals(query_hits([scored], caption_image))
            for setting, scored in ((OLD_OLD, old_old), (NEW_NEW, new_new))
        }
        return cls(old_old, new_new, intervals, np.asarray(caption_image))

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{old->old: ..., new->new: ...}``."""
        return {OLD_OLD: self.old_old.metrics, NEW_NEW: self.new_new.metrics}

    def split(self) -> SplitResult:
        """The references alone (a split of ``old`` or ``new``, or of a method that does not
        search OLD's gallery)."""
        return SplitResult(
            metrics=self.metrics, intervals=dict(self.intervals), images=self.images
        )

    @property
    def images(self) -> int:
        """Images in the split (its image queries)."""
        return len(self.old_old.i2t_hit1)


def method_split(scored: Sequence[RetrievalResult], references: References) -> SplitResult:
    """A method's method→old on one split from its seeds' retrieval ``scored`` (one
    :class:`RetrievalResult` per seed, same queries): the seeds' mean, each seed's metrics
    (several seeds), the bootstrap interval of every cell (hits averaged over seeds), the paired
    interval of each margin over old→old, and the R@1 flip rates (mean over seeds)."""
    caption_image = references.caption_image
    hits = query_hits(scored, caption_image)
    return SplitResult(
        metrics={**references.metrics, METHOD_OLD: mean_metrics([s.metrics for s in scored])},
        intervals={**references.intervals, METHOD_OLD: recall_intervals(hits)},
        margin_intervals=paired_margin_intervals(
            hits, query_hits([references.old_old], caption_image)
        ),
        seed_metrics=[s.metrics for s in scored] if len(scored) > 1 else [],
        flips=mean_metrics([retrieval_flip_rates(references.old_old, s) for s in scored]),
        images=references.images,
    )


def chain_split(
    cells: Mapping[tuple[int, int], RetrievalResult], models: Sequence[str], method_old: bool
) -> SplitResult:
    """A chain v0 → … → vN on one split from its cells (``cells[i, j]``: query model i against
    gallery model j, i ≥ j, the diagonal being each model's own retrieval): every cell's
    metrics (``vI->vJ``), old→old = v0→v0, new→new = vN→vN, method→old = vN→v0 when the
    method searches OLD's gallery (``method_old``), the flip rates of vN→v0 and the
    compatibility matrix of every metric."""
    last = len(models) - 1
    metrics = {OLD_OLD: cells[0, 0].metrics, NEW_NEW: cells[last, last].metrics}
    metrics |= {f"v{i}->v{j}": cell.metrics for (i, j), cell in cells.items()}
    if method_old:
        metrics[METHOD_OLD] = cells[last, 0].metrics
    matrices = {key: compatibility_matrix(dict(cells), key) for key in METRIC_KEYS}
    return SplitResult(
        metrics=metrics,
        flips=retrieval_flip_rates(cells[0, 0], cells[last, 0]),
        chain_matrix=ChainMatrix.from_arrays(models, matrices),
        images=len(cells[0, 0].i2t_hit1),
    )
