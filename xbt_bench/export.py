"""``xbt-bench export``: the query encoder a run result scored, as one file a serving system
loads without xbt-bench's training code (:mod:`xbt_bench.serving`).

The method is fitted again through the :class:`~xbt_bench.runner.Runner` with the result's
settings and the chosen seed: a closed form is recomputed from the cached embeddings, a trained
method reloads its final checkpoints (cached by a hash of what it depends on), so the file is the
encoder the result scored. A refit whose models, data, settings or trained weights differ from
the result's is refused in one line. The manifest carries the result's provenance, settings,
support scores and test metrics (of the chosen seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import ConfigError
from .eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from .options import RunOptions
from .results import RunResult
from .runner import Runner
from .serving import write_query_encoder


def _seed_metrics(result: RunResult, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per evaluation split: old->old, new->new and the ``seed``'s method->old."""
    seeds = result.seeds or [result.seed]
    out = {}
    for name, split in result.splits.items():
        method = split.seed_metrics[seeds.index(seed)] if split.seed_metrics else None
        out[name] = {
            OLD_OLD: split.metrics[OLD_OLD],
            NEW_NEW: split.metrics[NEW_NEW],
            METHOD_OLD: method or split.metrics[METHOD_OLD],
        }
    return out


def _check_refit(
    result: RunResult,
    seed: int,
    fitted_config: dict[str, Any],
    fingerprints: dict[str, str],
    identity: str | None,
) -> None:
    """ConfigError unless the refit is the result's encoder: same models and data, same
    settings, and (first seed of a trained method) the same trained weights."""
    changed = sorted(k for k, v in result.fingerprints.items() if fingerprints.get(k) != v)
    settings = {k: v for k, v in result.config.items() if k != "quick"}
    if settings != fitted_config:
        changed.append("settings")
    recorded = result.info.get("encoder_identity")
    seeds = result.seeds or [result.seed]
    if recorded is not None and seed == seeds[0] and identity != recorded:
        changed.append("trained weights")
    if changed:
        raise ConfigError(
            f"{result.method} on {result.pair} fits differently now than when its result was "
            f"written ({', '.join(changed)} changed); rerun `xbt-bench run --pair {result.pair} "
            f"--method {result.method}` and export again"
        )


def export_query_encoder(
    result: RunResult,
    output: Path,
    console: Console,
    *,
    seed: int | None = None,
    device: str = "cpu",
    data_root: Path | None = None,
) -> Path:
    """Write the query encoder of ``result`` (its ``seed``, default the result's first) to
    ``output`` (module docstring); returns the path. ConfigError for a reference method, a
    method that declares no exportable encoder, a seed the result lacks or a changed refit."""
    seeds = result.seeds or [result.seed]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ConfigError(
            f"the {result.method} result of {result.pair} ran seeds {seeds}, not {seed}; "
            f"pass --seed with one of them"
        )
    if result.setting != METHOD_OLD or not result.applicable:
        raise ConfigError(
            f"{result.method} has no query encoder of its own to export (its queries are "
            f"{'OLD' if result.setting == OLD_OLD else 'NEW'}'s, or it does not apply); export "
            "a method that maps NEW's queries into OLD's space"
        )
    options = RunOptions(
        pair=result.pair,
        methods=[result.method],
        dataset=result.dataset,
        splits=list(result.splits),
        data_root=data_root,
        seed=seed,
        device=device,
    )
    runner = Runner(options, console)
    if runner.spec.is_chain:
        raise ConfigError(f"pair {result.pair!r} is a chain; export a method of an upgrade pair")
    fitted = runner.fit(result.method, runner.spec.old, runner.spec.new, seed, result.config)
    if fitted.export is None:
        raise ConfigError(
            f"method {result.method!r} declares no exportable query encoder "
            "(FittedMethod.export); export another method"
        )
    _check_refit(
        result, seed, fitted.config, runner.fingerprints(), fitted.info.get("encoder_identity")
    )
    manifest = {
        "pair": result.pair,
        "method": result.method,
        "seed": seed,
        "dataset": result.dataset,
        "old": runner.spec.old,
        "new": runner.spec.new,
        "fingerprints": result.fingerprints,
        "dim": fitted.dim,
        "needs_old_at_query": fitted.needs_old_at_query,
        "settings": fitted.config,
        "report": {key: value.value for key, value in result.report.items()},
        "support": {
            "split": runner.data.support.key,
            "scores": fitted.info.get("support_score_by_alpha", {}),
        },
        "metrics": _seed_metrics(result, seed),
        "result": {
            "date": result.date.isoformat(),
            "git_revision": result.git_revision,
            "versions": result.versions,
        },
    }
    return write_query_encoder(output, fitted.export, manifest)
