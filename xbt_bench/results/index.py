"""What ``xbt-bench run --index KIND`` writes beside the exact result: a method's recalls
through a production FAISS index, ``<pair>/<dataset>/<method>.index-<name>.json``.

Each split holds an :class:`~xbt_bench.scoring.IndexSplit`: the recalls through the index (OLD's
gallery index, trained on OLD's vectors, for old→old and method→old; NEW's for new→new), the same
settings with exact search from the same fits, and the loss between them. The exact
``<method>.json`` stays the only thing the main leaderboard ranks.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from xbt_bench.scoring import IndexSplit

from .base import path_component
from .run import MethodResult, Setting


class IndexResult(MethodResult):
    """One method's recalls through production index ``index`` (its kind and the parameters
    fixed on the command line, ``params``; each split records the FAISS index every gallery
    had), next to exact search, for every evaluated split."""

    kind = "index"
    command = "xbt-bench run --pair {pair} --method {method} --index KIND"
    leading = ("pair", "old", "new", "method", "dataset", "index", "params", "split", "setting")

    index: str = Field(min_length=1, description="the index's name: its kind and fixed params")
    params: dict[str, int] = Field(
        default_factory=dict, description="parameters fixed with --index-param (others default)"
    )
    split: str = Field(min_length=1, description="the primary split")
    setting: Setting = METHOD_OLD
    seeds: list[int] = Field(min_length=1)
    splits: dict[str, IndexSplit] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> IndexResult:
        if self.split not in self.splits:
            raise ValueError(f"primary split {self.split!r} is not in splits {list(self.splits)}")
        for name, split in self.splits.items():
            missing = [s for s in (OLD_OLD, NEW_NEW) if s not in split.exact]
            if missing:
                raise ValueError(f"splits[{name!r}] lacks the references {missing}")
        return self

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/<method>.index-<name>.json``."""
        name = f"{path_component(self.method)}.index-{path_component(self.index)}"
        return self.folder() / f"{name}.json"
