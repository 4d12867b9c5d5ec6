"""Support-split grid for method settings (the research behind docs/methods.md).

    python benchmarks/research_methods.py --pair toy-s-to-m --grid grid.json [--seeds 1]
        [--log rows.jsonl]

``grid.json`` is a list of ``{"name": ..., "method": ..., "settings": {...}}``. Every entry is
fitted as ``xbt-bench run`` fits it (same registry, same caches and checkpoints, so entries
that share stage 1 train it once) and scored on the pair's **support** split only: its queries
against OLD's support gallery, next to old→old on support. The test splits are never read.
Each row (recalls, margins over old→old, per seed) is printed and appended to ``--log``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from xbt_bench.data import load_dataset, load_text_corpus, split_data_ref
from xbt_bench.embed import EmbeddingCache, embed_split
from xbt_bench.eval import Embeddings
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.pairs import load_pair
from xbt_bench.paths import cache_dir
from xbt_bench.scoring import score

KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="toy-s-to-m")
    parser.add_argument("--grid", required=True, help="JSON list of {name, method, settings}")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--log", help="append one JSON row per entry to this file")
    args = parser.parse_args()
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
    for entry in json.loads(Path(args.grid).read_text()):
        per_seed = []
        for seed in range(args.seeds):
            ctx = FitContext(**common, config=entry.get("settings", {}), seed=seed)
            fitted = methods.get(entry["method"])(ctx)
            queries = Embeddings(fitted.encode_images(support), fitted.encode_texts(support))
            per_seed.append(score(queries, gallery, support.caption_image).metrics)
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in KEYS}
        margin = {k: mean[k] - reference[k] for k in KEYS}
        held = sum(margin[k] > 0 for k in KEYS[:6])
        print(
            f"{entry['name']:<36} "
            + " ".join(f"{mean[k]:6.2f}" for k in KEYS)
            + f"  held {held}/6  rsum {margin['rsum']:+.2f}",
            flush=True,
        )
        if args.log:
            row = {**entry, "support": mean, "margin": margin, "per_seed": per_seed,
                   "old_old": reference, "held": held}  # fmt: skip
            with open(args.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
