"""Retrieval recalls against brute force and CLIP_benchmark; compatibility metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clip_benchmark.metrics.zeroshot_retrieval import evaluate as clip_benchmark_evaluate

from xbt_bench.eval import (
    METRIC_KEYS,
    Embeddings,
    RetrievalResult,
    average_compatibility,
    build_index,
    compatibility,
    compatibility_matrix,
    evaluate_retrieval,
    flip_rates,
    gain_share,
    positive_ranks,
    retrieval_flip_rates,
    retrieval_matrix,
    search_topk,
    validate_embeddings,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _caption_image(rng: np.random.Generator, n_images: int, max_captions: int) -> np.ndarray:
    """Between 1 and ``max_captions`` captions per image, in shuffled order."""
    counts = rng.integers(1, max_captions + 1, size=n_images)
    return rng.permutation(np.repeat(np.arange(n_images), counts))


def _random_case(seed: int) -> dict:
    """Cross-model embeddings: T2I in a 24-d space, I2T in a 16-d one; captions are noisy copies
    of their image."""
    rng = np.random.default_rng(seed)
    n_images = 60
    caption_image = _caption_image(rng, n_images, 5)
    n_captions = len(caption_image)
    t2i_images = rng.standard_normal((n_images, 24))
    i2t_images = rng.standard_normal((n_images, 16))
    case = {
        "text_queries": t2i_images[caption_image] + 1.5 * rng.standard_normal((n_captions, 24)),
        "image_gallery": t2i_images,
        "image_queries": i2t_images,
        "text_gallery": i2t_images[caption_image] + 1.5 * rng.standard_normal((n_captions, 16)),
    }
    return {k: v.astype(np.float32) for k, v in case.items()} | {"caption_image": caption_image}


def _quantised_case(seed: int) -> dict:
    """Rows with four entries of +-1 among 8: every score is an exact multiple of 1/4, so
    scores tie massively, and some rows are exact duplicates."""
    rng = np.random.default_rng(seed)
    n_images = 50
    caption_image = _caption_image(rng, n_images, 5)

    def rows(n: int) -> np.ndarray:
        x = np.zeros((n, 8), dtype=np.float32)
        for row in x:
            row[rng.choice(8, size=4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
        return x

    return {
        "text_queries": rows(len(caption_image)),
        "image_gallery": rows(n_images),
        "image_queries": rows(n_images),
        "text_gallery": rows(len(caption_image)),
        "caption_image": caption_image,
    }


def _duplicated_case(seed: int) -> dict:
    """Random embeddings where every other image (and its captions) is a duplicate."""
    case = _random_case(seed)
    images = case["image_gallery"]
    images[1::2] = images[0::2]
    case["image_gallery"] = images
    texts = case["text_gallery"]
    texts[10:20] = texts[:10]
    return case


def _reference_ranks(queries, gallery, query_labels, gallery_labels, k_max: int) -> np.ndarray:
    """Brute force: items scoring strictly above the best positive, in float64."""
    scores = _unit(queries.astype(np.float64)) @ _unit(gallery.astype(np.float64)).T
    positive = query_labels[:, None] == gallery_labels[None, :]
    best = np.where(positive, scores, -np.inf).max(axis=1)
    return np.minimum((scores > best[:, None]).sum(axis=1), k_max)


def _reference(case: dict, ks=(1, 5, 10)) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    images = np.arange(len(case["image_gallery"]))
    captions = case["caption_image"]
    t2i = _reference_ranks(case["text_queries"], case["image_gallery"], captions, images, max(ks))
    i2t = _reference_ranks(case["image_queries"], case["text_gallery"], images, captions, max(ks))
    metrics = {f"t2i_r{k}": 100 * np.mean(t2i < k) for k in ks}
    metrics |= {f"i2t_r{k}": 100 * np.mean(i2t < k) for k in ks}
    metrics["rsum"] = sum(metrics.values())
    return metrics, t2i < 1, i2t < 1


@pytest.mark.parametrize("make_case", [_random_case, _quantised_case, _duplicated_case])
@pytest.mark.parametrize("seed", [0, 1])
def test_recalls_equal_brute_force(make_case, seed):
    case = make_case(seed)
    result = evaluate_retrieval(**case)
    metrics, t2i_hit1, i2t_hit1 = _reference(case)
    assert list(result.metrics) == list(METRIC_KEYS)
    assert result.metrics == pytest.approx(metrics, abs=1e-9)
    np.testing.assert_array_equal(result.t2i_hit1, t2i_hit1)
    np.testing.assert_array_equal(result.i2t_hit1, i2t_hit1)
    assert result.search == "exact"
    assert 0 < result.metrics["t2i_r1"] < result.metrics["t2i_r10"] < 100


def test_quantised_case_has_ties_at_the_cutoff():
    """The tie data set exercises what it claims: ties straddle the top-10 boundary."""
    case = _quantised_case(0)
    scores = _unit(case["text_queries"]) @ _unit(case["image_gallery"]).T
    kth = np.sort(scores, axis=1)[:, ::-1]
    assert np.mean(kth[:, 9] == kth[:, 10]) > 0.5


def test_ties_count_for_the_query():
    """Rank = items strictly above the positive, however many items tie with it."""
    query = np.eye(4, dtype=np.float32)[:1]
    above, tied, below = np.eye(4)[0], _unit(np.array([[1.0, 1, 0, 0]]))[0], np.eye(4)[1]
    cases = {  # gallery (positive last, so FAISS meets it after its ties) -> expected rank
        0: [above] * 100 + [above],
        3: [above] * 3 + [tied] * 60 + [tied],
        10: [above] * 100 + [tied],
        2: [above] * 2 + [below] * 30 + [tied],
    }
    for expected, rows in cases.items():
        gallery = np.asarray(rows, dtype=np.float32)
        labels = np.zeros(len(gallery), dtype=np.int64)
        labels[-1] = 7
        rank = positive_ranks(query, gallery, np.array([7]), labels, 10)
        assert rank.tolist() == [expected]


def test_positive_ranks_without_positive_and_small_gallery():
    rng = np.random.default_rng(0)
    gallery = _unit(rng.standard_normal((5, 8))).astype(np.float32)
    queries = gallery[[3, 0]]
    labels = np.arange(5)
    # k_max beyond the gallery size: the window is the whole gallery.
    assert positive_ranks(queries, gallery, np.array([3, 9]), labels, 10).tolist() == [0, 10]
    with pytest.raises(ValueError, match=r"one label per query \(2\) .* shapes \(1,\) and \(5,\)"):
        positive_ranks(queries, gallery, np.array([3]), labels, 10)


def _clip_benchmark_metrics(images: np.ndarray, texts: np.ndarray, caption_image, batch: int):
    """CLIP_benchmark's own evaluate() on precomputed embeddings (a stand-in model and loader)."""

    class Precomputed:
        def encode_image(self, image_ids: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(images)[image_ids]

        def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(texts)[caption_ids]

    captions_of = [np.flatnonzero(caption_image == i).tolist() for i in range(len(images))]
    loader = [
        (torch.arange(start, min(start + batch, len(images))), captions_of[start : start + batch])
        for start in range(0, len(images), batch)
    ]
    tokenizer = torch.tensor  # caption ids stand in for tokens
    return clip_benchmark_evaluate(
        Precomputed(), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recalls_equal_clip_benchmark(seed):
    """old->old on random embeddings, 5 captions per image: CLIP_benchmark's exact numbers."""
    rng = np.random.default_rng(seed)
    n_images, d = 80, 32
    caption_image = np.repeat(np.arange(n_images), 5)
    images = rng.standard_normal((n_images, d)).astype(np.float32)
    texts = (images[caption_image] + 3.0 * rng.standard_normal((len(caption_image), d))).astype(
        np.float32
    )
    theirs = _clip_benchmark_metrics(images, texts, caption_image, batch=16)
    ours = evaluate_retrieval(
        text_queries=texts,
        image_gallery=images,
        image_queries=images,
        text_gallery=texts,
        caption_image=caption_image,
    ).metrics
    for k in (1, 5, 10):
        assert ours[f"t2i_r{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"])
        assert ours[f"i2t_r{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"])
    assert 5 < ours["t2i_r1"] < ours["t2i_r10"] < 95  # neither trivial nor hopeless


