"""95% bootstrap intervals for recall cells, and paired intervals for compatibility margins.

A test split is a sample of images (each with its captions), so the intervals resample
**images**: a bootstrap sample draws ``n_images`` images with replacement; image→text recall is
the mean of the drawn images' hits, text→image recall the mean over all captions of the drawn
images (captions of one image are not independent, so they are resampled together). Intervals
are percentile intervals over ``n_boot`` samples.

A *paired* interval of a margin M(method→old) − M(old→old) computes both recalls on the same
resampled images in every sample, so the variation the two share cancels; the compatibility
criterion holds "with 95% confidence" when the paired interval's lower bound is above 0.

With several training seeds, a query's hit is its mean hit over the seeds: the interval is that
of the seed-averaged recall, over queries (seed-to-seed spread is reported separately, as std).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

DEFAULT_BOOTSTRAP = 1000
LEVEL = 0.95
# Bootstrap samples drawn at once (bounds memory on large splits: rows x images counts).
_CHUNK = 200


@dataclass(frozen=True)
class QueryHits:
    """Per-query hits at each K (averaged over seeds when there are several), grouped by the
    image each query belongs to: what the bootstrap resamples."""

    ks: tuple[int, ...]
    t2i: np.ndarray  # [len(ks), n_captions] float hits
    i2t: np.ndarray  # [len(ks), n_images] float hits
    caption_image: np.ndarray  # [n_captions] image of each caption

    @classmethod
    def from_ranks(
        cls,
        t2i_ranks: Sequence[np.ndarray],
        i2t_ranks: Sequence[np.ndarray],
        caption_image: np.ndarray,
        ks: Sequence[int] = (1, 5, 10),
    ) -> QueryHits:
        """Hits from each seed's ranks (a query is a hit at K when its rank is below K)."""
        if not t2i_ranks or len(t2i_ranks) != len(i2t_ranks):
            raise InputError("need the ranks of at least one seed, as many T2I as I2T")
        ks = tuple(ks)
        t2i = np.mean([[np.asarray(r) < k for k in ks] for r in t2i_ranks], axis=0)
        i2t = np.mean([[np.asarray(r) < k for k in ks] for r in i2t_ranks], axis=0)
        caption_image = np.asarray(caption_image)
        if t2i.shape[1] != len(caption_image) or i2t.shape[1] != caption_image.max() + 1:
            raise InputError(
                f"ranks of {t2i.shape[1]} captions and {i2t.shape[1]} images do not match "
                f"caption_image ({len(caption_image)} captions of {caption_image.max() + 1} images)"
            )
        return cls(ks, t2i.astype(np.float64), i2t.astype(np.float64), caption_image)

    @property
    def n_images(self) -> int:
        return self.i2t.shape[1]

    def plus(self, other: QueryHits) -> QueryHits:
        """The per-query sum of two settings' hits on the same queries: recalls are linear in
        the hits, so its recalls are the sums of theirs (how a difference of two margins gets
        one paired interval)."""
        if self.ks != other.ks or not np.array_equal(self.caption_image, other.caption_image):
            raise InputError("hits can be added only for the same queries and Ks")
        return QueryHits(self.ks, self.t2i + other.t2i, self.i2t + other.i2t, self.caption_image)

    def recalls(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Recall@K (percent) and rsum for each row of image ``weights`` [n_samples, n_images]
        (how many times each image was drawn)."""
        per_image_t2i = np.stack(
            [np.bincount(self.caption_image, row, self.n_images) for row in self.t2i]
        )  # [len(ks), n_images] summed hits of each image's captions
        captions = np.bincount(self.caption_image, minlength=self.n_images).astype(np.float64)
        out = {}
        for j, k in enumerate(self.ks):
            out[f"t2i_r{k}"] = 100 * (weights @ per_image_t2i[j]) / (weights @ captions)
            out[f"i2t_r{k}"] = 100 * (weights @ self.i2t[j]) / weights.sum(axis=1)
        out["rsum"] = sum(out.values())
        return out


def _draws(n_images: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap samples as image counts, [chunk, n_images] float arrays (fixed by ``seed``)."""
    rng = np.random.default_rng([seed, n_images, n_boot])
    out = []
    for start in range(0, n_boot, _CHUNK):
        rows = min(_CHUNK, n_boot - start)
        drawn = rng.integers(0, n_images, size=(rows, n_images))
        offsets = np.arange(rows)[:, None] * n_images
        counts = np.bincount((drawn + offsets).ravel(), minlength=rows * n_images)
        out.append(counts.reshape(rows, n_images).astype(np.float64))
    return out


def _percentiles(samples: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def recall_intervals(
    hits: QueryHits, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> dict[str, list[float]]:
    """The ``level`` bootstrap interval of every recall cell and rsum: ``{metric: [lo, hi]}``."""
    samples: dict[str, list[np.ndarray]] = {}
    for weights in _draws(hits.n_images, n_boot, seed):
        for key, values in hits.recalls(weights).items():
            samples.setdefault(key, []).append(values)
    return {key: _percentiles(np.concatenate(v), level) for key, v in samples.items()}


def paired_margin_intervals(
    method: QueryHits,
    reference: QueryHits,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, list[float]]:
    """The ``level`` interval of M(method) − M(reference) per metric, both scored on the same
    resampled images in every bootstrap sample (the queries must be the same)."""
    if not np.array_equal(method.caption_image, reference.caption_image):
        raise InputError("a paired interval needs both settings scored on the same queries")
    samples: dict[str, list[np.ndarray]] = {}
    for weights in _draws(method.n_images, n_boot, seed):
        ours, theirs = method.recalls(weights), reference.recalls(weights)
        for key in ours:
            samples.setdefault(key, []).append(ours[key] - theirs[key])
    return {key: _percentiles(np.concatenate(v), level) for key, v in samples.items()}
