"""The runner's end-of-run summary: one rich table per (pair, dataset, split)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from xbt_bench.eval.compat import METHOD_OLD
from xbt_bench.report.leaderboard import (
    GROUP_KEYS,
    LEGEND,
    NOT_HELD,
    display_frame,
    group_title,
    leaderboard_frame,
    setting_label,
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
        table = Table(
            title=escape(group_title(key)),
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


def print_summary(results: Sequence[RunResult], console: Console) -> None:
    """Print the summary tables of ``results`` and the legend to ``console``."""
    for table in summary_tables(results):
        console.print(table)
    console.print(escape(LEGEND), style="dim", highlight=False)
