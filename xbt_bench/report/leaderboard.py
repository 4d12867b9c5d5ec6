"""Leaderboards built from result files only: tidy pandas tables, CSV and Markdown.

Rows: one per (run result, split), plus the ``old->old`` and ``new->new`` reference rows of
each (pair, dataset, split) group, taken from its newest result unless a result of a reference
method (``setting`` old->old / new->new) already gives them. Exact and approximate-search rows
go to separate tables and are never ranked together. The partial-backfill and diagnostics
tables come from their own result files, joined here by pair and dataset. Published numbers
appear only in their own "reported, not re-run" table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from xbt_bench.atomic import write_text
from xbt_bench.data.reported import CITATIONS, PROTOCOLS, REPORTED_LABEL, load_reported
from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from xbt_bench.eval.retrieval import METRIC_KEYS
from xbt_bench.methods import methods
from xbt_bench.results import (
    BackfillResult,
    DiagnosticsResult,
    ResultSet,
    RunResult,
    load_result_set,
)
from xbt_bench.scoring import CalibrationChoice, ChainMatrix

# A table ranks the results of one (pair, dataset, split, search, runs): ``runs`` keeps --quick
# results apart from full ones ("quick" / "full"; "full+quick" when asked to rank them together).
GROUP_KEYS = ["pair", "dataset", "split", "search", "runs"]
FULL, QUICK, MIXED = "full", "quick", "full+quick"
# MTEB's convention: each task names one main_score, the number its leaderboard ranks by. Ours,
# for every pair, is rsum (R@1+R@5+R@10 of both directions, as in VSE++ and SCAN): it covers both
# directions and every K, so it moves less on a small split than R@1 alone.
MAIN_SCORE = "rsum"
# CSV floats are rounded to 5 decimals, as MTEB rounds the scores in its result files.
CSV_DECIMALS = 5
QUICK_MARK = "(quick)"  # after the method's name, wherever a --quick result is shown
QUICK_NOTE = (
    "marks a --quick run: fewer training steps, image–text pairs and corpus texts, a smoke run "
    "that checks the path, not a result; never ranked with full runs unless asked "
    "(--rank-quick)"
)
FLIP_KEYS = ("t2i_nfr", "t2i_pfr", "i2t_nfr", "i2t_pfr")
EXACT = "exact"
HELD, NOT_HELD = "✓", "✗"
CONFIDENT = "*"  # appended to ✓ when the paired 95% interval of the margin is above 0
METRIC_LABELS = {
    "t2i_r1": "T2I R@1",
    "t2i_r5": "T2I R@5",
    "t2i_r10": "T2I R@10",
    "i2t_r1": "I2T R@1",
    "i2t_r5": "I2T R@5",
    "i2t_r10": "I2T R@10",
    "rsum": "rsum",
}
LEGEND = (
    "Recall@K in percent, as CLIP_benchmark defines it: T2I R@K is its "
    "image_retrieval_recall@K (a caption finds its image), I2T R@K its text_retrieval_recall@K "
    "(an image finds any of its captions). A setting reads query encoder → gallery encoder. "
    "A trained method's "
    "recall is the mean over its seeds, ± their standard deviation. "
    f"{HELD} / {NOT_HELD}: method→old beats / does not beat old→old on that metric on the mean "
    f"(the compatibility criterion); {HELD}{CONFIDENT}: it also holds with 95% confidence (the "
    "paired bootstrap interval of method→old − old→old over the split's images lies above 0). "
    "held counts the recall cells that hold, on the mean and at 95%. On a split of 1,000 images "
    "a margin of a point is usually inside the interval, and smaller splits (each table gives "
    "its size) need larger margins: an unstarred ✓ is not a win. The intervals themselves are "
    "in leaderboard.csv (*_lo, *_hi; margin_*_lo, margin_*_hi). "
    "Main score (main_score in the CSV, what the tables rank by, as MTEB's main_score): rsum. "
    "Gain share = (method→old − old→old) / (new→new − old→old) on rsum. NFR: negative flip rate "
    "at R@1 (percent of queries right under old→old, wrong under method→old)."
)


def reference_method(setting: str) -> str:
    """The registered method whose own setting ``setting`` is (``old`` for old→old)."""
    return next(name for name in methods.names() if methods.get(name).deploys == setting)


def setting_label(setting: str) -> str:
    """``method->old`` as ``method→old`` for tables and plots."""
    return setting.replace("->", "→")


def _row(result: RunResult, split: str, setting: str, row: str, path: Path | None) -> dict:
    data = result.splits[split]
    shown = result.applicable or row == "reference"
    values = data.metrics.get(setting, {}) if shown else {}
    intervals = (data.intervals or {}).get(setting, {}) if shown else {}
    compat = data.compatibility if setting == METHOD_OLD and row == "method" and shown else None
    flips = (data.flips or {}) if compat else {}
    std = (data.seed_std or {}) if setting == METHOD_OLD and row == "method" else {}
    margins = (compat.margin_interval or {}) if compat else {}
    report = result.report if row == "method" else {}
    cost = result.cost
    record = {
        "pair": result.pair,
        "dataset": result.dataset,
        "split": split,
        "search": result.approximate_index or EXACT,
        "runs": QUICK if result.quick else FULL,
        "quick": result.quick,
        "row": row,
        "method": reference_method(setting) if row == "reference" else result.method,
        "setting": setting,
        "applicable": result.applicable or row == "reference",
        "not_applicable_reason": None if row == "reference" else result.not_applicable_reason,
        **{k: values.get(k, math.nan) for k in METRIC_KEYS},
        **{f"{k}_std": std.get(k, math.nan) for k in METRIC_KEYS},
        **{f"{k}_lo": intervals.get(k, [math.nan])[0] for k in METRIC_KEYS},
        **{f"{k}_hi": intervals.get(k, [math.nan, math.nan])[1] for k in METRIC_KEYS},
        **{f"held_{k}": (compat.held[k] if compat else None) for k in METRIC_KEYS},
        **{
            f"held95_{k}": (compat.held_95[k] if compat and compat.held_95 else None)
            for k in METRIC_KEYS
        },  # fmt: skip
        **{f"margin_{k}_lo": margins.get(k, [math.nan])[0] for k in METRIC_KEYS},
        **{f"margin_{k}_hi": margins.get(k, [math.nan, math.nan])[1] for k in METRIC_KEYS},
        "cells_held": compat.cells_held if compat else None,
        "cells_held_95": compat.cells_held_95 if compat else None,
        "cells_total": compat.cells_total if compat else None,
        "seeds": len(result.seeds) if row == "method" and result.seeds else 1,
        "images": data.images,
        "gain_share": compat.gain_share.get("rsum") if compat else None,
        "main_score": values.get(MAIN_SCORE, math.nan),
        **{key: value.value for key, value in report.items()},
        "report": " · ".join(f"{v.label} {_value(v.value)}" for v in report.values()),
        **{k: flips.get(k, math.nan) for k in FLIP_KEYS},
        "old": result.old,
        "new": result.new,
        "seed": result.seed,
        "date": result.date.isoformat(),
        "git_revision": result.git_revision,
    }
    if row == "method":
        record |= {
            "trainable_params": cost.trainable_params,
            "trainable_share": cost.trainable_share,
            # A fit resumed from finished checkpoints took seconds; its training did not.
            "fit_time_s": max(cost.fit_time_s, cost.training_time_s),
            "cache_fill_s": cost.cache_fill_s,
            "wall_time_s": cost.wall_time_s,
            "peak_memory_mb": cost.peak_memory_mb,
            "device": cost.device,
            "file": str(path) if path else None,
        }
    return record


def leaderboard_frame(
    results: Sequence[RunResult], paths: Sequence[Path] | None = None, rank_quick: bool = False
) -> pd.DataFrame:
    """The tidy leaderboard: one row per (result, split) plus each group's reference rows,
    references first, then methods by rsum (best first), not-applicable rows last. --quick
    results form groups of their own (``runs``) unless ``rank_quick``."""
    paths = list(paths) if paths is not None else [None] * len(results)
    rows = [
        _row(result, split, result.setting, "method", path) | {"_result": i}
        for i, (result, path) in enumerate(zip(results, paths, strict=True))
        for split in result.splits
    ]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    if rank_quick:
        tables = frame.groupby(GROUP_KEYS[:-1], sort=False)["runs"].transform("nunique")
        frame.loc[tables > 1, "runs"] = MIXED
    references = []
    for key, group in frame.groupby(GROUP_KEYS, sort=False):
        present = set(group["setting"])
        newest = max((results[i] for i in group["_result"]), key=lambda r: r.date)
        references += [
            _row(newest, key[2], setting, "reference", None) | {"runs": key[4], "quick": False}
            for setting in (OLD_OLD, NEW_NEW)
            if setting not in present
        ]
    frame = pd.concat([pd.DataFrame(references), frame.drop(columns="_result")], ignore_index=True)
    split_order = {s: i for i, s in enumerate(dict.fromkeys(frame["split"]))}
    frame["_split"] = frame["split"].map(split_order)
    frame["_runs"] = frame["runs"].map({FULL: 0, MIXED: 1, QUICK: 2})
    frame["_rank"] = [
        (0 if row == "reference" else 1 if ok else 2)
        for row, ok in zip(frame["row"], frame["applicable"], strict=True)
    ]
    frame["_setting"] = frame["setting"].map({OLD_OLD: 0, NEW_NEW: 1}).fillna(2)
    frame = frame.sort_values(
        ["pair", "dataset", "_split", "search", "_runs", "_rank", "_setting", "main_score",
         "method"],  # fmt: skip
        ascending=[True, True, True, True, True, True, True, False, True],
        na_position="last",
        kind="stable",
    )
    return frame.drop(columns=["_split", "_runs", "_rank", "_setting"]).reset_index(drop=True)


def _number(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _params(count: object, share: object) -> str:
    if count is None or (isinstance(count, float) and math.isnan(count)):
        return "–"
    count = int(count)
    if count == 0:
        return "0"
    if count >= 1e6:
        text = f"{count / 1e6:.2f}M"
    else:
        text = f"{count / 1e3:.1f}k" if count >= 1e3 else str(count)
    return f"{text} ({100 * float(share):.1f}%)"


def criterion_mark(held: bool, confident: bool | None) -> str:
    """✓* (holds at 95%), ✓ (holds on the mean) or ✗."""
    if not held:
        return NOT_HELD
    return HELD + (CONFIDENT if confident else "")


def _cell(value: float, std: float) -> str:
    return _number(value) + ("" if pd.isna(std) else f" ±{std:.2f}")


def interval_tip(r: pd.Series, key: str) -> str:
    """The 95% intervals behind a recall cell, in words (empty when none was computed)."""
    parts = []
    if not pd.isna(r[f"{key}_lo"]):
        parts.append(f"95% interval {r[f'{key}_lo']:.2f}–{r[f'{key}_hi']:.2f}")
    if not pd.isna(r[f"margin_{key}_lo"]):
        parts.append(
            f"margin over old→old {r[f'margin_{key}_lo']:+.2f} to {r[f'margin_{key}_hi']:+.2f} "
            "(paired, 95%)"
        )
    if not pd.isna(r[f"{key}_std"]):
        parts.append(f"std over {int(r['seeds'])} seeds {r[f'{key}_std']:.2f}")
    return "; ".join(parts)


def _value(value: float | str) -> str:
    """A declared report value as text (numbers without trailing zeros)."""
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def display_frame(
    group: pd.DataFrame,
    mark: Callable[[str], str] = str,
    escape: Callable[[str], str] = str,
    tip: Callable[[str, str], str] = lambda text, _: text,
) -> pd.DataFrame:
    """Human columns for one (pair, dataset, split) group: recalls (± std over seeds) with the
    criterion marked per cell (:func:`criterion_mark`), cells held on the mean and at 95%, gain
    share, NFR, cost and notes (α, not applicable); ``mark`` renders a mark (e.g. colours it),
    ``tip(text, tooltip)`` attaches a cell's intervals (:func:`interval_tip`) to its text."""
    out = []
    for _, r in group.iterrows():
        label = str(r["method"]) + (f" {QUICK_MARK}" if r["quick"] else "")
        row = {"method": escape(label), "setting": escape(setting_label(r["setting"]))}
        if not r["applicable"]:
            row |= {METRIC_LABELS[k]: "n/a" for k in METRIC_KEYS}
            row["held"] = "n/a"
        else:
            for key in METRIC_KEYS:
                held = r[f"held_{key}"]
                cell = _cell(r[key], r[f"{key}_std"])
                cell = tip(cell, interval_tip(r, key))
                if not pd.isna(held):
                    confident = r[f"held95_{key}"]
                    confident = None if pd.isna(confident) else bool(confident)
                    cell = f"{cell} {mark(criterion_mark(bool(held), confident))}"
                row[METRIC_LABELS[key]] = cell
            if r["setting"] != METHOD_OLD:
                row["held"] = "reference"
            else:
                row["held"] = f"{int(r['cells_held'])}/{int(r['cells_total'])}"
                if not pd.isna(r["cells_held_95"]):
                    row["held"] += f" ({int(r['cells_held_95'])} at 95%)"
        share = r["gain_share"]
        row["gain share"] = "–" if share is None or pd.isna(share) else f"{100 * share:.0f}%"
        row["NFR T2I/I2T"] = (
            "–" if pd.isna(r["t2i_nfr"]) else f"{r['t2i_nfr']:.1f}/{r['i2t_nfr']:.1f}"
        )
        if not r["applicable"]:  # no numbers of a method that does not apply
            row["gain share"] = row["NFR T2I/I2T"] = "n/a"
        is_method = r["row"] == "method"
        row["trainable"] = _params(r["trainable_params"], r["trainable_share"]) if is_method else ""
        row["fit time"] = f"{r['fit_time_s']:.1f} s" if is_method else ""
        row["device"] = escape(str(r["device"])) if is_method else ""
        notes = [r["report"]] if r["applicable"] else []
        if not r["applicable"]:
            notes.append(f"not applicable: {r['not_applicable_reason']}")
        row["note"] = escape("; ".join(n for n in notes if n))
        out.append(row)
    return pd.DataFrame(out)


