"""Token tables: a tokenizer's output for a whole set of texts, computed once and cached.

Tokenising is plain Python (open_clip's BPE tokenizer) and costs about as much as running a
toy text tower, so a set of texts is tokenised once per tokenizer and kept on disk under
``$XBT_BENCH_HOME/tokens`` (int32, verified when read): both models of a pair that share a
tokenizer, every rerun, and every training step read the same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..atomic import is_intact, write_npy
from ..console import warn
from ..data.base import fingerprint_of
from ..paths import cache_dir

_CHUNK = 8192


def tokenizer_signature(tokenizer: Any) -> str:
    """What identifies a tokenizer's output: its type and context length."""
    context = getattr(tokenizer, "context_length", None)
    return f"{type(tokenizer).__name__}(context_length={context})"


def token_table(tokenizer: Any, texts: Sequence[str], texts_key: str) -> np.ndarray:
    """``tokenizer(texts)`` as int32 [len(texts), context], from the cache when an intact table
    of this tokenizer and ``texts_key`` (a fingerprint of ``texts``) is there."""
    name = fingerprint_of([tokenizer_signature(tokenizer), texts_key])
    path = cache_dir("tokens") / f"{name}.npy"
    if is_intact(path):
        return np.load(path, mmap_mode="r")
    if path.exists():
        warn(f"token table {path} fails its checksum; tokenising again")
    chunks = [
        tokenizer(list(texts[i : i + _CHUNK])).numpy().astype(np.int32)
        for i in range(0, len(texts), _CHUNK)
    ]
    tokens = np.concatenate(chunks)
    write_npy(path, tokens, checked=True)
    return tokens
