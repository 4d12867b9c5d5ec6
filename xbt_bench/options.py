"""What a command that fits methods is asked to do (:class:`RunOptions`), what it works on
(:class:`PairData`: the pair's evaluation splits and training data) and the checks made before
any work: the methods and their effective settings (defaults, pair file, ``--quick``, ``--set``),
and a partial backfill's shares. ``run``, ``sweep``, ``backfill`` and ``tune`` share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .data import ImageTextSet, TextCorpus, load_dataset, load_text_corpus, split_data_ref
from .data.registry import dataset_info
from .errors import ConfigError, did_you_mean
from .eval.backfill import interior
from .methods import MethodSpec, methods
from .pairs import PairSpec
from .paths import default_results_dir

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

    def __post_init__(self) -> None:
        given = self.output_dir
        self.output_dir = Path(given) if given is not None else default_results_dir(self.quick)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(
                f"--results-dir {self.output_dir} is a file; give a folder for the results"
            )


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
    if options.quick:
        text_corpus = text_corpus.head(QUICK_CORPUS_TEXTS)
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
                f"[yellow]warning: split {split!r} is pair {spec.name!r}'s stage-1 text corpus "
                f"(data.text = {spec.data.text}); methods fitted on its captions score them "
                "too well: report a split the pair does not train on[/yellow]",
                highlight=False,
                soft_wrap=True,
            )
    return PairData(eval_sets, text_corpus, train_pairs, support)


def method_config(
    spec: PairSpec,
    method: MethodSpec,
    options: RunOptions,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pair-file settings for ``method`` (over those for the method it ``extends``), updated by
    --quick, the command line's ``--set`` and ``extra`` (each applied to the methods that have
    that setting)."""
    config: dict[str, Any] = {}
    layers = [spec.method_config(method.extends)] if method.extends else []
    layers += [spec.method_config(method.name)]
    layers += [QUICK_OVERRIDES] if options.quick else []
    for layer in [*layers, options.overrides, extra or {}]:
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


def check_backfill(spec: PairSpec, fractions: Sequence[float]) -> None:
    """Before any work: a partial backfill needs a share strictly between 0 and 1 and an
    upgrade pair (not a chain)."""
    interior(fractions)
    if spec.is_chain:
        raise ConfigError(f"pair {spec.name!r} is a chain; backfill an upgrade pair (OLD -> NEW)")
