"""Reports: leaderboards, plots, the static page, the upgrade bill, the decision card and the
terminal tables.

Data flows one way: the result files under ``results/`` (:mod:`xbt_bench.results`) are the only
input of everything here.
"""

from xbt_bench.report.leaderboard import build_leaderboards, leaderboard_frame
from xbt_bench.report.plots import make_plots
from xbt_bench.report.publish import publish
from xbt_bench.report.summary import print_summary

__all__ = [
    "build_leaderboards",
    "leaderboard_frame",
    "make_plots",
    "print_summary",
    "publish",
]
