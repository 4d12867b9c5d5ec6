"""Partial backfill: retrieval over a gallery of which only a fraction is re-embedded with NEW.

A deployed gallery holds OLD's embeddings of every item (an image with its captions). While it is
being re-embedded, a fraction p of the items has NEW's embeddings and the rest still has OLD's.
A query searches both parts: the OLD part with a compatible query (a method's encoder, or OLD's
own), the NEW part with NEW's query, and the two result lists are merged by score. A backfilled
item's image and its captions are re-embedded together, so the text→image gallery (images) and
the image→text gallery (captions) are split by the same items.

The two parts' scores come from different spaces (NEW may be sharper or flatter than OLD), so
NEW-part scores may go through an affine :class:`ScoreCalibration` before the merge, fitted on
the support split (:func:`fit_calibration`: Platt scaling of each space, so that equal
calibrated scores mean equal odds of a match). Which items go first is an *order*:
:func:`random_order`, or :func:`old_margin_order` (the items OLD retrieves worst first).

Ranks follow :mod:`~xbt_bench.eval.retrieval`'s definition (gallery items scoring strictly above
the best positive), from exact FAISS searches of each part merged into one top-K list, so at
p = 0 the result is exactly method→old and at p = 1 exactly new→new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from ..errors import InputError
from .retrieval import (
    DEFAULT_KS,
    Embeddings,
    RetrievalResult,
    build_index,
    result_from_ranks,
    search_topk,
    validate_embeddings,
    widening_ranks,
)

DIRECTIONS = ("t2i", "i2t")
HARD_NEGATIVES = 10  # per support query, in the calibration's logistic fits
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class ScoreCalibration:
    """NEW-part scores become ``scale * score + shift`` before the merge (identity: no change)."""

    scale: float = 1.0
    shift: float = 0.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` in the OLD part's scale."""
        return (self.scale * scores.astype(np.float64) + self.shift).astype(np.float32)


IDENTITY = ScoreCalibration()


def _ranked_part(
    queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, faiss.Index] | None:
    if ids.size == 0:
        return None
    part = np.ascontiguousarray(gallery[ids])
    return queries, ids, build_index(part)


