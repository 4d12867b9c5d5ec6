"""Reports: leaderboards, plots, the static page, the upgrade bill, the decision card and the
terminal tables.

Data flows one way: the result files under ``results/`` (:mod:`xbt_bench.results`) are the only
input of everything here. The names below are imported on first use, so that a run's summary
table does not pay for matplotlib (the plots) on every run.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOMES = {
    "build_leaderboards": "leaderboard",
    "leaderboard_frame": "leaderboard",
    "make_plots": "plots",
    "print_summary": "summary",
    "publish": "publish",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # over the submodule `publish` its first import binds here
    return value
