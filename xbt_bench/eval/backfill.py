"""Partial backfill: retrieval over a gallery of which only a fraction is re-embedded with NEW.

A deployed gallery holds OLD's embeddings of every item (an image with its captions). While it is
being re-embedded, a fraction p of the items has NEW's embeddings and the rest still has OLD's.
A query searches both parts: the OLD part with a compatible query (a method's encoder, or OLD's
own), the NEW part with NEW's query, and the two result lists are merged by score. A backfilled
item's image and its captions are re-embedded together, so the text→image gallery (images) and
the image→text gallery (captions) are split by the same items.

The two parts' scores come from different spaces (NEW may be sharper or flatter than OLD, and a
method's queries may sit anywhere in OLD's), so each part's scores may go through an increasing
map before the merge (a :class:`Calibration`), fitted on the support split
(:func:`fit_calibrations`): an affine map of NEW's scores (:class:`ScoreCalibration`, Platt
scaling of each space, so that equal calibrated scores mean equal odds of a match), or one map
per space, isotonic (the probability of a match) or quantile (how rare a distractor scoring that
high is). Which items go first is an *order*: :func:`random_order`, :func:`old_margin_order`
(the items OLD retrieves worst first), or :func:`uncertainty_order` (a model learned on support
predicts what re-embedding an item buys from OLD's gallery alone, in the spirit of FastFill).
:func:`plan_backfill` makes both choices on support.

Ranks follow :mod:`~xbt_bench.eval.retrieval`'s definition (gallery items scoring strictly above
the best positive), from exact FAISS searches of each part merged into one top-K list, so at
p = 0 the result is exactly method→old and at p = 1 exactly new→new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import faiss
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from .retrieval import (
    DEFAULT_KS,
    Embeddings,
    RetrievalResult,
    build_index,
    positive_ranks,
    result_from_ranks,
    search_topk,
    validate_embeddings,
    widening_ranks,
)

DIRECTIONS = ("t2i", "i2t")
HARD_NEGATIVES = 10  # per support query, in the calibration's logistic fits
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


class Calibration:
    """How the two parts' scores are put on one scale before the merge: :meth:`old` maps the
    OLD part's scores, :meth:`new` the NEW part's. Both maps are strictly increasing, so each
    part keeps its own order and only the interleaving of the two parts changes. The base class
    changes nothing (``none``)."""

    kind: ClassVar[str] = "none"

    def old(self, scores: np.ndarray) -> np.ndarray:
        """OLD-part scores on the merge's scale."""
        return scores

    def new(self, scores: np.ndarray) -> np.ndarray:
        """NEW-part scores on the merge's scale."""
        return scores


