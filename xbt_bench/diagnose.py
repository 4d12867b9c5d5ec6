"""``xbt-bench pairs diagnose``: how alike a pair's two models are, before any method runs.

For a pair (toy or real) and one evaluation split, this embeds the split with OLD and NEW and
the pair's text corpus with both (everything through the embedding cache), and reports
:func:`~xbt_bench.eval.diagnostics.pair_diagnostics`: each model's modality gap and matched
image–text cosine, linear CKA between OLD and NEW on texts and on images, how well an
orthogonal NEW→OLD map fitted on the corpus's texts explains OLD on the split's texts and
transfers to its images (R², residual; a general linear map's R² for reference), and the
capability gap new→new − old→old. The numbers are written as JSON beside the pair's results
(``<results>/<pair>/<dataset>/diagnostics/<split>.json``) for the page.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import write_json
from .data import load_dataset, load_text_corpus
from .embed import EmbeddingCache, embed_corpus, embed_split
from .eval.diagnostics import pair_diagnostics
from .models.loading import load_model
from .pairs import PairSpec
from .report.result import path_component
from .toy.build import ensure_zoo_models

DIAGNOSTICS_DIR = "diagnostics"


def diagnose_pair(
    spec: PairSpec,
    split: str | None = None,
    dataset: str | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
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
        f"{which}_{side}s": embed_split(model, data, side, cache=cache)
        for which, model in models.items()
        for side in ("image", "text")
    }
    fit = {
        f"fit_texts_{which}": embed_corpus(model, corpus, cache=cache)
        for which, model in models.items()
    }
    numbers = pair_diagnostics(caption_image=data.caption_image, **embedded, **fit)
    return {
        "pair": spec.name,
        "old_ref": spec.old,
        "new_ref": spec.new,
        "dataset": dataset,
        "split": split,
        "images": data.n_images,
        "captions": len(data.captions),
        "fit_corpus": corpus.name,
        "fingerprints": {
            "old": models["old"].identity,
            "new": models["new"].identity,
            f"data:{split}": data.fingerprint,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **numbers,
    }


def diagnostics_path(results_dir: Path, report: dict[str, Any]) -> Path:
    """Where a diagnostics report lives beside its pair's results."""
    folder = Path(results_dir) / path_component(report["pair"]) / path_component(report["dataset"])
    return folder / DIAGNOSTICS_DIR / f"{path_component(report['split'])}.json"


def save_diagnostics(results_dir: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` atomically beside the pair's results; return its path."""
    path = diagnostics_path(results_dir, report)
    write_json(path, report)
    return path
