"""Where xbt-bench keeps its caches: ``$XBT_BENCH_HOME`` or the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root of every cache (toy data, toy models, embeddings, training checkpoints)."""
    env = os.environ.get("XBT_BENCH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "xbt-bench"


def cache_dir(*parts: str) -> Path:
    """``home()/parts...``, created if missing."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