def group_title(key: tuple) -> str:
    """``pair · dataset · split`` (plus the index when the search is approximate, and which
    runs: "quick runs" for --quick ones)."""
    pair, dataset, split, search, *runs = key
    title = f"{pair} · {dataset} · split {split}"
    if search != EXACT:
        title += f" · approximate index {search}"
    if runs and runs[0] == QUICK:
        title += " · QUICK runs (not ranked with full runs)"
    elif runs and runs[0] == MIXED:
        title += " · full and QUICK runs ranked together"
    return title


def split_size(group: pd.DataFrame) -> str:
    """`` · 1,000 images`` for a group whose results recorded the split's size, else ""."""
    sizes = group["images"].dropna() if "images" in group else pd.Series(dtype=float)
    return f" · {int(sizes.iloc[0]):,} images" if not sizes.empty else ""


def runs_of(result: RunResult) -> str:
    """The ``runs`` group of ``result`` when quick results are kept apart: quick or full."""
    return QUICK if result.quick else FULL


def chain_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """Average compatibility per chain result and split, one column per metric."""
    rows = []
    for result in results:
        for split, data in result.splits.items():
            if data.chain_matrix is None:
                continue
            rows.append(
                {
                    "pair": result.pair,
                    "dataset": result.dataset,
                    "split": split,
                    "search": result.approximate_index or EXACT,
                    "runs": runs_of(result),
                    "method": result.method,
                    "models": " → ".join(data.chain_matrix.models),
                    **{f"AC {k}": v for k, v in data.chain_matrix.average_compatibility.items()},
                }
            )
    return pd.DataFrame(rows)


