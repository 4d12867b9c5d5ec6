"""Plots from result files (matplotlib, PNG and SVG): recall bars, chain matrices, gain vs
cost, recall vs number of image-text pairs, training curves.

Only exact-search results are plotted (approximate ones stay in their own table). Figures are
built with ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend) and written atomically
to ``<output_dir>/plots/``; files there from an earlier build that this build did not write
are removed, so the folder always matches the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xbt_bench.atomic import write_with
from xbt_bench.eval.retrieval import RECALL_KEYS
from xbt_bench.report.leaderboard import (
    GROUP_KEYS,
    HELD,
    METRIC_LABELS,
    chain_metric,
    group_title,
    leaderboard_frame,
    setting_label,
)
from xbt_bench.report.result import (
    NEW_NEW,
    OLD_OLD,
    RunResult,
    load_results,
    path_component,
)

FORMATS = ("png", "svg")
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "svg.hashsalt": "xbt-bench",  # stable SVG ids: unchanged results give unchanged files
}
# No creation dates in the files, for the same reason.
METADATA = {"png": {"Software": None}, "svg": {"Date": None}}


def _save(figure: Figure, folder: Path, stem: str) -> list[Path]:
    figure.tight_layout()
    paths = []
    for fmt in FORMATS:
        path = folder / f"{path_component(stem)}.{fmt}"
        write_with(
            path,
            lambda tmp, fmt=fmt: figure.savefig(tmp, format=fmt, dpi=120, metadata=METADATA[fmt]),
        )
        paths.append(path)
    return paths


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), facecolor="white")


def recall_bars(group: pd.DataFrame, title: str) -> Figure:
    """Grouped bars: each recall metric, one bar per method (method→old) and new→new, with
    old→old drawn as a black line across each group (the bar to beat)."""
    bars = group[(group["setting"] != OLD_OLD) & group["applicable"]]
    old = group[group["setting"] == OLD_OLD].iloc[0]
    n = len(bars)
    width = 0.8 / max(n, 1)
    figure = _figure(max(9.0, 2.0 + 0.22 * n * len(RECALL_KEYS)), 4.8)
    ax = figure.add_subplot()
    x = np.arange(len(RECALL_KEYS))
    cmap = matplotlib.colormaps["tab10"]
    for i, (_, row) in enumerate(bars.iterrows()):
        label = f"{row['method']} ({setting_label(row['setting'])})"
        reference = row["setting"] == NEW_NEW
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            [row[k] for k in RECALL_KEYS],
            width,
            label=label,
            color="lightgray" if reference else cmap(i % 10),
            edgecolor="dimgray",
            hatch="//" if reference else None,
        )
    for j, key in enumerate(RECALL_KEYS):
        ax.hlines(
            old[key],
            j - 0.45,
            j + 0.45,
            colors="black",
            linewidth=2,
            label="old→old (to beat)" if j == 0 else None,
        )
    ax.set_xticks(x, [METRIC_LABELS[k] for k in RECALL_KEYS])
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, min(100.0, 1.12 * float(np.nanmax(group[list(RECALL_KEYS)].to_numpy()))) + 2)
    ax.set_title(f"Recall by method and setting — {title}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def gain_vs_cost(group: pd.DataFrame, title: str) -> Figure | None:
    """Gain share (rsum) against trainable parameters and fit time (log scales); None when no
    method row has a gain share."""
    rows = group[(group["row"] == "method") & group["gain_share"].notna()]
    if rows.empty:
        return None
    figure = _figure(11.0, 4.4)
    for k, (column, label, linthresh) in enumerate(
        [
            ("trainable_params", "trainable parameters (symlog; 0 = closed form)", 1.0),
            ("fit_time_s", "fit / training time (s, symlog)", 0.01),
        ]
    ):
        ax = figure.add_subplot(1, 2, k + 1)
        xs = rows[column].astype(float).to_numpy()
        ys = 100 * rows["gain_share"].astype(float).to_numpy()
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
        for x, y, name in zip(xs, ys, rows["method"], strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(right=max(float(xs.max()), linthresh) * 5)  # room for the last label
        ax.axhline(0, color="black", linewidth=1, label="old→old (0%)")
        ax.axhline(100, color="gray", linestyle="--", linewidth=1, label="new→new (100%)")
        ax.set_xlabel(label)
        ax.set_ylabel("gain share of rsum (%)")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(loc="best", frameon=False)
    figure.suptitle(f"Gain share vs cost — {title}")
    return figure


def chain_heatmap(result: RunResult, split: str) -> Figure:
    """The chain's compatibility matrix for its headline metric; ✓ marks M[i][j] > M[j][j]."""
    matrix = result.splits[split].chain_matrix
    metric = chain_metric(matrix)
    values = matrix.array(metric)
    n = len(matrix.models)
    figure = _figure(2.2 + 1.3 * n, 1.6 + 1.1 * n)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
    figure.colorbar(image, ax=ax, label=METRIC_LABELS.get(metric, metric))
    for i in range(n):
        for j in range(i + 1):
            mark = f" {HELD}" if i > j and values[i, j] > values[j, j] else ""
            ax.text(
                j,
                i,
                f"{values[i, j]:.1f}{mark}",
                ha="center",
                va="center",
                color="white",
                fontsize=9,
                bbox={"facecolor": "black", "alpha": 0.35, "linewidth": 0},
            )
    ax.set_xticks(range(n), matrix.models, rotation=20)
    ax.set_yticks(range(n), matrix.models)
    ax.set_xlabel("gallery model")
    ax.set_ylabel("query model")
    ac = matrix.average_compatibility[metric]
    ax.set_title(
        f"{result.pair} · {result.dataset} · {split} · {result.method}\n"
        f"{metric}, AC = {ac:.2f} ({HELD}: beats the gallery model's own queries)"
    )
    return figure


