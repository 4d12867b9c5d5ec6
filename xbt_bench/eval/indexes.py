"""Production indexes: the FAISS index a serving system builds over its gallery.

A deployed gallery is rarely searched exactly: it sits in an IVF, HNSW or IVF-PQ index trained on
the gallery's own vectors. :class:`IndexSpec` names such an index by kind (``flat``, ``ivf``,
``hnsw``, ``ivfpq``) and the parameters a user overrode; every other parameter follows the
gallery's size and dimension (:meth:`IndexSpec.resolve`), as an operator would size it:

- ``ivf``: ``nlist`` = 4·√n (FAISS's rule of thumb), at most n / 39 so that k-means has its 39
  training points per list; ``nprobe`` = √nlist.
- ``hnsw``: ``M`` = 32, ``efSearch`` = 64 (``efConstruction`` FAISS's 40).
- ``ivfpq``: the IVF lists above with product-quantised codes: ``pq_m`` = dim / 4 sub-vectors
  (the largest divisor of dim up to it) of ``pq_nbits`` = 8 bits, fewer when the gallery is too
  small to train 2^pq_nbits centroids with 39 points each (no polysemous training: ``np``).
- ``flat``: exact inner-product search (the reported numbers).

Building goes through :func:`~xbt_bench.eval.large.build_sharded_index` (trained on the gallery
alone, then filled); HNSW inserts with one thread, so a rebuild gives the same graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

from ..errors import ConfigError, did_you_mean
from .large import (
    DEFAULT_TRAIN_ROWS,
    EmbeddingShards,
    as_shards,
    build_sharded_index,
    search_label,
)
from .retrieval import Embeddings, SearchIndexes

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
INDEX_PARAMS: dict[str, tuple[str, ...]] = {
    "flat": (),
    "ivf": ("nlist", "nprobe"),
    "hnsw": ("M", "efSearch"),
    "ivfpq": ("nlist", "nprobe", "pq_m", "pq_nbits"),
}
HNSW_DEFAULTS = {"M": 32, "efSearch": 64}  # efConstruction: FAISS's 40
POINTS_PER_CENTROID = 39  # FAISS's k-means asks for at least this many training points each


@dataclass(frozen=True)
class IndexSpec:
    """A production index by kind, with the parameters given explicitly (``params``); the
    others are sized from the gallery (:meth:`resolve`). ConfigError naming the fix for an
    unknown kind or parameter, or a parameter that is not a positive integer."""

    kind: str = "flat"
    # given as a mapping or (name, value) pairs; kept as sorted pairs, so a spec is hashable
    params: Mapping[str, int] | tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))
        if self.kind not in INDEX_KINDS:
            hint = did_you_mean(self.kind, INDEX_KINDS, "index kinds")
            raise ConfigError(f"--index {self.kind!r} is not an index kind; {hint}")
        known = INDEX_PARAMS[self.kind]
        for key, value in self.params:
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise ConfigError(
                    f"--index-param {key}: index {self.kind!r} has no parameter {key!r} "
                    f"(its parameters: {allowed})"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--index-param {key}={value!r}: use a positive integer")

    @property
    def name(self) -> str:
        """The kind and the parameters given, e.g. ``ivf`` or ``ivf nlist=8,nprobe=8``: how
        result files and leaderboard sections name the index."""
        given = ",".join(f"{key}={value}" for key, value in self.params)
        return f"{self.kind} {given}" if given else self.kind

    def sizes(self, n_rows: int, dim: int) -> dict[str, int]:
        """Every parameter of this index over a gallery of ``n_rows`` vectors of dimension
        ``dim``: the ones given, the others sized from the gallery (module docstring)."""
        p = dict(self.params)
        if self.kind == "flat":
            return p
        if self.kind == "hnsw":
            return HNSW_DEFAULTS | p
        nlist = p.get("nlist", min(round(4 * math.sqrt(n_rows)), n_rows // POINTS_PER_CENTROID))
        nlist = max(nlist, 1)
        sizes = {"nlist": nlist, "nprobe": min(p.get("nprobe", round(math.sqrt(nlist))), nlist)}
        if self.kind == "ivf":
            return sizes
        pq_m = p.get("pq_m", max(m for m in range(1, max(dim // 4, 1) + 1) if dim % m == 0))
        if dim % pq_m:
            raise ConfigError(
                f"--index-param pq_m={pq_m} must divide the gallery's dimension {dim}"
            )
        fit = int(math.log2(max(n_rows // POINTS_PER_CENTROID, 2)))
        return sizes | {"pq_m": pq_m, "pq_nbits": p.get("pq_nbits", min(8, fit))}

    def resolve(self, n_rows: int, dim: int) -> tuple[str, str | None]:
        """The FAISS factory string and search parameters of this index over a gallery of
        ``n_rows`` vectors of dimension ``dim`` (:meth:`sizes`)."""
        p = self.sizes(n_rows, dim)
        if self.kind == "flat":
            return "Flat", None
        if self.kind == "hnsw":
            return f"HNSW{p['M']}", f"efSearch={p['efSearch']}"
        if self.kind == "ivf":
            return f"IVF{p['nlist']},Flat", f"nprobe={p['nprobe']}"
        # np: no polysemous training (codes ordered for Hamming filtering, which search never
        # uses here; it costs minutes of training)
        return f"IVF{p['nlist']},PQ{p['pq_m']}x{p['pq_nbits']}np", f"nprobe={p['nprobe']}"

    def describe(self, n_rows: int, dim: int) -> str:
        """The resolved index over a gallery of that shape, e.g. ``IVF25,Flat (nprobe=5)``."""
        return search_label(*self.resolve(n_rows, dim))

    def build(self, gallery: np.ndarray | EmbeddingShards) -> faiss.Index:
        """This index over ``gallery`` (rows L2-normalised), trained on the gallery only: on
        enough evenly spaced rows to give every list and PQ centroid its 39 points."""
        gallery = as_shards(gallery, "gallery")
        factory, params = self.resolve(gallery.n_rows, gallery.dim)
        p = self.sizes(gallery.n_rows, gallery.dim)
        centroids = max(p.get("nlist", 1), 2 ** p.get("pq_nbits", 0))
        train_rows = max(DEFAULT_TRAIN_ROWS, POINTS_PER_CENTROID * centroids)
        with _one_thread(self.kind == "hnsw"):
            return build_sharded_index(
                gallery, factory, search_params=params, train_rows=train_rows
            )


def build_search_indexes(gallery: Embeddings, index: IndexSpec) -> SearchIndexes:
    """``index`` built over each side of a test set's gallery: its images (searched by caption
    queries) and its captions (searched by image queries), each trained on its own vectors."""
    images, texts = np.asarray(gallery.images), np.asarray(gallery.texts)
    return SearchIndexes(
        images=index.build(images),
        texts=index.build(texts),
        image_search=index.describe(*images.shape),
        text_search=index.describe(*texts.shape),
    )


@contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
    """FAISS on one OpenMP thread while ``enabled`` (HNSW's graph depends on the order in which
    threads insert, so several threads could give another graph on every build)."""
    threads = faiss.omp_get_max_threads()
    if enabled:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
