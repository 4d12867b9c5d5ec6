"""What a command that fits methods is asked to do (:class:`RunOptions`), what it works on
(:class:`TrainingData`, and :class:`PairData` with the evaluation splits) and the checks made
before any work: the methods and their effective settings with where each came from (defaults,
pair file, tuned, ``--quick``, ``--set``: :func:`method_settings`), a partial backfill's shares,
and which methods a pair of stored embeddings runs. ``run``, ``sweep``, ``backfill`` and
``tune`` share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .data import ImageTextSet, TextCorpus, load_dataset, load_text_corpus, split_data_ref
from .data.registry import dataset_info
from .errors import ConfigError, did_you_mean
from .eval.backfill import interior
from .eval.indexes import INDEX_PARAMS, IndexSpec
from .methods import MethodSpec, methods
from .models.refs import parse_model_ref
from .pairs import PairSpec
from .paths import COMMITTED_RESULTS_DIR, default_results_dir
from .results import TuneResult, tuned_settings

# --quick: fewer training steps and pairs for smoke runs (keys a method's settings lack are
# left out for that method).
QUICK_OVERRIDES: dict[str, Any] = {"proj_steps": 300, "steps": 60, "pairs": 1000}
# --quick also embeds and fits on the first texts of the corpus only (a real caption corpus
# can hold 100k texts: minutes per model on a CPU).
QUICK_CORPUS_TEXTS = 5000


@dataclass
class RunOptions:
    """What ``xbt-bench run`` (and the commands that fit methods like it) was asked to do."""

    pair: str
    methods: Sequence[str] = ()
    dataset: str | None = None
    splits: Sequence[str] = ()
    data_root: Path | None = None
    output_dir: Path | None = None  # default: paths.default_results_dir(quick)
    seed: int = 0
    n_seeds: int = 1  # trained methods run with seeds seed, seed + 1, ...
    device: str = "cpu"
    quick: bool = False
    num_workers: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # Tuned settings (`xbt-bench tune`) are read from this results folder (default: the output
    # folder, then the committed results/) unless use_tuned is False.
    tuned_from: Path | None = None
    use_tuned: bool = True

    def tuned_dirs(self) -> list[Path]:
        """Where tuned settings are looked up, first match wins: ``tuned_from`` when given,
        else the output folder, then the committed ``results/`` (the toy pairs' tuned
        settings, so a run anywhere uses what ``make results`` tuned)."""
        if self.tuned_from is not None:
            return [Path(self.tuned_from)]
        return list(dict.fromkeys([Path(self.output_dir), COMMITTED_RESULTS_DIR]))
    # production indexes scored beside exact search (issue 22, item 3): `run --index KIND`
    indexes: Sequence[IndexSpec] = ()

    def __post_init__(self) -> None:
        given = self.output_dir
        self.output_dir = Path(given) if given is not None else default_results_dir(self.quick)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(
                f"--results-dir {self.output_dir} is a file; give a folder for the results"
            )


@dataclass
class TrainingData:
    """What a pair's methods train on and choose their settings on (never an evaluation
    split)."""

    text_corpus: TextCorpus
    train_pairs: ImageTextSet
    support: ImageTextSet


@dataclass
class PairData(TrainingData):
    """Everything a pair's methods train on and are scored on."""

    eval_sets: dict[str, ImageTextSet] = field(default_factory=dict)


def resolve_methods(names: Sequence[str]) -> list[str]:
    """The canonical method names to run (all but the variants when ``names`` is empty)."""
    if not names:
        from .methods import default_methods

        return default_methods()
    resolved = [methods.canonical(name) for name in names]
    return list(dict.fromkeys(resolved))


def load_training_data(spec: PairSpec, options: RunOptions) -> TrainingData:
    """The text corpus, training pairs and support split of ``spec`` (no evaluation split)."""
    root = options.data_root
    text_corpus = load_text_corpus(spec.data.text, root)
    if options.quick:
        text_corpus = text_corpus.head(QUICK_CORPUS_TEXTS)
    return TrainingData(
        text_corpus=text_corpus,
        train_pairs=load_dataset(*split_data_ref(spec.data.pairs), root),
        support=load_dataset(*split_data_ref(spec.data.support), root),
    )


