"""Retrieval recalls that papers report for real CLIP upgrades: shown, never re-run here.

``published_results.csv`` (shipped with the package) holds one row per (pair, dataset, method)
as the paper printed it, in percent. Leaderboards may show these rows only in a separate
section labelled :data:`REPORTED_LABEL`, with their ``source``, ``citation`` and ``protocol``.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..errors import XbtError

REPORTED_LABEL = "reported, not re-run"
RECALL_COLUMNS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")

CITATIONS: dict[str, str] = {
    "jang2025xbt": (
        'Y. K. Jang and S.-N. Lim, "Towards Cross-modal Backward-compatible Representation '
        'Learning for Vision-Language Models", ICCV 2025, pp. 1783-1792 (arXiv 2405.14715).'
    ),
    "ricci2026spherical": (
        'S. Ricci, N. Biondi and F. Pernici, "Spherical Interpolation for Backward-Compatible '
        'Multimodal Representations", NeurIPS 2026.'
    ),
}
PROTOCOLS: dict[str, str] = {
    "large-scale": (
        "whole sets as gallery and queries, not the 1K/5K test splits: Flickr30k all Karpathy "
        "splits (31,014 images, 155,070 captions), COCO 2014 Karpathy val+restval (35,504 "
        "images, 177,644 captions), NoCaps val (4,500 images, 45,000 captions); gallery "
        "embedded by the old model, queries by the new one (method->old)"
    ),
}


def _setting(method: str) -> str:
    return {"old": "old→old", "new": "new→new"}.get(method, f"{method}→old")


def load_reported(
    old: str | None = None, new: str | None = None, dataset: str | None = None
) -> pd.DataFrame:
    """The published rows (optionally only those of pair ``old``/``new`` or ``dataset``).

    Columns: ``source`` (as printed, e.g. "ricci2026spherical (official repository README)"),
    ``source_key``, ``citation``, ``protocol``, ``old``, ``new``, ``dataset``, ``method``,
    ``setting`` (``old→old``, ``new→new`` or ``<method>→old``), ``support``, the six recalls
    (percent; NaN where the paper gives none), ``rsum`` (NaN unless all six are given) and
    ``reported`` (always True).
    """
    with resources.files("xbt_bench.data").joinpath("published_results.csv").open() as handle:
        table = pd.read_csv(handle, dtype={"support": "string"})
    table["source_key"] = table["source"].str.split().str[0]
    unknown = sorted(set(table["source_key"]) - set(CITATIONS))
    unknown_protocols = sorted(set(table["protocol"]) - set(PROTOCOLS))
    if unknown or unknown_protocols:
        raise XbtError(
            f"published_results.csv names sources {unknown} / protocols {unknown_protocols} "
            "without a citation or description in xbt_bench/data/reported.py"
        )
    table["citation"] = table["source_key"].map(CITATIONS)
    table["setting"] = table["method"].map(_setting)
    table["rsum"] = table[list(RECALL_COLUMNS)].sum(axis=1, min_count=len(RECALL_COLUMNS))
    table["reported"] = True
    for column, value in (("old", old), ("new", new), ("dataset", dataset)):
        if value is not None:
            table = table[table[column] == value]
    columns = [
        "source", "source_key", "citation", "protocol", "old", "new", "dataset", "method",
        "setting", "support", *RECALL_COLUMNS, "rsum", "reported",
    ]
    return table[columns].reset_index(drop=True)
