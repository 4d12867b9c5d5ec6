"""``xbt-bench run``: a pair end to end — models, embeddings, methods, retrieval, results.

Data flows one way: pair spec -> models and data -> cached embeddings -> fitted methods ->
query embeddings -> FAISS retrieval against the gallery -> :class:`RunResult` files. Every
expensive step is cached (toy data, toy models, embeddings, training checkpoints), so a rerun
reuses them and an interrupted run continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from . import distributed
from .data import ImageTextSet, TextCorpus, load_dataset, load_text_corpus, split_data_ref
from .data.registry import corpus_summary, dataset_info
from .embed import EmbeddingCache, EmbedStats
from .embed.cache import entry_timing
from .embed.sharded import embed_split_sharded
from .errors import ConfigError, XbtError, did_you_mean
from .eval import Embeddings, evaluate_retrieval
from .eval.backfill import BackfillSet, interior, plan_backfill
from .eval.bootstrap import QueryHits, paired_margin_intervals, recall_intervals
from .eval.compat import (
    METHOD_OLD,
    NEW_NEW,
    OLD_OLD,
    average_compatibility,
    compatibility_matrix,
    retrieval_flip_rates,
)
from .eval.retrieval import METRIC_KEYS, RetrievalResult
from .methods import MethodSpec, methods
from .methods.base import FitContext, FittedMethod, ModelHandle
from .pairs import PairSpec, load_pair, pair_registry, shadowed_pairs
from .paths import cache_dir, relative_to_home
from .report.result import (
    Backfill,
    BackfillPoint,
    CalibrationChoice,
    ChainMatrix,
    EmbeddingThroughput,
    OrderChoice,
    RunResult,
    SplitResult,
)
from .toy.build import ensure_zoo_models

# --quick: fewer training steps and pairs for smoke runs (keys a method's settings lack are
# left out for that method).
QUICK_OVERRIDES: dict[str, Any] = {"proj_steps": 300, "steps": 60, "pairs": 1000}


@dataclass
class RunOptions:
    """What ``xbt-bench run`` was asked to do."""

    pair: str
    methods: Sequence[str] = ()
    dataset: str | None = None
    splits: Sequence[str] = ()
    data_root: Path | None = None
    output_dir: Path = Path("results")
    seed: int = 0
    n_seeds: int = 1  # trained methods run with seeds seed, seed + 1, ...
    device: str = "cpu"
    quick: bool = False
    num_workers: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # Partial-backfill curves at these fractions of the gallery re-embedded (None: not run).
    backfill: Sequence[float] | None = None


@dataclass
class PairData:
    """Everything a pair's methods train on and are scored on."""

    eval_sets: dict[str, ImageTextSet]
    text_corpus: TextCorpus
    train_pairs: ImageTextSet
    support: ImageTextSet


def resolve_methods(names: Sequence[str]) -> list[str]:
    """The canonical method names to run (all but the variants when ``names`` is empty)."""
    if not names:
        from .methods import default_methods

        return default_methods()
    resolved = [methods.canonical(name) for name in names]
    return list(dict.fromkeys(resolved))


