"""Embedding extraction split across the ranks of a torchrun job.

Each rank embeds one contiguous block of rows (its boundaries on multiples of the batch size, so
every batch is the one a single process would encode) and writes it as shards into one shared
attempt folder of the cache entry; after a barrier rank 0 checks the shards tile all rows and
commits the manifest, and every rank then reads the entry. The stored embeddings are
bit-identical to single-process extraction. In a single process these functions are
:func:`~xbt_bench.embed.extract.embed_split` and
:func:`~xbt_bench.embed.extract.embed_corpus`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import distributed
from ..data.base import ImageTextSet, TextCorpus
from ..errors import XbtError
from .cache import EmbeddingCache, EmbeddingKey, EmbedRecord, EmbedStats, console
from .extract import (
    DEFAULT_IMAGE_BATCH,
    DEFAULT_TEXT_BATCH,
    as_encoder,
    corpus_key,
    embed_corpus,
    embed_split,
    iter_image_embeddings,
    iter_text_embeddings,
    split_key,
)


def _sharded(
    key: EmbeddingKey,
    n_rows: int,
    batch_size: int,
    compute: Callable[[range], Iterator[np.ndarray]],
    cache: EmbeddingCache | None,
    stats: EmbedStats | None,
    mmap: bool,
) -> np.ndarray:
    """``key``'s entry, computed cooperatively by all ranks when absent (see module doc)."""
    cache = cache if cache is not None else EmbeddingCache()
    started = time.perf_counter()
    rank, world = distributed.rank(), distributed.world_size()
    rows = distributed.shard_range(n_rows, rank, world, align=batch_size)
    # Rank 0 decides for everyone, so that no rank waits in a collective the others skip.
    computed = distributed.broadcast_object(not cache.contains(key))
    if computed:
        attempt = distributed.broadcast_object(f"attempt-ranks-{uuid.uuid4().hex[:12]}")
        writer = cache.writer(key, attempt=attempt)
        failure = ""
        try:
            if len(rows):
                writer.write_stream(compute(rows), start=rows.start)
        except Exception as error:  # reported on every rank below rather than hanging the others
            failure = f"rank {rank}: {type(error).__name__}: {error}"
        failures = [f for f in distributed.all_gather_object(failure) if f]
        commit_failure = ""
        if not failures and distributed.is_main():
            try:
                writer.commit(n_rows, seconds=round(time.perf_counter() - started, 3), ranks=world)
            except XbtError as error:
                commit_failure = f"rank 0 commit: {error}"
        commit_failure = distributed.broadcast_object(commit_failure)
        if commit_failure:
            failures.append(commit_failure)
        if failures:
            if distributed.is_main():
                writer.abort()
            raise XbtError(
                f"distributed extraction of {key.describe()} failed, nothing was cached: "
                + "; ".join(failures)
            )
    array = cache.load(key, mmap=mmap)
    if array is None:
        raise XbtError(
            f"embeddings for {key.describe()} are missing from {cache.root} after extraction; "
            "do all ranks share one cache folder (XBT_BENCH_HOME on a shared filesystem)?"
        )
    if stats is not None:
        stats.add(
            EmbedRecord(
                model=key.model,
                split=key.split,
                side=key.side,
                rows=len(rows) if computed else len(array),
                computed=computed,
                seconds=round(time.perf_counter() - started, 3),
                path=str(cache.entry_dir(key)),
            )
        )
    if distributed.is_main():
        verb = f"computed on {world} ranks and cached" if computed else "reused cached"
        console.print(
            f"{verb} embeddings for {key.describe()}: {array.shape[0]}x{array.shape[1]} "
            f"{array.dtype} in {time.perf_counter() - started:.1f}s",
            highlight=False,
            soft_wrap=True,
        )
    return array


def embed_split_sharded(
    model: Any,
    data: ImageTextSet,
    side: str,
    *,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    dtype: str = "float32",
    batch_size: int | None = None,
    num_workers: int | None = None,
    amp: bool = True,
    mmap: bool = True,
) -> np.ndarray:
    """:func:`~xbt_bench.embed.extract.embed_split` with the rows split across the ranks of the
    current job; every rank returns the whole entry. ``stats`` counts this rank's forward
    passes. All ranks must call it with the same arguments and see the same cache folder."""
    if not distributed.is_distributed():
        return embed_split(
            model,
            data,
            side,
            cache=cache,
            stats=stats,
            dtype=dtype,
            batch_size=batch_size,
            num_workers=num_workers,
            amp=amp,
            mmap=mmap,
        )
    encoder = as_encoder(model)
    key = split_key(encoder, data, side, dtype=dtype, amp=amp)
    if side == "image":
        size = batch_size or DEFAULT_IMAGE_BATCH

        def compute(rows: range) -> Iterator[np.ndarray]:
            return iter_image_embeddings(
                encoder, data, rows=rows, batch_size=size, num_workers=num_workers, amp=amp
            )

        n_rows = data.n_images
    else:
        size = batch_size or DEFAULT_TEXT_BATCH

        def compute(rows: range) -> Iterator[np.ndarray]:
            return iter_text_embeddings(
                encoder,
                data.captions,
                rows=rows,
                batch_size=size,
                amp=amp,
                desc=f"{data.key} captions",
            )

        n_rows = len(data.captions)
    return _sharded(key, n_rows, size, compute, cache, stats, mmap)


def embed_corpus_sharded(
    model: Any,
    corpus: TextCorpus,
    *,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    dtype: str = "float32",
    batch_size: int = DEFAULT_TEXT_BATCH,
    amp: bool = True,
    mmap: bool = True,
) -> np.ndarray:
    """:func:`~xbt_bench.embed.extract.embed_corpus` with the texts split across the ranks of
    the current job, as :func:`embed_split_sharded`."""
    if not distributed.is_distributed():
        return embed_corpus(
            model,
            corpus,
            cache=cache,
            stats=stats,
            dtype=dtype,
            batch_size=batch_size,
            amp=amp,
            mmap=mmap,
        )
    encoder = as_encoder(model)
    key = corpus_key(encoder, corpus, dtype=dtype, amp=amp)

    def compute(rows: range) -> Iterator[np.ndarray]:
        return iter_text_embeddings(
            encoder,
            corpus.texts,
            rows=rows,
            batch_size=batch_size,
            amp=amp,
            desc=f"corpus {corpus.name}",
        )

    return _sharded(key, len(corpus.texts), batch_size, compute, cache, stats, mmap)
