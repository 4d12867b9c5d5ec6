"""Retrieval over embeddings that need not fit in memory: memory-mapped shards, streamed search.

:class:`EmbeddingShards` is a matrix stored as consecutive ``.npy`` shards (an embedding-cache
entry, or any files), read one block at a time; a file is mapped only while one of its blocks is
read, so the mapped pages leave the process with it.

Exact search (the reported numbers) never holds the gallery: every gallery block gets its own
``IndexFlatIP``, searched by every query block, and the per-block top-K lists are merged
(``faiss.merge_knn_results``). Memory is one gallery block plus the [queries, K] results.
Approximate search builds a FAISS index from a factory string (``"IVF1024,Flat"``,
``"HNSW32"``): trained on an evenly spaced sample of the gallery, then filled one block at a
time; it holds what the index stores (for ``Flat`` codes, the whole gallery). Approximate results
are labelled with the factory string (and search parameters) in ``RetrievalResult.search``.

Recall follows :func:`~xbt_bench.eval.retrieval.evaluate_retrieval` exactly (same tie rule), so
exact search over shards gives the same numbers as the in-memory evaluator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ..errors import InputError, NotFoundError
from .retrieval import (
    DEFAULT_KS,
    EXACT_SEARCH,
    RetrievalResult,
    _check_ks,
    _check_pairing,
    result_from_ranks,
    validate_embeddings,
    widening_ranks,
)

if TYPE_CHECKING:  # the cache module imports torch; reading shards does not need it
    from ..embed.cache import EmbeddingCache, EmbeddingKey

DEFAULT_BLOCK_ROWS = 65536
DEFAULT_TRAIN_ROWS = 65536


@dataclass(frozen=True)
class EmbeddingShards:
    """A [n_rows, dim] matrix stored as consecutive shards: ``.npy`` files (memory-mapped while
    read) or in-memory arrays. Rows are validated and L2-normalised as they are read."""

    name: str
    sources: tuple[Path | np.ndarray, ...]
    lengths: tuple[int, ...]
    dim: int

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]], name: str) -> EmbeddingShards:
        """Shards from ``.npy`` files holding consecutive rows, in the order given."""
        if not paths:
            raise InputError(f"{name}: no shard files given")
        lengths, dims = [], set()
        for path in paths:
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise InputError(f"{name}: cannot read shard {path} ({error})") from error
            if array.ndim != 2:
                raise InputError(f"{name}: shard {path} has shape {array.shape}, not [rows, dim]")
            lengths.append(array.shape[0])
            dims.add(array.shape[1])
            del array
        return cls._checked(name, tuple(Path(p) for p in paths), tuple(lengths), dims)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], name: str) -> EmbeddingShards:
        """Shards from arrays (e.g. memory-mapped ones) holding consecutive rows."""
        arrays = tuple(np.asarray(a) for a in arrays)
        if not arrays or any(a.ndim != 2 for a in arrays):
            shapes = [a.shape for a in arrays]
            raise InputError(f"{name}: need one or more [rows, dim] arrays, got shapes {shapes}")
        return cls._checked(
            name, arrays, tuple(len(a) for a in arrays), {a.shape[1] for a in arrays}
        )

    @classmethod
    def from_cache(cls, cache: EmbeddingCache, key: EmbeddingKey) -> EmbeddingShards:
        """The shards of a complete embedding-cache entry."""
        manifest = cache.manifest(key)
        if manifest is None or cache.load_shards(key) is None:
            raise NotFoundError(
                f"no complete cached embeddings for {key.describe()} under {cache.root}; "
                "extract them first (embed_split or embed_split_sharded)"
            )
        entry = cache.entry_dir(key)
        return cls.from_files([entry / s["path"] for s in manifest["shards"]], key.describe())

    @classmethod
    def _checked(
        cls,
        name: str,
        sources: tuple[Path | np.ndarray, ...],
        lengths: tuple[int, ...],
        dims: set[int],
    ) -> EmbeddingShards:
        if len(dims) != 1:
            raise InputError(f"{name}: shards disagree on the dimension ({sorted(dims)})")
        if sum(lengths) == 0:
            raise InputError(f"{name} is empty; retrieval needs at least one vector")
        return cls(name, sources, lengths, dims.pop())

    @property
    def n_rows(self) -> int:
        """Total number of rows."""
        return sum(self.lengths)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, dim)``."""
        return self.n_rows, self.dim

    def _read(self, shard: int, start: int, end: int) -> np.ndarray:
        source = self.sources[shard]
        if isinstance(source, np.ndarray):
            return np.array(source[start:end], dtype=np.float32)
        mapped = np.load(source, mmap_mode="r")
        try:
            return np.array(mapped[start:end], dtype=np.float32)
        finally:
            del mapped  # unmap now: its pages would otherwise count towards this process

    def blocks(self, rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, block)`` pairs covering all rows in order: float32, L2-normalised
        blocks of at most ``rows`` rows (never spanning two shards)."""
        if rows < 1:
            raise InputError(f"block rows must be positive, got {rows}")
        offset = 0
        for shard, length in enumerate(self.lengths):
            for start in range(0, length, rows):
                end = min(start + rows, length)
                block = self._read(shard, start, end)
                where = f"{self.name} rows [{offset + start}, {offset + end})"
                yield offset + start, validate_embeddings(where, block)
            offset += length

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted or not) as a float32 L2-normalised [len(rows), dim] array."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise InputError(f"{self.name}: rows outside [0, {self.n_rows}) requested")
        bounds = np.cumsum((0, *self.lengths))
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(bounds, rows, side="right") - 1
        for shard in np.unique(shard_of):
            picked = np.flatnonzero(shard_of == shard)
            local = rows[picked] - bounds[shard]
            source = self.sources[shard]
            mapped = source if isinstance(source, np.ndarray) else np.load(source, mmap_mode="r")
            out[picked] = mapped[local]
            del mapped
        return validate_embeddings(f"{self.name} (selected rows)", out)


def as_shards(x: np.ndarray | EmbeddingShards, name: str) -> EmbeddingShards:
    """``x`` itself, or an in-memory array as a one-shard :class:`EmbeddingShards`."""
    return x if isinstance(x, EmbeddingShards) else EmbeddingShards.from_arrays([x], name)


def search_label(index_factory: str | None, search_params: str | None = None) -> str:
    """How results name their search: ``"exact"``, or the factory string plus any search
    parameters (``"IVF1024,Flat (nprobe=16)"``)."""
    if index_factory is None:
        if search_params:
            raise InputError(
                f"search_params {search_params!r} need an approximate index_factory; exact "
                "search has no parameters"
            )
        return EXACT_SEARCH
    return f"{index_factory} ({search_params})" if search_params else index_factory


def build_sharded_index(
    gallery: np.ndarray | EmbeddingShards,
    index_factory: str,
    *,
    search_params: str | None = None,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> faiss.Index:
    """An inner-product FAISS index made by ``faiss.index_factory(dim, index_factory)``,
    trained (when it needs it) on ``train_rows`` evenly spaced gallery rows and filled one
    block at a time; ``search_params`` (e.g. ``"nprobe=16"``, ``"efSearch=64"``) are set
    with ``faiss.ParameterSpace``."""
    gallery = as_shards(gallery, "gallery")
    try:
        index = faiss.index_factory(gallery.dim, index_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise InputError(
            f"FAISS cannot build index {index_factory!r} ({str(error).splitlines()[0]}); "
            "use a factory string such as 'IVF1024,Flat' or 'HNSW32'"
        ) from error
    if not index.is_trained:
        sample = np.linspace(0, gallery.n_rows - 1, min(train_rows, gallery.n_rows))
        try:
            index.train(gallery.take(np.unique(sample.astype(np.int64))))
        except RuntimeError as error:  # e.g. more lists or PQ centroids than training rows
            raise InputError(
                f"FAISS cannot train index {index_factory!r} on {len(sample)} gallery rows "
                f"({str(error).splitlines()[0].split('failed: ')[-1]}); use fewer lists "
                "(nlist) or PQ bits (pq_nbits)"
            ) from error
    for _, block in gallery.blocks(block_rows):
        index.add(block)
    if search_params:
        set_search_params(index, search_params, index_factory)
    return index


def set_search_params(index: faiss.Index, search_params: str, index_factory: str) -> None:
    """Set ``search_params`` (e.g. ``"nprobe=16"``, ``"efSearch=64"``; comma-separated) on an
    index built from ``index_factory``, through ``faiss.ParameterSpace``."""
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as error:
        raise InputError(
            f"search_params {search_params!r} do not apply to {index_factory!r} "
            f"({str(error).splitlines()[0]}); e.g. 'nprobe=16' for IVF, 'efSearch=64' for HNSW"
        ) from error


def _check_dims(queries: EmbeddingShards, dim: int) -> None:
    if queries.dim != dim:
        raise InputError(
            f"{queries.name} have dimension {queries.dim} but the gallery has dimension {dim}; "
            "queries must be embedded into the gallery's space"
        )


def _exact_topk(
    queries: EmbeddingShards, gallery: EmbeddingShards, k: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by scanning gallery blocks and merging their per-block lists."""
    scores = np.full((queries.n_rows, k), -np.inf, dtype=np.float32)
    ids = np.full((queries.n_rows, k), -1, dtype=np.int64)
    for first, block in gallery.blocks(block_rows):
        index = faiss.IndexFlatIP(gallery.dim)
        index.add(block)
        found = min(k, len(block))
        for start, chunk in queries.blocks(block_rows):
            end = start + len(chunk)
            block_scores = np.full((len(chunk), k), -np.inf, dtype=np.float32)
            block_ids = np.full((len(chunk), k), -1, dtype=np.int64)
            block_scores[:, :found], local = index.search(chunk, found)
            block_ids[:, :found] = np.where(local >= 0, local + first, -1)
            scores[start:end], ids[start:end] = faiss.merge_knn_results(
                np.stack([scores[start:end], block_scores]),
                np.stack([ids[start:end], block_ids]),
                keep_max=True,
            )
    return scores, ids


