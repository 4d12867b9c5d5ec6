"""``xbt-bench run``: a pair end to end — models, embeddings, fitted methods, scores, results.

Data flows one way: pair spec -> models and data -> cached embeddings -> fitted methods ->
query embeddings -> :mod:`xbt_bench.scoring` -> one :class:`RunResult` file per method. The
runner fits and saves; scoring is the pure step in between. Every expensive step is cached (toy
data, toy models, embeddings, training checkpoints), so a rerun reuses them and an interrupted
run continues where it stopped. The other commands that fit methods (``sweep``, ``backfill``,
``tune``) drive the same :class:`Runner` and write their own files.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from . import distributed
from .data import ImageTextSet
from .data.registry import corpus_summary
from .embed import EmbeddingCache, EmbedStats
from .embed.sharded import embed_split_sharded
from .eval import Embeddings
from .eval.backfill import BackfillSet
from .eval.compat import METHOD_OLD
from .eval.indexes import IndexSpec, build_search_indexes
from .eval.retrieval import RetrievalResult, SearchIndexes
from .indexed import index_losses, score_index
from .measured import RunMeasurements, report_embeddings
from .methods import methods
from .methods.base import FitContext, FittedMethod, ModelHandle
from .options import (
    MethodSettings,
    PairData,
    RunOptions,
    TrainingData,
    check_indexes,
    check_settings,
    load_pair_data,
    load_training_data,
    method_settings,
    methods_for_pair,
    resolve_methods,
)
from .pairs import load_pair, pair_registry, shadowed_pairs
from .paths import cache_dir, relative_to_home
from .results import Needs, ReportValue, RunResult
from .scoring import References, SplitResult, chain_split, method_split, score
from .toy.build import ensure_zoo_models


class Runner:
    """Fits the methods of one pair (or chain) and scores them; :meth:`run` writes one result
    per method. Galleries, references and fits are kept for the runner's lifetime, so the
    commands built on it (sweep, backfill, tune) reuse them."""

    def __init__(self, options: RunOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.spec = load_pair(options.pair)
        for hidden in shadowed_pairs(self.spec.name):
            console.print(
                f"[yellow]pair {self.spec.name!r}: "
                f"{escape(str(pair_registry().get(self.spec.name)))} replaces "
                f"{escape(str(hidden))} (same name); rename your file to run both[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
        self.method_names = resolve_methods(options.methods)
        check_settings(self.spec, self.method_names, options)
        self.method_names = methods_for_pair(self.spec, self.method_names, console)
        check_indexes(self.spec, options.indexes)
        self.dataset = options.dataset or self.spec.dataset
        self.cache = EmbeddingCache()
        self.stats = EmbedStats()
        ensure_zoo_models(self.spec.chain)
        self.handles = {ref: ModelHandle(ref, options.device) for ref in self.spec.chain}
        self.work_dir = cache_dir("runs", self.spec.name)
        # What the methods of this run share (e.g. preprocessed training images).
        self.shared: dict[Any, Any] = {}
        self._training: TrainingData | None = None
        self._data: PairData | None = None
        self._settings: dict[str, MethodSettings] = {}
        self._galleries: dict[tuple[str, str], Embeddings] = {}
        self._references: dict[tuple[str, str, str, IndexSpec | None], References] = {}
        self._fits: dict[tuple[str, int], list[FittedMethod]] = {}
        self._indexes: dict[tuple[str, str, IndexSpec], SearchIndexes] = {}
        self._scores: dict[tuple[str, str, IndexSpec | None], list[RetrievalResult]] = {}
        self.measured = RunMeasurements(self)  # what the upgrade bill reads from a run

    @property
    def training(self) -> TrainingData:
        """The pair's text corpus, training pairs and support split (loaded once): all a fit
        needs, so commands that only fit (``tune``) never load an evaluation split."""
        if self._training is None:
            self._training = load_training_data(self.spec, self.options)
        return self._training

    @property
    def data(self) -> PairData:
        """The pair's evaluation splits and training data (loaded once)."""
        if self._data is None:
            self._data = load_pair_data(self.spec, self.options, self.console, self.training)
        return self._data

    def settings(self, method: str) -> MethodSettings:
        """``method``'s configured settings and their sources (said once when some are
        tuned)."""
        if method not in self._settings:
            found = method_settings(self.spec, methods.get(method), self.options)
            self._settings[method] = found
            if found.tuned is not None:
                tuned = ", ".join(
                    f"{key}={value!r}" for key, value in found.values.items()
                    if found.sources[key] == "tuned"
                )  # fmt: skip
                where = found.tuned_file
                self.console.print(
                    f"{method}: tuned settings from {where} ({found.tuned.budget.label()}, "
                    f"support {found.tuned.objective} {found.tuned.best_value:.2f}): {tuned}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
        return self._settings[method]

    def gallery(self, ref: str, split: str, data: ImageTextSet) -> Embeddings:
        """``data`` embedded by model ``ref`` (cached on disk and in memory)."""
        key = (ref, split)
        if key not in self._galleries:
            model = self.handles[ref].get()
            images, texts = (
                embed_split_sharded(
                    model,
                    data,
                    side,
                    cache=self.cache,
                    stats=self.stats,
                    num_workers=self.options.num_workers,
                )
                for side in ("image", "text")
            )
            self._galleries[key] = Embeddings(images=images, texts=texts)
        return self._galleries[key]

    def references(
        self, split: str, data: ImageTextSet, old: str, new: str, index: IndexSpec | None = None
    ) -> References:
        """old→old and new→new of the upgrade ``old`` -> ``new`` on ``data`` (scored once):
        exact, or through production index ``index`` over each model's gallery."""
        key = (old, new, split, index)
        if key not in self._references:
            indexes = None
            if index is not None:
                indexes = tuple(self.search_indexes(ref, split, data, index) for ref in (old, new))
            self._references[key] = References.score(
                self.gallery(old, split, data),
                self.gallery(new, split, data),
                data.caption_image,
                indexes,
            )
        return self._references[key]

    def search_indexes(
        self, ref: str, split: str, data: ImageTextSet, index: IndexSpec
    ) -> SearchIndexes:
        """Production index ``index`` over model ``ref``'s gallery of ``data``, trained on that
        gallery's vectors (built once: every query encoder searches the same index)."""
        key = (ref, split, index)
        if key not in self._indexes:
            self._indexes[key] = build_search_indexes(self.gallery(ref, split, data), index)
        return self._indexes[key]

    def seeds(self, method: str) -> list[int]:
        """The seeds ``method`` runs with: ``n_seeds`` of them for a trained method, else one."""
        first = self.options.seed
        count = self.options.n_seeds if methods.get(method).kind == "trained" else 1
        return list(range(first, first + count))

    def fit(
        self,
        method: str,
        old: str,
        new: str,
        seed: int | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> FittedMethod:
        """Fit ``method`` for the upgrade ``old`` -> ``new`` with ``seed`` (default the run's)
        and ``settings`` over its configured ones (:meth:`settings`)."""
        data = self.training
        spec = methods.get(method)
        extra = {k: v for k, v in (settings or {}).items() if k in spec.settings.model_fields}
        context = FitContext(
            old=self.handles[old],
            new=self.handles[new],
            text_corpus=data.text_corpus,
            train_pairs=data.train_pairs,
            support=data.support,
            work_dir=self.work_dir,
            config={**self.settings(method).values, **extra},
            seed=self.options.seed if seed is None else seed,
            device=self.options.device,
            embeddings=self.cache,
            embed_stats=self.stats,
            num_workers=self.options.num_workers,
            shared=self.shared,
        )
        label = f" (seed {seed})" if seed is not None and self.options.n_seeds > 1 else ""
        self.console.print(
            f"[bold]{escape(method)}[/bold]{label}: {escape(old)} -> {escape(new)}"
        )
        return spec(context)

    def fits(self, method: str) -> list[FittedMethod]:
        """``method`` fitted on OLD -> NEW once per seed of :meth:`seeds` (kept for reuse)."""
        key = (method, self.options.seed)
        if key not in self._fits:
            self._fits[key] = [
                self.fit(method, self.spec.old, self.spec.new, seed) for seed in self.seeds(method)
            ]
        return self._fits[key]

    def queries(self, fitted: FittedMethod, data: ImageTextSet) -> Embeddings:
        """``fitted``'s image and caption queries of ``data``."""
        return Embeddings(fitted.encode_images(data), fitted.encode_texts(data))

    def searched_gallery(self, fitted: FittedMethod, split: str, data: ImageTextSet) -> Embeddings:
        """The gallery ``fitted``'s queries search: OLD's, or NEW's for ``new``."""
        ref = self.spec.old if fitted.gallery == "old" else self.spec.new
        return self.gallery(ref, split, data)

    def run(self) -> list[RunResult]:
        """Fit and score every method; write and return the results."""
        results = []
        for method in self.method_names:
            start = time.perf_counter()
            result = self.score_chain(method) if self.spec.is_chain else self.score_pair(method)
            result.cost.wall_time_s = round(time.perf_counter() - start, 3)
            fill = result.cost.cache_fill_s
            filled = f" (and {fill:.1f} s filling the embedding cache, not fit time)"
            self.console.print(
                f"  fit {result.cost.fit_time_s:.1f} s{filled if fill else ''}", highlight=False
            )
            if distributed.is_main():  # under torchrun, one rank writes
                saved = result.save(self.options.output_dir)
                self.console.print(f"  wrote {saved}", markup=False, highlight=False)
            results.append(result)
            # --- production indexes (issue 22, item 3): beside the exact result ---
            for index in self.options.indexes:
                indexed = score_index(self, method, index, result)
                if indexed is not None and distributed.is_main():
                    self.console.print(f"  wrote {indexed.save(self.options.output_dir)}")
                    self.console.print(index_losses(indexed), highlight=False)
        distributed.barrier()  # every rank returns once the results are written
        return results

    def score_pair(self, method: str) -> RunResult:
        """One method on OLD -> NEW (a trained one once per seed), scored on every evaluation
        split (:func:`~xbt_bench.scoring.method_split`)."""
        fits = self.fits(method)
        baseline = methods.get(method).baseline
        splits = {}
        for split, eval_set in self.data.eval_sets.items():
            references = self.references(split, eval_set, self.spec.old, self.spec.new)
            if methods.get(method).deploys != METHOD_OLD:
                splits[split] = references.split()
                continue
            theirs = None
            if baseline is not None:  # its own seeds: fit seed s is compared with seed s
                theirs = (baseline, self.scores(baseline, split, eval_set))
            splits[split] = method_split(self.scores(method, split, eval_set), references, theirs)
        return self.result(method, fits, splits, self.seeds(method))

    def scores(
        self, method: str, split: str, data: ImageTextSet, index: IndexSpec | None = None
    ) -> list[RetrievalResult]:
        """Each of ``method``'s fits searching its gallery of ``data``: exactly, or through
        production index ``index`` (built once per gallery); scored once."""
        key = (method, split, index)
        if key not in self._scores:
            self._scores[key] = [
                score(
                    self.queries(fitted, data),
                    self.searched_gallery(fitted, split, data),
                    data.caption_image,
                    data.key,
                    None if index is None else self.search_indexes(
                        self.spec.old if fitted.gallery == "old" else self.spec.new,
                        split, data, index,
                    ),
                )
                for fitted in self.fits(method)
            ]  # fmt: skip
        return self._scores[key]

    def score_chain(self, method: str) -> RunResult:
        """One method on every upgrade i > j of the chain: the compatibility matrix M[i][j]."""
        chain = self.spec.chain
        fits = {
            (i, j): self.fit(method, chain[j], chain[i])
            for i in range(len(chain))
            for j in range(i)
        }
        splits = {}
        for split, eval_set in self.data.eval_sets.items():
            cells = {}
            for i, ref in enumerate(chain):
                own = self.gallery(ref, split, eval_set)
                cells[i, i] = score(own, own, eval_set.caption_image, eval_set.key)
            for (i, j), fitted in fits.items():
                gallery = chain[j] if fitted.gallery == "old" else chain[i]
                cells[i, j] = score(
                    self.queries(fitted, eval_set),
                    self.gallery(gallery, split, eval_set),
                    eval_set.caption_image,
                    eval_set.key,
                )
            method_old = methods.get(method).deploys == METHOD_OLD
            splits[split] = chain_split(cells, chain, method_old)
            ac = splits[split].chain_matrix.average_compatibility["rsum"]
            self.console.print(f"  {split}: average compatibility (rsum) {ac:.2f}")
        return self.result(method, [fits[len(chain) - 1, 0]], splits, [self.options.seed])

    def backfill_set(self, fitted: FittedMethod, split: str, data: ImageTextSet) -> BackfillSet:
        """``data`` as a partial backfill with ``fitted``'s queries sees it."""
        return BackfillSet(
            method_queries=self.queries(fitted, data),
            old_gallery=self.gallery(self.spec.old, split, data),
            new_embeddings=self.gallery(self.spec.new, split, data),
            caption_image=data.caption_image,
        )

    def fingerprints(self) -> dict[str, str]:
        """Identities of the models (name and weights hash) and of the evaluated data."""
        chain = self.spec.chain
        names = ["old", *[f"via{i}" for i in range(1, len(chain) - 1)], "new"]
        models = zip(names, chain, strict=True)
        out = {name: self.handles[ref].get().identity for name, ref in models}
        return out | {
            f"data:{split}": eval_set.fingerprint for split, eval_set in self.data.eval_sets.items()
        }

    def result(
        self,
        method: str,
        fits: list[FittedMethod],
        splits: dict[str, SplitResult],
        seeds: list[int],
    ) -> RunResult:
        """The typed result of one method (cost, config, curves and provenance included): the
        first seed's record, with the cost of one fit averaged over the seeds."""
        fitted = fits[0]
        info, curves = split_curves(fitted.info)
        cost = fitted.cost
        if len(fits) > 1:
            cost = cost.model_copy(
                update={
                    key: round(float(np.mean([getattr(f.cost, key) for f in fits])), 3)
                    for key in ("fit_time_s", "training_time_s")
                }
            )
        data = self.data
        info["data"] = {
            "text_corpus": corpus_summary(data.text_corpus),
            "train_pairs": f"{data.train_pairs.key} ({data.train_pairs.n_images} images)",
            "support": f"{data.support.key} ({data.support.n_images} images)",
        }
        spec = methods.get(method)
        labels = spec.report
        configured = self.settings(method)
        return RunResult(
            pair=self.spec.name,
            old=self.spec.old,
            new=self.spec.new,
            method=method,
            dataset=self.dataset,
            split=next(iter(splits)),
            setting=methods.get(method).deploys,
            splits=splits,
            applicable=fitted.applicable,
            not_applicable_reason=fitted.reason or None,
            cost=cost,
            config={**fitted.config, "quick": self.options.quick},
            quick=self.options.quick,
            report={
                key: ReportValue(label=labels[key], value=value)
                for key, value in fitted.report.items()
            },
            info=info,
            training_curves=curves,
            seed=seeds[0],
            seeds=seeds,
            artifacts={
                "embeddings": relative_to_home(self.cache.root),
                "checkpoints": relative_to_home(self.work_dir),
            },
            fingerprints=self.fingerprints(),
            throughputs=self.measured.throughputs(),
            needs=Needs(
                group=spec.group,
                old_at_query=spec.old_at_query,
                training=spec.training_needs,
                image_text_pairs=cost.image_text_pairs,
            ),
            settings_source={key: configured.source_of(key) for key in fitted.config},
            tuned=configured.tuned.provenance() if configured.tuned is not None else None,
            query_latency=self.measured.query_latency(method, fitted),
            index_build=self.measured.index_build(),
            gallery=self.measured.gallery_shape(),
        )


def split_curves(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """``info`` without its training curves, and the curves by stage (``info[stage]["curve"]``)."""
    rest: dict[str, Any] = {}
    curves: dict[str, list[dict]] = {}
    for key, value in info.items():
        if isinstance(value, dict) and "curve" in value:
            curves[key] = value["curve"]
            value = {k: v for k, v in value.items() if k != "curve"}
        rest[key] = value
    return rest, curves


def run(options: RunOptions, console: Console) -> Runner:
    """Run ``options.pair`` end to end; print what was reused and a summary table. Returns the
    runner (its fits, galleries and results) for commands that continue from it."""
    from .report.summary import print_summary

    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    runner = Runner(options, console)
    started = time.perf_counter()
    results = runner.run()
    report_embeddings(runner, time.perf_counter() - started, results)
    print_summary(results, console)
    return runner
