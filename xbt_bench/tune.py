"""``xbt-bench tune``: search a trained method's settings on a pair's ``support`` split.

Every trained method declares its search space in its registration
(``register_method(search=...)``, :mod:`xbt_bench.methods.search`). The tuner runs an Optuna
study per (pair, method): trial 0 is the method's configured settings (defaults, the pair file,
``--set``), then the space's declared starts (the research log's best stage-2 recipe, tried by
every stage-2 method), then trials drawn by a seeded TPE sampler (reseeded per trial, so a
resumed study draws what an uninterrupted one would). Each trial fits the method as ``run``
does (the same runner, caches and checkpoints) with one seed and scores its queries against
OLD's gallery of the **support** split only: no evaluation split is loaded or embedded. A
budget caps every method alike: the number of trials and the training steps of each (stage 2
and stage 1).

The study is stored under ``$XBT_BENCH_HOME/tune/<pair>/<method>.db`` (SQLite): an interrupted
tune resumes where it stopped, and two methods never share a study. The best settings and the
trial table go into ``<results>/<pair>/tuned/<method>.json`` (:class:`TuneResult`), which
``run`` uses when present.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from rich.console import Console

from . import distributed
from .data.base import fingerprint_of
from .errors import ConfigError, XbtError
from .eval.retrieval import METRIC_KEYS, RECALL_KEYS
from .methods import methods
from .methods.search import Choice, Dimension, FloatRange, SearchSpace
from .options import RunOptions
from .paths import cache_dir, relative_to_home
from .results import Budget, Trial, TuneResult, path_component
from .runner import Runner
from .scoring import score

OBJECTIVES = ("rsum", "cells", *METRIC_KEYS[:-1])


def tunable_methods(variants: bool = False) -> list[str]:
    """Registered methods with a search space (variants only if asked)."""
    return [
        name
        for name in methods.names()
        if methods.get(name).search is not None and (variants or not methods.get(name).variant)
    ]


def objective_value(metrics: Mapping[str, float], old_old: Mapping[str, float], name: str) -> float:
    """The objective ``name`` of support ``metrics`` (:data:`OBJECTIVES`): a metric, or the
    number of recall cells above old→old plus rsum / 1000 to break ties."""
    if name == "cells":
        return sum(metrics[k] > old_old[k] for k in RECALL_KEYS) + metrics["rsum"] / 1000
    return float(metrics[name])


def _suggest(trial: Any, name: str, dim: Dimension) -> Any:
    if isinstance(dim, Choice):
        return trial.suggest_categorical(name, dim.options)
    if isinstance(dim, FloatRange):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return trial.suggest_int(name, dim.low, dim.high, log=dim.log)


def _sampler(seed: int, number: int, trials: int) -> Any:
    """A TPE sampler for trial ``number`` of a seeded study: reseeded per trial, so a resumed
    study draws what an uninterrupted one would; the first third of the trials are random."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed * 100_003 + number,
            n_startup_trials=max(3, trials // 3),
            multivariate=True,
        )


def tune_method(
    runner: Runner, method: str, budget: Budget, objective: str, seed: int
) -> TuneResult:
    """Run (or resume) the study of ``method`` on the runner's pair (module docstring) and
    return its result: the best trial's searched settings and every trial."""
    import optuna

    spec, pair = methods.get(method), runner.spec
    if spec.search is None:
        raise XbtError(
            f"method {method!r} has no search space to tune; tunable methods: "
            f"{', '.join(tunable_methods(variants=True))}"
        )
    configured = spec.parse_settings(runner.settings(method).values).model_dump()
    caps = {key: cap for key, cap in budget.caps().items() if key in configured}
    fixed = {key: min(configured[key], cap) for key, cap in caps.items()}
    start = {**configured, **fixed}
    space = spec.search.capped(caps).including(start)
    first = {name: start[name] for name in space.names() if start.get(name) is not None}
    support = runner.training.support
    support_name = f"support:{support.key}"  # the support split in the gallery cache
    old_old = runner.references(support_name, support, pair.old, pair.new).old_old.metrics
    gallery = runner.gallery(pair.old, support_name, support)
    # What the trials depend on (the number of trials aside: a larger budget continues a study).
    key = fingerprint_of([sorted(start.items()), space.describe(), sorted(caps.items()), seed])
    study_name = f"{pair.name}/{method}/{objective}/seed{seed}/{key[:12]}"
    storage = cache_dir("tune", path_component(pair.name)) / f"{path_component(method)}.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=f"sqlite:///{storage}",
        direction="maximize",
        load_if_exists=True,
    )
    if not study.trials:  # configured settings first, then the space's starts (no repeats)
        tried = [first]
        for start in space.starts:
            point = {**first, **start}
            if point not in tried:
                tried.append(point)
        for point in tried:
            study.enqueue_trial(point)

    def evaluate(trial: Any) -> float:
        params = {name: _suggest(trial, name, dim) for name, dim in space.dimensions.items()}
        started = time.perf_counter()
        fitted = runner.fit(method, pair.old, pair.new, seed, settings={**fixed, **params})
        queries = runner.queries(fitted, support)
        metrics = score(queries, gallery, support.caption_image, support.key).metrics
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("cells_held", sum(metrics[k] > old_old[k] for k in RECALL_KEYS))
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        value = objective_value(metrics, old_old, objective)
        runner.console.print(
            f"  {method} trial {trial.number}: support {objective} {value:.2f} "
            f"(T2I/I2T R@1 {metrics['t2i_r1']:.1f}/{metrics['i2t_r1']:.1f})",
            highlight=False,
        )
        return value

    def complete() -> int:
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    done = complete()
    if done:
        runner.console.print(f"{method}: resuming study {study_name} at {done} trials")
    while complete() < budget.trials and len(study.trials) < 2 * budget.trials:
        study.sampler = _sampler(seed, len(study.trials), budget.trials)
        study.optimize(evaluate, n_trials=1, catch=(XbtError,))
    if not complete():
        raise XbtError(f"every trial of {method!r} failed; see the messages above")
    return _result(runner, method, study, space, budget, objective, seed, storage)


