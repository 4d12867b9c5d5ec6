"""Leaderboards built from result files only: tidy pandas tables, CSV and Markdown.

Rows: one per (run result, split), plus the ``old->old`` and ``new->new`` reference rows of
each (pair, dataset, split) group, taken from its newest result unless a result of a reference
method (``setting`` old->old / new->new) already gives them. Only exact search is ranked; the
recalls through production indexes (``run --index``) get a section per index, with each row's
loss against exact search next to OLD's own loss. The partial-backfill and diagnostics
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
from xbt_bench.methods.base import Cost
from xbt_bench.report.spreadsheet import spreadsheet_csv
from xbt_bench.results import (
    BackfillResult,
    DiagnosticsResult,
    IndexResult,
    Needs,
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
    "at R@1 (percent of queries right under old→old, wrong under method→old). Rows are ranked "
    "within their deployment group: OLD retired (no OLD at query time: a team switching OLD off "
    "can deploy them), OLD kept at query time (OLD runs beside NEW for every query), and the "
    "references. 'vs baseline' is a method's rsum margin over its declared baseline (xbt over "
    "stitch: what stage 2 adds) with the paired 95% interval, ✓* when it lies above 0. "
    "'training needs' says what of OLD a method needs while it trains; 'pairs' the image–text "
    "pairs it trained on."
    # issue 22: query-time cost
    " added ms text / image: milliseconds one query (batch 1, from raw input) takes over OLD's "
    "own query encoder, timed alternately with it on the run's device (OLD's forward pass "
    "included for a method that needs OLD at query time)."
)


def reference_method(setting: str) -> str:
    """The registered method whose own setting ``setting`` is (``old`` for old→old)."""
    return next(name for name in methods.names() if methods.get(name).deploys == setting)


def setting_label(setting: str) -> str:
    """``method->old`` as ``method→old`` for tables and plots."""
    return setting.replace("->", "→")


def _row(
    result: RunResult, split: str, setting: str, row: str, path: Path | None, search: str = EXACT
) -> dict:
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
    needs = _needs(result) if row == "method" else None
    vs = data.baseline_margin if row == "method" and shown else None
    record = {
        "pair": result.pair,
        "dataset": result.dataset,
        "split": split,
        "search": search,
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
        # A fair contest: the deployment group a row is ranked in and what it needs.
        "group": needs.group if needs else "reference",
        "old_at_query": needs.old_at_query if needs else None,
        "training_needs": needs.training if needs else None,
        "image_text_pairs": needs.image_text_pairs if needs else None,
        "settings": _settings_label(result) if row == "method" else None,
        "tuning_budget": (result.tuned or {}).get("budget") if row == "method" else None,
        "baseline": vs.method if vs else None,
        **{f"vs_baseline_{k}": vs.margin[k] if vs else math.nan for k in METRIC_KEYS},
        **{f"vs_baseline_{k}_lo": vs.interval[k][0] if vs else math.nan for k in METRIC_KEYS},
        **{f"vs_baseline_{k}_hi": vs.interval[k][1] if vs else math.nan for k in METRIC_KEYS},
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
        record |= latency_columns(result)
    return record


def _needs(result: RunResult) -> Needs:
    """What ``result``'s method needs (recorded in the result; a result without it falls back
    on the method's registration, or counts as OLD retired when the method is unknown)."""
    if result.needs is not None:
        return result.needs
    if result.setting != METHOD_OLD:
        return Needs(group="reference", old_at_query=result.setting == OLD_OLD,
                     training="nothing", image_text_pairs=0)  # fmt: skip
    spec = methods.get(result.method) if result.method in methods else None
    return Needs(
        group=spec.group if spec else "OLD retired",
        old_at_query=spec.old_at_query if spec else False,
        training=spec.training_needs if spec else "nothing",
        image_text_pairs=result.cost.image_text_pairs,
    )


def _settings_label(result: RunResult) -> str:
    """Where ``result``'s settings came from, in a few words (``tuned (12 trials, …)``)."""
    sources = set(result.settings_source.values()) - {"default"}
    if result.tuned is not None:
        return f"tuned ({result.tuned['budget']})" + (
            f" + {', '.join(sorted(sources - {'tuned'}))}" if sources - {"tuned"} else ""
        )
    return ", ".join(sorted(sources)) or "defaults"


