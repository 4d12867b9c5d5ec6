"""Build time, test retrieval and embedding geometry of each toy model.

    python benchmarks/bench_toy_zoo.py           # build what is missing in the cache, report all
    python benchmarks/bench_toy_zoo.py --fresh   # time `xbt-bench zoo build` from an empty cache

``--fresh`` runs the real command in a temporary ``XBT_BENCH_HOME`` (toy data generation and
tokenisation included), so its total is what a new user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=180)


def fresh_build(names: list[str], quick: bool) -> float:
    """Seconds that ``xbt-bench zoo build`` takes from an empty cache (sets XBT_BENCH_HOME)."""
    home = Path(tempfile.mkdtemp(prefix="xbt-zoo-bench-"))
    os.environ["XBT_BENCH_HOME"] = str(home)
    command = [sys.executable, "-m", "xbt_bench", "zoo", "build", *names]
    if quick:
        command.append("--quick")
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def main() -> None:
    """Report each toy model's build time, test-split retrieval and geometry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="toy models (default: all)")
    parser.add_argument("--fresh", action="store_true", help="time a build from an empty cache")
    parser.add_argument("--quick", action="store_true", help="quick builds (as tests use them)")
    args = parser.parse_args()

    total = fresh_build(args.names, args.quick) if args.fresh else None
    from xbt_bench.toy.build import build
    from xbt_bench.toy.zoo import CARD_NAME, zoo_entry, zoo_names

    table = Table(title="Toy zoo on the toy test split (1000 images x 5 captions)")
    columns = (
        "model", "dim", "params", "build s", "train s", "steps",
        "t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10",
        "matched cos", "gap", "intra img", "intra txt",
    )
    for column in columns:
        table.add_column(column, justify="right")
    build_total = 0.0
    for name in args.names or zoo_names():
        entry = zoo_entry(name, args.quick)
        built = entry.folder / CARD_NAME
        card = json.loads(built.read_text()) if entry.is_built else build(entry)
        build_total += card["build_time_s"]
        recall, geometry = card["retrieval"], card["geometry"]
        table.add_row(
            name,
            str(card["embed_dim"]),
            f"{card['parameters'] / 1e6:.2f}M",
            f"{card['build_time_s']:.0f}",
            f"{card['train_time_s']:.0f}",
            str(entry.settings.steps),
            *(f"{recall[f'{d}_r{k}']:.1f}" for d in ("t2i", "i2t") for k in (1, 5, 10)),
            *(
                f"{geometry[key]:.3f}"
                for key in (
                    "matched_cosine", "modality_gap", "image_intra_cosine", "text_intra_cosine"
                )
            ),
        )
    console.print(table)
    console.print(f"sum of per-model build times: {build_total:.0f} s (cpu threads: "
                  f"{os.cpu_count()})")
    if total is not None:
        console.print(f"`xbt-bench zoo build` from an empty cache: {total:.0f} s wall")


if __name__ == "__main__":
    main()
