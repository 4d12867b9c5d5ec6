"""Bootstrap intervals over images, and paired intervals of compatibility margins."""

from __future__ import annotations

import numpy as np
import pytest

from xbt_bench.eval.bootstrap import QueryHits, paired_margin_intervals, recall_intervals


def _hits_from_flags(t2i: np.ndarray, i2t: np.ndarray, caption_image: np.ndarray) -> QueryHits:
    """Hits at every K from booleans: a hit ranks 0, a miss ranks beyond K = 10."""
    rank = lambda flags: np.where(flags, 0, 10)  # noqa: E731
    return QueryHits.from_ranks([rank(t2i)], [rank(i2t)], caption_image)


def test_certain_and_impossible_hits_have_degenerate_intervals() -> None:
    caption_image = np.repeat(np.arange(50), 2)
    always = _hits_from_flags(np.ones(100, bool), np.ones(50, bool), caption_image)
    never = _hits_from_flags(np.zeros(100, bool), np.zeros(50, bool), caption_image)
    assert recall_intervals(always)["t2i_r1"] == [100.0, 100.0]
    assert recall_intervals(always)["rsum"] == [600.0, 600.0]
    assert paired_margin_intervals(always, never)["i2t_r5"] == [100.0, 100.0]


def test_seeds_average_the_hits_of_each_query() -> None:
    caption_image = np.arange(4)
    hits = QueryHits.from_ranks(
        [np.array([0, 0, 9, 9]), np.array([0, 9, 9, 9])],
        [np.array([0, 3, 9, 9]), np.array([0, 3, 3, 9])],
        caption_image,
    )
    np.testing.assert_allclose(hits.t2i[0], [1, 0.5, 0, 0])  # R@1 hits, mean of two seeds
    np.testing.assert_allclose(hits.i2t[1], [1, 1, 0.5, 0])  # R@5 hits
    one_draw_each = np.eye(4)
    assert hits.recalls(one_draw_each)["i2t_r5"].tolist() == [100, 100, 50, 0]


def _simulated(rng: np.random.Generator, n_images: int, margin: float):  # noqa: ANN202
    """OLD and a method on ``n_images`` images of 2 captions each. Each image has its own
    difficulty p ~ U(0.1, 0.8); the method hits with probability p + margin, independently;
    the true (expected) R@1 margin is ``100 * margin`` in both directions."""
    p_image = rng.uniform(0.1, 0.8, n_images)
    caption_image = np.repeat(np.arange(n_images), 2)
    p_caption = p_image[caption_image]
    old = _hits_from_flags(
        rng.random(2 * n_images) < p_caption, rng.random(n_images) < p_image, caption_image
    )
    method = _hits_from_flags(
        rng.random(2 * n_images) < p_caption + margin,
        rng.random(n_images) < p_image + margin,
        caption_image,
    )
    return method, old


def test_paired_intervals_cover_a_known_difference_about_95_percent_of_the_time() -> None:
    """200 simulated test splits of 300 images with a true margin of 5 R@1 points: the paired
    95% interval covers it in 184 (T2I) and 191 (I2T) of the 200 (measured here; a binomial
    with p = 0.95 gives 190 ± 3, and 180–198 holds with probability > 0.99)."""
    rng = np.random.default_rng(20261202)
    covered = {"t2i_r1": 0, "i2t_r1": 0}
    for repetition in range(200):
        method, old = _simulated(rng, n_images=300, margin=0.05)
        intervals = paired_margin_intervals(method, old, n_boot=400, seed=repetition)
        for key in covered:
            low, high = intervals[key]
            covered[key] += low <= 5.0 <= high
    assert all(180 <= count <= 198 for count in covered.values())


def test_pairing_narrows_the_interval_of_a_correlated_difference() -> None:
    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(500), 5)
    old_t2i = rng.random(2500) < 0.4
    method_t2i = old_t2i | (rng.random(2500) < 0.05)  # the same queries, a few more hits
    old_i2t = rng.random(500) < 0.5
    method_i2t = old_i2t | (rng.random(500) < 0.05)
    method = _hits_from_flags(method_t2i, method_i2t, caption_image)
    old = _hits_from_flags(old_t2i, old_i2t, caption_image)
    paired = paired_margin_intervals(method, old)["t2i_r1"]
    ours, theirs = recall_intervals(method)["t2i_r1"], recall_intervals(old)["t2i_r1"]
    unpaired_width = (ours[1] - ours[0]) + (theirs[1] - theirs[0])  # ~ what independence gives
    assert paired[0] > 0  # every method hit is an old hit too: the margin is surely positive
    assert paired[1] - paired[0] < 0.5 * unpaired_width


def test_mismatched_queries_are_refused() -> None:
    a = _hits_from_flags(np.ones(4, bool), np.ones(2, bool), np.array([0, 0, 1, 1]))
    b = _hits_from_flags(np.ones(4, bool), np.ones(2, bool), np.array([0, 1, 1, 1]))
    with pytest.raises(ValueError, match="same queries"):
        paired_margin_intervals(a, b)