# --- issue 22: query-time cost, measured on the run's device ---
LATENCY_SIDES = ("text", "image")


def latency_columns(result: RunResult) -> dict[str, float | str | None]:
    """A result's query latency at batch 1 per side (ms per query), its added latency over
    OLD's own query encoder, and its throughput at batch 256 (queries per second); NaN when the
    result recorded none."""
    latency = result.query_latency
    out: dict[str, float | str | None] = {"latency_device": latency.device if latency else None}
    for side in LATENCY_SIDES:
        single = latency.point(side, 1) if latency else None
        batch = latency.point(side, 256) if latency else None
        out[f"{side}_query_ms"] = single.ms_per_query if single else math.nan
        out[f"{side}_added_ms"] = single.added_ms_per_query if single else math.nan
        out[f"{side}_queries_per_s"] = batch.queries_per_s if batch else math.nan
    return out


def added_latency_text(row: pd.Series) -> str:
    """``+0.12 / +1.30``: added ms per text and per image query over OLD's, at batch 1."""
    values = [row.get(f"{side}_added_ms", math.nan) for side in LATENCY_SIDES]
    if any(pd.isna(v) for v in values):
        return "–"
    return " / ".join(f"{v:+.2f}" for v in values)


def leaderboard_frame(
    results: Sequence[RunResult],
    paths: Sequence[Path] | None = None,
    search: str = EXACT,
    rank_quick: bool = False,
) -> pd.DataFrame:
    """The tidy leaderboard: one row per (result, split) plus each table's reference rows;
    references first, then each deployment group (OLD retired, OLD kept at query time) ranked
    by the main score (``rank``, best first), not-applicable rows last; ``search`` names how the
    results searched (exact, or a production index). --quick results form tables of their own
    (``runs``) unless ``rank_quick``."""
    paths = list(paths) if paths is not None else [None] * len(results)
    rows = [
        _row(result, split, result.setting, "method", path, search) | {"_result": i}
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
            _row(newest, key[2], setting, "reference", None, search)
            | {"runs": key[4], "quick": False}
            for setting in (OLD_OLD, NEW_NEW)
            if setting not in present
        ]
    frame = pd.concat([pd.DataFrame(references), frame.drop(columns="_result")], ignore_index=True)
    split_order = {s: i for i, s in enumerate(dict.fromkeys(frame["split"]))}
    frame["_split"] = frame["split"].map(split_order)
    frame["_runs"] = frame["runs"].map({FULL: 0, MIXED: 1, QUICK: 2})
    order = {group: i for i, group in enumerate(GROUP_TITLES)}  # references first
    frame["_rank"] = [
        order[group] if ok else len(order)
        for group, ok in zip(frame["group"], frame["applicable"], strict=True)
    ]
    frame["_setting"] = frame["setting"].map({OLD_OLD: 0, NEW_NEW: 1}).fillna(2)
    order_by = ["pair", "dataset", "_split", "search", "_runs", "_rank", "_setting"]
    frame = frame.sort_values(
        [*order_by, "main_score", "method"],
        ascending=[*(True,) * len(order_by), False, True],
        na_position="last",
        kind="stable",
    )
    ranked = (frame["row"] == "method") & frame["applicable"]
    frame["rank"] = (
        frame[ranked].groupby([*GROUP_KEYS, "group"], sort=False).cumcount() + 1
    ).reindex(frame.index)
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


def baseline_cell(r: pd.Series, mark: Callable[[str], str] = str) -> str:
    """``+1.2 [−0.5, +2.9] vs stitch``: a method's rsum margin over its declared baseline with
    the paired 95% interval, ✓* when the interval lies above 0 (empty without a baseline)."""
    if not isinstance(r["baseline"], str) or pd.isna(r["vs_baseline_rsum"]):
        return ""
    low, high = r["vs_baseline_rsum_lo"], r["vs_baseline_rsum_hi"]
    text = f"{r['vs_baseline_rsum']:+.1f} [{low:+.1f}, {high:+.1f}] vs {r['baseline']}"
    return f"{text} {mark(HELD + CONFIDENT)}" if low > 0 else text


