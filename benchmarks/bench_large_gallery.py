"""Exact vs approximate FAISS search on a large memory-mapped gallery (default 1M x 512).

The gallery is synthetic but structured like real embeddings: unit vectors near a 32-dimensional
subspace, in clusters of about 1000, with a little noise in every dimension. It is written once
as ``.npy`` shards (float32; reused while the settings match) and read back through
:class:`xbt_bench.eval.large.EmbeddingShards`, one memory-mapped block at a time. Each query is
a gallery vector moved by noise inside the subspace, so its paired item is its positive (T2I
with one positive; ties have probability zero, so R@K is "the pair is in the top K").

For exact search (streamed over gallery blocks, the gallery never held) and each approximate
index (``FACTORY:PARAMS``, built from the shards block by block; ``FACTORY:P1;P2`` builds one
index and searches it with each setting), it prints build and search time, the process's RSS
before the phase and its peak since (VmHWM, reset before each build; it includes the
interpreter, FAISS and the in-memory queries), R@1/5/10, the recall loss against exact search,
the 10-NN recall (overlap of the top 10 with exact search's), and the speed-up of the search
(and of build + search) over exact search.

    PYTHONPATH=. nice -n 10 python benchmarks/bench_large_gallery.py            # 1M x 512
    PYTHONPATH=. python benchmarks/bench_large_gallery.py --gallery 50000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from xbt_bench.atomic import write_json, write_npy
from xbt_bench.eval.large import (
    EmbeddingShards,
    build_sharded_index,
    search_label,
    search_sharded,
    set_search_params,
)
from xbt_bench.paths import cache_dir

KS = (1, 5, 10)
LATENT_DIM = 32
POINT_NOISE = 0.1  # per-item noise off the subspace, relative to the subspace part
QUERY_NOISE = 0.6  # query noise inside the subspace (sets exact R@1 near 70%)
DEFAULT_INDEXES = ("IVF1024,Flat:nprobe=8;nprobe=32", "HNSW32:efSearch=64;efSearch=256")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (or since start), in MiB."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size in MiB (0 where /proc is missing)."""
    return _status_mb("VmRSS") or 0.0


