"""Batched embedding extraction and the on-disk embedding cache."""

from xbt_bench.embed.cache import (
    DEFAULT_SHARD_ROWS,
    EmbeddingCache,
    EmbeddingKey,
    EmbedRecord,
    EmbedStats,
    Shard,
    ShardWriter,
)
from xbt_bench.embed.extract import (
    Encoder,
    as_encoder,
    corpus_key,
    default_num_workers,
    embed_corpus,
    embed_images,
    embed_set,
    embed_split,
    embed_texts,
    iter_image_embeddings,
    iter_text_embeddings,
    split_key,
    state_fingerprint,
)

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "EmbedRecord",
    "EmbedStats",
    "EmbeddingCache",
    "EmbeddingKey",
    "Encoder",
    "Shard",
    "ShardWriter",
    "as_encoder",
    "corpus_key",
    "default_num_workers",
    "embed_corpus",
    "embed_images",
    "embed_set",
    "embed_split",
    "embed_texts",
    "iter_image_embeddings",
    "iter_text_embeddings",
    "split_key",
    "state_fingerprint",
]
