"""``xbt-bench pairs diagnose``: how alike a pair's two models are, before any method runs.

For a pair (toy or real) and one evaluation split, this embeds the split with OLD and NEW and
the pair's text corpus with both (everything through the embedding cache), and scores
:func:`~xbt_bench.scoring.pair_diagnostics`: each model's modality gap and matched image–text
cosine, linear CKA between OLD and NEW on texts and on images, how well an orthogonal NEW→OLD
map fitted on the corpus's texts explains OLD on the split's texts and transfers to its images
(R², residual; a general linear map's R² for reference), and the capability gap new→new −
old→old. The result is written as its own file beside the pair's results
(``<results>/<pair>/<dataset>/diagnostics/<split>.json``, :class:`DiagnosticsResult`).
"""

from __future__ import annotations

from pathlib import Path

from .data import load_dataset, load_text_corpus
from .embed import EmbeddingCache, embed_corpus, embed_split
from .eval import Embeddings
from .linalg import warn_if_underdetermined
from .models.loading import load_model
from .pairs import PairSpec
from .results import DiagnosticsResult
from .scoring import pair_diagnostics
from .toy.build import ensure_zoo_models

SIDES = ("image", "text")


def diagnose_pair(
    spec: PairSpec,
    split: str | None = None,
    dataset: str | None = None,
    data_root: Path | None = None,
) -> DiagnosticsResult:
    """The diagnostics of ``spec``'s OLD and NEW on ``dataset``'s ``split`` (default: the pair's
    dataset and first split), the maps fitted on the pair's text corpus. A chain is diagnosed
    on its two ends."""
    dataset = dataset or spec.dataset
    split = split or (spec.splits[0] if dataset == spec.dataset else "test")
    ensure_zoo_models([spec.old, spec.new])
    data = load_dataset(dataset, split, data_root)
    corpus = load_text_corpus(spec.data.text, data_root)
    cache = EmbeddingCache()
    models = {"old": load_model(spec.old), "new": load_model(spec.new)}
    embedded = {
        which: Embeddings(*(embed_split(model, data, side, cache=cache) for side in SIDES))
        for which, model in models.items()
    }
    fit_texts = {which: embed_corpus(model, corpus, cache=cache) for which, model in models.items()}
    dim = max(model.embed_dim for model in models.values())
    warn_if_underdetermined(len(fit_texts["old"]), dim, f"diagnostics' text corpus {corpus.name!r}")
    warn_if_underdetermined(data.n_images, dim, f"diagnostics' split {data.key} (images, CKA)")
    numbers = pair_diagnostics(
        embedded["old"],
        embedded["new"],
        data.caption_image,
        fit_texts_old=fit_texts["old"],
        fit_texts_new=fit_texts["new"],
    )
    return DiagnosticsResult(
        pair=spec.name,
        old_ref=spec.old,
        new_ref=spec.new,
        dataset=dataset,
        split=split,
        images=data.n_images,
        captions=len(data.captions),
        fit_corpus=corpus.name,
        fingerprints={
            "old": models["old"].identity,
            "new": models["new"].identity,
            f"data:{split}": data.fingerprint,
        },
        **numbers.model_dump(),
    )

