"""A run's scores through production FAISS indexes (``xbt-bench run --index KIND``), beside its
exact-search result: old→old and every method→old search one index of OLD's gallery, new→new one
of NEW's gallery, built as a serving system builds it (:func:`~xbt_bench.scoring.index_split`).
One :class:`~xbt_bench.results.IndexResult` per method and index, from the runner's own fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from .eval.indexes import IndexSpec
from .methods import methods
from .results import IndexResult, RunResult
from .scoring import index_split, method_split

if TYPE_CHECKING:
    from .runner import Runner


def score_index(
    runner: Runner, method: str, index: IndexSpec, exact: RunResult
) -> IndexResult | None:
    """``method`` on OLD -> NEW through production index ``index`` on every evaluation split,
    next to ``exact`` (its exact result from the same fits). None for a method that does not
    apply."""
    if not runner.fits(method)[0].applicable:
        return None
    old, new = runner.spec.old, runner.spec.new
    splits = {}
    for split, eval_set in runner.data.eval_sets.items():
        exact_refs = runner.references(split, eval_set, old, new)
        refs = runner.references(split, eval_set, old, new, index)
        exact_scores = {OLD_OLD: [exact_refs.old_old], NEW_NEW: [exact_refs.new_new]}
        index_scores = {OLD_OLD: [refs.old_old], NEW_NEW: [refs.new_new]}
        if methods.get(method).deploys != METHOD_OLD:
            indexed = refs.split()
        else:
            indexed = method_split(runner.scores(method, split, eval_set, index), refs)
            exact_scores[METHOD_OLD] = runner.scores(method, split, eval_set)
            index_scores[METHOD_OLD] = runner.scores(method, split, eval_set, index)
        searches = {}
        for which, ref in (("old", old), ("new", new)):
            built = runner.search_indexes(ref, split, eval_set, index)
            searches |= {
                f"{which} images": built.image_search,
                f"{which} captions": built.text_search,
            }
        splits[split] = index_split(
            indexed, exact_scores, index_scores, searches, eval_set.caption_image
        )
    return IndexResult(
        pair=exact.pair,
        old=exact.old,
        new=exact.new,
        method=method,
        dataset=exact.dataset,
        config=exact.config,
        fingerprints=exact.fingerprints,
        index=index.name,
        params=dict(index.params),
        split=exact.split,
        setting=exact.setting,
        seeds=exact.seeds or [exact.seed],
        splits=splits,
    )


def index_losses(result: IndexResult) -> str:
    """One line per split: the rsum each setting loses through ``result``'s index, and
    method→old's loss beyond old→old's with its 95% interval."""
    lines = []
    for split, data in result.splits.items():
        losses = " · ".join(f"{s} {v['rsum']:.2f}" for s, v in data.loss.items())
        line = f"  {split} through {result.index}: rsum loss {losses}"
        if data.extra_loss is not None and data.extra_loss_intervals is not None:
            low, high = data.extra_loss_intervals["rsum"]
            line += f"; beyond OLD's {data.extra_loss['rsum']:+.2f} (95% {low:+.2f} to {high:+.2f})"
        lines.append(line)
    return "\n".join(lines)