def chain_metric(matrix: ChainMatrix) -> str:
    """The metric shown for a chain: rsum when recorded, else the first one."""
    return "rsum" if "rsum" in matrix.matrices else next(iter(matrix.matrices))


def matrix_frame(matrix: ChainMatrix, metric: str) -> pd.DataFrame:
    """M[i][j] as a table: rows are query models, columns gallery models (blank above i = j)."""
    values = matrix.array(metric)
    return pd.DataFrame(
        [["" if math.isnan(v) else f"{v:.2f}" for v in row] for row in values],
        index=[f"query {m}" for m in matrix.models],
        columns=[f"gallery {m}" for m in matrix.models],
    )


BACKFILL_TITLE = "Partial backfill: recall while the gallery is re-embedded"
BACKFILL_LEGEND = (
    "R@1 text→image / image→text (percent) when a share of the gallery's items (an image with "
    "its captions) holds NEW's embeddings and the rest still OLD's. A query searches the OLD "
    "part with the method's query encoder (OLD's own for old) and the NEW part with NEW's, and "
    "the two lists are merged by score; where it helped on the support split, NEW's scores are "
    "first put on the OLD part's scale by an affine map fitted on support (calibration). 0% is "
    "the method's own method→old, 100% is new→new. Orders: random; OLD's worst first (items "
    "whose OLD embeddings match their own captions worst), reported only where it beat the "
    "random order on support. Here the items' own captions are also the queries, so OLD's "
    "worst first is an optimistic order (in a deployment, queries differ from the captions). "
    "'passes old→old' is the first share whose R@1 beats old→old's."
)
ORDER_LABELS = {"random": "random", "old-margin": "OLD's worst first"}


