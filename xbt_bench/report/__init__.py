"""Results and reports: the typed RunResult, leaderboards, plots, the static page, the summary.

Data flows one way: RunResult files under ``results/`` are the only input of everything here.
"""

from xbt_bench.report.leaderboard import build_leaderboards, leaderboard_frame
from xbt_bench.report.plots import make_plots
from xbt_bench.report.publish import publish
from xbt_bench.report.result import (
    ChainMatrix,
    Compatibility,
    Cost,
    RunResult,
    SplitResult,
    SweepPoint,
    collect_versions,
    git_revision,
    load_results,
)
from xbt_bench.report.summary import print_summary

__all__ = [
    "ChainMatrix",
    "Compatibility",
    "Cost",
    "RunResult",
    "SplitResult",
    "SweepPoint",
    "build_leaderboards",
    "collect_versions",
    "git_revision",
    "leaderboard_frame",
    "load_results",
    "make_plots",
    "print_summary",
    "publish",
]