def display_frame(
    group: pd.DataFrame,
    mark: Callable[[str], str] = str,
    escape: Callable[[str], str] = str,
    tip: Callable[[str, str], str] = lambda text, _: text,
) -> pd.DataFrame:
    """Human columns for one (pair, dataset, split) group: rank within its deployment group,
    recalls (± std over seeds) with the criterion marked per cell (:func:`criterion_mark`),
    cells held on the mean and at 95%, gain share, NFR, the margin over a declared baseline,
    what the method needs (OLD at query time, in training, image–text pairs), where its settings
    came from, cost and notes (α, not applicable); ``mark`` renders a mark (e.g. colours it),
    ``tip(text, tooltip)`` attaches a cell's intervals (:func:`interval_tip`) to its text."""
    out = []
    for _, r in group.iterrows():
        is_method = r["row"] == "method"
        row = {
            "rank": "" if pd.isna(r["rank"]) else str(int(r["rank"])),
            "method": escape(str(r["method"]) + (f" {QUICK_MARK}" if r["quick"] else "")),
            "setting": escape(setting_label(r["setting"])),
            "group": escape(str(r["group"])),
        }
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
        row["vs baseline (rsum)"] = baseline_cell(r, mark)
        needs_old = r["old_at_query"]
        row["OLD at query"] = "" if needs_old is None else "yes" if needs_old else "no"
        row["training needs"] = escape(str(r["training_needs"] or ""))
        pairs = r["image_text_pairs"]
        row["pairs"] = "" if pairs is None or pd.isna(pairs) else f"{int(pairs):,}"
        row["settings"] = escape(str(r["settings"] or ""))
        row["trainable"] = _params(r["trainable_params"], r["trainable_share"]) if is_method else ""
        row["fit time"] = (
            f"{r['fit_time_s']:.1f} s on {escape(str(r['device']))}" if is_method else ""
        )
        row["added ms text / image"] = added_latency_text(r) if is_method else ""
        notes = [r["report"]] if r["applicable"] else []
        if not r["applicable"]:
            notes.append(f"not applicable: {r['not_applicable_reason']}")
        row["note"] = escape("; ".join(n for n in notes if n))
        out.append(row)
    return pd.DataFrame(out)


GROUP_TITLES = {
    "reference": "References",
    "OLD retired": "OLD retired: backfill-free, no OLD at query time (ranked by rsum)",
    "OLD kept at query time": "OLD kept at query time: OLD runs beside NEW for every query "
    "(ranked by rsum)",
}


def deployment_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One leaderboard table (a pair · dataset · split) cut into its deployment groups, in
    order, each with its title: references, OLD retired, OLD kept at query time."""
    return [
        (GROUP_TITLES[name], table[table["group"] == name])
        for name in GROUP_TITLES
        if (table["group"] == name).any()
    ]


def tuning_note(results: Sequence[RunResult]) -> str:
    """What the trained methods' settings are, per pair (pairs are tuned one by one): the tuning
    budget each tuned method had (one sentence when it is the same for all), or that none was
    tuned."""
    pairs = sorted({r.pair for r in results})
    if len(pairs) > 1:
        text = " ".join(f"{pair}: {_pair_tuning([r for r in results if r.pair == pair])}"
                        for pair in pairs)  # fmt: skip
    else:
        text = f"Tuning: {_pair_tuning(results)}"
    return text + " Settings were chosen on support only; the tables report test splits."


def _pair_tuning(results: Sequence[RunResult]) -> str:
    """:func:`tuning_note` of one pair's results, without its closing sentence."""
    tuned = {r.method: r.tuned["budget"] for r in results if r.tuned is not None}
    trained = sorted({r.method for r in results if r.method in methods
                      and methods.get(r.method).kind == "trained"})  # fmt: skip
    if not tuned:
        return (
            "no method was tuned (`xbt-bench tune`): trained methods run with their default "
            "settings."
        )
    untuned = [m for m in trained if m not in tuned]
    budgets = sorted(set(tuned.values()))
    if len(budgets) == 1:
        text = (
            f"{', '.join(sorted(tuned))} were tuned on support with the same budget "
            f"({budgets[0]})."
        )
    else:
        text = "tuning budgets differ: " + "; ".join(f"{m}: {b}" for m, b in sorted(tuned.items()))
    if untuned:
        text += f" Not tuned (defaults): {', '.join(untuned)}."
    return text


