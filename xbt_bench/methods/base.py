"""The one interface every method speaks.

A method is a function ``fit(ctx: FitContext, settings) -> FittedMethod`` declared with
:func:`xbt_bench.methods.register_method`. It turns a pair (OLD, NEW), its data and its
settings into query encoders whose vectors live in the gallery's space (OLD's, or NEW's for
``new``), and says what that cost. A method never evaluates itself: the runner embeds the
queries with ``encode_images``/``encode_texts`` and searches the gallery named by ``gallery``.

A fitted method's queries are one :class:`QueryPath`: the encoders a query runs through at
query time (OLD, NEW, or a trained NEW' + ψ) and what the method does with their vectors (a
map, ψ, an interpolation). The same path embeds a dataset from the embedding cache (scoring)
and raw images and captions in one forward pass (:meth:`FittedMethod.encode_inputs`, which
:mod:`xbt_bench.methods.latency` times), so the encoder that is timed is the one that is scored.

Costs are counted by the context: every embedding a method asks for through
:meth:`FitContext.embed` / :meth:`FitContext.embed_corpus` counts as that model's forward
passes (whether or not the embedding cache already held it, so costs do not depend on the
cache's state), in-loop forward passes are reported with :meth:`FitContext.count_forward`, and
OLD gallery embeddings a method reads "as a deployed system already holds them" count as
gallery reuse, not as OLD forward passes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, computed_field

from ..data.base import ImageTextSet, TextCorpus
from ..errors import XbtError
from ..linalg import procrustes_map, warn_if_underdetermined
from ..record import Record

if TYPE_CHECKING:
    from PIL import Image

    from ..embed import EmbeddingCache, EmbedStats
    from ..models.loading import LoadedModel

Which = Literal["old", "new"]
Side = Literal["image", "text"]
SIDES: tuple[Side, ...] = ("image", "text")


class ModelHandle:
    """A model loaded on first :meth:`get` (once), so methods that never need it never load it."""

    def __init__(self, ref: str, device: str = "cpu") -> None:
        self.ref = ref
        self.device = device
        self.loads = 0
        self._model: LoadedModel | None = None

    def get(self) -> LoadedModel:
        """The loaded model (loading it through :func:`~xbt_bench.models.loading.load_model`
        the first time)."""
        if self._model is None:
            from ..models.loading import load_model

            self._model = load_model(self.ref, self.device)
            self.loads += 1
        return self._model

    @property
    def loaded(self) -> bool:
        """Whether :meth:`get` has loaded the model."""
        return self._model is not None

    def __repr__(self) -> str:
        return f"ModelHandle({self.ref!r}, device={self.device!r}, loads={self.loads})"


FORWARD_KEYS = ("old_image", "old_text", "new_image", "new_text", "old_gallery_reused")


class Cost(Record):
    """What a method cost: time, forward passes, trainable parameters, memory.

    ``forward_passes`` counts, per model and side (:data:`FORWARD_KEYS`), the images and texts
    embedded for the method at training time (through the cache or inside a training loop,
    whether or not the cache already held them, so costs do not depend on the cache's state);
    ``old_gallery_reused`` counts OLD gallery vectors the method read instead of computing.
    ``trainable_params`` counts every parameter it trained in any stage (adapters, ψ, or NEW's
    weights), ``new_params`` NEW's parameters; ``image_text_pairs`` the pairs it used.
    """

    wall_time_s: float = Field(
        0.0, ge=0, description="the whole run of this method: fit, query embedding and scoring"
    )
    fit_time_s: float = Field(
        0.0, ge=0, description="fitting or training the method alone (cache filling excluded)"
    )
    cache_fill_s: float = Field(
        0.0,
        ge=0,
        description="embedding what the embedding cache lacked during the fit (e.g. the text "
        "corpus, the first time): paid once by whichever method asks first, so not fit time",
    )
    training_time_s: float = Field(
        0.0,
        ge=0,
        description="time its training steps took when they ran (from the checkpoints' logs, so "
        "it survives resumes and cached reruns; stage 1 included for stage-2 methods)",
    )
    forward_passes: dict[str, int] = Field(default_factory=dict)
    trainable_params: int = Field(0, ge=0)
    new_params: int = Field(0, ge=0)
    image_text_pairs: int = Field(
        0, ge=0, description="image–text pairs (images, each with its captions) it trained on"
    )
    peak_memory_mb: float | None = Field(None, ge=0)
    device: str = "cpu"

    # --- issue 22: the upgrade bill separates the passes its training time already holds ---
    in_loop_passes: dict[str, int] = Field(
        default_factory=dict,
        description="the part of forward_passes run inside training steps (per model and "
        "side): their time is in training_time_s, so the bill does not count them again",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trainable_share(self) -> float:
        """``trainable_params`` as a share of NEW's parameters (0 when nothing trains)."""
        return self.trainable_params / self.new_params if self.new_params else 0.0


Encode = Callable[[ImageTextSet], np.ndarray]
# What a method does with the vectors of its encoders: (side, {"old"|"new": vectors}) -> queries.
Combine = Callable[[Side, Mapping[Which, np.ndarray]], np.ndarray]
# An encoder's vectors of a dataset's images or captions (read through the embedding cache).
Read = Callable[[Any, ImageTextSet, Side], np.ndarray]


@dataclass(frozen=True)
class QueryPath:
    """What a method runs on each query at query time: ``encoders`` (an open_clip model or a
    trained encoder, keyed by whose compute it costs: ``old``, or ``new`` for NEW and NEW
    with adapters or fine-tuned weights) and ``combine``, what the method does with their unit
    vectors. :meth:`dataset` embeds a dataset through the embedding cache (``read``),
    :meth:`inputs` raw images or captions in one forward pass of each encoder; both apply the
    same ``combine``."""

    encoders: Mapping[Which, Any]
    combine: Combine = field(repr=False)
    read: Read = field(repr=False)

    def dataset(self, data: ImageTextSet, side: Side) -> np.ndarray:
        """The queries of ``data``'s images or captions (encoders' vectors from the cache)."""
        vectors = {which: self.read(model, data, side) for which, model in self.encoders.items()}
        return self.combine(side, vectors)

    def inputs(self, side: Side, inputs: Sequence[Image.Image] | Sequence[str]) -> np.ndarray:
        """The queries of raw ``inputs`` (decoded images or strings): each encoder's forward
        pass on the batch (:func:`~xbt_bench.embed.extract.encode_inputs`), then ``combine``."""
        from ..embed.extract import encode_inputs

        vectors = {which: encode_inputs(m, side, inputs) for which, m in self.encoders.items()}
        return self.combine(side, vectors)


@dataclass
class FittedMethod:
    """A fitted method: its query path into the ``gallery`` space, plus what it cost.

    ``encode_images(data)`` -> [n_images, dim] and ``encode_texts(data)`` -> [n_captions, dim]:
    L2-normalised float32 queries to search the ``gallery`` model's embeddings of ``data``;
    ``encode_inputs(side, inputs)`` the same for raw images or captions (``query``, one path for
    both). ``applicable`` is False when the method does not apply to the pair (``reason`` says
    why); its encoders still work so the runner may show the numbers, labelled. ``report`` holds
    the values the method declared for the leaderboard (``register_method(report=...)``), e.g.
    slerp's α per direction. ``export`` describes the query encoder for a serving system
    (:class:`QueryEncoderSpec`; None for the references, which are the models themselves).
    """

    name: str
    gallery: Which
    dim: int
    query: QueryPath = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)
    report: dict[str, float | str] = field(default_factory=dict)
    applicable: bool = True
    reason: str = ""
    needs_old_at_query: bool = False
    # What `xbt-bench export` writes for a serving system (None: nothing to export).
    export: QueryEncoderSpec | None = field(default=None, repr=False)

    def encode_images(self, data: ImageTextSet) -> np.ndarray:
        """Image queries of ``data``: [n_images, dim] float32, unit rows."""
        return self._checked(self.query.dataset(data, "image"), data.n_images, f"{data.key} images")

    def encode_texts(self, data: ImageTextSet) -> np.ndarray:
        """Caption queries of ``data``: [n_captions, dim] float32, unit rows."""
        return self._checked(
            self.query.dataset(data, "text"), len(data.captions), f"{data.key} captions"
        )

    def encode_inputs(
        self, side: Side, inputs: Sequence[Image.Image] | Sequence[str]
    ) -> np.ndarray:
        """Queries of raw images or captions as served: [len(inputs), dim] float32, unit rows."""
        return self._checked(self.query.inputs(side, inputs), len(inputs), f"raw {side} queries")

    def _checked(self, x: np.ndarray, rows: int, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (rows, self.dim):
            raise XbtError(
                f"method {self.name!r} produced queries of shape {x.shape} for {what}, "
                f"expected ({rows}, {self.dim})"
            )
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norms, 1e-12)


