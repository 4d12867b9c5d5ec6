"""The runner's end-of-run summary: one rich table per (pair, dataset, split), and a legend
that explains what the terminal shows (and only that)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xbt_bench.eval.compat import METHOD_OLD
from xbt_bench.report.leaderboard import (
    CONFIDENT,
    GROUP_KEYS,
    HELD,
    NOT_HELD,
    QUICK_MARK,
    QUICK_NOTE,
    display_frame,
    group_title,
    leaderboard_frame,
    setting_label,
    split_size,
)
from xbt_bench.results import RunResult

SHOWN = ["T2I R@1", "T2I R@5", "T2I R@10", "I2T R@1", "I2T R@5", "I2T R@10", "rsum", "held"]
NEEDS = ["OLD at query", "training needs", "pairs"]


def _mark(mark: str) -> str:
    return f"[bold red]{mark}[/]" if mark == NOT_HELD else f"[bold green]{mark}[/]"


def summary_tables(results: Sequence[RunResult]) -> list[Table]:
    """Reference rows (old→old, new→new), then the methods of each deployment group (OLD
    retired, OLD kept at query time), each ranked by rsum: the six recalls and rsum of its
    setting, each marked green ✓ / red ✗ by the compatibility criterion, whether it needs OLD
    at query time, what it needs in training and its image–text pairs; why a method is not
    applicable goes under the table."""
    frame = leaderboard_frame(results)
    tables = []
    for key, group in frame.groupby(GROUP_KEYS, sort=False) if not frame.empty else []:
        shown = display_frame(group, mark=_mark, escape=escape)
        notes = [f"{m}: {n}" for m, n in zip(shown["method"], shown["note"], strict=True) if n]
        if group["quick"].any():
            notes.append(escape(f"{QUICK_MARK} {QUICK_NOTE}"))
        table = Table(
            title=escape(group_title(key) + split_size(group)),
            title_justify="left",
            caption="\n".join(notes) or None,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("method", no_wrap=True)
        for column in SHOWN:
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("gain", justify="right", no_wrap=True)
        for column in NEEDS:
            table.add_column(column, no_wrap=True)
        groups = group["group"].tolist()
        for i, row in enumerate(shown.to_dict("records")):
            label = row["method"]
            if row["setting"] != setting_label(METHOD_OLD):
                label += f" ({row['setting']})"
            last = i + 1 == len(groups) or groups[i + 1] != groups[i]
            table.add_row(
                row["rank"],
                label,
                *(row[c] for c in SHOWN),
                row["gain share"],
                *(row[c] for c in NEEDS),
                style="dim" if groups[i] == "reference" else None,
                end_section=last,
            )
        tables.append(table)
    return tables


def summary_legend(frame: pd.DataFrame) -> str:
    """What the summary's columns and marks mean, with how wide the margins' 95% intervals are
    on these splits (the median half-width of the R@1 margins, when they were computed)."""
    text = (
        "Recall@K in percent; a setting reads query encoder → gallery encoder; a trained "
        "method's recall is the mean over its seeds (± their std). "
        f"{HELD} / {NOT_HELD}: method→old beats / does not beat old→old on that metric, on the "
        f"mean; {HELD}{CONFIDENT}: also with 95% confidence (paired bootstrap over the split's "
        "images). held: cells that hold, on the mean and at 95%. gain: (method→old − old→old) "
        "/ (new→new − old→old) on rsum."
    )
    halves = [
        (frame[f"margin_{key}_hi"] - frame[f"margin_{key}_lo"]) / 2
        for key in ("t2i_r1", "i2t_r1")
        if f"margin_{key}_hi" in frame
    ]
    widths = pd.concat(halves).dropna() if halves else pd.Series(dtype=float)
    if not widths.empty:
        text += (
            f" On these splits the 95% interval of an R@1 margin is ±{widths.median():.1f} "
            f"points (median): a smaller margin without {CONFIDENT} is not a win."
        )
    return text + " Intervals, flip rates and costs: `xbt-bench leaderboard`."


def print_summary(results: Sequence[RunResult], console: Console) -> None:
    """Print the summary tables of ``results`` and the legend to ``console``."""
    for table in summary_tables(results):
        console.print(table)
    frame = leaderboard_frame(results)
    console.print(escape(summary_legend(frame)), style="dim", highlight=False)