def test_search_topk_is_exact_and_chunked():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((45, 12)).astype(np.float32)
    gallery = rng.standard_normal((200, 12)).astype(np.float32)
    scores, ids = search_topk(queries, gallery, 7, chunk_size=8)
    brute = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    expected_ids = np.argsort(-brute, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected_ids, 1), rtol=1e-5)
    index = build_index(gallery)
    scores_again, ids_again = search_topk(queries, None, 7, index=index)
    np.testing.assert_array_equal(ids_again, ids)


def test_validate_embeddings_normalises_a_copy():
    x = np.asfortranarray(np.array([[3.0, 4.0], [0.0, -2.0]]))
    out = validate_embeddings("images", x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]])
    assert x[0, 0] == 3.0


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.ones(4), r"image_gallery must be a 2-D array \[n, dim\], got shape \(4,\)"),
        (np.ones((0, 4)), r"image_gallery is empty \(shape \(0, 4\)\)"),
        (np.ones((3, 0)), r"image_gallery is empty"),
        (np.array([[1.0, np.nan], [1, 1], [np.inf, 0]]), r"NaN or inf values in 2 rows .*\[0, 2\]"),
        (np.array([[1.0, 1], [0, 0]]), r"image_gallery has all-zero vectors .*1 rows .*\[1\]"),
    ],
)
def test_bad_embeddings_are_rejected(x, message):
    with pytest.raises(ValueError, match=message):
        validate_embeddings("image_gallery", x)
    case = _random_case(0)
    case["image_gallery"] = x
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(**case)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"image_gallery": np.ones((60, 16), np.float32)},
            r"text_queries have dimension 24 but image_gallery have dimension 16",
        ),
        (
            {"text_gallery": np.ones((5, 16), np.float32)},
            r"text_queries has \d+ captions but text_gallery has 5",
        ),
        (
            {"image_queries": np.ones((59, 16), np.float32)},
            r"image_queries has 59 images but image_gallery has 60",
        ),
        ({"caption_image": np.arange(3)}, r"one image index per caption"),
        ({"ks": (0, 5)}, r"ks must be positive integers"),
    ],
)
def test_inconsistent_inputs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(**(_random_case(0) | change))