MapKind = Literal["matrix", "psi"]


@dataclass
class QueryEncoderSpec:
    """A fitted method's query encoder as a serving system computes it, without xbt-bench's
    training code (``xbt-bench export`` writes it, ``xbt_bench.load_query_encoder`` reads it).

    A query of side ``s`` is embedded by NEW (with ``adapters`` applied when given) and
    L2-normalised, mapped into OLD's space by ``maps[s]``: ``("matrix", NAME)`` multiplies it by
    the [d_new, width] tensor NAME, ``("psi", NAME)`` applies the projection ψ whose state is the
    tensors ``NAME.*`` and whose shape is ``psi[NAME]`` (in_dim, out_dim, hidden, layers); then,
    when ``alpha`` has ``s``, SLERP'd from OLD's own query (zero-padded to the width; OLD at
    query time) towards it at ``alpha[s]``; its first d_old columns, L2-normalised, are the
    query. ``adapters``: ``{"kind": "lora", "towers", "rank", "alpha"}`` (LoRA tensors
    ``adapters.<parameter name>``) or ``{"kind": "weights"}`` (NEW's whole state, ``new.*``).
    """

    maps: dict[Side, tuple[MapKind, str]]
    tensors: dict[str, np.ndarray]
    alpha: dict[Side, float] = field(default_factory=dict)
    psi: dict[str, dict[str, int]] = field(default_factory=dict)
    adapters: dict[str, Any] | None = None


