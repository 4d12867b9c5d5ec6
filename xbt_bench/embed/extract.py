"""Batched embedding extraction for any encoder, cached on disk.

An *encoder* is a :class:`~xbt_bench.models.loading.LoadedModel` or any object with
``encode_image(images)``, ``encode_text(tokens)``, ``preprocess``, ``tokenizer`` and an
``identity`` string that changes whenever its weights do (a method's query encoder, e.g.
NEW + LoRA + ψ, with ``identity`` built from :func:`state_fingerprint`). Outputs are
L2-normalised float32 rows.

A model known only by its stored embeddings (:class:`~xbt_bench.models.stored.StoredModel`,
``embeddings:DIR``) is not run: :func:`embed_split` and :func:`embed_corpus` serve its verified
arrays (memory-mapped ``.npy``, in their stored dtype), counted as reused.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..console import StepProgress
from ..data.base import ImageTextSet, TextCorpus
from ..errors import InputError, XbtError
from ..eval.retrieval import Embeddings
from ..models.stored import StoredModel
from .cache import SIDES, EmbeddingCache, EmbeddingKey, EmbedRecord, EmbedStats
from .tokens import token_table, tokenizer_signature

DEFAULT_IMAGE_BATCH = 256
DEFAULT_TEXT_BATCH = 1024


@dataclass(frozen=True)
class Encoder:
    """What extraction needs from a model, whatever built it."""

    identity: str
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess_signature: str
    tokenizer_signature: str
    device: torch.device
    module: torch.nn.Module | None = None  # put in eval mode while embedding

    def precision(self, amp: bool) -> str:
        """The compute precision extraction will use: bf16 autocast only on CUDA."""
        return "bf16-autocast" if amp and self.device.type == "cuda" else "fp32"


def as_encoder(model: Any) -> Encoder:
    """``model`` (an Encoder, a LoadedModel, or any object with encode_image, encode_text,
    preprocess, tokenizer and identity) as an :class:`Encoder`."""
    if isinstance(model, Encoder):
        return model
    # A LoadedModel keeps the open_clip module in ``.model``; a method's encoder is the module.
    target = model if hasattr(model, "encode_image") else getattr(model, "model", None)
    needs = {"identity": model, "preprocess": model, "tokenizer": model}
    needs |= {"encode_image": target, "encode_text": target}
    missing = [name for name, owner in needs.items() if not hasattr(owner, name)]
    if missing:
        raise XbtError(
            f"{type(model).__name__} cannot be embedded with: it lacks {', '.join(missing)}; "
            "pass a LoadedModel or an object with encode_image, encode_text, preprocess, "
            "tokenizer and identity"
        )
    module = target if isinstance(target, torch.nn.Module) else None
    device = getattr(model, "device", None)
    if device is None and module is not None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else None
    return Encoder(
        identity=str(model.identity),
        encode_image=target.encode_image,
        encode_text=target.encode_text,
        preprocess=model.preprocess,
        tokenizer=model.tokenizer,
        preprocess_signature=getattr(model, "preprocess_signature", None) or repr(model.preprocess),
        tokenizer_signature=getattr(model, "tokenizer_signature", None)
        or tokenizer_signature(model.tokenizer),
        device=torch.device(device or "cpu"),
        module=module,
    )


def state_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of ``module``'s state dict (names, dtypes, shapes, values): build a trained
    encoder's ``identity`` from it so that new weights never reuse old embeddings."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def default_num_workers() -> int:
    """Image-loading workers: min(4, CPU count)."""
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class _Unreadable:
    """An image that failed to load or preprocess in a data-loader worker: carried back as
    data, so that the main process can name it in one line (a worker's exception would come
    back wrapped in the worker's traceback)."""

    row: int
    error: str


class _ImageRows(torch.utils.data.Dataset):
    def __init__(self, data: ImageTextSet, preprocess: Callable, rows: range):
        self.load_image = data.load_image
        self.preprocess = preprocess
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor | _Unreadable:
        row = self.rows[i]
        try:
            return self.preprocess(self.load_image(row))
        except Exception as error:  # noqa: BLE001 - reported by iter_image_embeddings
            return _Unreadable(row, f"{type(error).__name__}: {error}")


def _collate(items: list[torch.Tensor | _Unreadable]) -> torch.Tensor | _Unreadable:
    """A batch of preprocessed images, or the first unreadable image in it."""
    for item in items:
        if isinstance(item, _Unreadable):
            return item
    return torch.utils.data.default_collate(items)


def _check_rows(rows: range | None, n: int, what: str) -> range:
    if rows is None:
        return range(n)
    if rows.step != 1 or not 0 <= rows.start <= rows.stop <= n:
        raise XbtError(f"rows {rows} of {what} must be a contiguous range inside [0, {n})")
    return rows


def _encode(
    encoder: Encoder, encode: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, amp: bool
) -> np.ndarray:
    """One batch in eval and inference mode (bf16 autocast on CUDA), as float32 unit rows.

    Modes are entered per batch so that nothing leaks into the caller between batches."""
    module = encoder.module
    was_training = module.training if module is not None else False
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if encoder.precision(amp) == "bf16-autocast"
        else nullcontext()
    )
    try:
        if module is not None:
            module.eval()
        with torch.inference_mode(), autocast:
            out = encode(batch.to(encoder.device, non_blocking=True))
            return F.normalize(out.float(), dim=-1).cpu().numpy()
    finally:
        if module is not None and was_training:
            module.train()