def group_title(key: tuple) -> str:
    """``pair · dataset · split`` (plus the index when the search went through one, and which
    runs: "quick runs" for --quick ones)."""
    pair, dataset, split, search, *runs = key
    title = f"{pair} · {dataset} · split {split}"
    if search != EXACT:
        title += f" · index {search}"
    if runs and runs[0] == QUICK:
        title += " · QUICK runs (not ranked with full runs)"
    elif runs and runs[0] == MIXED:
        title += " · full and QUICK runs ranked together"
    return title


def split_size(group: pd.DataFrame) -> str:
    """`` · 1,000 images`` for a group whose results recorded the split's size, else ""."""
    sizes = group["images"].dropna() if "images" in group else pd.Series(dtype=float)
    return f" · {int(sizes.iloc[0]):,} images" if not sizes.empty else ""


def runs_of(result: RunResult | BackfillResult) -> str:
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
                    "search": EXACT,
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
    "the two lists are merged by score, after each direction's scores are put on one scale by "
    "the calibration that won on the support split (calibration): none, an affine map of NEW's "
    "scores (Platt scaling), or an increasing map per space, quantile (how rare a distractor "
    "scoring that high is in its space) or isotonic (the probability of a match in its space), "
    "each fitted on support. 0% is the method's own method→old, 100% is new→new. Orders: "
    "random; OLD's least certain first (a ridge regression learned on support predicts what "
    "re-embedding an item buys from OLD's gallery embeddings alone: the item's image, its "
    "captions, how crowded they are and how well they agree; no query is searched); OLD's "
    "worst first (items whose OLD embeddings retrieve their own captions worst). An informed "
    "order is reported only where it beat the random order on support (the learned one scored "
    "on support items it was not fitted on). Here the items' own captions are also the "
    "queries, so OLD's worst first is an optimistic order (in a deployment, queries differ "
    "from the captions). 'passes old→old' is the first share whose R@1 beats old→old's."
)
ORDER_LABELS = {
    "random": "random",
    "old-margin": "OLD's worst first",
    "uncertainty": "OLD's least certain first",
}


def _calibration_label(choice: CalibrationChoice) -> str:
    """``none``, the affine map applied to NEW's scores (``1.58·s -0.598``), or the name of
    the monotone maps (``isotonic``, ``quantile``)."""
    if choice.kind == "affine":
        return f"{choice.scale:.3g}·s {choice.shift:+.3g}"
    return choice.kind


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
                            "runs": runs_of(result),
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

# --- production indexes (issue 22, item 3): a section per index, beside the exact tables ---
INDEX_TITLE = "Production indexes: recall through FAISS indexes, and what they lose"
INDEX_LEGEND = (
    "From `xbt-bench run --index KIND`: the gallery sits in a FAISS index built as a serving "
    "system builds it, trained on that gallery's own vectors. old→old and method→old search one "
    "index of OLD's gallery (a mapped query searches an index trained on OLD's vectors, not its "
    "own); new→new searches an index of the same kind and parameters trained on NEW's gallery, "
    "the one a full backfill would rebuild, so every row of a section pays the same kind of "
    "index. Recalls and the ✓ marks compare through the index (method→old against old→old "
    "through the same index). loss = exact − through the index on the same queries (points; "
    "the exact numbers are in the tables above and in leaderboard-indexes.csv, exact_*); "
    "beyond OLD = method→old's loss − old→old's, with its paired 95% interval over the split's "
    "images: above 0 when a mapped query loses more through OLD's index than OLD's own query. "
    "Each section says the FAISS index each gallery had. Not ranked against exact search."
)
LOSS_DIRECTIONS = ("t2i_r1", "i2t_r1")


def _indexed_run(result: IndexResult, exact: RunResult | None) -> RunResult:
    """``result``'s recalls through its index as a run result (its exact run's cost and
    declared fields kept when ``exact`` is given), for the tables that rank runs."""
    base = exact or RunResult(
        pair=result.pair, old=result.old, new=result.new, method=result.method,
        dataset=result.dataset, split=result.split, setting=result.setting,
        splits={s: v.indexed for s, v in result.splits.items()}, cost=Cost(), seed=result.seeds[0],
    )  # fmt: skip
    return base.model_copy(
        update={
            "splits": {s: v.indexed for s, v in result.splits.items()},
            "split": result.split,
            "seeds": result.seeds,
            "seed": result.seeds[0],
            "date": result.date,
            "git_revision": result.git_revision,
        }
    )