def merged_ranks(
    old_queries: np.ndarray,
    old_gallery: np.ndarray,
    new_queries: np.ndarray,
    new_gallery: np.ndarray,
    backfilled: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    k_max: int,
    calibration: ScoreCalibration = IDENTITY,
) -> np.ndarray:
    """Per query, the number of gallery items scoring strictly above its best positive (capped
    at ``k_max``) in a gallery whose items ``backfilled`` (bool per gallery item) are searched
    with ``new_queries`` in ``new_gallery`` (scores through ``calibration``) and the others with
    ``old_queries`` in ``old_gallery``. Vectors are used as given (pass unit rows)."""
    backfilled = np.asarray(backfilled, dtype=bool)
    if backfilled.shape != (len(gallery_labels),):
        raise InputError(
            f"backfilled must hold one flag per gallery item ({len(gallery_labels)}), "
            f"got shape {backfilled.shape}"
        )
    parts = [
        (part, transform)
        for part, transform in (
            (_ranked_part(old_queries, old_gallery, np.flatnonzero(~backfilled)), IDENTITY),
            (_ranked_part(new_queries, new_gallery, np.flatnonzero(backfilled)), calibration),
        )
        if part is not None
    ]

    def search(todo: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        all_scores, all_ids = [], []
        for (queries, ids, index), transform in parts:
            subset = queries if todo.size == len(queries) else queries[todo]
            scores, found = search_topk(subset, None, min(window, len(ids)), index=index)
            all_scores.append(transform(scores))
            all_ids.append(ids[found])
        scores, ids = np.concatenate(all_scores, axis=1), np.concatenate(all_ids, axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :window]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(ids, best, 1)

    return widening_ranks(search, np.asarray(query_labels), np.asarray(gallery_labels), k_max)


def evaluate_partial_backfill(
    *,
    method_queries: Embeddings,
    old_gallery: Embeddings,
    new_embeddings: Embeddings,
    caption_image: np.ndarray,
    backfilled_images: np.ndarray,
    calibration: Mapping[str, ScoreCalibration] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalResult:
    """Recall@K (percent) and rsum of a partially backfilled gallery: the items (images, and
    their captions) flagged in ``backfilled_images`` hold ``new_embeddings`` and are searched
    with NEW's queries (``new_embeddings`` too: new→new), the others hold ``old_gallery`` and are
    searched with ``method_queries``; ``calibration[direction]`` (``t2i``, ``i2t``) maps the
    NEW part's scores before the merge (default: none)."""
    calibration = dict(calibration or {})
    caption_image = np.asarray(caption_image)
    n_images = len(old_gallery.images)
    flags = np.asarray(backfilled_images, dtype=bool)
    if flags.shape != (n_images,):
        raise InputError(
            f"backfilled_images must hold one flag per gallery image ({n_images}), got shape "
            f"{flags.shape}"
        )
    ks = tuple(sorted(set(ks)))
    image_ids = np.arange(n_images)
    t2i = merged_ranks(
        validate_embeddings("method text queries", method_queries.texts),
        validate_embeddings("old image gallery", old_gallery.images),
        validate_embeddings("new text queries", new_embeddings.texts),
        validate_embeddings("new image gallery", new_embeddings.images),
        flags,
        caption_image,
        image_ids,
        ks[-1],
        calibration.get("t2i", IDENTITY),
    )
    i2t = merged_ranks(
        validate_embeddings("method image queries", method_queries.images),
        validate_embeddings("old text gallery", old_gallery.texts),
        validate_embeddings("new image queries", new_embeddings.images),
        validate_embeddings("new text gallery", new_embeddings.texts),
        flags[caption_image],
        image_ids,
        caption_image,
        ks[-1],
        calibration.get("i2t", IDENTITY),
    )
    return result_from_ranks(t2i, i2t, ks)


def backfilled_at(order: np.ndarray, fraction: float) -> np.ndarray:
    """Flags of the first ``round(fraction * n)`` items of ``order`` (a permutation of n)."""
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"backfill fraction {fraction} is not between 0 and 1")
    flags = np.zeros(len(order), dtype=bool)
    flags[order[: int(round(fraction * len(order)))]] = True
    return flags


def random_order(n_images: int, seed: int) -> np.ndarray:
    """A seeded random permutation of the gallery's items."""
    return np.random.default_rng([seed, n_images, 17]).permutation(n_images)


def positive_pairs(
    query_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, gallery item) pair with the same label, as two index arrays; one of the
    two label arrays must be unique (each caption has one image, each image its captions)."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    size = int(max(query_labels.max(), gallery_labels.max())) + 1
    if len(np.unique(query_labels)) == len(query_labels):
        query_of = np.full(size, -1)
        query_of[query_labels] = np.arange(len(query_labels))
        cols = np.flatnonzero(query_of[gallery_labels] >= 0)
        return query_of[gallery_labels[cols]], cols
    if len(np.unique(gallery_labels)) == len(gallery_labels):
        item_of = np.full(size, -1)
        item_of[gallery_labels] = np.arange(len(gallery_labels))
        rows = np.flatnonzero(item_of[query_labels] >= 0)
        return rows, item_of[query_labels[rows]]
    raise InputError("positive pairs need unique query labels or unique gallery labels")


def _best_scores(
    queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its best positive's score and its best negative's score (exact search of a
    window one wider than the most positives a query has, so it holds a negative)."""
    rows, cols = positive_pairs(query_labels, gallery_labels)
    pair_scores = np.einsum("ij,ij->i", queries[rows], gallery[cols])
    best_positive = np.full(len(queries), -np.inf, dtype=np.float32)
    np.maximum.at(best_positive, rows, pair_scores)
    window = min(len(gallery), int(np.bincount(rows, minlength=len(queries)).max()) + 1)
    scores, ids = search_topk(queries, gallery, window)
    negative = gallery_labels[ids] != query_labels[:, None]
    best_negative = np.where(negative, scores, -np.inf).max(axis=1)
    return best_positive, best_negative


def old_margin_order(old_gallery: Embeddings, caption_image: np.ndarray) -> np.ndarray:
    """Items whose OLD embeddings retrieve each other worst go first: for every item, the mean
    margin (best positive − best negative score) of its captions searching OLD's images and of
    its image searching OLD's captions, ascending (ties by item index). It uses only what the
    deployed gallery holds (OLD's embeddings of the items and their captions); where the
    benchmark's queries are those same captions it is an optimistic order."""
    images = validate_embeddings("old image gallery", old_gallery.images)
    texts = validate_embeddings("old text gallery", old_gallery.texts)
    caption_image = np.asarray(caption_image)
    image_ids = np.arange(len(images))
    pos, neg = _best_scores(texts, images, caption_image, image_ids)
    caption_margin = np.bincount(caption_image, pos - neg, len(images)) / np.bincount(
        caption_image, minlength=len(images)
    )
    pos, neg = _best_scores(images, texts, image_ids, caption_image)
    margin = (caption_margin + (pos - neg)) / 2
    return np.lexsort((image_ids, margin))


def _hard_negatives(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    count: int,
) -> np.ndarray:
    """The ``count`` best-scoring non-matching gallery items' scores of every query, flat."""
    positives = int(np.bincount(positive_pairs(query_labels, gallery_labels)[0]).max())
    window = min(len(gallery), count + positives)
    scores, ids = search_topk(queries, gallery, window)
    negative = gallery_labels[ids] != query_labels[:, None]
    first = np.cumsum(negative, axis=1) <= count  # the first `count` negatives of each row
    return scores[negative & first]


def match_logistic(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    negatives: int = HARD_NEGATIVES,
) -> tuple[float, float]:
    """``(slope, intercept)`` of P(match | score) = σ(slope · score + intercept), a logistic
    regression (Platt scaling) of each query's best positive against its ``negatives``
    best-scoring negatives, the two classes weighted equally: where a space's scores turn from
    distractors into matches."""
    queries = validate_embeddings("queries", queries)
    gallery = validate_embeddings("gallery", gallery)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    best, _ = _best_scores(queries, gallery, query_labels, gallery_labels)
    hard = _hard_negatives(queries, gallery, query_labels, gallery_labels, negatives)
    x = np.concatenate([best, hard]).astype(np.float64)
    y = np.concatenate([np.ones(len(best)), np.zeros(len(hard))])
    weight = np.where(y == 1, 0.5 / len(best), 0.5 / max(len(hard), 1))
    design = np.stack([x, np.ones_like(x)], axis=1)
    beta = np.zeros(2)
    for _ in range(100):  # Newton's method on the weighted log-likelihood (concave)
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        gradient = design.T @ (weight * (y - p))
        hessian = (design * (weight * p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def fit_calibration(
    method_queries: Embeddings,
    old_gallery: Embeddings,
    new_embeddings: Embeddings,
    caption_image: np.ndarray,
) -> dict[str, ScoreCalibration]:
    """Per direction, the affine map that gives a NEW-part score the log-odds of a match it
    would have as a method→old score: both spaces' :func:`match_logistic` fits on support
    embeddings, NEW's composed with the inverse of the method's. Identity for a direction where
    either fit does not rise with the score (an order-reversing map is no calibration)."""
    caption_image = np.asarray(caption_image)
    image_ids = np.arange(len(old_gallery.images))
    sides = {
        "t2i": ("texts", "images", caption_image, image_ids),
        "i2t": ("images", "texts", image_ids, caption_image),
    }
    out = {}
    for direction, (query_side, gallery_side, q_labels, g_labels) in sides.items():
        ours = match_logistic(
            getattr(method_queries, query_side), getattr(old_gallery, gallery_side), q_labels,
            g_labels,
        )  # fmt: skip
        theirs = match_logistic(
            getattr(new_embeddings, query_side), getattr(new_embeddings, gallery_side), q_labels,
            g_labels,
        )  # fmt: skip
        if ours[0] <= 1e-9 or theirs[0] <= 1e-9:
            out[direction] = IDENTITY
            continue
        out[direction] = ScoreCalibration(
            scale=round(theirs[0] / ours[0], 6), shift=round((theirs[1] - ours[1]) / ours[0], 6)
        )
    return out


ORDERS = ("random", "old-margin")


@dataclass(frozen=True)
class BackfillSet:
    """One split as a partial backfill sees it: the method's queries, OLD's gallery, NEW's
    embeddings (NEW's gallery and NEW's queries) and the caption → image mapping."""

    method_queries: Embeddings
    old_gallery: Embeddings
    new_embeddings: Embeddings
    caption_image: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.old_gallery.images)

    def order(self, name: str, seed: int) -> np.ndarray:
        """The items of this split in order ``name`` (:data:`ORDERS`)."""
        if name == "random":
            return random_order(self.n_images, seed)
        if name == "old-margin":
            return old_margin_order(self.old_gallery, self.caption_image)
        raise InputError(f"backfill order {name!r} is not one of {', '.join(ORDERS)}")

    def evaluate(
        self, flags: np.ndarray, calibration: Mapping[str, ScoreCalibration]
    ) -> RetrievalResult:
        """Retrieval with the items ``flags`` backfilled (:func:`evaluate_partial_backfill`)."""
        return evaluate_partial_backfill(
            method_queries=self.method_queries,
            old_gallery=self.old_gallery,
            new_embeddings=self.new_embeddings,
            caption_image=self.caption_image,
            backfilled_images=flags,
            calibration=calibration,
        )

    def curve(
        self,
        order: np.ndarray,
        fractions: Sequence[float],
        calibration: Mapping[str, ScoreCalibration],
    ) -> list[RetrievalResult]:
        """Retrieval at each of ``fractions`` with the items re-embedded in ``order``."""
        return [self.evaluate(backfilled_at(order, f), calibration) for f in fractions]


@dataclass(frozen=True)
class BackfillPlan:
    """What a partial backfill decided on support: per direction the calibration applied and
    every candidate's support R@1 (``calibration_r1[direction][candidate]``), the fitted affine
    map, and each order's support R@1 and whether it is kept."""

    calibration: dict[str, ScoreCalibration]
    chosen: dict[str, str]
    fitted: dict[str, ScoreCalibration]
    calibration_r1: dict[str, dict[str, float]]
    order_r1: dict[str, float]
    kept: dict[str, bool]


def interior(fractions: Sequence[float]) -> list[float]:
    """The fractions strictly between 0 and 1 (where the merge and the order matter)."""
    inside = [f for f in fractions if 0 < f < 1]
    if not inside:
        raise InputError(
            f"backfill fractions {list(fractions)} have none strictly between 0 and 1; the "
            "calibration and the order are chosen there"
        )
    return inside


def _mean_r1(results: Sequence[RetrievalResult], direction: str) -> float:
    return round(float(np.mean([r.metrics[f"{direction}_r1"] for r in results])), 4)


def plan_backfill(support: BackfillSet, fractions: Sequence[float], seed: int) -> BackfillPlan:
    """Choose on ``support``: per direction the score calibration (``affine``, fitted on
    support by :func:`fit_calibration`, or ``none``: the higher mean R@1 over the interior
    ``fractions`` in random order, ties to ``none``), then which informed orders beat the
    random one (mean R@1 of both directions, with that calibration)."""
    inside = interior(fractions)
    random = support.order("random", seed)
    fitted = fit_calibration(
        support.method_queries, support.old_gallery, support.new_embeddings,
        support.caption_image,
    )  # fmt: skip
    candidates = {"none": dict.fromkeys(DIRECTIONS, IDENTITY), "affine": fitted}
    curves = {name: support.curve(random, inside, c) for name, c in candidates.items()}
    scores = {d: {name: _mean_r1(curves[name], d) for name in candidates} for d in DIRECTIONS}
    chosen = {d: "affine" if scores[d]["affine"] > scores[d]["none"] else "none" for d in scores}
    calibration = {d: candidates[chosen[d]][d] for d in DIRECTIONS}
    order_r1 = {}
    for name in ORDERS:
        results = (
            support.curve(random, inside, calibration)
            if name == "random"
            else support.curve(support.order(name, seed), inside, calibration)
        )
        order_r1[name] = round((_mean_r1(results, "t2i") + _mean_r1(results, "i2t")) / 2, 4)
    kept = {name: name == "random" or order_r1[name] > order_r1["random"] for name in ORDERS}
    return BackfillPlan(calibration, chosen, fitted, scores, order_r1, kept)