def matrix_spec(weight: np.ndarray, alpha: dict[Side, float] | None = None) -> QueryEncoderSpec:
    """Both sides through one NEW→OLD matrix (then SLERP'd with OLD's query at ``alpha``)."""
    return QueryEncoderSpec(
        maps={side: ("matrix", "map") for side in SIDES},
        tensors={"map": np.asarray(weight, dtype=np.float32)},
        alpha=dict(alpha or {}),
    )


@dataclass
class FitContext:
    """Everything a method may use.

    - ``old``/``new``: lazy model handles.
    - ``text_corpus``: captions without images (stage 1, Procrustes); ``train_pairs``: image–text
      pairs (stage 2); ``support``: the split for hyperparameter choices (never the test split).
    - ``config``: the method's settings as given (pair file ``[methods.NAME]`` updated by CLI
      overrides); the registry validates them over the method's defaults.
    - ``work_dir``: a folder for checkpoints, best shared by every method of a pair: runs train
      into subfolders named by a hash of what their result depends on, so methods share stage 1
      and a rerun resumes.
    - ``embeddings``: the embedding cache (None: the default one); ``embed_stats`` its account.
    - ``shared``: what the methods of one run share (the runner passes one dict to all of
      them), e.g. the preprocessed training images.
    """

    old: ModelHandle
    new: ModelHandle
    text_corpus: TextCorpus
    train_pairs: ImageTextSet
    support: ImageTextSet
    work_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    embeddings: EmbeddingCache | None = None
    embed_stats: EmbedStats | None = None
    num_workers: int | None = None
    usage: Counter[str] = field(default_factory=Counter)
    shared: dict[Any, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        if self.embed_stats is None:
            from ..embed import EmbedStats

            self.embed_stats = EmbedStats()

    def handle(self, which: Which) -> ModelHandle:
        """The OLD or NEW handle."""
        if which not in ("old", "new"):
            raise XbtError(f"model {which!r} is neither 'old' nor 'new'")
        return self.old if which == "old" else self.new

    def embed(
        self, which: Which, data: ImageTextSet, side: Side, *, count: bool = True
    ) -> np.ndarray:
        """``data``'s images or captions embedded by OLD or NEW (cached), float32 unit rows.

        Counted as that model's forward passes unless ``count`` is False (query time)."""
        array = self.query_embeddings(self.handle(which).get(), data, side)
        if count:
            self.count_forward(which, side, len(array))
        return array

    def embed_corpus(self, which: Which) -> np.ndarray:
        """The text corpus embedded by OLD's or NEW's text tower (cached), counted."""
        from ..embed.sharded import embed_corpus_sharded

        check_corpus(self.text_corpus)
        array = embed_corpus_sharded(
            self.handle(which).get(),
            self.text_corpus,
            cache=self.embeddings,
            stats=self.embed_stats,
        )
        self.count_forward(which, "text", len(array))
        corpus = f"text corpus {getattr(self.text_corpus, 'name', '?')!r}"
        warn_if_underdetermined(len(array), array.shape[1], corpus)
        return np.array(array, dtype=np.float32)

    def text_procrustes(
        self,
        new: np.ndarray | None = None,
        old: np.ndarray | None = None,
        *,
        padded: bool = False,
    ) -> np.ndarray:
        """The orthogonal map from NEW's to OLD's text embeddings of the corpus
        (:func:`~xbt_bench.linalg.procrustes_map`, ``padded`` as there), from ``new`` and
        ``old`` when the caller has embedded the corpus already, else embedded (and counted)
        here with :meth:`embed_corpus`. The map is computed once per run and shared
        (``shared``) by the methods that fit it: procrustes, slerp and every stage 1."""
        if new is None or old is None:
            new, old = self.embed_corpus("new"), self.embed_corpus("old")
        # the run's handles stand for its models (one per model reference, alive all run)
        key = ("text-procrustes", id(self.new), id(self.old), self.text_corpus.fingerprint)
        if key not in self.shared:
            self.shared[key] = procrustes_map(new, old, padded=True)
        padded_map = self.shared[key]  # the unpadded map is its first columns (procrustes_map)
        return np.array(padded_map if padded else padded_map[:, : old.shape[1]])

    def gallery_embeddings(self, data: ImageTextSet, side: Side) -> np.ndarray:
        """OLD's embeddings of ``data`` as a deployed system already holds them (from the
        cache): counted as gallery reuse, not as OLD forward passes."""
        array = self.embed("old", data, side, count=False)
        self.usage["old_gallery_reused"] += len(array)
        return array

    def count_forward(self, which: Which, side: Side, items: int, *, in_loop: bool = False) -> None:
        """Record ``items`` images or texts run through OLD or NEW at training time;
        ``in_loop``: inside training steps (their time is the training time's)."""
        self.usage[f"{which}_{side}"] += int(items)
        if in_loop:
            self.usage[f"in_loop_{which}_{side}"] += int(items)

    def query_path(self, encoders: Mapping[Which, Any], combine: Combine) -> QueryPath:
        """A query path whose dataset vectors come from this context's embedding cache (query
        time: not counted as training cost)."""
        return QueryPath(encoders, combine, self.query_embeddings)

    def query_embeddings(self, encoder: Any, data: ImageTextSet, side: Side) -> np.ndarray:
        """``data``'s images or captions embedded by ``encoder`` (a loaded model or a trained
        encoder; cached), float32 unit rows, not counted."""
        from ..embed.sharded import embed_split_sharded

        array = embed_split_sharded(
            encoder,
            data,
            side,
            cache=self.embeddings,
            stats=self.embed_stats,
            num_workers=self.num_workers,
        )
        return np.array(array, dtype=np.float32)  # a writable copy of the read-only cache


def check_corpus(corpus: TextCorpus) -> None:
    """XbtError unless ``corpus`` has at least two texts (a contrastive batch needs two)."""
    texts = getattr(corpus, "texts", None)
    if texts is None or len(texts) < 2:
        n = 0 if texts is None else len(texts)
        raise XbtError(
            f"text corpus {getattr(corpus, 'name', corpus)!r} has {n} texts; stage 1 and "
            "Procrustes need captions: set the pair's data.text to a caption file (one per "
            "line) or a dataset split with captions"
        )


def check_pairs(data: ImageTextSet | None, n_images: int | None = None) -> ImageTextSet:
    """``data`` (its first ``n_images`` images when given); XbtError when there are no pairs."""
    if data is None or data.n_images < 1 or len(data.captions) < 1 or n_images == 0:
        raise XbtError(
            "stage 2 needs image–text pairs but got none (pairs=0 or an empty set); set the "
            "pair's data.pairs to a split with images and captions, or use xbt-proj for the "
            "text-only stage"
        )
    if data.n_images < 2:
        raise XbtError(
            f"stage 2 needs at least 2 image–text pairs for a contrastive batch; "
            f"{data.key} has {data.n_images}"
        )
    return data if n_images is None else data.subset(n_images)


class PeakMemory:
    """Peak memory while active: CUDA max allocated on a CUDA device, else sampled RSS."""

    def __init__(self, device: str, interval_s: float = 0.05) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while True:
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    if self._stop.wait(self.interval_s):
                        return

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))

    @property
    def peak_mb(self) -> float:
        """The peak in MiB."""
        return self.peak_bytes / 2**20