def _loss_columns(result: IndexResult, split: str, setting: str) -> dict:
    data = result.splits[split]
    loss, intervals = data.loss.get(setting, {}), data.loss_intervals.get(setting, {})
    extra = (data.extra_loss or {}) if setting == METHOD_OLD else {}
    extra_intervals = (data.extra_loss_intervals or {}) if setting == METHOD_OLD else {}
    return {
        **{f"exact_{k}": data.exact.get(setting, {}).get(k, math.nan) for k in METRIC_KEYS},
        **{f"loss_{k}": loss.get(k, math.nan) for k in METRIC_KEYS},
        **{f"loss_{k}_lo": intervals.get(k, [math.nan])[0] for k in METRIC_KEYS},
        **{f"loss_{k}_hi": intervals.get(k, [math.nan, math.nan])[1] for k in METRIC_KEYS},
        **{f"old_loss_{k}": data.loss[OLD_OLD][k] for k in METRIC_KEYS},
        **{f"extra_loss_{k}": extra.get(k, math.nan) for k in METRIC_KEYS},
        **{f"extra_loss_{k}_lo": extra_intervals.get(k, [math.nan])[0] for k in METRIC_KEYS},
        **{
            f"extra_loss_{k}_hi": extra_intervals.get(k, [math.nan, math.nan])[1]
            for k in METRIC_KEYS
        },
        **{f"index {gallery}": search for gallery, search in data.searches.items()},
    }


