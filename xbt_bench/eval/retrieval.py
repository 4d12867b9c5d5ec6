"""Cross-model image-text retrieval with FAISS: recall@K as CLIP_benchmark defines it.

T2I: each caption queries the image gallery; a hit at K when its paired image is in the top K.
I2T: each image queries the caption gallery; a hit at K when any of its captions is in the top K.

Ties: a query's rank is the number of gallery items scoring *strictly* higher than its best
positive, so a positive tied with the K-th item is a hit at K. Without ties this is exactly
CLIP_benchmark's ``torch.topk`` membership test. Ranks are computed from FAISS's own scores (a
top-(K+1) search, widened for the rare queries whose tie block reaches the window's end), so a
positive and the items it ties with are compared as the search scored them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import NamedTuple

import faiss
import numpy as np

from ..errors import InputError

DEFAULT_KS = (1, 5, 10)
RECALL_KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
METRIC_KEYS = (*RECALL_KEYS, "rsum")
EXACT_SEARCH = "exact"


class Embeddings(NamedTuple):
    """One encoder's embeddings of a test set: images [n_images, d] and captions [n_captions, d]."""

    images: np.ndarray
    texts: np.ndarray


@dataclass(frozen=True)
class RetrievalResult:
    """Recalls in percent (``t2i_r{k}``, ``i2t_r{k}``, ``rsum``), per-query R@1 hits and, when
    known, each query's rank of its best positive (capped at the largest K; a query is a hit at
    K when its rank is below K): what bootstrap intervals resample."""

    metrics: dict[str, float]
    t2i_hit1: np.ndarray  # [n_captions] bool
    i2t_hit1: np.ndarray  # [n_images] bool
    search: str = EXACT_SEARCH  # "exact", or the FAISS indexes searched (SearchIndexes.label)
    t2i_ranks: np.ndarray | None = None  # [n_captions] int
    i2t_ranks: np.ndarray | None = None  # [n_images] int


class SearchIndexes(NamedTuple):
    """Prebuilt FAISS indexes over one gallery's images and captions (e.g. a production index
    trained on them: :mod:`~xbt_bench.eval.indexes`), and how results name each search."""

    images: faiss.Index
    texts: faiss.Index
    image_search: str
    text_search: str

    @property
    def label(self) -> str:
        """``images <search>; captions <search>``: what a result searched."""
        return f"images {self.image_search}; captions {self.text_search}"