def _basis(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    basis = np.linalg.qr(rng.standard_normal((dim, LATENT_DIM)))[0].T.astype(np.float32)
    return basis, rng


def make_gallery(
    folder: Path, n: int, dim: int, shard_rows: int, clusters: int, seed: int
) -> list[Path]:
    """Write the gallery shards (unless ``folder`` already holds them) and return their paths."""
    settings = {
        "n": n,
        "dim": dim,
        "shard_rows": shard_rows,
        "clusters": clusters,
        "seed": seed,
        "latent_dim": LATENT_DIM,
        "point_noise": POINT_NOISE,
        "version": 1,
    }
    starts = range(0, n, shard_rows)
    paths = [folder / f"gallery-{start:09d}.npy" for start in starts]
    meta = folder / "gallery.json"
    if (
        meta.exists()
        and json.loads(meta.read_text()) == settings
        and all(p.exists() for p in paths)
    ):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    basis, rng = _basis(dim, seed)
    centres = 2.0 * rng.standard_normal((clusters, LATENT_DIM)).astype(np.float32)
    for index, (start, path) in enumerate(zip(starts, paths, strict=True)):
        rows = min(shard_rows, n - start)
        shard_rng = np.random.default_rng([seed, 1, index])
        latent = centres[shard_rng.integers(0, clusters, rows)]
        latent += shard_rng.standard_normal((rows, LATENT_DIM), dtype=np.float32)
        x = latent @ basis
        noise = shard_rng.standard_normal((rows, dim), dtype=np.float32)
        x += noise * np.float32(POINT_NOISE * np.sqrt(LATENT_DIM / dim))
        del noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        write_npy(path, x)
        del x
    write_json(meta, settings)
    return paths


def make_queries(
    gallery: EmbeddingShards, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, targets)``: noisy copies of ``n_queries`` distinct gallery items."""
    basis, _ = _basis(gallery.dim, seed)
    rng = np.random.default_rng([seed, 2])
    targets = np.sort(rng.choice(gallery.n_rows, size=n_queries, replace=False))
    noise = rng.standard_normal((n_queries, LATENT_DIM), dtype=np.float32) / np.sqrt(LATENT_DIM)
    queries = gallery.take(targets) + np.float32(QUERY_NOISE) * (noise @ basis)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32), targets


def recalls(ids: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """T2I R@K in percent: the paired item among the top K."""
    hit = ids == targets[:, None]
    return {f"t2i_r{k}": round(100.0 * float(hit[:, :k].any(axis=1).mean()), 2) for k in KS}


def parse_index(text: str) -> tuple[str, list[str | None]]:
    """``"HNSW32:efSearch=64;efSearch=256"`` -> ``("HNSW32", ["efSearch=64", "efSearch=256"])``:
    one index, searched with each setting in turn."""
    factory, _, params = text.partition(":")
    return factory, [p for p in params.split(";") if p] or [None]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the table and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-rows", type=int, default=65536)
    parser.add_argument("--block-rows", type=int, default=65536)
    parser.add_argument("--clusters", type=int, default=None, help="default: gallery / 1000")
    parser.add_argument("--index", action="append", help="FACTORY[:PARAMS[;PARAMS...]], repeatable")
    parser.add_argument("--train-rows", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the gallery shards live")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    clusters = args.clusters or max(1, args.gallery // 1000)
    folder = args.dir or cache_dir("bench", f"large-gallery-{args.gallery}x{args.dim}")
    k = max(KS)

    reset_peak_rss()
    started = time.perf_counter()
    paths = make_gallery(folder, args.gallery, args.dim, args.shard_rows, clusters, args.seed)
    gallery = EmbeddingShards.from_files(paths, "gallery")
    queries, targets = make_queries(gallery, args.queries, args.seed)
    size_mb = sum(p.stat().st_size for p in paths) / 2**20
    print(
        f"gallery: {gallery.n_rows} x {gallery.dim} float32 in {len(paths)} memory-mapped shards "
        f"({size_mb:.0f} MiB on disk, {folder}); {len(queries)} queries; ready in "
        f"{time.perf_counter() - started:.1f}s, peak RSS {peak_rss_mb():.0f} MiB; "
        f"FAISS threads {faiss.omp_get_max_threads()}",
        flush=True,
    )

    rows = []
    exact_ids = None
    for spec in [None, *(args.index or DEFAULT_INDEXES)]:
        factory, settings = parse_index(spec) if spec else (None, [None])
        print(f"building {factory} ..." if factory else "exact search ...", flush=True)
        before = rss_mb()
        reset_peak_rss()
        started = time.perf_counter()
        index = None
        if factory is not None:
            index = build_sharded_index(
                gallery, factory, train_rows=args.train_rows, block_rows=args.block_rows
            )
        build_s = time.perf_counter() - started
        for params in settings:
            if params:
                set_search_params(index, params, factory)
            started = time.perf_counter()
            _, ids = search_sharded(queries, gallery, k, index=index, block_rows=args.block_rows)
            search_s = time.perf_counter() - started
            if exact_ids is None:
                exact_ids = ids
            overlap = np.mean(
                [len(np.intersect1d(a, b)) for a, b in zip(ids, exact_ids, strict=True)]
            )
            rows.append(
                {
                    "search": search_label(factory, params),
                    "build_s": build_s,
                    "search_s": search_s,
                    "rss_before_mb": round(before, 1),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    **recalls(ids, targets),
                    "knn_recall@10": round(100.0 * overlap / k, 2),
                }
            )
        del index
    exact = rows[0]
    for row in rows:
        row["r1_loss"] = round(exact["t2i_r1"] - row["t2i_r1"], 2)
        row["r10_loss"] = round(exact["t2i_r10"] - row["t2i_r10"], 2)
        row["speedup_search"] = round(exact["search_s"] / row["search_s"], 2)
        total = row["build_s"] + row["search_s"]
        row["speedup_total"] = round((exact["build_s"] + exact["search_s"]) / total, 2)

    columns = {
        "search": "search",
        "build_s": "build s",
        "search_s": "search s",
        "speedup_search": "speed-up (search)",
        "speedup_total": "speed-up (build+search)",
        "rss_before_mb": "RSS before MiB",
        "peak_rss_mb": "peak RSS MiB",
        "t2i_r1": "R@1",
        "t2i_r5": "R@5",
        "t2i_r10": "R@10",
        "r1_loss": "R@1 loss",
        "r10_loss": "R@10 loss",
        "knn_recall@10": "10-NN recall %",
    }
    print("| " + " | ".join(columns.values()) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = (f"{row[key]:.3g}" if key.endswith("_s") else str(row[key]) for key in columns)
        print("| " + " | ".join(cells) + " |")
    if args.json:
        settings = {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()}
        write_json(args.json, {"settings": settings | {"dir": str(folder)}, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