def test_caption_image_is_checked():
    case = _random_case(0)
    bad = case["caption_image"].copy()
    bad[[4, 9]] = [60, -1]
    with pytest.raises(ValueError, match=r"outside \[0, 60\) at 2 captions .*\[4, 9\].*\[60, -1\]"):
        evaluate_retrieval(**(case | {"caption_image": bad}))
    orphaned = np.where(case["caption_image"] == 7, 8, case["caption_image"])
    with pytest.raises(ValueError, match=r"no caption to 1 images \(first: \[7\]\)"):
        evaluate_retrieval(**(case | {"caption_image": orphaned}))
    with pytest.raises(ValueError, match="integer indices"):
        evaluate_retrieval(**(case | {"caption_image": case["caption_image"].astype(float)}))


def test_search_topk_errors():
    gallery = np.ones((10, 8), np.float32)
    with pytest.raises(ValueError, match="queries have dimension 4 but the gallery has dim"):
        search_topk(np.ones((2, 4)), gallery, 3)
    with pytest.raises(ValueError, match="k=11 must be between 1 and the gallery size 10"):
        search_topk(np.ones((2, 8)), gallery, 11)
    with pytest.raises(ValueError, match="index holds 10 vectors"):
        search_topk(np.ones((2, 8)), np.ones((9, 8)), 3, index=build_index(gallery))


def _metrics(values: list[float]) -> dict[str, float]:
    recalls = dict(zip(METRIC_KEYS[:-1], values, strict=True))
    return recalls | {"rsum": sum(values)}


