"""xbt-bench: benchmark suite for backward-compatible upgrades of vision-language models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .serving import QueryEncoder

__version__ = "0.1.0"


def load_query_encoder(path: str | Path, **options: Any) -> QueryEncoder:
    """The query encoder ``xbt-bench export`` wrote to ``path``: ``encode_text(texts)``,
    ``encode_image(images)`` and ``map_new_embeddings(array)`` return unit vectors in OLD's
    space (options: ``old``, ``new``, ``device``, ``verify``; see
    :func:`xbt_bench.serving.load_query_encoder`). Imported on first use, so ``import
    xbt_bench`` stays light."""
    from .serving import load_query_encoder as load

    return load(path, **options)