@dataclass(frozen=True)
class ScoreCalibration(Calibration):
    """NEW-part scores become ``scale * score + shift`` (the OLD part's scale) before the merge
    (identity: no change)."""

    kind: ClassVar[str] = "affine"
    scale: float = 1.0
    shift: float = 0.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` in the OLD part's scale."""
        return (self.scale * scores.astype(np.float64) + self.shift).astype(np.float32)

    def new(self, scores: np.ndarray) -> np.ndarray:
        """NEW-part scores through the affine map."""
        return self(scores)


IDENTITY = ScoreCalibration()
NO_CALIBRATION = Calibration()


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
    calibration: Calibration = NO_CALIBRATION,
) -> np.ndarray:
    """Per query, the number of gallery items scoring strictly above its best positive (capped
    at ``k_max``) in a gallery whose items ``backfilled`` (bool per gallery item) are searched
    with ``new_queries`` in ``new_gallery`` and the others with ``old_queries`` in
    ``old_gallery``, each part's scores through its map of ``calibration``. Vectors are used as
    given (pass unit rows)."""
    backfilled = np.asarray(backfilled, dtype=bool)
    if backfilled.shape != (len(gallery_labels),):
        raise InputError(
            f"backfilled must hold one flag per gallery item ({len(gallery_labels)}), "
            f"got shape {backfilled.shape}"
        )
    parts = [
        (part, transform)
        for part, transform in (
            (_ranked_part(old_queries, old_gallery, np.flatnonzero(~backfilled)), calibration.old),
            (_ranked_part(new_queries, new_gallery, np.flatnonzero(backfilled)), calibration.new),
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
    calibration: Mapping[str, Calibration] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalResult:
    """Recall@K (percent) and rsum of a partially backfilled gallery: the items (images, and
    their captions) flagged in ``backfilled_images`` hold ``new_embeddings`` and are searched
    with NEW's queries (``new_embeddings`` too: new→new), the others hold ``old_gallery`` and are
    searched with ``method_queries``; ``calibration[direction]`` (``t2i``, ``i2t``) maps the
    two parts' scores before the merge (default: none)."""
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
        calibration.get("t2i", NO_CALIBRATION),
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
        calibration.get("i2t", NO_CALIBRATION),
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


def _other_item_best(texts: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Per caption, the best score of a caption of another item (exact search of a window one
    wider than the most captions an item has)."""
    window = min(len(texts), int(np.bincount(caption_image).max()) + 1)
    scores, ids = search_topk(texts, texts, window)
    other = caption_image[ids] != caption_image[:, None]
    return np.where(other, scores, -np.inf).max(axis=1)


def gallery_features(old_gallery: Embeddings, caption_image: np.ndarray) -> np.ndarray:
    """What a deployed gallery knows about each item from OLD's embeddings alone, one row per
    item: how crowded its image is (mean score of its 5 nearest other images), how crowded its
    captions are (mean over them of the best caption of another item), how well its image and
    its captions agree (cosine of the image with their mean), how alike its captions are, then
    the image embedding and the captions' mean direction. No query is searched: every number is
    among the gallery's own images and captions."""
    images = validate_embeddings("old image gallery", old_gallery.images)
    texts = validate_embeddings("old text gallery", old_gallery.texts)
    caption_image = np.asarray(caption_image)
    n_images = len(images)
    counts = np.bincount(caption_image, minlength=n_images).astype(np.float64)
    neighbours = min(6, n_images)
    image_scores, _ = search_topk(images, images, neighbours)
    image_crowd = image_scores[:, 1:].mean(axis=1) if neighbours > 1 else np.zeros(n_images)
    caption_crowd = np.bincount(caption_image, _other_item_best(texts, caption_image), n_images)
    caption_sum = np.zeros_like(images, dtype=np.float64)
    np.add.at(caption_sum, caption_image, texts)
    norms = np.linalg.norm(caption_sum, axis=1)
    caption_mean = caption_sum / np.maximum(norms, 1e-12)[:, None]
    agreement = (images * caption_mean).sum(axis=1)
    # mean cosine between an item's own captions: (|Σc|² − n) / (n(n − 1)) for unit rows
    alike = np.where(counts > 1, (norms**2 - counts) / np.maximum(counts * (counts - 1), 1), 1.0)
    scalars = np.stack([image_crowd, caption_crowd / counts, agreement, alike], axis=1)
    return np.hstack([scalars, images, caption_mean])


def item_gains(queries: Embeddings, new_embeddings: Embeddings, old_gallery: Embeddings,
               caption_image: np.ndarray) -> np.ndarray:  # fmt: skip
    """What re-embedding each item buys its own queries on a labelled split (support): the
    mean over both directions of 1/(1 + rank) under new→new minus under method→old (ranks of
    the item's captions searching the images, averaged, and of its image searching the
    captions; capped at 10)."""
    caption_image = np.asarray(caption_image)
    n_images = len(old_gallery.images)
    image_ids = np.arange(n_images)
    reciprocal = {}
    for name, (q, g) in {"method": (queries, old_gallery), "new": (new_embeddings,) * 2}.items():
        t2i = positive_ranks(validate_embeddings("q", q.texts), validate_embeddings("g", g.images),
                             caption_image, image_ids, 10)  # fmt: skip
        i2t = positive_ranks(validate_embeddings("q", q.images), validate_embeddings("g", g.texts),
                             image_ids, caption_image, 10)  # fmt: skip
        per_item_t2i = np.bincount(caption_image, 1.0 / (1 + t2i), n_images) / np.bincount(
            caption_image, minlength=n_images
        )
        reciprocal[name] = (per_item_t2i + 1.0 / (1 + i2t)) / 2
    return reciprocal["new"] - reciprocal["method"]


UNCERTAINTY_ALPHAS = tuple(np.logspace(-2, 4, 13))


def fit_uncertainty(features: np.ndarray, gains: np.ndarray) -> Pipeline:
    """The learned uncertainty of an OLD embedding, in FastFill's spirit: a ridge regression
    (scikit-learn; standardised features, its weight chosen by leave-one-out over
    :data:`UNCERTAINTY_ALPHAS`) from :func:`gallery_features` to :func:`item_gains`, fitted on a
    labelled split (support)."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=UNCERTAINTY_ALPHAS)).fit(features, gains)


def uncertainty_order(model: Pipeline, old_gallery: Embeddings,
                      caption_image: np.ndarray) -> np.ndarray:  # fmt: skip
    """The gallery's items by the gain ``model`` (:func:`fit_uncertainty`) predicts from OLD's
    gallery alone, largest first (ties by item index)."""
    predicted = model.predict(gallery_features(old_gallery, caption_image))
    return np.lexsort((np.arange(len(predicted)), -predicted))


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


def support_sample(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    negatives: int = HARD_NEGATIVES,
) -> tuple[np.ndarray, np.ndarray]:
    """What a calibration is fitted on in one space: each query's best positive score and the
    scores of its ``negatives`` best-scoring negatives (flat), float64."""
    queries = validate_embeddings("queries", queries)
    gallery = validate_embeddings("gallery", gallery)
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    best, _ = _best_scores(queries, gallery, query_labels, gallery_labels)
    hard = _hard_negatives(queries, gallery, query_labels, gallery_labels, negatives)
    return best.astype(np.float64), hard.astype(np.float64)


def match_logistic(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of P(match | score) = σ(slope · score + intercept), a logistic
    regression (Platt scaling) of best-positive scores against hard-negative scores
    (:func:`support_sample`), the two classes weighted equally: where a space's scores turn
    from distractors into matches."""
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    weight = np.where(y == 1, 0.5 / len(positives), 0.5 / max(len(negatives), 1))
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


def affine_calibration(
    ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]
) -> ScoreCalibration:
    """The affine map that gives a NEW-part score the log-odds of a match it would have as a
    method→old score: both spaces' :func:`match_logistic` fits (``ours``: method→old's
    :func:`support_sample`, ``theirs``: new→new's), NEW's composed with the inverse of the
    method's. Identity when either fit does not rise with the score (an order-reversing map is
    no calibration)."""
    a_ours, b_ours = match_logistic(*ours)
    a_theirs, b_theirs = match_logistic(*theirs)
    if a_ours <= 1e-9 or a_theirs <= 1e-9:
        return IDENTITY
    return ScoreCalibration(
        scale=round(a_theirs / a_ours, 6), shift=round((b_theirs - b_ours) / a_ours, 6)
    )


Knots = tuple[tuple[float, ...], tuple[float, ...]]
TIE_SLOPE = 1e-3  # added slope: a flat stretch of a fitted map keeps its part's own order


@dataclass(frozen=True)
class MonotoneCalibration(Calibration):
    """Both parts' scores through strictly increasing piecewise-linear maps fitted on support,
    one per space (``old_knots``, ``new_knots``: x and y of the knots; extended beyond the ends
    with the end segments' slopes), plus :data:`TIE_SLOPE` · score."""

    old_knots: Knots
    new_knots: Knots

    def old(self, scores: np.ndarray) -> np.ndarray:
        """OLD-part scores through OLD's map."""
        return through_knots(scores, self.old_knots)

    def new(self, scores: np.ndarray) -> np.ndarray:
        """NEW-part scores through NEW's map."""
        return through_knots(scores, self.new_knots)


class IsotonicCalibration(MonotoneCalibration):
    """Each part's scores become the probability of a match in its own space, an isotonic
    regression of best positives against hard negatives on support (:func:`isotonic_knots`)."""

    kind: ClassVar[str] = "isotonic"


class QuantileCalibration(MonotoneCalibration):
    """Each part's scores become how rare a distractor scoring that high is in its own space,
    −log of the share of support's hard negatives above the score (:func:`tail_knots`)."""

    kind: ClassVar[str] = "quantile"


def through_knots(scores: np.ndarray, knots: Knots) -> np.ndarray:
    """``scores`` through the piecewise-linear map ``knots`` (linear beyond the ends), plus
    :data:`TIE_SLOPE` · score, in float64 (a float32 result could tie distinct scores)."""
    x, y = (np.asarray(k, dtype=np.float64) for k in knots)
    s = np.asarray(scores, dtype=np.float64)
    out = np.interp(s, x, y)
    if len(x) > 1:
        low = (y[1] - y[0]) / (x[1] - x[0])
        high = (y[-1] - y[-2]) / (x[-1] - x[-2])
        out = np.where(s < x[0], y[0] + low * (s - x[0]), out)
        out = np.where(s > x[-1], y[-1] + high * (s - x[-1]), out)
    return out + TIE_SLOPE * s


def _rounded(x: np.ndarray, y: np.ndarray) -> Knots:
    """Knots rounded to 6 decimals for the result file; of knots that round to one x, the last
    (highest) is kept, so x stays strictly increasing."""
    x, y = np.round(x, 6), np.round(y, 6)
    last = np.r_[np.diff(x) > 0, True]
    return tuple(x[last].tolist()), tuple(y[last].tolist())


def isotonic_knots(positives: np.ndarray, negatives: np.ndarray) -> Knots:
    """P(match | score) in one space: scikit-learn's isotonic regression of best positives (1)
    against hard negatives (0), the two classes weighted equally; its constant blocks become
    knots at their centres (centred isotonic regression), so the map rises strictly between
    them."""
    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    weight = np.where(y == 1, 0.5 / len(positives), 0.5 / max(len(negatives), 1))
    fitted = IsotonicRegression(out_of_bounds="clip").fit(x, y, sample_weight=weight)
    order = np.argsort(x, kind="stable")
    xs, ws, ps = x[order], weight[order], fitted.predict(x[order])
    starts = np.flatnonzero(np.r_[True, np.diff(ps) != 0])
    centres = np.add.reduceat(xs * ws, starts) / np.add.reduceat(ws, starts)
    return _rounded(centres, ps[starts])


def tail_knots(negatives: np.ndarray, levels: int = 48) -> Knots:
    """How rare a distractor scoring ``s`` is in one space: −ln of the share of support's hard
    negatives scoring above ``s``, at ``levels`` shares spaced evenly in log between 1 and one
    negative."""
    shares = np.geomspace(1.0, 1.0 / len(negatives), levels)
    x = np.quantile(negatives, 1.0 - shares)
    x, first = np.unique(x, return_index=True)  # equal quantiles: keep the largest share
    return _rounded(x, -np.log(shares[first]))


CALIBRATIONS = ("none", "affine", "quantile", "isotonic")  # ties go to the earlier one


def fit_calibrations(
    method_queries: Embeddings,
    old_gallery: Embeddings,
    new_embeddings: Embeddings,
    caption_image: np.ndarray,
) -> dict[str, dict[str, Calibration]]:
    """Per direction (``t2i``, ``i2t``), every candidate of :data:`CALIBRATIONS` fitted on
    these (support) embeddings: the method's queries against OLD's gallery is one space, NEW's
    queries against NEW's gallery the other (:func:`support_sample` of each)."""
    caption_image = np.asarray(caption_image)
    image_ids = np.arange(len(old_gallery.images))
    sides = {
        "t2i": ("texts", "images", caption_image, image_ids),
        "i2t": ("images", "texts", image_ids, caption_image),
    }
    out = {}
    for direction, (query_side, gallery_side, q_labels, g_labels) in sides.items():
        ours = support_sample(
            getattr(method_queries, query_side), getattr(old_gallery, gallery_side), q_labels,
            g_labels,
        )  # fmt: skip
        theirs = support_sample(
            getattr(new_embeddings, query_side), getattr(new_embeddings, gallery_side), q_labels,
            g_labels,
        )  # fmt: skip
        out[direction] = {
            "none": NO_CALIBRATION,
            "affine": affine_calibration(ours, theirs),
            "quantile": QuantileCalibration(tail_knots(ours[1]), tail_knots(theirs[1])),
            "isotonic": IsotonicCalibration(isotonic_knots(*ours), isotonic_knots(*theirs)),
        }
    return out


ORDERS = ("random", "old-margin", "uncertainty")


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
        """The items of this split in order ``name``: ``random`` or ``old-margin`` (the
        learned ``uncertainty`` order comes from a :class:`BackfillPlan`)."""
        if name == "random":
            return random_order(self.n_images, seed)
        if name == "old-margin":
            return old_margin_order(self.old_gallery, self.caption_image)
        raise InputError(f"backfill order {name!r} is not one of random, old-margin")

    def evaluate(
        self, flags: np.ndarray, calibration: Mapping[str, Calibration]
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
        calibration: Mapping[str, Calibration],
    ) -> list[RetrievalResult]:
        """Retrieval at each of ``fractions`` with the items re-embedded in ``order``."""
        return [self.evaluate(backfilled_at(order, f), calibration) for f in fractions]


@dataclass(frozen=True)
class BackfillPlan:
    """What a partial backfill decided on support: per direction the calibration applied, its
    name, every fitted candidate and every candidate's support R@1
    (``calibration_r1[direction][candidate]``), each order's support R@1 and whether it is
    kept, and the uncertainty model fitted on support (:func:`fit_uncertainty`)."""

    calibration: dict[str, Calibration]
    chosen: dict[str, str]
    fitted: dict[str, dict[str, Calibration]]
    calibration_r1: dict[str, dict[str, float]]
    order_r1: dict[str, float]
    kept: dict[str, bool]
    uncertainty: Pipeline

    def order(self, name: str, split: BackfillSet, seed: int) -> np.ndarray:
        """``split``'s items in order ``name`` (:data:`ORDERS`); ``uncertainty`` reads only
        the split's OLD gallery (:func:`uncertainty_order`)."""
        if name == "uncertainty":
            return uncertainty_order(self.uncertainty, split.old_gallery, split.caption_image)
        return split.order(name, seed)


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


def cross_fitted_uncertainty(
    features: np.ndarray, gains: np.ndarray, seed: int, folds: int = 2
) -> np.ndarray:
    """Support's items by the uncertainty of :func:`fit_uncertainty`, each item's gain predicted
    by a model fitted on the other folds (so scoring the order on support is not scoring its
    own training data), largest first."""
    fold = np.random.default_rng([seed, len(gains), 29]).permutation(len(gains)) % folds
    predicted = np.empty(len(gains))
    for k in range(folds):
        held = fold == k
        predicted[held] = fit_uncertainty(features[~held], gains[~held]).predict(features[held])
    return np.lexsort((np.arange(len(gains)), -predicted))


def plan_backfill(support: BackfillSet, fractions: Sequence[float], seed: int) -> BackfillPlan:
    """Choose on ``support``: per direction the score calibration, the candidate of
    :data:`CALIBRATIONS` (fitted on support by :func:`fit_calibrations`) with the highest mean
    R@1 over the interior ``fractions`` in random order (ties to the earlier, simpler one), then
    which informed orders beat the random one (mean R@1 of both directions, with that
    calibration; the uncertainty order cross-fitted on support's items)."""
    inside = interior(fractions)
    random = support.order("random", seed)
    fitted = fit_calibrations(
        support.method_queries, support.old_gallery, support.new_embeddings,
        support.caption_image,
    )  # fmt: skip
    curves = {
        name: support.curve(random, inside, {d: fitted[d][name] for d in DIRECTIONS})
        for name in CALIBRATIONS
    }
    scores = {d: {name: _mean_r1(curves[name], d) for name in CALIBRATIONS} for d in DIRECTIONS}
    chosen = {
        d: max(CALIBRATIONS, key=lambda name: (scores[d][name], -CALIBRATIONS.index(name)))
        for d in DIRECTIONS
    }
    calibration = {d: fitted[d][chosen[d]] for d in DIRECTIONS}
    features = gallery_features(support.old_gallery, support.caption_image)
    gains = item_gains(support.method_queries, support.new_embeddings, support.old_gallery,
                       support.caption_image)  # fmt: skip
    orders = {
        "random": random,
        "old-margin": support.order("old-margin", seed),
        "uncertainty": cross_fitted_uncertainty(features, gains, seed),
    }
    order_r1 = {}
    for name in ORDERS:
        results = support.curve(orders[name], inside, calibration)
        order_r1[name] = round((_mean_r1(results, "t2i") + _mean_r1(results, "i2t")) / 2, 4)
    kept = {name: name == "random" or order_r1[name] > order_r1["random"] for name in ORDERS}
    return BackfillPlan(
        calibration, chosen, fitted, scores, order_r1, kept, fit_uncertainty(features, gains)
    )