def _calibration_label(choice: CalibrationChoice) -> str:
    """``none``, or the affine map applied to NEW's scores (``1.58·s -0.598``)."""
    return "none" if choice.kind == "none" else f"{choice.scale:.3g}·s {choice.shift:+.3g}"


def backfill_frame(backfills: Sequence[BackfillResult]) -> pd.DataFrame:
    """Tidy partial-backfill curves: one row per (backfill result, split, order, fraction) with
    every metric, the old→old level, the calibration per direction and the support scores of
    the orders."""
    rows = []
    for result in backfills:
        backfill = result.backfill
        for split, by_order in backfill.curves.items():
            old = result.references[split][OLD_OLD]
            for order, points in by_order.items():
                for point in points:
                    rows.append(
                        {
                            "pair": result.pair,
                            "dataset": result.dataset,
                            "split": split,
                            "search": EXACT,
                            "runs": QUICK if result.quick else FULL,
                            "method": result.method,
                            "order": order,
                            "fraction": point.fraction,
                            **point.metrics,
                            **{f"old_old_{k}": old[k] for k in METRIC_KEYS},
                            **{
                                f"calibration_{d}": _calibration_label(c)
                                for d, c in backfill.calibration.items()
                            },
                            "support_r1": backfill.orders[order].support_r1,
                            "random_support_r1": backfill.orders["random"].support_r1,
                        }
                    )
    return pd.DataFrame(rows)


