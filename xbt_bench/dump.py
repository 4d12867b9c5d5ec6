"""``xbt-bench embeddings dump``: every split a pair uses, embedded by OLD and by NEW, written in
the stored-embeddings format (:mod:`xbt_bench.data.embeddings`, docs/embeddings-format.md):
what a team's own serving stack hands xbt-bench, and what ``xbt-bench pairs add NAME
--from-embeddings DIR`` reads.

Layout: ``DIR/old/<split>/`` and ``DIR/new/<split>/`` for the pair's evaluation splits (under
their own names), ``support``, ``pairs`` (the training pairs) and ``text`` (the text corpus:
text vectors only). The embeddings come from the embedding cache (computed once, as ``run``
computes them) and are stored with their data fingerprints and the time each model took, so a
pair made of them scores as the model pair does and its cost estimate has throughputs.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .data.embeddings import FileFormat, SideTiming, write_split
from .embed import EmbeddingCache, corpus_key, embed_corpus, embed_split, split_key
from .embed.cache import SIDES, EmbeddingKey, entry_timing
from .errors import ConfigError
from .models.loading import load_model
from .models.refs import parse_model_ref
from .options import RunOptions, load_pair_data
from .pairs import PairSpec
from .toy.build import ensure_zoo_models

# Folder names of the splits a pair trains on (its evaluation splits keep their own names).
TEXT, SUPPORT, PAIRS = "text", "support", "pairs"


def _timing(cache: EmbeddingCache, key: EmbeddingKey) -> SideTiming | None:
    """How long the cache entry ``key`` took to compute (None when its manifest does not say)."""
    timing = entry_timing(cache.entry_dir(key))
    if timing is None:
        return None
    seconds = float(timing["seconds"]) * int(timing["ranks"])
    return SideTiming(seconds=seconds, device=str(timing["device"] or "unrecorded device"))


def dump_pair_embeddings(
    spec: PairSpec,
    output: Path,
    console: Console,
    *,
    data_root: Path | None = None,
    device: str = "cpu",
    num_workers: int | None = None,
    file_format: FileFormat = "npy",
    dtype: str = "float32",
) -> list[Path]:
    """Write OLD's and NEW's embeddings of every split ``spec`` uses into ``output`` (module
    docstring); returns the manifests written. ConfigError for a chain, for a pair that already
    reads stored embeddings, or for an evaluation split named like a training split."""
    if spec.is_chain:
        raise ConfigError(f"pair {spec.name!r} is a chain; dump an upgrade pair (OLD -> NEW)")
    stored = [ref for ref in spec.chain if parse_model_ref(ref).kind == "embeddings"]
    if stored:
        raise ConfigError(
            f"pair {spec.name!r} already reads stored embeddings ({', '.join(stored)}); copy "
            "those folders instead"
        )
    data = load_pair_data(spec, RunOptions(pair=spec.name, data_root=data_root), console)
    clash = sorted(set(data.eval_sets) & {TEXT, SUPPORT, PAIRS})
    if clash:
        raise ConfigError(
            f"pair {spec.name!r} evaluates splits named {clash}, the folder names of its "
            "training data; evaluate splits with other names"
        )
    splits = {**data.eval_sets, SUPPORT: data.support, PAIRS: data.train_pairs}
    ensure_zoo_models([spec.old, spec.new])
    cache = EmbeddingCache()
    written = []
    for role, ref in (("old", spec.old), ("new", spec.new)):
        model = load_model(ref, device)
        common = {"model": ref, "fingerprint": model.identity, "file_format": file_format}
        for name, split in splits.items():
            vectors = {
                side: embed_split(model, split, side, cache=cache, num_workers=num_workers)
                for side in SIDES
            }
            timing = {side: _timing(cache, split_key(model, split, side)) for side in SIDES}
            written.append(
                write_split(
                    output / role / name,
                    split=name,
                    image=vectors["image"],
                    text=vectors["text"],
                    caption_image=split.caption_image,
                    data_fingerprint=split.fingerprint,
                    timing={side: t for side, t in timing.items() if t is not None},
                    dtype=dtype,
                    **common,
                )
            )
        corpus = data.text_corpus
        text_timing = _timing(cache, corpus_key(model, corpus))
        written.append(
            write_split(
                output / role / TEXT,
                split=TEXT,
                text=embed_corpus(model, corpus, cache=cache),
                data_fingerprint=corpus.fingerprint,
                timing={"text": text_timing} if text_timing is not None else {},
                dtype=dtype,
                **common,
            )
        )
        console.print(f"{role} ({ref}): {len(splits) + 1} splits -> {output / role}")
    return written