def search_sharded(
    queries: np.ndarray | EmbeddingShards,
    gallery: np.ndarray | EmbeddingShards | None,
    k: int,
    *,
    index: faiss.Index | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product scores and gallery ids per query, best first ([n, k] each), for
    normalised query and gallery rows read block by block. Exact over ``gallery`` (which is
    never held whole), or over a prebuilt ``index`` (see :func:`build_sharded_index`)."""
    queries = as_shards(queries, "queries")
    if index is None:
        if gallery is None:
            raise InputError("search_sharded needs a gallery or a prebuilt index")
        gallery = as_shards(gallery, "gallery")
        n_gallery, dim = gallery.shape
    else:
        n_gallery, dim = index.ntotal, index.d
    _check_dims(queries, dim)
    if not 1 <= k <= n_gallery:
        raise InputError(f"k={k} must be between 1 and the gallery size {n_gallery}")
    if index is None:
        return _exact_topk(queries, gallery, k, block_rows)
    scores = np.empty((queries.n_rows, k), dtype=np.float32)
    ids = np.empty((queries.n_rows, k), dtype=np.int64)
    for start, chunk in queries.blocks(block_rows):
        end = start + len(chunk)
        index.search(chunk, k, D=scores[start:end], I=ids[start:end])
    return scores, ids


def sharded_positive_ranks(
    queries: np.ndarray | EmbeddingShards,
    gallery: np.ndarray | EmbeddingShards,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k_max: int,
    *,
    index: faiss.Index | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> np.ndarray:
    """:func:`~xbt_bench.eval.retrieval.positive_ranks` over shards: per query, the number of
    gallery items scoring strictly above its best positive, capped at ``k_max``. Exact search
    unless an ``index`` over ``gallery`` is given."""
    queries, gallery = as_shards(queries, "queries"), as_shards(gallery, "gallery")
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    if query_labels.shape != (queries.n_rows,) or gallery_labels.shape != (gallery.n_rows,):
        raise InputError(
            f"need one label per query ({queries.n_rows}) and per gallery item "
            f"({gallery.n_rows}), got shapes {query_labels.shape} and {gallery_labels.shape}"
        )
    if index is not None and (index.ntotal, index.d) != gallery.shape:
        raise InputError(
            f"index holds {index.ntotal} vectors of dimension {index.d} but the gallery has "
            f"shape {gallery.shape}; build the index from this gallery"
        )

    def search(todo: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        subset = queries if todo.size == queries.n_rows else queries.take(todo)
        return search_sharded(subset, gallery, window, index=index, block_rows=block_rows)

    return widening_ranks(search, query_labels, gallery_labels, k_max)


def evaluate_retrieval_sharded(
    *,
    text_queries: np.ndarray | EmbeddingShards,
    image_gallery: np.ndarray | EmbeddingShards,
    image_queries: np.ndarray | EmbeddingShards,
    text_gallery: np.ndarray | EmbeddingShards,
    caption_image: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    index_factory: str | None = None,
    search_params: str | None = None,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> RetrievalResult:
    """:func:`~xbt_bench.eval.retrieval.evaluate_retrieval` for embeddings given as shards
    (or arrays): the same recalls, computed block by block. Exact search unless
    ``index_factory`` is given; the result's ``search`` names the index and its parameters."""
    ks = _check_ks(ks)
    label = search_label(index_factory, search_params)
    text_queries = as_shards(text_queries, "text_queries")
    image_gallery = as_shards(image_gallery, "image_gallery")
    image_queries = as_shards(image_queries, "image_queries")
    text_gallery = as_shards(text_gallery, "text_gallery")
    caption_image = _check_pairing(
        text_queries, image_gallery, image_queries, text_gallery, caption_image
    )
    image_ids = np.arange(len(image_gallery))
    ranks = {}
    for name, queries, gallery, query_labels, gallery_labels in (
        ("t2i", text_queries, image_gallery, caption_image, image_ids),
        ("i2t", image_queries, text_gallery, image_ids, caption_image),
    ):
        _check_dims(queries, gallery.dim)
        index = None
        if index_factory is not None:
            index = build_sharded_index(
                gallery,
                index_factory,
                search_params=search_params,
                train_rows=train_rows,
                block_rows=block_rows,
            )
        ranks[name] = sharded_positive_ranks(
            queries,
            gallery,
            query_labels,
            gallery_labels,
            ks[-1],
            index=index,
            block_rows=block_rows,
        )
        del index
    return result_from_ranks(ranks["t2i"], ranks["i2t"], ks, label)
