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
from ..eval.retrieval import (
    METRIC_KEYS,
    Embeddings,
    RetrievalResult,
    SearchIndexes,
    evaluate_retrieval,
)
from .types import BaselineMargin, ChainMatrix, IndexSplit, SplitResult


def score(
    queries: Embeddings,
    gallery: Embeddings,
    caption_image: np.ndarray,
    label: str = "a split",
    indexes: SearchIndexes | None = None,
) -> RetrievalResult:
    """FAISS retrieval of ``queries`` (image and caption queries) against ``gallery`` (images
    and captions of the same split), ``caption_image[c]`` being caption c's image: exact search,
    or through ``indexes``, production indexes built over ``gallery``
    (:func:`~xbt_bench.eval.indexes.build_search_indexes`). XbtError naming ``label`` and the
    problem when the arrays do not fit together."""
    try:
        return evaluate_retrieval(
            text_queries=np.asarray(queries.texts),
            image_gallery=np.asarray(gallery.images),
            image_queries=np.asarray(queries.images),
            text_gallery=np.asarray(gallery.texts),
            caption_image=caption_image,
            indexes=indexes,
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
        cls,
        old: Embeddings,
        new: Embeddings,
        caption_image: np.ndarray,
        indexes: tuple[SearchIndexes, SearchIndexes] | None = None,
    ) -> References:
        """OLD's and NEW's own retrieval on the split (each model's queries against its own
        gallery), with intervals: exact, or through ``indexes`` (OLD's gallery's, NEW's)."""
        searched = (None, None) if indexes is None else indexes
        old_old, new_new = (
            score(own, own, caption_image, indexes=index)
            for own, index in zip((old, new), searched, strict=True)
        )
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


def method_split(
    scored: Sequence[RetrievalResult],
    references: References,
    baseline: tuple[str, Sequence[RetrievalResult]] | None = None,
) -> SplitResult:
    """A method's method→old on one split from its seeds' retrieval ``scored`` (one
    :class:`RetrievalResult` per seed, same queries): the seeds' mean, each seed's metrics
    (several seeds), the bootstrap interval of every cell (hits averaged over seeds), the paired
    interval of each margin over old→old, the R@1 flip rates (mean over seeds) and, with
    ``baseline`` (a method's name and its seeds' retrieval, seed for seed), the paired margin
    over that method."""
    caption_image = references.caption_image
    hits = query_hits(scored, caption_image)
    margin = None
    if baseline is not None:
        name, theirs = baseline
        ours_mean = mean_metrics([s.metrics for s in scored])
        theirs_mean = mean_metrics([s.metrics for s in theirs])
        margin = BaselineMargin(
            method=name,
            margin={key: ours_mean[key] - theirs_mean[key] for key in ours_mean},
            interval=paired_margin_intervals(hits, query_hits(theirs, caption_image)),
        )
    return SplitResult(
        metrics={**references.metrics, METHOD_OLD: mean_metrics([s.metrics for s in scored])},
        intervals={**references.intervals, METHOD_OLD: recall_intervals(hits)},
        margin_intervals=paired_margin_intervals(
            hits, query_hits([references.old_old], caption_image)
        ),
        seed_metrics=[s.metrics for s in scored] if len(scored) > 1 else [],
        flips=mean_metrics([retrieval_flip_rates(references.old_old, s) for s in scored]),
        baseline_margin=margin,
        images=references.images,
    )


def index_split(
    indexed: SplitResult,
    exact: Mapping[str, Sequence[RetrievalResult]],
    through: Mapping[str, Sequence[RetrievalResult]],
    searches: Mapping[str, str],
    caption_image: np.ndarray,
) -> IndexSplit:
    """One split through production indexes: ``indexed`` (the split scored through the indexes,
    by :func:`method_split` or :meth:`References.split`), and per setting of it the same queries'
    results (one per seed) with exact search (``exact[setting]``) and through the index
    (``through[setting]``): the exact metrics (seed means), the paired 95% interval of each
    loss exact − indexed over the split's images, and for method→old the paired interval of its
    loss beyond old→old's; ``searches`` says which index each gallery had."""
    hits = {
        setting: (query_hits(exact[setting], caption_image),
                  query_hits(through[setting], caption_image))
        for setting in indexed.metrics
    }  # fmt: skip
    extra = None
    if METHOD_OLD in hits:
        (method_exact, method_index), (old_exact, old_index) = hits[METHOD_OLD], hits[OLD_OLD]
        # losses are linear in the hits: (e_m − i_m) − (e_o − i_o) = (e_m + i_o) − (i_m + e_o)
        extra = paired_margin_intervals(
            method_exact.plus(old_index), method_index.plus(old_exact)
        )
    return IndexSplit(
        searches=dict(searches),
        indexed=indexed,
        exact={s: mean_metrics([r.metrics for r in exact[s]]) for s in indexed.metrics},
        loss_intervals={s: paired_margin_intervals(*pair) for s, pair in hits.items()},
        extra_loss_intervals=extra,
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