def _result(
    runner: Runner,
    method: str,
    study: Any,
    space: SearchSpace,
    budget: Budget,
    objective: str,
    seed: int,
    storage: Any,
) -> TuneResult:
    import optuna

    trials = [
        Trial(
            number=t.number,
            params=t.params,
            value=t.value,
            metrics=t.user_attrs.get("metrics", {}),
            cells_held=t.user_attrs.get("cells_held"),
            seconds=t.user_attrs.get("seconds", 0.0),
            state="complete" if t.state == optuna.trial.TrialState.COMPLETE else "failed",
            note=str(t.system_attrs.get("fail_reason", ""))[:300],
        )
        for t in study.trials
        if t.state != optuna.trial.TrialState.RUNNING
    ]
    best = study.best_trial
    first = next(t for t in trials if t.number == 0)
    pair, support = runner.spec, runner.training.support
    return TuneResult(
        pair=pair.name,
        old=pair.old,
        new=pair.new,
        method=method,
        support=support.key,
        objective=objective,
        study=study.study_name,
        storage=relative_to_home(storage),
        sampler=f"Optuna {optuna.__version__} TPE (multivariate, seed {seed}, reseeded per trial)",
        seed=seed,
        budget=budget,
        searched=space.names(),
        space=dict(space.describe()),
        best=best.params,
        best_value=best.value,
        best_trial=best.number,
        configured_value=first.value,
        trials=trials,
        fingerprints={
            "old": runner.handles[pair.old].get().identity,
            "new": runner.handles[pair.new].get().identity,
            "data:support": support.fingerprint,
        },
    )


def run_tune(
    options: RunOptions, budget: Budget, objective: str, console: Console
) -> list[TuneResult]:
    """Tune ``options.methods`` (default: every tunable non-variant method) on the pair's support
    split with ``budget`` each, seeded by ``options.seed``; write each method's tuned settings."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    options = replace(
        options, methods=list(options.methods) or tunable_methods(), n_seeds=1, use_tuned=False
    )
    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    runner = Runner(options, console)
    if runner.spec.is_chain:
        raise XbtError(f"pair {runner.spec.name!r} is a chain; tune an upgrade pair instead")
    untunable = [m for m in runner.method_names if methods.get(m).search is None]
    if untunable:
        raise XbtError(
            f"method(s) {', '.join(untunable)} have no search space (closed forms need no "
            f"tuning); tunable: {', '.join(tunable_methods(variants=True))}"
        )
    results = []
    for method in runner.method_names:
        console.print(f"[bold]tune {method}[/bold]: {budget.label()}, support {objective}")
        result = tune_method(runner, method, budget, objective, options.seed)
        best = ", ".join(f"{k}={v!r}" for k, v in result.best.items())
        console.print(
            f"  best: trial {result.best_trial}, support {objective} {result.best_value:.2f} "
            f"(configured settings: {result.configured_value:.2f}); {best}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if distributed.is_main():
            console.print(f"  wrote {result.save(options.output_dir)}", markup=False)
        results.append(result)
    distributed.barrier()
    return results