def _as_matrix(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as a non-empty C-contiguous float32 [n, d] array (no copy when it already is one)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array [n, dim], got shape {x.shape}")
    if x.size == 0:
        raise InputError(f"{name} is empty (shape {x.shape}); retrieval needs at least one vector")
    return np.ascontiguousarray(x, dtype=np.float32)


def _first(positions: np.ndarray, what: str) -> str:
    return f"{positions.size} {what} (first: {positions[:5].tolist()})"


def validate_embeddings(name: str, x: np.ndarray) -> np.ndarray:
    """Check ``x`` ([n, d], finite, no zero rows) and return a float32 copy with unit-norm rows."""
    x = _as_matrix(name, x)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise InputError(f"{name} has NaN or inf values in {_first(bad, 'rows')}")
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InputError(f"{name} has all-zero vectors (no direction) in {_first(zero, 'rows')}")
    return x / norms[:, None]


def build_index(gallery: np.ndarray) -> faiss.Index:
    """An exact inner-product FAISS index (``IndexFlatIP``) over ``gallery``; approximate ones
    are built by :func:`~xbt_bench.eval.large.build_sharded_index`."""
    gallery = _as_matrix("gallery", gallery)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    return index


def search_topk(
    queries: np.ndarray,
    gallery: np.ndarray | None,
    k: int,
    *,
    chunk_size: int = 4096,
    index: faiss.Index | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product scores and gallery ids per query, best first ([n, k] each).

    Exact search over ``gallery`` by default; pass a prebuilt ``index`` (see ``build_index``)
    instead to search it, e.g. an approximate one. Queries are searched ``chunk_size`` at a time,
    so no [queries x gallery] matrix is ever held. Vectors are used as given: normalise them
    for cosine scores.
    """
    queries = _as_matrix("queries", queries)
    if index is None:
        if gallery is None:
            raise InputError("search_topk needs a gallery array or a prebuilt index")
        index = build_index(gallery)
    elif gallery is not None and (gallery.shape[0] != index.ntotal or gallery.shape[1] != index.d):
        raise InputError(
            f"index holds {index.ntotal} vectors of dimension {index.d} but the gallery has "
            f"shape {tuple(gallery.shape)}; build the index from this gallery"
        )
    if queries.shape[1] != index.d:
        raise InputError(
            f"queries have dimension {queries.shape[1]} but the gallery has dimension {index.d}; "
            "queries must be embedded into the gallery's space"
        )
    if not 1 <= k <= index.ntotal:
        raise InputError(f"k={k} must be between 1 and the gallery size {index.ntotal}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {chunk_size}")
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        end = start + chunk_size
        index.search(queries[start:end], k, D=scores[start:end], I=ids[start:end])
    return scores, ids


def positive_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k_max: int,
    *,
    index: faiss.Index | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Per query, the number of gallery items scoring strictly above its best positive, capped
    at ``k_max`` (a rank r is a hit at every K > r). Gallery item ``g`` is a positive of query
    ``q`` when ``gallery_labels[g] == query_labels[q]``; a query without one ranks ``k_max``.

    Vectors are used as given (pass normalised ones). Exact search unless ``index``, a prebuilt
    FAISS index holding ``gallery`` (e.g. an approximate one), is given: then ranks are what
    that index returns.
    """
    queries = _as_matrix("queries", queries)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    if query_labels.shape != (len(queries),) or gallery_labels.shape != (len(gallery),):
        raise InputError(
            f"need one label per query ({len(queries)}) and per gallery item ({len(gallery)}), "
            f"got shapes {query_labels.shape} and {gallery_labels.shape}"
        )
    if index is None:
        index = build_index(gallery)
    elif index.ntotal != len(gallery):
        raise InputError(
            f"index holds {index.ntotal} vectors but the gallery has {len(gallery)}; build the "
            "index from this gallery"
        )

    def search(todo: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        subset = queries if todo.size == len(queries) else queries[todo]
        return search_topk(subset, None, window, chunk_size=chunk_size, index=index)

    return widening_ranks(search, query_labels, gallery_labels, k_max)


def widening_ranks(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k_max: int,
) -> np.ndarray:
    """:func:`positive_ranks` from top-``window`` searches: ``search(todo, window)`` returns
    the scores and gallery ids, best first, of the queries ``todo`` (indices into
    ``query_labels``). A window of k_max + 1 settles most queries; the rest are searched again
    with a 4x wider one, up to the whole gallery."""
    n_gallery = len(gallery_labels)
    ranks = np.full(len(query_labels), k_max, dtype=np.int64)
    todo = np.arange(len(query_labels))
    window = min(k_max + 1, n_gallery)
    while todo.size:
        scores, ids = search(todo, window)
        is_positive = (ids >= 0) & (gallery_labels[ids] == query_labels[todo, None])
        found = is_positive.any(axis=1)
        # Sorted best first, so the first positive in the window is the best-scoring one.
        best = scores[np.arange(len(ids)), is_positive.argmax(axis=1)]
        above = np.minimum((scores > best[:, None]).sum(axis=1), k_max)
        ranks[todo[found]] = above[found]
        if window == n_gallery:
            break
        # No positive in the window, yet its last score ties the k_max-th: a positive beyond
        # the window may tie too, so search those queries again with a wider window.
        todo = todo[~found & (scores[:, -1] >= scores[:, k_max - 1])]
        window = min(4 * window, n_gallery)
    return ranks


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted(set(ks)))
    if not ks or any(not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise InputError(f"ks must be positive integers, got {ks}")
    return ks


def _check_same_dim(
    query_name: str, queries: np.ndarray, gallery_name: str, gallery: np.ndarray
) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise InputError(
            f"{query_name} have dimension {queries.shape[1]} but {gallery_name} have dimension "
            f"{gallery.shape[1]}; queries must be embedded into the gallery's space"
        )


def _check_caption_image(caption_image: np.ndarray, n_captions: int, n_images: int) -> np.ndarray:
    caption_image = np.asarray(caption_image)
    if caption_image.shape != (n_captions,):
        raise InputError(
            f"caption_image must hold one image index per caption ({n_captions}), "
            f"got shape {caption_image.shape}"
        )
    if not np.issubdtype(caption_image.dtype, np.integer):
        raise InputError(f"caption_image must hold integer indices, got {caption_image.dtype}")
    outside = np.flatnonzero((caption_image < 0) | (caption_image >= n_images))
    if outside.size:
        raise InputError(
            f"caption_image has image indices outside [0, {n_images}) at "
            f"{_first(outside, 'captions')}, values {caption_image[outside[:5]].tolist()}"
        )
    orphans = np.flatnonzero(np.bincount(caption_image, minlength=n_images) == 0)
    if orphans.size:
        raise InputError(
            f"caption_image gives no caption to {_first(orphans, 'images')}; "
            "image-to-text retrieval needs at least one caption per image"
        )
    return caption_image.astype(np.int64, copy=False)


def _check_pairing(
    text_queries: Sized,
    image_gallery: Sized,
    image_queries: Sized,
    text_gallery: Sized,
    caption_image: np.ndarray,
) -> np.ndarray:
    """``caption_image`` checked against the four sides of a T2I + I2T evaluation, after
    checking that the queries and galleries embed the same captions and the same images."""
    if len(text_queries) != len(text_gallery):
        raise InputError(
            f"text_queries has {len(text_queries)} captions but text_gallery has "
            f"{len(text_gallery)}; both must embed the same captions"
        )
    if len(image_queries) != len(image_gallery):
        raise InputError(
            f"image_queries has {len(image_queries)} images but image_gallery has "
            f"{len(image_gallery)}; both must embed the same images"
        )
    return _check_caption_image(caption_image, len(text_queries), len(image_gallery))


def result_from_ranks(
    t2i: np.ndarray, i2t: np.ndarray, ks: Sequence[int] = DEFAULT_KS, search: str = EXACT_SEARCH
) -> RetrievalResult:
    """Recall@K in percent and rsum from each query's rank of its best positive (T2I ranks
    [n_captions], I2T ranks [n_images]; a rank below K is a hit at K)."""
    metrics = {f"t2i_r{k}": 100.0 * float(np.mean(t2i < k)) for k in ks}
    metrics |= {f"i2t_r{k}": 100.0 * float(np.mean(i2t < k)) for k in ks}
    metrics["rsum"] = sum(metrics.values())
    return RetrievalResult(metrics, t2i < 1, i2t < 1, search=search, t2i_ranks=t2i, i2t_ranks=i2t)


def evaluate_retrieval(
    *,
    text_queries: np.ndarray,
    image_gallery: np.ndarray,
    image_queries: np.ndarray,
    text_gallery: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    indexes: SearchIndexes | None = None,
    chunk_size: int = 4096,
) -> RetrievalResult:
    """T2I (``text_queries`` [n_captions, d_q] against ``image_gallery`` [n_images, d_q]) and I2T
    (``image_queries`` [n_images, d_g] against ``text_gallery`` [n_captions, d_g]) recall@K in
    percent, plus rsum. ``caption_image[c]`` is the image index of caption ``c``. Embeddings are
    validated and L2-normalised here; search is exact unless ``indexes`` (prebuilt over the two
    galleries) are given, and the result's ``search`` says which.
    """
    ks = _check_ks(ks)
    text_queries = validate_embeddings("text_queries", text_queries)
    image_gallery = validate_embeddings("image_gallery", image_gallery)
    image_queries = validate_embeddings("image_queries", image_queries)
    text_gallery = validate_embeddings("text_gallery", text_gallery)
    _check_same_dim("text_queries", text_queries, "image_gallery", image_gallery)
    _check_same_dim("image_queries", image_queries, "text_gallery", text_gallery)
    caption_image = _check_pairing(
        text_queries, image_gallery, image_queries, text_gallery, caption_image
    )
    image_ids = np.arange(len(image_gallery))
    image_index, text_index = (None, None) if indexes is None else (indexes.images, indexes.texts)
    t2i = positive_ranks(text_queries, image_gallery, caption_image, image_ids, ks[-1],
                         index=image_index, chunk_size=chunk_size)  # fmt: skip
    i2t = positive_ranks(image_queries, text_gallery, image_ids, caption_image, ks[-1],
                         index=text_index, chunk_size=chunk_size)  # fmt: skip
    return result_from_ranks(t2i, i2t, ks, EXACT_SEARCH if indexes is None else indexes.label)


def retrieval_matrix(
    query_sets: Mapping[tuple[int, int], Embeddings],
    gallery_sets: Sequence[Embeddings],
    caption_image: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[tuple[int, int], RetrievalResult]:
    """Results of a chain v0 -> v1 -> ... for every (query model i, gallery model j), i >= j.

    ``gallery_sets[j]`` is the test set embedded by model j's gallery encoder and
    ``query_sets[(i, j)]`` the test set embedded by model i's query encoder for gallery j (the
    same object for every j when all models share one space).
    """
    n = len(gallery_sets)
    expected = {(i, j) for i in range(n) for j in range(i + 1)}
    if n == 0 or set(query_sets) != expected:
        raise InputError(
            f"a chain of {n} models needs query sets for exactly the pairs (i, j), i >= j: "
            f"missing {sorted(expected - set(query_sets))}, "
            f"unexpected {sorted(set(query_sets) - expected)}"
        )
    return {
        (i, j): evaluate_retrieval(
            text_queries=query_sets[i, j].texts,
            image_gallery=gallery_sets[j].images,
            image_queries=query_sets[i, j].images,
            text_gallery=gallery_sets[j].texts,
            caption_image=caption_image,
            ks=ks,
        )
        for i, j in sorted(expected)
    }