def iter_image_embeddings(
    model: Any,
    data: ImageTextSet,
    *,
    rows: range | None = None,
    batch_size: int = DEFAULT_IMAGE_BATCH,
    num_workers: int | None = None,
    amp: bool = True,
) -> Iterator[np.ndarray]:
    """Embeddings of ``data``'s images (``rows``, default all) in batches, as float32
    L2-normalised [batch, dim] arrays; images are loaded and preprocessed by DataLoader workers."""
    encoder = as_encoder(model)
    rows = _check_rows(rows, data.n_images, f"{data.key} images")
    workers = default_num_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _ImageRows(data, encoder.preprocess, rows),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=encoder.device.type == "cuda",
        collate_fn=_collate,
    )
    with StepProgress(f"embed {data.key} images", len(rows), unit="images") as progress:
        for images in loader:
            if isinstance(images, _Unreadable):
                raise InputError(
                    f"image {images.row} of {data.key} cannot be read ({images.error}); "
                    "replace the file or drop its rows from the dataset's annotations"
                )
            yield _encode(encoder, encoder.encode_image, images, amp)
            progress.advance(len(images))


def iter_text_embeddings(
    model: Any,
    texts: Sequence[str],
    *,
    rows: range | None = None,
    batch_size: int = DEFAULT_TEXT_BATCH,
    amp: bool = True,
    desc: str = "texts",
    texts_key: str | None = None,
) -> Iterator[np.ndarray]:
    """Embeddings of ``texts`` (``rows``, default all) as float32 L2-normalised arrays, one per
    block of :func:`sort_block` rows, in row order.

    Each block is encoded in batches of captions of similar length (longest first), so a text
    tower that cuts each batch to its longest caption (see :mod:`xbt_bench.models.trim`) skips
    most of the padding. Blocks start at multiples of the block size, so any split of the rows
    at those multiples encodes the same batches. With ``texts_key`` (a fingerprint of
    ``texts``) the tokens come from the cached token table (:mod:`.tokens`)."""
    encoder = as_encoder(model)
    rows = _check_rows(rows, len(texts), desc)
    block = sort_block(batch_size)
    table = token_table(encoder.tokenizer, texts, texts_key) if texts_key else None
    with StepProgress(f"embed {desc}", len(rows), unit="texts") as progress:
        start = rows.start
        while start < rows.stop:
            stop = min(rows.stop, (start // block + 1) * block)
            tokens = (
                torch.from_numpy(np.array(table[start:stop], dtype=np.int64))
                if table is not None
                else encoder.tokenizer([texts[i] for i in range(start, stop)])
            )
            order = np.argsort(-(tokens != 0).sum(dim=1).numpy(), kind="stable")
            out: np.ndarray | None = None
            for first in range(0, len(order), batch_size):
                picked = order[first : first + batch_size]
                embedded = _encode(encoder, encoder.encode_text, tokens[picked], amp)
                if out is None:
                    out = np.empty((len(order), embedded.shape[1]), dtype=np.float32)
                out[picked] = embedded
                progress.advance(len(picked))
            yield out
            start = stop


def encode_inputs(
    model: Any, side: str, inputs: Sequence[Image.Image] | Sequence[str], amp: bool = True
) -> np.ndarray:
    """Raw queries embedded in one batch, as a serving system would: ``inputs`` (decoded images
    for ``side == "image"``, strings for ``"text"``) preprocessed or tokenised, then one forward
    pass (eval and inference mode, bf16 autocast on CUDA); [len(inputs), dim] float32 unit rows.
    """
    encoder = as_encoder(model)
    if side == "image":
        batch = torch.stack([encoder.preprocess(image) for image in inputs])
        return _encode(encoder, encoder.encode_image, batch, amp)
    if side == "text":
        return _encode(encoder, encoder.encode_text, encoder.tokenizer(list(inputs)), amp)
    raise XbtError(f"embedding side {side!r} is not one of {', '.join(SIDES)}")


def sort_block(batch_size: int) -> int:
    """Rows tokenised and sorted by length together: 4 batches (enough for batches of even
    lengths, small enough to share the rows evenly among ranks)."""
    return 4 * batch_size


def embed_images(model: Any, data: ImageTextSet, **options: Any) -> np.ndarray:
    """All of ``data``'s images embedded, [n_images, dim] float32 L2-normalised (no cache).
    ``options`` as for :func:`iter_image_embeddings`."""
    return np.concatenate(list(iter_image_embeddings(model, data, **options)))


def embed_texts(model: Any, texts: Sequence[str], **options: Any) -> np.ndarray:
    """All ``texts`` embedded, [len(texts), dim] float32 L2-normalised (no cache).
    ``options`` as for :func:`iter_text_embeddings`."""
    return np.concatenate(list(iter_text_embeddings(model, texts, **options)))


def split_key(
    model: Any, data: ImageTextSet, side: str, *, dtype: str = "float32", amp: bool = True
) -> EmbeddingKey:
    """The cache key of ``data``'s ``side`` ("image" or "text") embedded by ``model``."""
    if side not in SIDES:
        raise XbtError(f"embedding side {side!r} is not one of {', '.join(SIDES)}")
    encoder = as_encoder(model)
    return EmbeddingKey(
        model=encoder.identity,
        dataset=data.fingerprint,
        split=data.key,
        side=side,
        transform=encoder.preprocess_signature if side == "image" else encoder.tokenizer_signature,
        dtype=dtype,
        precision=encoder.precision(amp),
    )


def corpus_key(
    model: Any, corpus: TextCorpus, *, dtype: str = "float32", amp: bool = True
) -> EmbeddingKey:
    """The cache key of ``corpus`` embedded by ``model``'s text side."""
    encoder = as_encoder(model)
    return EmbeddingKey(
        model=encoder.identity,
        dataset=corpus.fingerprint,
        split=f"corpus:{corpus.name}",
        side="text",
        transform=encoder.tokenizer_signature,
        dtype=dtype,
        precision=encoder.precision(amp),
    )


@dataclass(frozen=True)
class Extraction:
    """One cache entry to fill: its ``key``, its ``n_rows``, ``align`` (ranks split the rows at
    its multiples, so each encodes the batches one process would), ``embed(rows=...)``, which
    embeds a contiguous block of rows (default all) in batches, and the ``device`` it runs on
    (recorded in the manifest with the time it took)."""

    key: EmbeddingKey
    n_rows: int
    align: int
    embed: Callable[..., Iterator[np.ndarray]]
    device: str = "cpu"


def split_extraction(
    model: Any,
    data: ImageTextSet,
    side: str,
    *,
    dtype: str = "float32",
    batch_size: int | None = None,
    num_workers: int | None = None,
    amp: bool = True,
) -> Extraction:
    """How :func:`embed_split` embeds ``data``'s images or captions (options as there)."""
    encoder = as_encoder(model)  # once: an identity may be costly to compute
    key = split_key(encoder, data, side, dtype=dtype, amp=amp)
    if side == "image":
        size = batch_size or DEFAULT_IMAGE_BATCH
        embed = functools.partial(
            iter_image_embeddings, encoder, data, batch_size=size, num_workers=num_workers, amp=amp
        )
        return Extraction(key, data.n_images, size, embed, str(encoder.device))
    size = batch_size or DEFAULT_TEXT_BATCH
    return _text_extraction(
        key, encoder, data.captions, size, amp, f"{data.key} captions", data.fingerprint
    )


def corpus_extraction(
    model: Any,
    corpus: TextCorpus,
    *,
    dtype: str = "float32",
    batch_size: int = DEFAULT_TEXT_BATCH,
    amp: bool = True,
) -> Extraction:
    """How :func:`embed_corpus` embeds ``corpus``'s texts (options as there)."""
    encoder = as_encoder(model)
    key = corpus_key(encoder, corpus, dtype=dtype, amp=amp)
    return _text_extraction(
        key, encoder, corpus.texts, batch_size, amp, f"corpus {corpus.name}", corpus.fingerprint
    )


def _text_extraction(
    key: EmbeddingKey,
    encoder: Encoder,
    texts: Sequence[str],
    batch_size: int,
    amp: bool,
    desc: str,
    texts_key: str,
) -> Extraction:
    embed = functools.partial(
        iter_text_embeddings,
        encoder,
        texts,
        batch_size=batch_size,
        amp=amp,
        desc=desc,
        texts_key=texts_key,
    )
    # Ranks split the rows at block boundaries: every block is the one one process encodes.
    return Extraction(key, len(texts), sort_block(batch_size), embed, str(encoder.device))


def record_request(
    stats: EmbedStats | None,
    cache: EmbeddingCache,
    key: EmbeddingKey,
    *,
    rows: int,
    computed: bool,
    started: float,
) -> None:
    """Count a request for ``key``'s embeddings in ``stats`` (when given): ``rows`` computed
    or reused, timed from ``started`` (a ``time.perf_counter()`` value)."""
    if stats is None:
        return
    stats.add(
        EmbedRecord(
            model=key.model,
            split=key.split,
            side=key.side,
            rows=rows,
            computed=computed,
            seconds=round(time.perf_counter() - started, 3),
            path=str(cache.entry_dir(key)),
        )
    )


def _cached(
    extraction: Extraction, cache: EmbeddingCache | None, stats: EmbedStats | None, mmap: bool
) -> np.ndarray:
    cache = cache if cache is not None else EmbeddingCache()
    started = time.perf_counter()
    key = extraction.key
    array, computed = cache.get_or_compute(
        key, extraction.embed, mmap=mmap, device=extraction.device
    )
    record_request(stats, cache, key, rows=len(array), computed=computed, started=started)
    return array


def stored_embeddings(
    model: StoredModel, data_fingerprint: str, what: str, side: str, stats: EmbedStats | None
) -> np.ndarray:
    """The ``side`` vectors a stored model holds of the data ``data_fingerprint`` (``what``
    names it), read, never computed; ``stats`` counts them as reused, with the time the model
    took to compute them where the split's manifest records it."""
    started = time.perf_counter()
    split = model.split_of(data_fingerprint, what)
    array = split.vectors(side)
    recorded = split.manifest.timing.get(side)
    timing = None
    if recorded is not None:
        timing = {
            "rows": len(array),
            "seconds": recorded.seconds,
            "ranks": 1,
            "device": recorded.device,
            "other_cpu_share": None,  # a stored pair's manifest does not record the load
        }
    if stats is not None:
        stats.add(
            EmbedRecord(
                model=model.identity,
                split=what,
                side=side,
                rows=len(array),
                computed=False,
                seconds=round(time.perf_counter() - started, 3),
                path=str(split.folder / split.manifest.files[side].path),
                timing=timing,
            )
        )
    return array


def embed_split(
    model: Any,
    data: ImageTextSet,
    side: str,
    *,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    dtype: str = "float32",
    batch_size: int | None = None,
    num_workers: int | None = None,
    amp: bool = True,
    mmap: bool = True,
) -> np.ndarray:
    """``data``'s images (``side="image"``, [n_images, dim]) or captions (``"text"``,
    [n_captions, dim]) embedded by ``model``, L2-normalised, from ``cache`` (default
    ``EmbeddingCache()``) when present, else computed and cached.

    Returned in the storage ``dtype``, memory-mapped read-only when ``mmap``; ``stats``, when
    given, counts the forward passes done and the rows reused. A stored model's embeddings are
    read (:func:`stored_embeddings`).
    """
    if isinstance(model, StoredModel):
        return stored_embeddings(model, data.fingerprint, data.key, side, stats)
    extraction = split_extraction(
        model, data, side, dtype=dtype, batch_size=batch_size, num_workers=num_workers, amp=amp
    )
    return _cached(extraction, cache, stats, mmap)


def embed_corpus(
    model: Any,
    corpus: TextCorpus,
    *,
    cache: EmbeddingCache | None = None,
    stats: EmbedStats | None = None,
    dtype: str = "float32",
    batch_size: int = DEFAULT_TEXT_BATCH,
    amp: bool = True,
    mmap: bool = True,
) -> np.ndarray:
    """``corpus``'s texts embedded by ``model``'s text side, [len(texts), dim], cached as in
    :func:`embed_split` (a stored model's are read)."""
    if isinstance(model, StoredModel):
        return stored_embeddings(model, corpus.fingerprint, f"corpus {corpus.name}", "text", stats)
    extraction = corpus_extraction(model, corpus, dtype=dtype, batch_size=batch_size, amp=amp)
    return _cached(extraction, cache, stats, mmap)


def embed_set(model: Any, data: ImageTextSet, **options: Any) -> Embeddings:
    """Both sides of ``data`` embedded by ``model`` (cached), as the evaluator's
    :class:`~xbt_bench.eval.retrieval.Embeddings`; ``options`` as for :func:`embed_split`."""
    return Embeddings(
        images=embed_split(model, data, "image", **options),
        texts=embed_split(model, data, "text", **options),
    )
