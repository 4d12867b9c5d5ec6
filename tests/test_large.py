"""Retrieval over memory-mapped embedding shards, exact and approximate, and its benchmark."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from xbt_bench.embed import EmbeddingCache, EmbeddingKey
from xbt_bench.errors import InputError, NotFoundError
from xbt_bench.eval import evaluate_retrieval, positive_ranks
from xbt_bench.eval.large import (
    EmbeddingShards,
    build_sharded_index,
    evaluate_retrieval_sharded,
    search_label,
    search_sharded,
    sharded_positive_ranks,
)

ROOT = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def retrieval_set(n_images: int = 300, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Clustered images, 2 noisy captions each, and exact duplicates (ties) in both galleries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim))
    images = unit(
        centres[rng.integers(0, 12, n_images)] + 0.6 * rng.standard_normal((n_images, dim))
    )
    images[1::7] = images[0::7][: len(images[1::7])]  # tied gallery items
    caption_image = np.repeat(np.arange(n_images), 2)
    texts = unit(images[caption_image] + 0.3 * rng.standard_normal((2 * n_images, dim)))
    texts[5] = texts[4]
    return {"images": images, "texts": texts, "caption_image": caption_image}


def save_shards(folder: Path, name: str, x: np.ndarray, sizes: list[int]) -> EmbeddingShards:
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for i, size in enumerate(sizes):
        paths.append(folder / f"{name}-{i}.npy")
        np.save(paths[-1], x[start : start + size])
        start += size
    assert start == len(x)
    return EmbeddingShards.from_files(paths, name)


def test_exact_sharded_evaluation_equals_the_in_memory_evaluator(tmp_path: Path) -> None:
    data = retrieval_set()
    reference = evaluate_retrieval(
        text_queries=data["texts"],
        image_gallery=data["images"],
        image_queries=data["images"],
        text_gallery=data["texts"],
        caption_image=data["caption_image"],
    )
    images = save_shards(tmp_path, "images", data["images"], [7, 100, 1, 192])
    texts = save_shards(tmp_path, "texts", data["texts"].astype(np.float16), [250, 350])
    assert images.shape == (300, 16) and texts.n_rows == 600
    for block_rows in (37, 1000):
        result = evaluate_retrieval_sharded(
            text_queries=save_shards(tmp_path, "tq", data["texts"], [600]),
            image_gallery=images,
            image_queries=data["images"],  # a plain array works too
            text_gallery=save_shards(tmp_path, "tg", data["texts"], [333, 267]),
            caption_image=data["caption_image"],
            block_rows=block_rows,
        )
        assert result.metrics == reference.metrics
        assert result.search == "exact"
        np.testing.assert_array_equal(result.t2i_hit1, reference.t2i_hit1)
        np.testing.assert_array_equal(result.i2t_hit1, reference.i2t_hit1)
    assert 20 < reference.metrics["t2i_r1"] < 95  # neither trivial nor hopeless
    # float16 shards are read as float32 and normalised: a lossy copy of the texts
    half = evaluate_retrieval_sharded(
        text_queries=texts,
        image_gallery=images,
        image_queries=images,
        text_gallery=texts,
        caption_image=data["caption_image"],
    )
    assert abs(half.metrics["rsum"] - reference.metrics["rsum"]) < 5


def test_exact_topk_matches_faiss_on_the_whole_gallery_including_ties() -> None:
    rng = np.random.default_rng(1)
    gallery = unit(rng.standard_normal((257, 8)))
    gallery[100:140] = gallery[3]  # a tie block wider than the window
    queries = unit(np.vstack([gallery[3:4], rng.standard_normal((30, 8))]))
    labels = rng.integers(0, 50, 257)
    query_labels = rng.integers(0, 50, 31)
    query_labels[0] = labels[139]  # its positive ties 41 items at the top
    shards = EmbeddingShards.from_arrays([gallery[:100], gallery[100:]], "gallery")
    for block_rows in (16, 1000):
        ranks = sharded_positive_ranks(
            queries, shards, query_labels, labels, 10, block_rows=block_rows
        )
        np.testing.assert_array_equal(
            ranks, positive_ranks(queries, gallery, query_labels, labels, 10)
        )
        scores, ids = search_sharded(queries, shards, 12, block_rows=block_rows)
        order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :12]
        np.testing.assert_allclose(
            scores, np.take_along_axis(queries @ gallery.T, order, 1), atol=1e-6
        )
        assert ranks[0] == 0
    untied = ~np.isin(order, [3, *range(100, 140)]).any(axis=1)
    assert untied.sum() > 20
    np.testing.assert_array_equal(ids[untied], order[untied])


def test_cache_entries_are_read_as_shards(tmp_path: Path) -> None:
    data = retrieval_set(n_images=50)
    cache = EmbeddingCache(tmp_path / "cache", shard_rows=16)
    key = EmbeddingKey(model="m", dataset="d", split="toy/test", side="image", transform="t")
    with pytest.raises(NotFoundError, match="extract them first"):
        EmbeddingShards.from_cache(cache, key)
    writer = cache.writer(key)
    writer.commit(writer.write_stream([data["images"]]))
    shards = EmbeddingShards.from_cache(cache, key)
    assert shards.lengths == (16, 16, 16, 2) and shards.name == key.describe()
    blocks = np.vstack([b for _, b in shards.blocks(10)])
    np.testing.assert_allclose(blocks, data["images"], atol=1e-6)  # renormalised
    assert [start for start, _ in shards.blocks(10)] == [0, 10, 16, 26, 32, 42, 48]
    np.testing.assert_allclose(
        shards.take(np.array([49, 0, 17])), data["images"][[49, 0, 17]], atol=1e-6
    )


def test_approximate_indexes_are_labelled_and_ivf_probing_every_list_is_exact(
    tmp_path: Path,
) -> None:
    data = retrieval_set(n_images=400, dim=32)
    images = save_shards(tmp_path, "images", data["images"], [150, 250])
    options = {
        "text_queries": data["texts"],
        "image_gallery": images,
        "image_queries": images,
        "text_gallery": data["texts"],
        "caption_image": data["caption_image"],
    }
    exact = evaluate_retrieval_sharded(**options)
    every_list = evaluate_retrieval_sharded(
        **options, index_factory="IVF8,Flat", search_params="nprobe=8", block_rows=100
    )
    assert every_list.search == "IVF8,Flat (nprobe=8)"
    assert every_list.metrics == exact.metrics
    one_list = evaluate_retrieval_sharded(
        **options, index_factory="IVF8,Flat", search_params="nprobe=1"
    )
    assert one_list.metrics["rsum"] < exact.metrics["rsum"]  # approximate: it loses recall
    hnsw = evaluate_retrieval_sharded(**options, index_factory="HNSW16")
    assert hnsw.search == "HNSW16"
    assert hnsw.metrics["t2i_r10"] >= exact.metrics["t2i_r10"] - 5
    index = build_sharded_index(images, "IVF8,Flat", search_params="nprobe=8", block_rows=64)
    assert index.ntotal == 400
    np.testing.assert_allclose(  # scores: duplicated images make ids tie
        search_sharded(data["texts"], None, 5, index=index)[0],
        search_sharded(data["texts"], images, 5)[0],
        atol=1e-6,
    )


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    data = retrieval_set(n_images=40)
    bad = data["images"].copy()
    bad[30, 2] = np.nan
    shards = save_shards(tmp_path, "bad", bad, [25, 15])
    with pytest.raises(InputError, match=r"bad rows \[25, 40\) has NaN or inf values in 1 rows"):
        search_sharded(data["texts"], shards, 3)
    with pytest.raises(InputError, match="dimension 8 but the gallery has dimension 16"):
        search_sharded(np.ones((2, 8), np.float32), data["images"], 3)
    with pytest.raises(InputError, match="shards disagree on the dimension"):
        EmbeddingShards.from_arrays([np.ones((2, 4)), np.ones((2, 5))], "mixed")
    with pytest.raises(InputError, match="FAISS cannot build index 'IVFx'"):
        build_sharded_index(data["images"], "IVFx")
    with pytest.raises(InputError, match="do not apply to 'HNSW8'"):
        build_sharded_index(data["images"], "HNSW8", search_params="nprobe=4")
    with pytest.raises(InputError, match="need an approximate index_factory"):
        search_label(None, "nprobe=4")
    with pytest.raises(InputError, match="k=41 must be between 1 and the gallery size 40"):
        search_sharded(data["texts"], data["images"], 41)
    with pytest.raises(InputError, match="cannot read shard"):
        EmbeddingShards.from_files([tmp_path / "missing.npy"], "gone")


def test_large_gallery_benchmark_runs_at_a_tiny_size(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_large_gallery", ROOT / "benchmarks" / "bench_large_gallery.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    indexes = ["--index", "IVF16,Flat:nprobe=2;nprobe=16", "--index", "HNSW16:efSearch=32"]
    rows = bench.main(
        [
            "--gallery", "6000", "--queries", "300", "--dim", "32", "--shard-rows", "2500",
            "--clusters", "30", *indexes, "--dir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "peak RSS" in out and "speed-up" in out
    exact, ivf2, ivf16, hnsw = rows
    assert exact["search"] == "exact" and exact["knn_recall@10"] == 100.0
    assert [r["search"] for r in rows[1:]] == [
        "IVF16,Flat (nprobe=2)",
        "IVF16,Flat (nprobe=16)",
        "HNSW16 (efSearch=32)",
    ]
    assert ivf2["build_s"] == ivf16["build_s"]  # one index, two settings
    assert ivf16["knn_recall@10"] == 100.0 and ivf16["r1_loss"] == 0  # every list probed
    assert ivf2["knn_recall@10"] < 100 and 0 < hnsw["knn_recall@10"] <= 100
    assert 30 < exact["t2i_r1"] < 99
    assert all(r["peak_rss_mb"] > 0 and r["search_s"] > 0 for r in rows)
