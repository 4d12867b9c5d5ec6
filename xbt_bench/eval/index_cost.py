"""How fast FAISS builds a serving index on this machine, and that speed scaled to a gallery.

A backfill ends with a new index over NEW's vectors; a backfill-free upgrade keeps OLD's. To
price the rebuild, :func:`measure_index_build` times FAISS on vectors drawn from OLD's gallery
(resampled with a little noise): the brute-force inner-product search that IVF's k-means
training and its adding are made of (every training vector against every centroid, 25 times;
every added vector against every centroid once), on a block the size of a real coarse
quantizer's, and HNSW's adding. :class:`IndexBuildRates` keeps the times and scales them to N
vectors of any dimension by the work each step does:

- IVF-Flat with ``nlist = 4·√N`` lists (FAISS's guideline: 4·√N to 16·√N), trained as FAISS
  does by default (25 k-means iterations on at most 256 vectors per list): training costs
  ``25 · min(N, 256·nlist) · nlist · d`` multiply-adds, adding ``N · nlist · d``, each at the
  seconds per multiply-add of FAISS's search measured here;
- HNSW (M = 32, efConstruction 40, FAISS's defaults): adding costs the measured seconds per
  vector times ``d / d_measured · ln N / ln n_measured`` (a search per insert, logarithmic in N).

These are extrapolations from a few thousand vectors to billions; the report labels them as
such, with the machine they were measured on.
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np
from pydantic import Field, computed_field

from ..record import Record

# The search block that measures FAISS's multiply-add rate (queries x centroids), and HNSW's sample.
SEARCH_BLOCK = 4096
HNSW_VECTORS = 2048
HNSW_M = 32
# What the scaled IVF rebuild assumes (FAISS's defaults for k-means).
IVF_NITER = 25
IVF_MAX_POINTS_PER_LIST = 256


def ivf_lists(vectors: int) -> int:
    """The number of IVF lists for ``vectors`` vectors: 4·√N, at least 1."""
    return max(1, round(4 * math.sqrt(vectors)))


class IndexBuildRates(Record):
    """FAISS build times measured on ``device`` for vectors of dimension ``dim``, and their
    scaling to a gallery (module docstring)."""

    device: str = Field(description="where FAISS ran: the CPU and its threads")
    dim: int = Field(gt=0)
    search_block: int = Field(gt=0, description="queries and centroids of the timed search")
    search_s: float = Field(gt=0, description="the brute-force inner-product search")
    hnsw_vectors: int = Field(gt=1)
    hnsw_add_s: float = Field(gt=0, description=f"adding hnsw_vectors vectors to HNSW{HNSW_M}")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def s_per_mac(self) -> float:
        """Seconds per multiply-add of FAISS's search (IVF's training and assignment)."""
        return self.search_s / (self.search_block * self.search_block * self.dim)

    def ivf_seconds(self, vectors: int, dim: int) -> float:
        """Seconds to train and fill an IVF-Flat index of ``vectors`` vectors of ``dim``."""
        if vectors <= 0:
            return 0.0
        nlist = ivf_lists(vectors)
        trained_on = min(vectors, IVF_MAX_POINTS_PER_LIST * nlist)
        return (IVF_NITER * trained_on + vectors) * nlist * dim * self.s_per_mac

    def hnsw_seconds(self, vectors: int, dim: int) -> float:
        """Seconds to fill an HNSW index with ``vectors`` vectors of ``dim``."""
        if vectors <= 0:
            return 0.0
        per_vector = self.hnsw_add_s / self.hnsw_vectors * dim / self.dim
        depth = math.log(max(vectors, 2)) / math.log(self.hnsw_vectors)
        return vectors * per_vector * depth


def index_sample(gallery: np.ndarray, vectors: int, seed: int = 0) -> np.ndarray:
    """``vectors`` unit rows drawn from ``gallery`` with replacement, each moved by Gaussian
    noise of a tenth of the rows' spread (so that they are distinct points), float32."""
    rng = np.random.default_rng(seed)
    gallery = np.asarray(gallery, dtype=np.float32)
    rows = gallery[rng.integers(0, len(gallery), vectors)]
    spread = float(np.sqrt(gallery.var(axis=0).sum() / gallery.shape[1]))
    rows = rows + rng.normal(0, 0.1 * spread, rows.shape).astype(np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(rows, dtype=np.float32)


def measure_index_build(
    gallery: np.ndarray, search_block: int = SEARCH_BLOCK, hnsw_vectors: int = HNSW_VECTORS
) -> IndexBuildRates:
    """Time, on one core of this machine, FAISS's brute-force inner-product search of
    ``search_block`` rows against as many centroids (the work of IVF training and adding) and
    adding ``hnsw_vectors`` rows to HNSW, all drawn from ``gallery`` (:func:`index_sample`)."""
    queries = index_sample(gallery, search_block, seed=0)
    centroids = index_sample(gallery, search_block, seed=1)
    dim = queries.shape[1]
    threads = faiss.omp_get_max_threads()
    # One thread: a rate per core that a busy machine does not distort much (OpenMP threads
    # that wait on each other do); a hardware file gives the rate of a whole serving machine.
    faiss.omp_set_num_threads(1)
    try:
        started = time.perf_counter()
        faiss.knn(queries, centroids, 1, faiss.METRIC_INNER_PRODUCT)
        searched = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(queries[:hnsw_vectors])
        done = time.perf_counter()
    finally:
        faiss.omp_set_num_threads(threads)
    return IndexBuildRates(
        device=f"cpu, 1 thread (faiss {faiss.__version__})",
        dim=dim,
        search_block=search_block,
        search_s=searched - started,
        hnsw_vectors=hnsw_vectors,
        hnsw_add_s=done - searched,
    )