def index_frame(found: ResultSet, rank_quick: bool = False) -> pd.DataFrame:
    """The production-index tables: :func:`leaderboard_frame` of each index's results (their
    recalls through the index; ``search`` is the index's name), each row with its exact
    recalls, its loss against exact search and interval, OLD's own loss, and for method rows
    the loss beyond OLD's with its interval."""
    exact = {(r.pair, r.dataset, r.method): r for r in found.runs}
    frames = []
    for name in dict.fromkeys(r.index for r in found.indexes):
        mine = [
            (r, path) for r, path in zip(found.indexes, found.index_files, strict=True)
            if r.index == name
        ]  # fmt: skip
        views = [_indexed_run(r, exact.get((r.pair, r.dataset, r.method))) for r, _ in mine]
        frame = leaderboard_frame(views, [path for _, path in mine], name, rank_quick)
        by_row = {}
        for result, _ in mine:
            for split, data in result.splits.items():
                for setting in data.exact:
                    method = result.method if setting == result.setting else None
                    by_row[(result.pair, result.dataset, split, setting, method)] = result
        rows = []
        for _, r in frame.iterrows():
            method = r["method"] if r["row"] == "method" else None
            key = (r["pair"], r["dataset"], r["split"], r["setting"], method)
            result = by_row.get(key) or next(
                v for k, v in by_row.items() if k[:4] == key[:4]
            )  # a reference row: any result of its group has it
            rows.append(_loss_columns(result, r["split"], r["setting"]))
        frames.append(pd.concat([frame, pd.DataFrame(rows, index=frame.index)], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _signed(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.2f}"


# display_frame's columns on training (the same with or without an index)
TRAINING_COLUMNS = ["training needs", "pairs", "settings", "trainable", "fit time"]


def index_display(
    group: pd.DataFrame,
    mark: Callable[[str], str] = str,
    escape: Callable[[str], str] = str,
    tip: Callable[[str, str], str] = lambda text, _: text,
) -> pd.DataFrame:
    """One index section of :func:`index_frame` as a human table: :func:`display_frame`'s
    columns (recalls through the index, marked against old→old through the same index) and
    each row's loss against exact search (R@1 T2I/I2T, rsum with its interval), OLD's own
    rsum loss and, for method rows, the rsum loss beyond OLD's with its interval. What a
    method needs and costs to train is the exact table's, so left out here (it fits a page)."""
    shown = display_frame(group, mark, escape, tip).drop(columns=TRAINING_COLUMNS)
    loss_r1, loss_rsum, beyond = [], [], []
    for _, r in group.iterrows():
        loss_r1.append("/".join(_signed(r[f"loss_{k}"]) for k in LOSS_DIRECTIONS))
        loss_rsum.append(
            tip(_signed(r["loss_rsum"]), f"95% interval {r['loss_rsum_lo']:+.2f} to "
                f"{r['loss_rsum_hi']:+.2f} (paired, over the split's images); OLD's own loss "
                f"{r['old_loss_rsum']:+.2f}")
        )  # fmt: skip
        if pd.isna(r["extra_loss_rsum"]):
            beyond.append("")
        else:
            beyond.append(
                f"{r['extra_loss_rsum']:+.2f} ({r['extra_loss_rsum_lo']:+.2f} to "
                f"{r['extra_loss_rsum_hi']:+.2f})"
            )
    position = list(shown.columns).index("gain share")
    for offset, (column, values) in enumerate(
        (("loss R@1 T2I/I2T", loss_r1), ("loss rsum", loss_rsum), ("beyond OLD (rsum)", beyond))
    ):
        shown.insert(position + offset, column, values)
    return shown


def index_searches(group: pd.DataFrame) -> str:
    """The FAISS index each gallery of an index section had, in one line."""
    first = group.iloc[0]
    columns = [c for c in group.columns if c.startswith("index ") and not pd.isna(first[c])]
    return "; ".join(f"{c.removeprefix('index ')}: {first[c]}" for c in columns)


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
    indexes: pd.DataFrame  # production indexes (issue 22, item 3)
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
        found = self.found
        return any(r.quick for r in (*found.runs, *found.backfills, *found.sweeps, *found.indexes))

    @staticmethod
    def groups(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
        """``frame`` split into (pair, dataset, split, search, runs) groups in table order."""
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
    frame = leaderboard_frame(found.runs, found.run_files, rank_quick=rank_quick)
    return Leaderboards(
        exact=frame,
        indexes=index_frame(found, rank_quick),
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
        tuning_note(boards.results),
        "",
    ]
    if boards.has_quick:
        lines += [f"**{QUICK_MARK} {QUICK_NOTE}.**", ""]
    for key, group in boards.groups(boards.exact):
        first = group.iloc[0]
        lines += [
            f"## {group_title(key)}",
            "",
            f"old `{first['old']}` → new `{first['new']}`{split_size(group)}",
            "",
        ]
        for title, members in deployment_groups(group):
            lines += [
                f"**{title}**",
                "",
                display_frame(members).to_markdown(index=False, disable_numparse=True),
                "",
            ]
    if not boards.indexes.empty:
        lines += [f"## {INDEX_TITLE}", "", INDEX_LEGEND, ""]
        for key, group in boards.groups(boards.indexes):
            first = group.iloc[0]
            lines += [
                f"### {group_title(key)}",
                "",
                f"old `{first['old']}` → new `{first['new']}`; {index_searches(group)}",
                "",
                index_display(group).to_markdown(index=False, disable_numparse=True),
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


# Every table a build writes, by file name (a table without rows is removed instead).
TABLE_FILES = (
    "leaderboard.csv",
    "leaderboard-indexes.csv",
    "chains.csv",
    "backfill.csv",
    "diagnostics.csv",
    "reported.csv",
)


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every float rounded to :data:`CSV_DECIMALS` places, in object columns
    (numbers mixed with None) too."""
    return frame.map(lambda x: round(x, CSV_DECIMALS) if isinstance(x, float) else x)


def build_leaderboards(
    results_dir: str | Path, output_dir: str | Path, rank_quick: bool = False
) -> Leaderboards:
    """Build the leaderboards from ``results_dir`` and write ``leaderboard.csv``/``.md``,
    ``leaderboard-indexes.csv``, ``chains.csv``, ``backfill.csv`` (when there are rows) and
    ``reported.csv`` to ``output_dir`` atomically (``rank_quick``: as :func:`leaderboards`)."""
    results_dir, output_dir = Path(results_dir), Path(output_dir)
    boards = leaderboards(results_dir, rank_quick)
    frames = (boards.exact, boards.indexes, boards.chains, boards.backfill,
              boards.diagnostics, boards.reported)  # fmt: skip
    tables = dict(zip(TABLE_FILES, frames, strict=True))
    for name, frame in tables.items():
        path = output_dir / name
        if frame.empty:
            path.unlink(missing_ok=True)  # a stale table from an earlier build would mislead
            continue
        write_text(path, spreadsheet_csv(_rounded(frame)))
        boards.files.append(path)
    path = output_dir / "leaderboard.md"
    write_text(path, _markdown(boards, results_dir))
    boards.files.append(path)
    return boards
