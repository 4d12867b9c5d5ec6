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
from typing import Any

import numpy as np

from .. import distributed
from ..data.base import ImageTextSet, TextCorpus
from ..errors import XbtError
from ..models.stored import StoredModel
from .cache import EmbeddingCache, EmbedStats, LoadMeter
from .extract import (
    Extraction,
    corpus_extraction,
    embed_corpus,
    embed_split,
    record_request,
    split_extraction,
)


def _sharded(
    extraction: Extraction, cache: EmbeddingCache | None, stats: EmbedStats | None, mmap: bool
) -> np.ndarray:
    """``extraction``'s entry, computed cooperatively by all ranks when absent (module doc)."""
    key, n_rows = extraction.key, extraction.n_rows
    cache = cache if cache is not None else EmbeddingCache()
    started = time.perf_counter()
    rank, world = distributed.rank(), distributed.world_size()
    rows = distributed.shard_range(n_rows, rank, world, align=extraction.align)
    # Rank 0 decides for everyone, so that no rank waits in a collective the others skip.
    computed = distributed.broadcast_object(not cache.contains(key))  # verified
    meter = LoadMeter()
    if computed:
        if distributed.is_main():
            cache.note_content(key)
        attempt = distributed.broadcast_object(f"attempt-ranks-{uuid.uuid4().hex[:12]}")
        writer = cache.writer(key, attempt=attempt)
        failure = ""
        try:
            if len(rows):
                writer.write_stream(extraction.embed(rows=rows), start=rows.start)
        except Exception as error:  # reported on every rank below rather than hanging the others
            failure = f"rank {rank}: {type(error).__name__}: {error}"
        failures = [f for f in distributed.all_gather_object(failure) if f]
        job_cpu_s = sum(distributed.all_gather_object(meter.own_cpu_s()))  # every rank's
        commit_failure = ""
        if not failures and distributed.is_main():
            try:
                writer.commit(
                    n_rows,
                    seconds=round(time.perf_counter() - started, 3),
                    ranks=world,
                    device=extraction.device,
                    machine=meter.reading(job_cpu_s),
                )
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
    counted = len(rows) if computed else len(array)  # this rank's forward passes, or the reuse
    record_request(stats, cache, key, rows=counted, computed=computed, started=started)
    if distributed.is_main():
        verb = f"computed on {world} ranks (cached)" if computed else "reused"
        cache.console.print(
            f"{verb} embeddings: {key.label()}, {array.shape[0]}x{array.shape[1]} in "
            f"{time.perf_counter() - started:.1f} s",
            markup=False,
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
    mmap: bool = True,
    **options: Any,
) -> np.ndarray:
    """:func:`~xbt_bench.embed.extract.embed_split` with the rows split across the ranks of the
    current job; every rank returns the whole entry. ``stats`` counts this rank's forward
    passes; ``options`` (dtype, batch_size, num_workers, amp) are embed_split's. All ranks
    must call it with the same arguments and see the same cache folder (a stored model's
    embeddings are read by every rank)."""
    if not distributed.is_distributed() or isinstance(model, StoredModel):
        return embed_split(model, data, side, cache=cache, stats=stats, mmap=mmap, **options)
    return _sharded(split_extraction(model, data, side, **options), cache, stats, mmap)


def embed_corpus_sharded(
    model: Any,
    corpus: TextCorpus,
    *,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    mmap: bool = True,
    **options: Any,
) -> np.ndarray:
    """:func:`~xbt_bench.embed.extract.embed_corpus` with the texts split across the ranks of
    the current job, as :func:`embed_split_sharded`; ``options`` (dtype, batch_size, amp) are
    embed_corpus's."""
    if not distributed.is_distributed() or isinstance(model, StoredModel):
        return embed_corpus(model, corpus, cache=cache, stats=stats, mmap=mmap, **options)
    return _sharded(corpus_extraction(model, corpus, **options), cache, stats, mmap)