def _share(fraction: float | None) -> str:
    return "never" if fraction is None else f"{100 * fraction:g}%"


def backfill_display(group: pd.DataFrame) -> pd.DataFrame:
    """One (pair, dataset, split) group of :func:`backfill_frame` as a human table: a row per
    method and order, R@1 T2I/I2T at each share, where each direction first passes old→old,
    the calibration and the order's support score."""
    out = []
    for (method, order), rows in group.groupby(["method", "order"], sort=False):
        rows = rows.sort_values("fraction")
        row = {"method": method, "order": ORDER_LABELS.get(order, order)}
        for _, point in rows.iterrows():
            row[f"{100 * point['fraction']:g}%"] = f"{point['t2i_r1']:.1f}/{point['i2t_r1']:.1f}"
        passes = []
        for key in ("t2i_r1", "i2t_r1"):
            above = rows[rows[key] > rows[f"old_old_{key}"]]
            passes.append(_share(above["fraction"].min() if not above.empty else None))
        first = rows.iloc[0]
        row["passes old→old T2I/I2T"] = " / ".join(passes)
        row["calibration T2I / I2T"] = f"{first['calibration_t2i']} / {first['calibration_i2t']}"
        row["support R@1"] = f"{first['support_r1']:.2f}"
        if order != "random":
            row["support R@1"] += f" (random {first['random_support_r1']:.2f})"
        out.append(row)
    return pd.DataFrame(out)


