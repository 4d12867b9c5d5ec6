"""Support-split research for the partial backfill (the log in docs/methods.md, "Partial
backfill: calibration and order").

    python benchmarks/research_backfill.py --pair toy-s-to-m --method xbt --method linear
        [--fractions 10,25,50,75] [--log rows.jsonl]

Every method is fitted as ``xbt-bench run`` fits it (same caches and checkpoints, seed 0) and
only the pair's **support** split is read. For each method and direction it prints:

- the merged R@1 at each share next to the straight line between the two ends, for every
  calibration candidate (random order);
- where the merge loses: queries whose positive sits in the OLD part and in the NEW part, their
  R@1 in their own part alone (no items of the other part) and in the merged list, and how often
  an item of the other part is the one that outranks them;
- what :func:`~xbt_bench.eval.backfill.plan_backfill` chooses: the calibration per direction and
  every order's support score (mean R@1 of both directions over the shares, with that
  calibration; the uncertainty order cross-fitted on support's items).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from xbt_bench.eval.backfill import (
    CALIBRATIONS,
    DIRECTIONS,
    BackfillSet,
    backfilled_at,
    fit_calibrations,
    plan_backfill,
)
from xbt_bench.eval.retrieval import validate_embeddings
from xbt_bench.options import RunOptions
from xbt_bench.runner import Runner


def direction_arrays(support: BackfillSet, direction: str) -> dict[str, np.ndarray]:
    """Queries, galleries and labels of one direction of ``support`` (unit rows)."""
    ids = np.arange(support.n_images)
    caption_image = np.asarray(support.caption_image)
    query_side, gallery_side = ("texts", "images") if direction == "t2i" else ("images", "texts")
    labels = (caption_image, ids) if direction == "t2i" else (ids, caption_image)
    return {
        "old_q": validate_embeddings("q", getattr(support.method_queries, query_side)),
        "old_g": validate_embeddings("g", getattr(support.old_gallery, gallery_side)),
        "new_q": validate_embeddings("q", getattr(support.new_embeddings, query_side)),
        "new_g": validate_embeddings("g", getattr(support.new_embeddings, gallery_side)),
        "q_labels": labels[0],
        "g_labels": labels[1],
    }


def where_it_loses(arrays: dict[str, np.ndarray], item_flags: np.ndarray, calibration) -> dict:
    """Brute-force merge of one direction: per group of queries (positive in the OLD part, in
    the NEW part), R@1 alone in its part, R@1 merged, and the share of its misses whose top item
    comes from the other part."""
    g_labels, q_labels = arrays["g_labels"], arrays["q_labels"]
    flags = item_flags[g_labels]  # gallery rows of backfilled items
    old = calibration.old(arrays["old_q"] @ arrays["old_g"].T)
    new = calibration.new(arrays["new_q"] @ arrays["new_g"].T)
    merged = np.where(flags[None, :], new, old)
    positive = q_labels[:, None] == g_labels[None, :]
    in_new = item_flags[q_labels]  # the query's own item was re-embedded
    out = {}
    for group, mask in (("positive in OLD part", ~in_new), ("positive in NEW part", in_new)):
        if not mask.any():
            continue
        own_part = flags if group.endswith("NEW part") else ~flags
        alone = np.where(own_part[None, :], merged, -np.inf)[mask]
        scores, pos = merged[mask], positive[mask]
        best = np.where(pos, scores, -np.inf).max(axis=1)
        hit_alone = (np.where(pos, -np.inf, alone).max(axis=1) < best).mean()
        top_negative = np.where(pos, -np.inf, scores).argmax(axis=1)
        hit = (np.where(pos, -np.inf, scores).max(axis=1) < best)
        intruder = ~own_part[top_negative] & ~hit
        out[group] = {
            "queries": int(mask.sum()),
            "r1_alone": round(100 * float(hit_alone), 2),
            "r1_merged": round(100 * float(hit.mean()), 2),
            "misses_to_other_part": round(100 * float(intruder.sum() / max((~hit).sum(), 1)), 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="toy-s-to-m")
    parser.add_argument("--method", action="append", required=True)
    parser.add_argument("--fractions", default="10,25,50,75")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="append one JSON row per method to this file")
    args = parser.parse_args()
    fractions = [float(f) / 100 for f in args.fractions.split(",")]
    console = Console()
    runner = Runner(RunOptions(pair=args.pair, methods=args.method, seed=args.seed), console)
    data = runner.data
    for method in runner.method_names:
        fitted = runner.fits(method)[0]
        support = runner.backfill_set(fitted, f"support:{data.support.key}", data.support)
        row: dict = {"method": method, "fractions": fractions}
        ends = {f: support.evaluate(backfilled_at(support.order("random", args.seed), f), {})
                for f in (0.0, 1.0)}  # fmt: skip
        fitted_maps = fit_calibrations(
            support.method_queries, support.old_gallery, support.new_embeddings,
            support.caption_image,
        )  # fmt: skip
        random = support.order("random", args.seed)
        for name in CALIBRATIONS:
            maps = {d: fitted_maps[d][name] for d in DIRECTIONS}
            curve = support.curve(random, fractions, maps)
            for d in DIRECTIONS:
                key = f"{d}_r1"
                line = [(1 - f) * ends[0.0].metrics[key] + f * ends[1.0].metrics[key]
                        for f in fractions]  # fmt: skip
                got = [r.metrics[key] for r in curve]
                row.setdefault("calibration", {}).setdefault(d, {})[name] = {
                    "r1": [round(v, 2) for v in got],
                    "line": [round(v, 2) for v in line],
                    "mean_minus_line": round(float(np.mean(got) - np.mean(line)), 2),
                }
            half = backfilled_at(random, 0.5)
            row.setdefault("where", {})[name] = {
                d: where_it_loses(direction_arrays(support, d), half, maps[d]) for d in DIRECTIONS
            }
        console.print_json(json.dumps(row))
        plan = plan_backfill(support, [0.0, *fractions, 1.0], args.seed)
        row["plan"] = {"chosen": plan.chosen, "order_r1": plan.order_r1, "kept": plan.kept}
        console.print_json(json.dumps(row["plan"]))
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps(row) + "\n")
    console.print(f"support split only: {Path(data.support.key)}")


if __name__ == "__main__":
    main()