def keep_recorded(result: RunResult, results_dir: Path, console: Console) -> RunResult:
    """``result`` with the sweep points and backfill curves of the file it replaces where
    ``result`` has none, when that file holds the same method with the same config, seed and
    scores (a plain rerun must not drop what ``xbt-bench sweep`` or ``xbt-bench backfill``
    recorded); otherwise ``result`` unchanged."""
    path = result.path_in(results_dir)
    if (result.sweep and result.backfill) or not path.exists():
        return result
    try:
        previous = RunResult.from_json(path)
    except XbtError as error:
        console.print(
            f"[yellow]replacing an unreadable result file; any sweep points or backfill curves "
            f"it held are lost ({escape(str(error))})[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
        return result
    same = (previous.config, previous.seed, previous.seeds, previous.splits) == (
        result.config,
        result.seed,
        result.seeds,
        result.splits,
    )
    if not same:
        return result
    kept = {
        "sweep": result.sweep or previous.sweep,
        "backfill": result.backfill or previous.backfill,
    }
    return result.model_copy(update=kept)


def load_pair_data(spec: PairSpec, options: RunOptions, console: Console) -> PairData:
    """The evaluation splits and training data a run of ``spec`` needs (ConfigError when an
    evaluation split is a training or support split; a warning when it is the text corpus)."""
    root = options.data_root
    dataset = options.dataset or spec.dataset
    if options.splits:
        splits = list(options.splits)
    elif dataset == spec.dataset:
        splits = spec.splits
    else:
        splits = [dataset_info(dataset).default_split]
    eval_sets = {split: load_dataset(dataset, split, root) for split in splits}
    text_corpus = load_text_corpus(spec.data.text, root)
    train_pairs = load_dataset(*split_data_ref(spec.data.pairs), root)
    support = load_dataset(*split_data_ref(spec.data.support), root)
    overlap = {s.fingerprint for s in eval_sets.values()} & {
        train_pairs.fingerprint,
        support.fingerprint,
    }
    if overlap:
        raise ConfigError(
            f"pair {spec.name!r}: an evaluation split is also a training or support split; "
            "set data.pairs and data.support to other splits than the ones evaluated"
        )
    for split in eval_sets:
        if spec.data.text == f"{dataset}:{split}":
            console.print(
                f"[yellow]warning: split {escape(repr(split))} is pair {spec.name!r}'s stage-1 "
                f"text corpus (data.text = {escape(spec.data.text)}); methods fitted on its "
                "captions score them "
                "too well: report a split the pair does not train on[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
    return PairData(eval_sets, text_corpus, train_pairs, support)


def method_config(spec: PairSpec, method: MethodSpec, options: RunOptions) -> dict[str, Any]:
    """Pair-file settings for ``method`` (over those for the method it ``extends``), updated by
    --quick and the command line's ``--set`` (each applied to the methods that have that
    setting)."""
    config: dict[str, Any] = {}
    layers = [spec.method_config(method.extends)] if method.extends else []
    layers += [spec.method_config(method.name)]
    layers += [QUICK_OVERRIDES] if options.quick else []
    for layer in [*layers, options.overrides]:
        unknown = set(method.unknown_settings(layer))
        config |= {key: value for key, value in layer.items() if key not in unknown}
    return config


def check_settings(spec: PairSpec, names: Sequence[str], options: RunOptions) -> None:
    """Before any work: every ``--set`` key belongs to at least one of the methods ``names``
    (ConfigError with the closest setting otherwise), and every method's effective settings
    validate."""
    selected = [methods.get(name) for name in names]
    for key in options.overrides:
        if all(key in method.unknown_settings([key]) for method in selected):
            known = sorted({field for method in selected for field in method.settings.model_fields})
            hint = did_you_mean(key, known, "settings of these methods")
            raise ConfigError(
                f"--set {key}=...: no selected method ({', '.join(names)}) has a setting {key!r}; "
                f"{hint} (see `xbt-bench methods show NAME`)"
            )
    for method in selected:
        method.parse_settings(method_config(spec, method, options))


class Runner:
    """Runs the methods of one pair (or chain) and writes one result per method."""

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
        if options.backfill is not None:
            interior(options.backfill)  # an error before any work when no share is inside (0, 1)
            if self.spec.is_chain:
                raise ConfigError(
                    f"pair {self.spec.name!r} is a chain; backfill an upgrade pair (OLD -> NEW)"
                )
        self.dataset = options.dataset or self.spec.dataset
        self.cache = EmbeddingCache()
        self.stats = EmbedStats()
        ensure_zoo_models(self.spec.chain)
        self.handles = {ref: ModelHandle(ref, options.device) for ref in self.spec.chain}
        self.work_dir = cache_dir("runs", self.spec.name)
        # What the methods of this run share (e.g. preprocessed training images).
        self.shared: dict[Any, Any] = {}
        self._galleries: dict[tuple[str, str], Embeddings] = {}
        self._references: dict[tuple[str, str], RetrievalResult] = {}
        self._reference_intervals: dict[tuple[str, str], dict[str, list[float]]] = {}

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

    def reference(self, ref: str, split: str, data: ImageTextSet) -> RetrievalResult:
        """Model ``ref``'s own retrieval on ``data`` (its queries against its gallery)."""
        key = (ref, split)
        if key not in self._references:
            own = self.gallery(ref, split, data)
            self._references[key] = score(own, own, data)
        return self._references[key]

    def reference_intervals(
        self, ref: str, split: str, data: ImageTextSet
    ) -> dict[str, list[float]]:
        """The 95% bootstrap intervals of model ``ref``'s own retrieval on ``data``."""
        key = (ref, split)
        if key not in self._reference_intervals:
            own = self.reference(ref, split, data)
            self._reference_intervals[key] = recall_intervals(query_hits([own], data))
        return self._reference_intervals[key]

    def seeds(self, method: str) -> list[int]:
        """The seeds ``method`` runs with: ``n_seeds`` of them for a trained method, else one."""
        first = self.options.seed
        count = self.options.n_seeds if methods.get(method).kind == "trained" else 1
        return list(range(first, first + count))

    def fit(
        self, method: str, old: str, new: str, data: PairData, seed: int | None = None
    ) -> FittedMethod:
        """Fit ``method`` for the upgrade ``old`` -> ``new`` (with ``seed``, default the run's)."""
        context = FitContext(
            old=self.handles[old],
            new=self.handles[new],
            text_corpus=data.text_corpus,
            train_pairs=data.train_pairs,
            support=data.support,
            work_dir=self.work_dir,
            config=method_config(self.spec, methods.get(method), self.options),
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
        return methods.get(method)(context)

    def run(self) -> list[RunResult]:
        """Fit and score every method; write and return the results."""
        data = load_pair_data(self.spec, self.options, self.console)
        results = []
        for method in self.method_names:
            start = time.perf_counter()
            result = (
                self.run_chain(method, data) if self.spec.is_chain else self.run_pair(method, data)
            )
            result.cost.wall_time_s = round(time.perf_counter() - start, 3)
            result = keep_recorded(result, self.options.output_dir, self.console)
            if distributed.is_main():  # under torchrun, one rank writes
                saved = result.save(self.options.output_dir)
                self.console.print(f"  wrote {saved}", markup=False, highlight=False)
            results.append(result)
        distributed.barrier()  # every rank returns once the results are written
        return results

    def run_pair(self, method: str, data: PairData) -> RunResult:
        """One method on OLD -> NEW (a trained one once per seed), scored on every evaluation
        split: the seeds' mean, each seed's metrics, bootstrap intervals of every cell and the
        paired intervals of the margins over old->old."""
        old, new = self.spec.old, self.spec.new
        seeds = self.seeds(method)
        fits = [self.fit(method, old, new, data, seed) for seed in seeds]
        splits = {}
        for split, eval_set in data.eval_sets.items():
            old_old = self.reference(old, split, eval_set)
            new_new = self.reference(new, split, eval_set)
            metrics = {OLD_OLD: old_old.metrics, NEW_NEW: new_new.metrics}
            intervals = {
                OLD_OLD: self.reference_intervals(old, split, eval_set),
                NEW_NEW: self.reference_intervals(new, split, eval_set),
            }
            if methods.get(method).deploys != METHOD_OLD:
                splits[split] = SplitResult(metrics=metrics, intervals=intervals)
                continue
            scored = [self.score_fit(fitted, split, eval_set) for fitted in fits]
            hits = query_hits(scored, eval_set)
            metrics[METHOD_OLD] = mean_metrics([s.metrics for s in scored])
            intervals[METHOD_OLD] = recall_intervals(hits)
            flips = [retrieval_flip_rates(old_old, s) for s in scored]
            splits[split] = SplitResult(
                metrics=metrics,
                intervals=intervals,
                margin_intervals=paired_margin_intervals(hits, query_hits([old_old], eval_set)),
                seed_metrics=[s.metrics for s in scored] if len(seeds) > 1 else [],
                flips=mean_metrics(flips),
            )
        result = self.result(method, fits, splits, data, seeds)
        if self.options.backfill is not None:
            result.backfill = self.backfill(method, fits, data, self.options.backfill)
        return result

    def backfill_set(self, fitted: FittedMethod, split: str, data: ImageTextSet) -> BackfillSet:
        """``data`` as a partial backfill with ``fitted``'s queries sees it."""
        return BackfillSet(
            method_queries=Embeddings(fitted.encode_images(data), fitted.encode_texts(data)),
            old_gallery=self.gallery(self.spec.old, split, data),
            new_embeddings=self.gallery(self.spec.new, split, data),
            caption_image=data.caption_image,
        )

    def backfill(
        self, method: str, fits: list[FittedMethod], data: PairData, fractions: Sequence[float]
    ) -> Backfill | None:
        """Partial-backfill curves of ``method`` on every evaluation split (the mean over its
        seeds' fits), with the calibration and the orders chosen on ``support`` with the first
        fit; None for a method whose queries do not search OLD's gallery (``new``) or that
        does not apply to the pair."""
        usable = [f for f in fits if f.gallery == "old" and f.applicable]
        if not usable:
            self.console.print(f"  {method}: no backfill curve (its queries do not search OLD's "
                               "gallery)", highlight=False)  # fmt: skip
            return None
        fractions = sorted(set(fractions))
        seed = self.options.seed
        support_key = f"support:{data.support.key}"  # the gallery cache's name for it
        support = self.backfill_set(usable[0], support_key, data.support)
        plan = plan_backfill(support, fractions, seed)
        kept = [name for name, keep in plan.kept.items() if keep]
        curves: dict[str, dict[str, list[BackfillPoint]]] = {}
        for split, eval_set in data.eval_sets.items():
            sets = [self.backfill_set(fitted, split, eval_set) for fitted in usable]
            curves[split] = {}
            for order in kept:
                by_fit = [
                    one.curve(one.order(order, seed), fractions, plan.calibration) for one in sets
                ]
                curves[split][order] = [
                    BackfillPoint(
                        fraction=fraction, metrics=mean_metrics([c[i].metrics for c in by_fit])
                    )
                    for i, fraction in enumerate(fractions)
                ]
            line = " ".join(
                f"{100 * p.fraction:g}%: {p.metrics['t2i_r1']:.1f}/{p.metrics['i2t_r1']:.1f}"
                for p in curves[split]["random"]
            )
            self.console.print(f"  {split} backfill R@1 T2I/I2T (random order) {line}",
                               highlight=False)  # fmt: skip
        return Backfill(
            fractions=fractions,
            seed=seed,
            support=data.support.key,
            calibration={
                direction: CalibrationChoice(
                    kind=plan.chosen[direction],
                    scale=plan.calibration[direction].scale,
                    shift=plan.calibration[direction].shift,
                    fitted=[plan.fitted[direction].scale, plan.fitted[direction].shift],
                    support_r1=plan.calibration_r1[direction],
                )
                for direction in plan.chosen
            },
            orders={
                name: OrderChoice(support_r1=plan.order_r1[name], kept=plan.kept[name])
                for name in plan.order_r1
            },
            curves=curves,
        )

    def score_fit(
        self, fitted: FittedMethod, split: str, eval_set: ImageTextSet
    ) -> RetrievalResult:
        """``fitted``'s queries of ``eval_set`` against the gallery it searches."""
        old, new = self.spec.old, self.spec.new
        queries = Embeddings(fitted.encode_images(eval_set), fitted.encode_texts(eval_set))
        gallery_ref = old if fitted.gallery == "old" else new
        return score(queries, self.gallery(gallery_ref, split, eval_set), eval_set)

    def run_chain(self, method: str, data: PairData) -> RunResult:
        """One method on every upgrade i > j of the chain: the compatibility matrix M[i][j]."""
        chain = self.spec.chain
        fits = {
            (i, j): self.fit(method, chain[j], chain[i], data)
            for i in range(len(chain))
            for j in range(i)
        }
        splits = {}
        for split, eval_set in data.eval_sets.items():
            cells: dict[tuple[int, int], RetrievalResult] = {}
            for i, ref in enumerate(chain):
                cells[i, i] = self.reference(ref, split, eval_set)
            for (i, j), fitted in fits.items():
                gallery_ref = chain[j] if fitted.gallery == "old" else chain[i]
                queries = Embeddings(fitted.encode_images(eval_set), fitted.encode_texts(eval_set))
                cells[i, j] = score(queries, self.gallery(gallery_ref, split, eval_set), eval_set)
            last = len(chain) - 1
            metrics = {OLD_OLD: cells[0, 0].metrics, NEW_NEW: cells[last, last].metrics}
            metrics |= {f"v{i}->v{j}": cell.metrics for (i, j), cell in cells.items()}
            if methods.get(method).deploys == METHOD_OLD:
                metrics[METHOD_OLD] = cells[last, 0].metrics
            matrices = {key: compatibility_matrix(cells, key) for key in METRIC_KEYS}
            splits[split] = SplitResult(
                metrics=metrics,
                flips=retrieval_flip_rates(cells[0, 0], cells[last, 0]),
                chain_matrix=ChainMatrix.from_arrays(chain, matrices),
            )
            ac = average_compatibility(matrices["rsum"])
            self.console.print(f"  {split}: average compatibility (rsum) {ac:.2f}")
        return self.result(method, [fits[len(chain) - 1, 0]], splits, data, [self.options.seed])

    def fingerprints(self, data: PairData) -> dict[str, str]:
        """Identities of the models (name and weights hash) and of the evaluated data."""
        chain = self.spec.chain
        names = ["old", *[f"via{i}" for i in range(1, len(chain) - 1)], "new"]
        models = zip(names, chain, strict=True)
        out = {name: self.handles[ref].get().identity for name, ref in models}
        return out | {
            f"data:{split}": eval_set.fingerprint for split, eval_set in data.eval_sets.items()
        }

    def result(
        self,
        method: str,
        fits: list[FittedMethod],
        splits: dict[str, SplitResult],
        data: PairData,
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
        info["data"] = {
            "text_corpus": corpus_summary(data.text_corpus),
            "train_pairs": f"{data.train_pairs.key} ({data.train_pairs.n_images} images)",
            "support": f"{data.support.key} ({data.support.n_images} images)",
        }
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
            info=info,
            training_curves=curves,
            seed=seeds[0],
            seeds=seeds,
            artifacts={
                "embeddings": relative_to_home(self.cache.root),
                "checkpoints": relative_to_home(self.work_dir),
            },
            fingerprints=self.fingerprints(data),
            throughputs=self.throughputs(),
        )

    def throughputs(self) -> list[EmbeddingThroughput]:
        """OLD's and NEW's embedding throughput per side and device, from the manifests of the
        cache entries this run used (their rows and the seconds they took when computed)."""
        names = {
            self.handles[ref].get().identity: which
            for which, ref in (("old", self.spec.old), ("new", self.spec.new))
            if self.handles[ref].loaded
        }
        totals: dict[tuple[str, str, str], list[float]] = {}
        entries = {r.path: r for r in self.stats.records if r.model in names}
        for path, record in entries.items():
            timing = entry_timing(path)
            if timing is None or not timing["rows"]:
                continue
            # An entry computed before manifests recorded devices: this run's device if this
            # run computed it, else unknown.
            device = timing["device"] or (self.options.device if record.computed else None)
            device = str(device or "unrecorded device")
            total = totals.setdefault((names[record.model], record.side, device), [0, 0.0])
            total[0] += timing["rows"]
            total[1] += timing["seconds"] * timing["ranks"]
        return [
            EmbeddingThroughput(
                model=which, side=side, rows=int(rows), device_seconds=round(seconds, 3),
                device=device,
            )  # fmt: skip
            for (which, side, device), (rows, seconds) in sorted(totals.items())
        ]


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


def mean_metrics(values: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over ``values`` (one dict per seed)."""
    return {key: float(np.mean([v[key] for v in values])) for key in values[0]}


def query_hits(scored: Sequence[RetrievalResult], data: ImageTextSet) -> QueryHits:
    """Per-query hits of ``scored`` (one result per seed) on ``data``, for the bootstrap."""
    return QueryHits.from_ranks(
        [s.t2i_ranks for s in scored], [s.i2t_ranks for s in scored], data.caption_image
    )


def score(queries: Embeddings, gallery: Embeddings, data: ImageTextSet) -> RetrievalResult:
    """Exact FAISS retrieval of ``queries`` against ``gallery`` on ``data``'s caption mapping."""
    try:
        return evaluate_retrieval(
            text_queries=np.asarray(queries.texts),
            image_gallery=np.asarray(gallery.images),
            image_queries=np.asarray(queries.images),
            text_gallery=np.asarray(gallery.texts),
            caption_image=data.caption_image,
        )
    except ValueError as error:
        raise XbtError(f"cannot score {data.key}: {error}") from error


def run(options: RunOptions, console: Console) -> list[RunResult]:
    """Run ``options.pair`` end to end; print what was reused and a summary table."""
    from .report.summary import print_summary

    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    runner = Runner(options, console)
    started = time.perf_counter()
    results = runner.run()
    reused = sum(runner.stats.reused.values())
    # under torchrun each rank encodes its share of the rows and reads back all of them
    encoded = sum(distributed.all_gather_object(sum(runner.stats.encoded.values())))
    console.print(
        f"embeddings: {encoded} computed, {reused} reused from the cache "
        f"({runner.cache.root}); total {time.perf_counter() - started:.1f} s",
        markup=False,
    )
    print_summary(results, console)
    return results