REPORTED_TITLE = f"Published numbers ({REPORTED_LABEL})"
REPORTED_NOTE = (
    "Recalls (percent) as the papers print them, with their source and protocol. They were "
    "not produced by this suite and are not comparable with the leaderboards above."
)
APPROXIMATE_TITLE = "Approximate search (not comparable with the exact tables)"


def reported_display(reported: pd.DataFrame) -> pd.DataFrame:
    """The published rows with human column names; recalls as text, missing values as –."""
    columns = ["source", "protocol", "old", "new", "dataset", "setting", "support"]
    frame = reported[columns].astype(object).where(reported[columns].notna(), "–")
    for key in METRIC_KEYS:
        frame[METRIC_LABELS[key]] = [_number(v) for v in reported[key]]
    return frame


def reported_notes(reported: pd.DataFrame) -> list[str]:
    """The citation of every paper the published rows name, and their protocols' descriptions."""
    sources = " ".join(reported["source"])
    notes = [f"{key}: {text}" for key, text in CITATIONS.items() if key in sources]
    notes += [f"protocol {name}: {PROTOCOLS[name]}" for name in dict.fromkeys(reported["protocol"])]
    return notes


@dataclass
class Leaderboards:
    """The tables of a leaderboard build, the result files they come from and the files
    written."""

    exact: pd.DataFrame
    approximate: pd.DataFrame
    chains: pd.DataFrame
    reported: pd.DataFrame
    found: ResultSet = field(repr=False)
    backfill: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[Path] = field(default_factory=list)

    @property
    def results(self) -> list[RunResult]:
        """The run results behind the tables."""
        return self.found.runs

    @property
    def has_quick(self) -> bool:
        """Whether any result behind the tables is a --quick run."""
        return any(r.quick for r in (*self.found.runs, *self.found.backfills, *self.found.sweeps))

    @staticmethod
    def groups(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
        """``frame`` split into (pair, dataset, split, search) groups in table order."""
        return list(frame.groupby(GROUP_KEYS, sort=False)) if not frame.empty else []

    def chain_matrices(self) -> list[tuple[str, pd.DataFrame]]:
        """(title, matrix table) of every chain result and split, for its headline metric."""
        out = []
        for result in self.results:
            for split, data in result.splits.items():
                if data.chain_matrix is not None:
                    metric = chain_metric(data.chain_matrix)
                    title = f"{result.pair} · {result.dataset} · split {split} · {result.method}"
                    out.append((f"{title}: {metric}", matrix_frame(data.chain_matrix, metric)))
        return out


DIAGNOSTICS_TITLE = "Pair diagnostics (how alike OLD and NEW are, before any method)"
DIAGNOSTICS_LEGEND = (
    "From `xbt-bench pairs diagnose`: each model's modality gap ‖mean image − mean text‖, linear "
    "CKA between OLD and NEW, the R² of an orthogonal NEW→OLD map fitted on the text corpus (on "
    "the split's captions, and transferred to its images; a general linear map's R² for "
    "reference), and new→new − old→old."
)


def diagnostics_frame(diagnostics: Sequence[DiagnosticsResult]) -> pd.DataFrame:
    """One row per diagnostics result (``xbt-bench pairs diagnose``)."""
    rows = [
        {
            "pair": report.pair,
            "dataset": report.dataset,
            "split": report.split,
            "old gap": round(report.old.modality_gap, 3),
            "new gap": round(report.new.modality_gap, 3),
            "CKA texts": round(report.cka_texts, 3),
            "CKA images": round(report.cka_images, 3),
            "rotation R² texts": round(report.procrustes.r2_texts, 3),
            "rotation R² images": round(report.procrustes.r2_images, 3),
            "linear R² texts": round(report.procrustes.linear_r2_texts, 3),
            "new−old R@1 T2I": round(report.capability_gap.t2i_r1, 2),
            "new−old R@1 I2T": round(report.capability_gap.i2t_r1, 2),
            "new−old rsum %": round(report.capability_gap.rsum_percent, 1),
        }
        for report in diagnostics
    ]
    return pd.DataFrame(rows)


def leaderboards(results_dir: str | Path, rank_quick: bool = False) -> Leaderboards:
    """Read every result file under ``results_dir`` and build the leaderboard tables (--quick
    results in tables of their own unless ``rank_quick``)."""
    found = load_result_set(results_dir)
    frame = leaderboard_frame(found.runs, found.run_files, rank_quick)
    return Leaderboards(
        exact=frame[frame["search"] == EXACT].reset_index(drop=True),
        approximate=frame[frame["search"] != EXACT].reset_index(drop=True),
        chains=chain_frame(found.runs),
        reported=load_reported(),
        found=found,
        backfill=backfill_frame(found.backfills),
        diagnostics=diagnostics_frame(found.diagnostics),
    )


def _markdown(boards: Leaderboards, results_dir: Path) -> str:
    lines = [
        "# xbt-bench leaderboard",
        "",
        f"Built from {len(boards.results)} result files in `{results_dir}` (exact FAISS search "
        "unless a section says otherwise).",
        "",
        LEGEND,
        "",
    ]
    if boards.has_quick:
        lines += [f"**{QUICK_MARK} {QUICK_NOTE}.**", ""]
    for frame, level in ((boards.exact, "##"), (boards.approximate, "###")):
        if frame is boards.approximate and not frame.empty:
            lines += [f"## {APPROXIMATE_TITLE}", ""]
        for key, group in boards.groups(frame):
            first = group.iloc[0]
            lines += [
                f"{level} {group_title(key)}",
                "",
                f"old `{first['old']}` → new `{first['new']}`{split_size(group)}",
                "",
                display_frame(group).to_markdown(index=False, disable_numparse=True),
                "",
            ]
    if not boards.chains.empty:
        lines += [
            "## Chains: average compatibility",
            "",
            boards.chains.to_markdown(index=False, floatfmt=".2f"),
            "",
        ]
        for title, matrix in boards.chain_matrices():
            lines += [f"### {title}", "", matrix.to_markdown(disable_numparse=True), ""]
    if not boards.backfill.empty:
        lines += [f"## {BACKFILL_TITLE}", "", BACKFILL_LEGEND, ""]
        for key, group in boards.groups(boards.backfill):
            lines += [
                f"### {group_title(key)}",
                "",
                backfill_display(group).to_markdown(index=False, disable_numparse=True),
                "",
            ]
    if not boards.diagnostics.empty:
        lines += [
            f"## {DIAGNOSTICS_TITLE}",
            "",
            DIAGNOSTICS_LEGEND,
            "",
            boards.diagnostics.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    lines += [
        f"## {REPORTED_TITLE}",
        "",
        REPORTED_NOTE,
        "",
        reported_display(boards.reported).to_markdown(index=False, floatfmt=".2f", missingval="–"),
        "",
        *[f"- {note}" for note in reported_notes(boards.reported)],
    ]
    return "\n".join(lines).rstrip() + "\n"


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every float rounded to :data:`CSV_DECIMALS` places, in object columns
    (numbers mixed with None) too."""
    return frame.map(lambda x: round(x, CSV_DECIMALS) if isinstance(x, float) else x)


def build_leaderboards(
    results_dir: str | Path, output_dir: str | Path, rank_quick: bool = False
) -> Leaderboards:
    """Build the leaderboards from ``results_dir`` and write ``leaderboard.csv``/``.md``,
    ``leaderboard-approximate.csv``, ``chains.csv``, ``backfill.csv`` (when there are rows) and
    ``reported.csv`` to ``output_dir`` atomically (``rank_quick``: as :func:`leaderboards`)."""
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    boards = leaderboards(results_dir, rank_quick)
    tables = {
        "leaderboard.csv": boards.exact,
        "leaderboard-approximate.csv": boards.approximate,
        "chains.csv": boards.chains,
        "backfill.csv": boards.backfill,
        "diagnostics.csv": boards.diagnostics,
        "reported.csv": boards.reported,
    }
    for name, frame in tables.items():
        path = output_dir / name
        if frame.empty:
            path.unlink(missing_ok=True)  # a stale table from an earlier build would mislead
            continue
        write_text(path, _rounded(frame).to_csv(index=False))
        boards.files.append(path)
    path = output_dir / "leaderboard.md"
    write_text(path, _markdown(boards, results_dir))
    boards.files.append(path)
    return boards