def measured(ctx: FitContext, fit: Callable[[], FittedMethod]) -> FittedMethod:
    """Run ``fit()`` timed, with its peak memory, and fill its :class:`Cost` from the context's
    usage counters (the counts of this fit only). The time spent computing embeddings the cache
    lacked is reported apart (``cache_fill_s``), not as fit time: whichever method asks first
    for the corpus would otherwise pay for all of them."""
    before = Counter(ctx.usage)
    records = len(ctx.embed_stats.records) if ctx.embed_stats is not None else 0
    started = time.perf_counter()
    with PeakMemory(ctx.device) as memory:
        fitted = fit()
    seconds = time.perf_counter() - started
    new = ctx.embed_stats.records[records:] if ctx.embed_stats is not None else []
    filling = min(seconds, sum(record.seconds for record in new if record.computed))
    used = ctx.usage - before
    fitted.cost = fitted.cost.model_copy(
        update={
            "fit_time_s": round(seconds - filling, 3),
            "cache_fill_s": round(filling, 3),
            "peak_memory_mb": round(memory.peak_mb, 1),
            "device": ctx.device,
            "forward_passes": {key: int(used.get(key, 0)) for key in FORWARD_KEYS},
            "in_loop_passes": {
                key: int(used.get(f"in_loop_{key}", 0))
                for key in FORWARD_KEYS
                if used.get(f"in_loop_{key}")
            },
        }
    )
    return fitted


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global RNGs for the block (restored after)."""
    import random

    import torch

    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