def sweep_plot(results: Sequence[RunResult], title: str) -> Figure:
    """Recall@1 against the number of image-text pairs for every method with a sweep, with the
    old→old and new→new levels of the primary split."""
    figure = _figure(11.0, 4.4)
    reference = results[0].metrics
    for k, key in enumerate(("t2i_r1", "i2t_r1")):
        ax = figure.add_subplot(1, 2, k + 1)
        for result in results:
            points = sorted(result.sweep, key=lambda p: p.n_pairs)
            ax.plot(
                [p.n_pairs for p in points],
                [p.metrics[key] for p in points],
                marker="o",
                label=f"{result.method} (method→old)",
            )
        ax.axhline(reference[OLD_OLD][key], color="black", linewidth=1.5, label="old→old")
        ax.axhline(reference[NEW_NEW][key], color="gray", linestyle="--", label="new→new")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(0, 1.5 * max(p.n_pairs for r in results for p in r.sweep) + 1)
        ax.set_xlabel("image–text training pairs (symlog)")
        ax.set_ylabel(f"{METRIC_LABELS[key]} (%)")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(loc="best", frameon=False)
    figure.suptitle(f"Recall vs number of image–text pairs — {title}")
    return figure


def training_curves(result: RunResult) -> Figure:
    """Loss against step for each training stage (loss components thin, total bold)."""
    stages = list(result.training_curves.items())
    figure = _figure(max(6.0, 4.6 * len(stages)), 3.8)
    for k, (stage, points) in enumerate(stages):
        ax = figure.add_subplot(1, len(stages), k + 1)
        steps = [p["step"] for p in points]
        names = [
            n for n in dict.fromkeys(key for p in points for key in p) if n not in ("step", "lr")
        ]
        for name in names:
            ys = [p.get(name, np.nan) for p in points]
            ax.plot(steps, ys, label=name, linewidth=2.0 if name == "loss" else 1.0)
        if all(p.get(n, 1.0) > 0 for p in points for n in names):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (log)" if ax.get_yscale() == "log" else "loss")
        ax.set_title(f"{stage}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", frameon=False)
    figure.suptitle(f"Training curves — {result.pair} · {result.dataset} · {result.method}")
    return figure


@dataclass(frozen=True)
class Plot:
    """One drawn figure: its caption and its files (PNG and SVG)."""

    caption: str
    files: tuple[Path, ...]

    def file(self, fmt: str) -> Path:
        """The file in format ``fmt`` (``png`` or ``svg``)."""
        return next(p for p in self.files if p.suffix == f".{fmt}")


def make_plots(results_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """Draw every plot the exact-search results under ``results_dir`` support into
    ``<output_dir>/plots/`` (PNG and SVG) and return the files written."""
    plots = plot_results(load_results(results_dir), output_dir)
    return [path for plot in plots for path in plot.files]


def plot_results(results: Sequence[RunResult], output_dir: str | Path) -> list[Plot]:
    """Draw the plots of the exact-search ``results`` into ``<output_dir>/plots/`` and remove
    plot files there that this build did not write."""
    folder = Path(output_dir) / "plots"
    with matplotlib.rc_context(STYLE):
        plots = _draw_all([r for r in results if r.approximate_index is None], folder)
    written = {path for plot in plots for path in plot.files}
    for stale in folder.glob("*"):
        if stale.suffix[1:] in FORMATS and stale not in written:
            stale.unlink()
    return plots


def _draw_all(results: list[RunResult], folder: Path) -> list[Plot]:
    plots: list[Plot] = []

    def save(figure: Figure, stem: str, caption: str) -> None:
        plots.append(Plot(caption, tuple(_save(figure, folder, stem))))

    frame = leaderboard_frame(results)
    for key, group in frame.groupby(GROUP_KEYS, sort=False) if not frame.empty else []:
        title = group_title(key)
        stem = "-".join(key[:3])
        save(recall_bars(group, title), f"recall-{stem}", f"Recall by method and setting, {title}")
        figure = gain_vs_cost(group, title)
        if figure is not None:
            save(figure, f"gain-vs-cost-{stem}", f"Gain share vs cost, {title}")
    for result in results:
        where = f"{result.pair}-{result.dataset}"
        for split, data in result.splits.items():
            if data.chain_matrix is not None:
                save(
                    chain_heatmap(result, split),
                    f"chain-{where}-{split}-{result.method}",
                    f"Compatibility matrix, {result.pair} · {result.dataset} · split {split} · "
                    f"{result.method}",
                )
        if result.training_curves:
            save(
                training_curves(result),
                f"curves-{where}-{result.method}",
                f"Training curves, {result.pair} · {result.dataset} · {result.method}",
            )
    swept: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        if result.sweep:
            swept.setdefault((result.pair, result.dataset), []).append(result)
    for (pair, dataset), group in swept.items():
        title = f"{pair} · {dataset} · split {group[0].split}"
        save(
            sweep_plot(group, title),
            f"sweep-{pair}-{dataset}",
            f"Recall vs number of image–text pairs, {title}",
        )
    return plots