def test_compatibility_counts_cells():
    old = _metrics([30, 60, 70, 40, 70, 80])
    method = _metrics([32, 59, 70, 41, 75, 79])
    result = compatibility(method, old)
    assert result["cells_held"] == 3 and result["cells_total"] == 6
    assert result["held"] == {
        "t2i_r1": True, "t2i_r5": False, "t2i_r10": False,  # equal is not better
        "i2t_r1": True, "i2t_r5": True, "i2t_r10": False, "rsum": True,
    }  # fmt: skip
    assert result["margin"]["t2i_r1"] == 2 and result["margin"]["rsum"] == 6
    assert compatibility(method, old, keys=("t2i_r1", "t2i_r5"))["cells_total"] == 2
    with pytest.raises(ValueError, match="old metrics have no 't2i_r5'"):
        compatibility(method, {"t2i_r1": 1.0})


def test_gain_share():
    old = _metrics([40, 50, 60, 40, 50, 60])
    new = _metrics([60, 50, 70, 50, 70, 60])
    method = _metrics([50, 55, 55, 50, 60, 60])
    shares = gain_share(method, old, new)
    assert shares["t2i_r1"] == 0.5 and shares["t2i_r10"] == -0.5 and shares["i2t_r1"] == 1.0
    assert shares["t2i_r5"] is None and shares["i2t_r10"] is None  # new == old
    assert shares["rsum"] == pytest.approx(30 / 60)


def test_flip_rates():
    old = np.array([1, 1, 0, 0, 1], dtype=bool)
    method = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert flip_rates(old, method) == pytest.approx({"nfr": 40.0, "pfr": 20.0})
    with pytest.raises(ValueError, match=r"same queries, got shapes \(5,\) and \(4,\)"):
        flip_rates(old, method[:4])
    with pytest.raises(ValueError, match="boolean"):
        flip_rates(old.astype(int), method)
    with pytest.raises(ValueError, match="non-empty"):
        flip_rates(old[:0], method[:0])
    old_result = RetrievalResult({}, t2i_hit1=old, i2t_hit1=np.array([True, False]))
    method_result = RetrievalResult({}, t2i_hit1=method, i2t_hit1=np.array([False, True]))
    assert retrieval_flip_rates(old_result, method_result) == pytest.approx(
        {"t2i_nfr": 40.0, "t2i_pfr": 20.0, "i2t_nfr": 50.0, "i2t_pfr": 50.0}
    )


def test_average_compatibility():
    nan = np.nan
    matrix = np.array([[50, nan, nan], [55, 60, nan], [45, 65, 70.0]])
    # (1,0): 55 > 50 yes; (2,0): 45 > 50 no; (2,1): 65 > 60 yes.
    assert average_compatibility(matrix) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="chain of n >= 2 models"):
        average_compatibility(np.array([[50.0]]))
    matrix[2, 0] = nan
    with pytest.raises(ValueError, match="finite for every i >= j"):
        average_compatibility(matrix)


def test_retrieval_matrix_of_a_chain():
    case = _random_case(0)
    rng = np.random.default_rng(1)
    galleries = [
        Embeddings(case["image_gallery"], case["text_queries"]),
        Embeddings(case["image_gallery"] + rng.standard_normal((60, 24)).astype(np.float32),
                   case["text_queries"]),
    ]  # fmt: skip
    queries = {(0, 0): galleries[0], (1, 0): galleries[1], (1, 1): galleries[1]}
    results = retrieval_matrix(queries, galleries, case["caption_image"])
    assert sorted(results) == [(0, 0), (1, 0), (1, 1)]
    direct = evaluate_retrieval(
        text_queries=case["text_queries"],
        image_gallery=galleries[0].images,
        image_queries=galleries[1].images,
        text_gallery=case["text_queries"],
        caption_image=case["caption_image"],
    )
    assert results[1, 0].metrics == direct.metrics
    matrix = compatibility_matrix(results, "t2i_r1")
    assert matrix[1, 0] == direct.metrics["t2i_r1"] and np.isnan(matrix[0, 1])
    assert 0.0 <= average_compatibility(matrix) <= 1.0
    with pytest.raises(ValueError, match=r"missing \[\(1, 1\)\]"):
        retrieval_matrix({(0, 0): galleries[0], (1, 0): galleries[1]}, galleries, [0])
    with pytest.raises(ValueError, match=r"lack the \(query, gallery\) pairs \[\(1, 1\)\]"):
        compatibility_matrix({(0, 0): results[0, 0], (1, 0): results[1, 0]}, "t2i_r1")
