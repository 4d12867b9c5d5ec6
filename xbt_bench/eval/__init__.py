"""Retrieval evaluation (FAISS, CLIP_benchmark definitions) and compatibility metrics."""

from xbt_bench.eval.compat import (
    average_compatibility,
    compatibility,
    compatibility_matrix,
    flip_rates,
    gain_share,
    retrieval_flip_rates,
)
from xbt_bench.eval.retrieval import (
    METRIC_KEYS,
    RECALL_KEYS,
    Embeddings,
    RetrievalResult,
    build_index,
    evaluate_retrieval,
    positive_ranks,
    retrieval_matrix,
    search_topk,
    validate_embeddings,
)

__all__ = [
    "METRIC_KEYS",
    "RECALL_KEYS",
    "Embeddings",
    "RetrievalResult",
    "average_compatibility",
    "build_index",
    "compatibility",
    "compatibility_matrix",
    "evaluate_retrieval",
    "flip_rates",
    "gain_share",
    "positive_ranks",
    "retrieval_flip_rates",
    "retrieval_matrix",
    "search_topk",
    "validate_embeddings",
]