def load_pair_data(
    spec: PairSpec, options: RunOptions, console: Console, training: TrainingData | None = None
) -> PairData:
    """The evaluation splits and training data (``training``, loaded when not given) a run of
    ``spec`` needs (ConfigError when an evaluation split is a training or support split; a
    warning when it is the text corpus)."""
    root = options.data_root
    dataset = options.dataset or spec.dataset
    if options.splits:
        splits = list(options.splits)
    elif dataset == spec.dataset:
        splits = spec.splits
    else:
        splits = [dataset_info(dataset).default_split]
    eval_sets = {split: load_dataset(dataset, split, root) for split in splits}
    training = training or load_training_data(spec, options)
    overlap = {s.fingerprint for s in eval_sets.values()} & {
        training.train_pairs.fingerprint,
        training.support.fingerprint,
    }
    if overlap:
        raise ConfigError(
            f"pair {spec.name!r}: an evaluation split is also a training or support split; "
            "set data.pairs and data.support to other splits than the ones evaluated"
        )
    for split in eval_sets:
        if spec.data.text == f"{dataset}:{split}":
            console.print(
                f"[yellow]warning: split {escape(repr(split))} is pair {escape(repr(spec.name))}'s "
                f"stage-1 text corpus (data.text = {escape(spec.data.text)}); methods fitted on "
                "its captions score them too well: report a split the pair does not train "
                "on[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
    return PairData(
        text_corpus=training.text_corpus,
        train_pairs=training.train_pairs,
        support=training.support,
        eval_sets=eval_sets,
    )


@dataclass(frozen=True)
class MethodSettings:
    """A method's settings as given (``values``; defaults fill the rest) and where each came
    from (``sources``: pair file, tuned, --quick, --set or what the caller's ``extra`` is), with
    the tune result the tuned ones came from."""

    values: dict[str, Any]
    sources: dict[str, str]
    tuned: TuneResult | None = None
    tuned_file: Path | None = None

    def source_of(self, key: str) -> str:
        """Where setting ``key`` came from (``default`` when nothing set it)."""
        return self.sources.get(key, "default")


def method_settings(
    spec: PairSpec,
    method: MethodSpec,
    options: RunOptions,
    extra: Mapping[str, Any] | None = None,
    extra_source: str = "command",
) -> MethodSettings:
    """``method``'s settings for a run of ``spec``, each layer over the one before (a layer
    applies the keys ``method`` has): the pair file's table of the method it ``extends``, then
    its own; the tuned settings (``xbt-bench tune``) of the method it extends, then its own
    (unless ``options.use_tuned`` is off); ``--quick``; the command line's ``--set``; ``extra``
    (labelled ``extra_source``)."""
    names = [method.extends, method.name] if method.extends else [method.name]
    tuned = [
        found
        for name in names
        if options.use_tuned and (found := first_tuned(options, spec.name, name)) is not None
    ]
    layers = [(spec.method_config(name), "pair file") for name in names]
    layers += [(found.best, "tuned") for found, _ in tuned]
    layers += [(QUICK_OVERRIDES, "--quick")] if options.quick else []
    layers += [(options.overrides, "--set"), (extra or {}, extra_source)]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for layer, source in layers:
        unknown = set(method.unknown_settings(layer))
        for key, value in layer.items():
            if key not in unknown:
                values[key], sources[key] = value, source
    used, where = tuned[-1] if tuned and "tuned" in sources.values() else (None, None)
    return MethodSettings(values, sources, used, where)


def first_tuned(options: RunOptions, pair: str, method: str) -> tuple[TuneResult, Path] | None:
    """The tuned settings of ``method`` on ``pair`` in the first of ``options.tuned_dirs()``
    that has them, and that file."""
    for folder in options.tuned_dirs():
        found = tuned_settings(folder, pair, method)
        if found is not None:
            return found, found.path_in(folder)
    return None


def method_config(
    spec: PairSpec,
    method: MethodSpec,
    options: RunOptions,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The values of :func:`method_settings`."""
    return method_settings(spec, method, options, extra).values


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


def methods_for_pair(spec: PairSpec, names: Sequence[str], console: Console) -> list[str]:
    """``names`` less the methods that run a model's network (``needs_models``) when some model
    of ``spec`` is known only by its stored embeddings (``embeddings:DIR``): each is skipped in
    one line, not failed."""
    stored = [ref for ref in spec.chain if parse_model_ref(ref).kind == "embeddings"]
    kept = []
    for name in names:
        method = methods.get(name)
        if stored and method.needs_models:
            console.print(
                f"[yellow]skipped {name}: it runs the models' networks ({method.trains}); pair "
                f"{spec.name!r} has only their stored embeddings[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
        else:
            kept.append(name)
    return kept


def check_backfill(spec: PairSpec, fractions: Sequence[float]) -> None:
    """Before any work: a partial backfill needs a share strictly between 0 and 1 and an
    upgrade pair (not a chain)."""
    interior(fractions)
    if spec.is_chain:
        raise ConfigError(f"pair {spec.name!r} is a chain; backfill an upgrade pair (OLD -> NEW)")


def index_specs(kinds: Sequence[str], params: Mapping[str, int]) -> list[IndexSpec]:
    """The production indexes ``run --index KIND`` asked for, each with the ``params`` it has
    (``--index-param KEY=VALUE`` applies to every listed kind with that parameter); ConfigError
    for an unknown kind, a parameter no listed kind has, or parameters without an index."""
    if params and not kinds:
        raise ConfigError("--index-param needs an index: add --index ivf (or flat, hnsw, ivfpq)")
    specs = [
        IndexSpec(kind, tuple((k, v) for k, v in params.items() if k in INDEX_PARAMS.get(kind, ())))
        for kind in dict.fromkeys(kinds)
    ]
    for key in params:
        if not any(key in INDEX_PARAMS[spec.kind] for spec in specs):
            known = sorted({name for spec in specs for name in INDEX_PARAMS[spec.kind]})
            hint = did_you_mean(key, known, "parameters of these indexes")
            raise ConfigError(
                f"--index-param {key}: no listed index ({', '.join(kinds)}) has it; {hint}"
            )
    return specs


def check_indexes(spec: PairSpec, indexes: Sequence[IndexSpec]) -> None:
    """Before any work: production indexes are scored on an upgrade pair, not a chain."""
    if indexes and spec.is_chain:
        raise ConfigError(
            f"pair {spec.name!r} is a chain; --index scores an upgrade pair (OLD -> NEW)"
        )
