"""What ``xbt-bench pairs diagnose`` writes: a pair's diagnostics on one split,
``<pair>/<dataset>/diagnostics/<split>.json``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from xbt_bench.scoring.diagnostics import PairDiagnostics

from .base import ResultFile, path_component

DIAGNOSTICS_DIR = "diagnostics"


class DiagnosticsResult(ResultFile, PairDiagnostics):
    """:class:`PairDiagnostics` of ``pair`` (models ``old_ref`` → ``new_ref``) on ``dataset``'s
    ``split``, the maps fitted on the text corpus ``fit_corpus``."""

    kind = "diagnostics"
    command = "xbt-bench pairs diagnose {pair} --split {split}"
    leading = ("pair", "old_ref", "new_ref", "dataset", "split", "images", "captions")

    pair: str = Field(min_length=1)
    old_ref: str
    new_ref: str
    dataset: str = Field(min_length=1)
    split: str = Field(min_length=1)
    images: int = Field(gt=0)
    captions: int = Field(gt=0)
    fit_corpus: str
    fingerprints: dict[str, str] = Field(default_factory=dict)

    def relative_path(self) -> Path:
        """``<pair>/<dataset>/diagnostics/<split>.json``."""
        folder = Path(path_component(self.pair)) / path_component(self.dataset)
        return folder / DIAGNOSTICS_DIR / f"{path_component(self.split)}.json"
