"""T2I recall@{1,5,10}: xbt_bench's evaluator against CLIP_benchmark's, and search back ends.

Compares, on synthetic unit-norm embeddings (caption queries vs an image gallery):

- ``xbt_bench``: validation + exact FAISS top-(K+1) search streamed over query chunks + ranks;
- ``clip_benchmark``: its ``evaluate()`` from the score matrix on, i.e. the full
  ``queries @ gallery.T`` matrix, the positive-pair matrix and ``batchify(recall_at_k, ...)``;
- ``faiss_exact`` vs ``torch_topk``: bare exact top-11 search, FAISS ``IndexFlatIP`` against a
  chunked torch matmul + topk loop (time).

Each runs in a fresh child process: wall time, and peak memory as the rise of the child's peak
RSS (VmHWM, reset after loading the data) over its resident size before the run, so torch and
FAISS allocations count too.

    PYTHONPATH=. python benchmarks/bench_eval.py                      # 10k x 100k, d=512
    PYTHONPATH=. python benchmarks/bench_eval.py --queries 1000 --gallery 10000   # smoke test
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

KS = (1, 5, 10)
Recalls = dict[int, float] | None


def make_data(n_queries: int, n_gallery: int, dim: int, seed: int, folder: Path) -> None:
    """Unit-norm gallery images; each caption query is a noisy copy of a random image."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    pairs = rng.integers(0, n_gallery, size=n_queries)
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * (4.5 / np.sqrt(dim))
    queries = (gallery[pairs] + noise).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "gallery.npy", gallery)
    np.save(folder / "pairs.npy", pairs)


def run_xbt_bench(queries: np.ndarray, gallery: np.ndarray, pairs: np.ndarray, args) -> Recalls:
    from xbt_bench.eval import positive_ranks, validate_embeddings

    ranks = positive_ranks(
        validate_embeddings("queries", queries),
        validate_embeddings("gallery", gallery),
        pairs,
        np.arange(len(gallery)),
        max(KS),
        chunk_size=args.chunk_size,
    )
    return {k: 100 * float(np.mean(ranks < k)) for k in KS}


def run_clip_benchmark(
    queries: np.ndarray, gallery: np.ndarray, pairs: np.ndarray, args
) -> Recalls:
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    texts_emb, images_emb = torch.from_numpy(queries), torch.from_numpy(gallery)
    # As clip_benchmark.metrics.zeroshot_retrieval.evaluate, from the score matrix on.
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), torch.from_numpy(pairs)] = True
    recalls = {}
    for k in KS:
        hits = batchify(recall_at_k, scores, positive_pairs, args.clip_batch_size, "cpu", k=k) > 0
        recalls[k] = 100 * hits.float().mean().item()
    return recalls


def run_faiss_exact(queries: np.ndarray, gallery: np.ndarray, pairs: np.ndarray, args) -> Recalls:
    from xbt_bench.eval import search_topk

    search_topk(queries, gallery, max(KS) + 1, chunk_size=args.chunk_size)
    return None


def run_torch_topk(queries: np.ndarray, gallery: np.ndarray, pairs: np.ndarray, args) -> Recalls:
    import torch

    queries_t, gallery_t = torch.from_numpy(queries), torch.from_numpy(gallery)
    for start in range(0, len(queries_t), args.chunk_size):
        torch.topk(queries_t[start : start + args.chunk_size] @ gallery_t.T, max(KS) + 1, dim=1)
    return None


TASKS: dict[str, Callable[..., Recalls]] = {
    "xbt_bench": run_xbt_bench,
    "clip_benchmark": run_clip_benchmark,
    "faiss_exact": run_faiss_exact,
    "torch_topk": run_torch_topk,
}


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _measure(task: str, folder: Path, args) -> tuple[float, float, Recalls]:
    """In a fresh process: load the data and imports, then time one task and its peak RSS rise."""
    import faiss  # noqa: F401  (imported before the baseline, like the data)
    import torch  # noqa: F401

    import xbt_bench.eval  # noqa: F401

    queries, gallery, pairs = (
        np.load(folder / f"{n}.npy") for n in ("queries", "gallery", "pairs")
    )
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    recalls = TASKS[task](queries, gallery, pairs, args)
    seconds = time.perf_counter() - start
    return seconds, (_status_kib("VmHWM") - baseline) / 1024, recalls


def measure(task: str, folder: Path, args) -> tuple[float, float, Recalls]:
    """Wall seconds, peak RSS rise in MiB and recalls of ``task``, run in a fresh process."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, task, folder, args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=10_000, help="caption queries")
    parser.add_argument("--gallery", type=int, default=100_000, help="gallery images")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=4096, help="queries per search step")
    parser.add_argument(
        "--clip-batch-size", type=int, default=64, help="CLIP_benchmark's batch (its default)"
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(args.queries, args.gallery, args.dim, args.seed, folder)
        print(f"T2I: {args.queries} queries x {args.gallery} gallery, d={args.dim}, float32")
        print(f"{'task':<16}{'wall time':>12}{'peak RSS rise':>16}   R@1     R@5     R@10")
        rows = {}
        for task in args.tasks:
            rows[task] = measure(task, folder, args)
            seconds, peak_mib, recalls = rows[task]
            shown = "" if recalls is None else "  ".join(f"{v:6.2f}" for v in recalls.values())
            print(f"{task:<16}{seconds:>10.2f} s{peak_mib:>12.0f} MiB   {shown}", flush=True)

    pairs_compared = (
        ("clip_benchmark", "xbt_bench"),
        ("xbt_bench", "faiss_exact"),  # the evaluator's own cost over bare exact search
        ("torch_topk", "faiss_exact"),
    )
    for slow, fast in pairs_compared:
        if slow in rows and fast in rows:
            (t_slow, m_slow, r_slow), (t_fast, m_fast, r_fast) = rows[slow], rows[fast]
            print(
                f"{slow} / {fast}: time x{t_slow / t_fast:.1f}, peak memory "
                f"x{m_slow / max(m_fast, 1.0):.1f}"
            )
            if r_slow is not None and r_fast is not None:
                same = all(abs(r_slow[k] - r_fast[k]) < 1e-3 for k in KS)
                print(f"  recalls equal: {same}")


if __name__ == "__main__":
    main()
