"""Plots from result files (matplotlib, PNG and SVG): recall bars, chain matrices, gain vs
cost, recall vs number of image-text pairs, training curves.

Only exact search is plotted (production-index results stay in their own tables). Figures are
built with ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend) and written atomically
to ``<output_dir>/plots/``; files there from an earlier build that this build did not write
are removed, so the folder always matches the results.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xbt_bench.atomic import write_with
from xbt_bench.eval.compat import NEW_NEW, OLD_OLD
from xbt_bench.eval.retrieval import RECALL_KEYS
from xbt_bench.methods import method_names
from xbt_bench.report.leaderboard import (
    EXACT,
    FULL,
    GROUP_KEYS,
    HELD,
    METRIC_LABELS,
    MIXED,
    ORDER_LABELS,
    QUICK,
    QUICK_MARK,
    backfill_frame,
    chain_metric,
    group_title,
    leaderboard_frame,
    runs_of,
    setting_label,
)
from xbt_bench.results import ResultSet, RunResult, SweepResult, load_result_set, path_component

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


def method_colour(method: str) -> tuple[float, ...]:
    """The one colour of ``method`` in every plot: the registered methods take tab20's colours
    in :func:`~xbt_bench.methods.method_names` order (dark shades first, so neighbours differ),
    other names the next free ones by a stable hash of the name."""
    palette = matplotlib.colormaps["tab20"].colors
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the 10 dark shades, then the light ones
    names = method_names()
    index = names.index(method) if method in names else len(names) + zlib.crc32(method.encode())
    return palette[order[index % len(order)]]


def _quick_label(label: str, quick: bool) -> str:
    return f"{label} {QUICK_MARK}" if quick else label


def _save(figure: Figure, folder: Path, stem: str) -> list[Path]:
    if figure.get_layout_engine() is None:  # a figure may set its own (e.g. room for a note)
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
    """Grouped bars: each recall metric, one bar per method (method→old, the mean over its
    seeds) and new→new, whiskers at the 95% bootstrap interval, a star over cells where
    method→old beats old→old with 95% confidence, and old→old drawn as a black line across each
    group (the bar to beat) with its interval as a grey band."""
    bars = group[(group["setting"] != OLD_OLD) & group["applicable"]]
    old = group[group["setting"] == OLD_OLD].iloc[0]
    n = len(bars)
    width = 0.8 / max(n, 1)
    figure = _figure(max(9.0, 2.0 + 0.22 * n * len(RECALL_KEYS)), 4.8)
    ax = figure.add_subplot()
    x = np.arange(len(RECALL_KEYS))
    top = 0.0
    for i, (_, row) in enumerate(bars.iterrows()):
        label = _quick_label(f"{row['method']} ({setting_label(row['setting'])})", row["quick"])
        reference = row["setting"] == NEW_NEW
        values = np.array([row[k] for k in RECALL_KEYS], dtype=float)
        low = np.array([row[f"{k}_lo"] for k in RECALL_KEYS], dtype=float)
        high = np.array([row[f"{k}_hi"] for k in RECALL_KEYS], dtype=float)
        errors = np.nan_to_num(np.stack([values - low, high - values]), nan=0.0)
        positions = x - 0.4 + width * (i + 0.5)
        ax.bar(
            positions,
            values,
            width,
            yerr=errors if errors.any() else None,
            error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "black"},
            label=label,
            color="lightgray" if reference else method_colour(row["method"]),
            edgecolor="dimgray",
            hatch="//" if reference else None,
        )
        top = max(top, float(np.nanmax(np.fmax(values, high))))
        for j, key in enumerate(RECALL_KEYS):
            confident = row.get(f"held95_{key}")
            if confident is not None and not pd.isna(confident) and bool(confident):
                tip = high[j] if not np.isnan(high[j]) else values[j]
                ax.text(positions[j], tip + 0.8, "*", ha="center", va="bottom", fontsize=11,
                        fontweight="bold")  # fmt: skip
    for j, key in enumerate(RECALL_KEYS):
        if not pd.isna(old[f"{key}_lo"]):
            ax.fill_between([j - 0.45, j + 0.45], old[f"{key}_lo"], old[f"{key}_hi"],
                            color="black", alpha=0.12, linewidth=0)  # fmt: skip
        ax.hlines(
            old[key],
            j - 0.45,
            j + 0.45,
            colors="black",
            linewidth=2,
            label="old→old (to beat)" if j == 0 else None,
        )
    ax.plot([], [], " ", label="* beats old→old at 95%")
    ax.set_xticks(x, [METRIC_LABELS[k] for k in RECALL_KEYS])
    ax.set_ylabel("recall (%): mean over seeds, 95% interval")
    ax.set_ylim(0, min(104.0, 1.08 * max(top, float(old[list(RECALL_KEYS)].max())) + 4))
    ax.set_title(f"Recall by method and setting\n{title}")  # two lines: a long title fits
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def _competitive_range(values: np.ndarray, floor: float) -> tuple[float, float]:
    """A y-range around the values at or above ``floor`` and the 0 line (old→old), with a
    margin; the 100 line (new→new) is included only when a value comes within half of it.
    Values below ``floor`` are drawn at the bottom edge instead of stretching the axis."""
    inside = values[values >= floor]
    low = min(float(inside.min()) if inside.size else 0.0, 0.0)
    high = max(float(inside.max()) if inside.size else 0.0, 0.0)
    if high >= 50.0:
        high = max(high, 100.0)
    pad = max(0.1 * (high - low), 5.0)
    return low - pad, high + pad


def gain_vs_cost(group: pd.DataFrame, title: str) -> Figure | None:
    """Gain share (rsum) against trainable parameters and fit time (symlog scales), for the
    applicable methods: labels placed clear of each other (adjustText), the y-axis zoomed to
    the competitive range (gain shares from −100% up, and 0), with methods below it drawn on the
    bottom edge with their value, and new→new's 100% drawn only when a method comes near it.
    None when no method row has a gain share."""
    from adjustText import adjust_text

    rows = group[(group["row"] == "method") & group["applicable"] & group["gain_share"].notna()]
    if rows.empty:
        return None
    figure = _figure(12.5, 4.6)
    ys_all = 100 * rows["gain_share"].astype(float).to_numpy()
    low, high = _competitive_range(ys_all, floor=-100.0)
    for k, (column, label, linthresh) in enumerate(
        [
            ("trainable_params", "trainable parameters (symlog; 0 = closed form)", 1.0),
            ("fit_time_s", "fit / training time (s, symlog)", 0.01),
        ]
    ):
        ax = figure.add_subplot(1, 2, k + 1)
        xs = rows[column].astype(float).to_numpy()
        edge = low + 0.03 * (high - low)  # methods below the range sit just above the edge
        shown = np.where(ys_all < low, edge, np.minimum(ys_all, high))
        clipped = shown != ys_all
        colours = np.array([method_colour(m) for m in rows["method"]])
        ax.scatter(xs[~clipped], shown[~clipped], s=40, color=colours[~clipped], zorder=3)
        ax.scatter(xs[clipped], shown[clipped], s=60, marker="v", color=colours[clipped],
                   zorder=3, label="below the axis (value in label)" if clipped.any() else None)
        names = [_quick_label(m, q) for m, q in zip(rows["method"], rows["quick"], strict=True)]
        texts = [
            ax.text(x, y, f"{name} ({value:.0f}%)" if off else name, fontsize=9)
            for x, y, value, off, name in zip(xs, shown, ys_all, clipped, names, strict=True)
        ]
        if (xs > 0).all():  # zoom to the methods: log from the cheapest to the dearest
            ax.set_xscale("log")
            ax.set_xlim(float(xs.min()) / 3, float(xs.max()) * 5)
            label = label.replace("symlog", "log")
        else:
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_xlim(-0.5 * linthresh, max(float(xs.max()), linthresh) * 8)
        ax.set_ylim(low, high)
        ax.axhline(0, color="black", linewidth=1, label="old→old (0%)")
        if high > 100:
            ax.axhline(100, color="gray", linestyle="--", linewidth=1, label="new→new (100%)")
        else:
            ax.plot([], [], " ", label="new→new = 100% (above the axis)")
        ax.set_xlabel(label)
        ax.set_ylabel("gain share of rsum (%)")
        ax.grid(alpha=0.3)
        adjust_text(
            texts,
            x=xs,
            y=shown,
            ax=ax,
            expand=(1.3, 1.6),
            arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6},
        )
        if k == 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    figure.suptitle(f"Gain share vs cost — {title}")
    return figure


LINE_STYLES = {"random": "-", "old-margin": "--", "uncertainty": "-."}  # backfill orders
BACKFILL_JUMP_NOTE = (
    "A curve that sinks and then jumps at 100% is no bug: below 100% each query's two lists "
    "(OLD part, NEW part) are merged by score, and where no calibration was kept (calibration "
    "'none') the two scales differ, so one part crowds out the other; at 100% only NEW's remain."
)


def backfill_curves(group: pd.DataFrame, title: str) -> Figure:
    """R@1 against the share of the gallery re-embedded with NEW, per direction: a line per
    method in its colour (random order solid, OLD's worst first dashed, OLD's least certain
    first dash-dotted) between the old→old and new→new levels (``group``: one (pair, dataset,
    split) group of ``backfill_frame``); one legend entry per method, one per line style, and a
    note on curves that jump at 100%."""
    from matplotlib.lines import Line2D

    figure = _figure(11.5, 5.0)
    first = group.iloc[0]
    ends = group[group["fraction"] == 1.0]
    quick = bool(group["runs"].eq(QUICK).any()) if "runs" in group else False
    for k, key in enumerate(("t2i_r1", "i2t_r1")):
        ax = figure.add_subplot(1, 2, k + 1)
        for (method, order), rows in group.groupby(["method", "order"], sort=False):
            rows = rows.sort_values("fraction")
            ax.plot(
                100 * rows["fraction"],
                rows[key],
                marker="o",
                markersize=4,
                color=method_colour(method),
                linestyle=LINE_STYLES.get(order, "--"),
                label=method if order == "random" else f"{method} ({ORDER_LABELS.get(order)})",
            )
        ax.axhline(first[f"old_old_{key}"], color="black", linewidth=1.5, label="old→old")
        if not ends.empty:
            ax.axhline(float(ends[key].iloc[0]), color="gray", linestyle=":", label="new→new")
        ax.set_xlabel("gallery re-embedded with NEW (%)")
        ax.set_ylabel(f"{METRIC_LABELS[key]} (%)")
        ax.set_xticks([100 * f for f in sorted(set(group["fraction"]))])
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=method_colour(m), marker="o", markersize=4,
               label=_quick_label(m, quick))
        for m in dict.fromkeys(group["method"])
    ]  # fmt: skip
    handles += [
        Line2D([], [], color="dimgray", linestyle="-", label="random order"),
        *(
            Line2D([], [], color="dimgray", linestyle=LINE_STYLES[order], label=label)
            for order, label in ORDER_LABELS.items()
            if order != "random" and order in set(group["order"])
        ),
        Line2D([], [], color="black", linewidth=1.5, label="old→old"),
        Line2D([], [], color="gray", linestyle=":", label="new→new"),
    ]
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.86, 0.9), frameon=False,
                  fontsize=8)  # fmt: skip
    figure.text(0.01, 0.01, BACKFILL_JUMP_NOTE, fontsize=8, color="dimgray", wrap=True)
    figure.suptitle(f"Partial backfill — {title}")
    figure.set_layout_engine("tight", rect=(0, 0.07, 0.85, 1))
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
        f"{result.pair} · {result.dataset} · {split} · "
        f"{_quick_label(result.method, result.quick)}\n"
        f"{metric}, AC = {ac:.2f} ({HELD}: beats the gallery model's own queries)"
    )
    return figure


def sweep_plot(sweeps: Sequence[SweepResult], title: str) -> Figure:
    """Recall@1 against the number of image-text pairs for every swept method, with the
    old→old and new→new levels of the swept split."""
    figure = _figure(11.0, 4.4)
    reference = sweeps[0].references
    for k, key in enumerate(("t2i_r1", "i2t_r1")):
        ax = figure.add_subplot(1, 2, k + 1)
        for result in sweeps:
            points = sorted(result.points, key=lambda p: p.n_pairs)
            ax.plot(
                [p.n_pairs for p in points],
                [p.metrics[key] for p in points],
                marker="o",
                color=method_colour(result.method),
                label=_quick_label(f"{result.method} (method→old)", result.quick),
            )
        ax.axhline(reference[OLD_OLD][key], color="black", linewidth=1.5, label="old→old")
        ax.axhline(reference[NEW_NEW][key], color="gray", linestyle="--", label="new→new")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(0, 1.5 * max(p.n_pairs for r in sweeps for p in r.points) + 1)
        ax.set_xlabel("image–text training pairs (symlog)")
        ax.set_ylabel(f"{METRIC_LABELS[key]} (%)")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(loc="best", frameon=False)
    figure.suptitle(f"Recall vs number of image–text pairs — {title}")
    return figure


def training_curves(result: RunResult) -> Figure:
    """Loss against step for each training stage (loss components thin, the total bold in the
    method's colour), the legend under each panel where it covers no line."""
    stages = list(result.training_curves.items())
    figure = _figure(max(6.0, 4.6 * len(stages)), 4.6)
    for k, (stage, points) in enumerate(stages):
        ax = figure.add_subplot(1, len(stages), k + 1)
        steps = [p["step"] for p in points]
        names = [
            n for n in dict.fromkeys(key for p in points for key in p) if n not in ("step", "lr")
        ]
        components = iter(matplotlib.colormaps["Dark2"].colors)
        for name in names:
            ys = [p.get(name, np.nan) for p in points]
            total = name == "loss"
            ax.plot(steps, ys, label=name, linewidth=2.0 if total else 1.0,
                    color=method_colour(result.method) if total else next(components))  # fmt: skip
        if all(p.get(n, 1.0) > 0 for p in points for n in names):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (log)" if ax.get_yscale() == "log" else "loss")
        ax.set_title(f"{stage}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(names)),
                  frameon=False, fontsize=8)  # fmt: skip
    method = _quick_label(result.method, result.quick)
    figure.suptitle(f"Training curves — {result.pair} · {result.dataset} · {method}")
    return figure


@dataclass(frozen=True)
class Plot:
    """One drawn figure: its caption, its files (PNG and SVG), and the rows behind it: the
    leaderboard group ``(pair, dataset, split, search, runs)`` and the ``methods`` it
    draws."""

    caption: str
    files: tuple[Path, ...]
    group: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    kind: str = ""

    def file(self, fmt: str) -> Path:
        """The file in format ``fmt`` (``png`` or ``svg``)."""
        return next(p for p in self.files if p.suffix == f".{fmt}")


def make_plots(
    results_dir: str | Path, output_dir: str | Path, rank_quick: bool = False
) -> list[Path]:
    """Draw every plot the exact-search results under ``results_dir`` support into
    ``<output_dir>/plots/`` (PNG and SVG) and return the files written (``rank_quick``: draw
    --quick results with the full ones, marked, instead of in plots of their own)."""
    plots = plot_results(load_result_set(results_dir), output_dir, rank_quick)
    return [path for plot in plots for path in plot.files]


def plot_results(found: ResultSet, output_dir: str | Path, rank_quick: bool = False) -> list[Plot]:
    """Draw the plots of the result files ``found`` (exact search only) into
    ``<output_dir>/plots/`` and remove plot files there that this build did not write."""
    folder = Path(output_dir) / "plots"
    with matplotlib.rc_context(STYLE):
        plots = _draw_all(found.runs, found, folder, rank_quick)
    written = {path for plot in plots for path in plot.files}
    for stale in folder.glob("*"):
        if stale.suffix[1:] in FORMATS and stale not in written:
            stale.unlink()
    return plots


# File-name suffix of a plot of quick runs (full runs' plots keep their names).
RUNS_SUFFIX = {FULL: "", QUICK: "-quick", MIXED: "-with-quick"}


def _draw_all(
    results: list[RunResult], found: ResultSet, folder: Path, rank_quick: bool
) -> list[Plot]:
    plots: list[Plot] = []

    def save(figure: Figure, stem: str, caption: str, **rows: object) -> None:
        plots.append(Plot(caption, tuple(_save(figure, folder, stem)), **rows))  # type: ignore[arg-type]

    frame = leaderboard_frame(results, rank_quick=rank_quick)
    for key, group in frame.groupby(GROUP_KEYS, sort=False) if not frame.empty else []:
        title = group_title(key)
        stem = "-".join(key[:3]) + RUNS_SUFFIX[key[4]]
        drawn = group[group["applicable"] & (group["setting"] != OLD_OLD)]
        save(recall_bars(group, title), f"recall-{stem}", f"Recall by method and setting, {title}",
             group=key, methods=tuple(drawn["method"]), kind="recall")  # fmt: skip
        figure = gain_vs_cost(group, title)
        if figure is not None:
            methods = group[(group["row"] == "method") & group["applicable"]]["method"]
            save(figure, f"gain-vs-cost-{stem}", f"Gain share vs cost, {title}", group=key,
                 methods=tuple(methods), kind="gain")  # fmt: skip
    curves = backfill_frame(found.backfills)
    for key, group in curves.groupby(GROUP_KEYS, sort=False) if not curves.empty else []:
        title = group_title(key)
        save(backfill_curves(group, title), f"backfill-{'-'.join(key[:3])}{RUNS_SUFFIX[key[4]]}",
             f"Partial backfill, {title}", group=key,
             methods=tuple(dict.fromkeys(group["method"])), kind="backfill")  # fmt: skip
    for result in results:
        runs = runs_of(result)
        where = f"{result.pair}-{result.dataset}"
        mark = f" {QUICK_MARK}" if result.quick else ""
        for split, data in result.splits.items():
            if data.chain_matrix is not None:
                save(
                    chain_heatmap(result, split),
                    f"chain-{where}-{split}-{result.method}{RUNS_SUFFIX[runs]}",
                    f"Compatibility matrix, {result.pair} · {result.dataset} · split {split} · "
                    f"{result.method}{mark}",
                    group=(result.pair, result.dataset, split, EXACT, runs),
                    methods=(result.method,),
                    kind="chain",
                )
        if result.training_curves:
            save(
                training_curves(result),
                f"curves-{where}-{result.method}{RUNS_SUFFIX[runs]}",
                f"Training curves, {result.pair} · {result.dataset} · {result.method}{mark}",
                group=(result.pair, result.dataset, result.split, EXACT, runs),
                methods=(result.method,),
                kind="training",
            )
    swept: dict[tuple[str, str, str, str], list[SweepResult]] = {}
    for sweep in found.sweeps:
        key = (sweep.pair, sweep.dataset, sweep.split, QUICK if sweep.quick else FULL)
        swept.setdefault(key, []).append(sweep)
    for (pair, dataset, split, runs), group in swept.items():
        title = group_title((pair, dataset, split, EXACT, runs))
        save(
            sweep_plot(group, title),
            f"sweep-{pair}-{dataset}-{split}{RUNS_SUFFIX[runs]}",
            f"Recall vs number of image–text pairs, {title}",
            group=(pair, dataset, split, EXACT, runs),
            methods=tuple(r.method for r in group),
            kind="sweep",
        )
    return plots
