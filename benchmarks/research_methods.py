"""Support-split grid for method settings (the research behind docs/methods.md).

    python benchmarks/research_methods.py --pair toy-s-to-m --grid grid.json [--seeds 1]
        [--baseline '{"method": "stitch"}'] [--threads 1] [--log rows.jsonl]

``grid.json`` is a list of ``{"name": ..., "method": ..., "settings": {...}}``, each optionally
with its own ``"baseline": {"method": ..., "settings": {...}}``. Every entry is fitted as
``xbt-bench run`` fits it (same registry, same caches and checkpoints, so entries that share
stage 1 train it once) and scored on the pair's **support** split only: its queries against
OLD's support gallery, next to old→old on support. The test splits are never read.

Each row reports, per seed and for the seed-mean, the entry's recalls, its margins over
old→old, and its margin over the baseline (default: ``stitch`` with the same seed) for every
recall cell and rsum with the paired 95% bootstrap interval over support images (both scored on
the same resampled images; for the seed-mean, each query's hits averaged over the seeds, as
``xbt-bench run`` reports it). Rows are printed and appended to ``--log``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xbt_bench.data import load_dataset, load_text_corpus, split_data_ref
from xbt_bench.embed import EmbeddingCache, embed_split
from xbt_bench.eval import Embeddings, RetrievalResult
from xbt_bench.eval.bootstrap import QueryHits, paired_margin_intervals
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.pairs import load_pair
from xbt_bench.paths import cache_dir
from xbt_bench.scoring import score

KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
DEFAULT_BASELINE = {"method": "stitch", "settings": {}}


def support_hits(scored: Sequence[RetrievalResult], caption_image: np.ndarray) -> QueryHits:
    """Per-query hits of ``scored`` (one result per seed, averaged) for the paired bootstrap."""
    return QueryHits.from_ranks(
        [s.t2i_ranks for s in scored], [s.i2t_ranks for s in scored], caption_image
    )


def mean_metrics(scored: Sequence[RetrievalResult]) -> dict[str, float]:
    """Each metric of ``KEYS`` averaged over ``scored`` (one result per seed)."""
    return {k: float(np.mean([s.metrics[k] for s in scored])) for k in KEYS}


def margin_over(
    scored: Sequence[RetrievalResult],
    baseline: Sequence[RetrievalResult],
    caption_image: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """``{metric: {"margin": M(scored) − M(baseline), "ci": [lo, hi]}}`` for every cell of
    ``KEYS``: the mean metrics' difference and its paired 95% bootstrap interval over images
    (results of the same seeds, in the same order; several seeds: hits averaged over them)."""
    ours, theirs = mean_metrics(scored), mean_metrics(baseline)
    intervals = paired_margin_intervals(
        support_hits(scored, caption_image), support_hits(baseline, caption_image)
    )
    return {k: {"margin": ours[k] - theirs[k], "ci": intervals[k]} for k in KEYS}


def significant_cells(margins: dict[str, dict[str, Any]]) -> list[str]:
    """The metrics whose paired interval lies above 0."""
    return [k for k in KEYS if margins[k]["ci"][0] > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="toy-s-to-m")
    parser.add_argument("--grid", required=True, help="JSON list of {name, method, settings}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 … N−1 for every entry")
    parser.add_argument(
        "--baseline",
        default=json.dumps(DEFAULT_BASELINE),
        help='JSON {"method": ..., "settings": {...}} every entry is compared with, seed by '
        'seed (an entry\'s own "baseline" key wins)',
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--log", help="append one JSON row per entry to this file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    default_baseline = json.loads(args.baseline)
    pair = load_pair(args.pair)
    old, new = ModelHandle(pair.old), ModelHandle(pair.new)
    support = load_dataset(*split_data_ref(pair.data.support))
    common = dict(
        old=old,
        new=new,
        text_corpus=load_text_corpus(pair.data.text),
        train_pairs=load_dataset(*split_data_ref(pair.data.pairs)),
        support=support,
        work_dir=cache_dir("runs", pair.name),
        embeddings=EmbeddingCache(),
        shared={},
    )
    gallery = Embeddings(*(embed_split(old.get(), support, side) for side in ("image", "text")))
    reference = score(gallery, gallery, support.caption_image).metrics
    print("old->old on support: " + " ".join(f"{k} {reference[k]:.2f}" for k in KEYS))

    def fit_and_score(method: str, settings: dict[str, Any], seed: int) -> RetrievalResult:
        ctx = FitContext(**common, config=settings, seed=seed)
        fitted = methods.get(method)(ctx)
        queries = Embeddings(fitted.encode_images(support), fitted.encode_texts(support))
        return score(queries, gallery, support.caption_image)

    baselines: dict[tuple[str, int], RetrievalResult] = {}

    def baseline_at(spec: dict[str, Any], seed: int) -> RetrievalResult:
        key = (json.dumps(spec, sort_keys=True), seed)
        if key not in baselines:
            baselines[key] = fit_and_score(spec["method"], spec.get("settings", {}), seed)
        return baselines[key]

    for entry in json.loads(Path(args.grid).read_text()):
        baseline = entry.get("baseline", default_baseline)
        scored, base = [], []
        for seed in range(args.seeds):
            scored.append(fit_and_score(entry["method"], entry.get("settings", {}), seed))
            base.append(baseline_at(baseline, seed))
        mean = mean_metrics(scored)
        margin = {k: mean[k] - reference[k] for k in KEYS}
        held = sum(margin[k] > 0 for k in KEYS[:6])
        over = margin_over(scored, base, support.caption_image)
        per_seed_over = [
            margin_over([s], [b], support.caption_image) for s, b in zip(scored, base, strict=True)
        ]
        rsum = over["rsum"]
        print(
            f"{entry['name']:<36} "
            + " ".join(f"{mean[k]:6.2f}" for k in KEYS)
            + f"  held {held}/6  rsum {margin['rsum']:+.2f}"
            + f"  vs {baseline['method']} {rsum['margin']:+.2f} "
            + f"[{rsum['ci'][0]:+.2f}, {rsum['ci'][1]:+.2f}]"
            + f" above 0: {','.join(significant_cells(over)) or '-'}"
            + "  per seed: "
            + " ".join(f"{m['rsum']['margin']:+.2f}" for m in per_seed_over),
            flush=True,
        )
        if args.log:
            row = {
                **entry,
                "support": mean,
                "margin": margin,
                "per_seed": [s.metrics for s in scored],
                "old_old": reference,
                "held": held,
                "baseline": baseline,
                "baseline_support": mean_metrics(base),
                "margin_over_baseline": over,
                "per_seed_margin_over_baseline": per_seed_over,
                "significant_over_baseline": significant_cells(over),
            }
            with open(args.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
