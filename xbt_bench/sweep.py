"""``xbt-bench sweep``: how many image–text pairs each stage-2 method needs.

The paper's claim is that text-only pretraining (stage 1) cuts the pairs needed. For each
method the sweep runs the pair as ``xbt-bench run`` does (all pairs), then refits it on the
first ``n`` training images for each requested count and scores its method→old retrieval on
the first evaluation split; 0 pairs is stage 1 alone. The points are stored in the method's
result file (``RunResult.sweep``), which the ``plot`` command draws. Methods registered as
``sweepable`` (they train on image–text pairs) can be swept; by default the non-variants.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from . import distributed
from .errors import XbtError
from .eval import Embeddings
from .eval.compat import METHOD_OLD
from .methods import methods
from .report.result import RunResult, SweepPoint
from .runner import Runner, RunOptions, load_pair_data, score

DEFAULT_COUNTS = (0, 500, 2000, 8000)


def sweepable_methods(variants: bool = False) -> list[str]:
    """Registered methods that train on image–text pairs (variants only if asked)."""
    return [
        name
        for name in methods.names()
        if methods.get(name).sweepable and (variants or not methods.get(name).variant)
    ]


def onto_seeded_run(result: RunResult, results_dir: Path) -> RunResult:
    """The sweep points of the one-seed ``result`` recorded in the result file it would replace
    when that file is a several-seed run of the same method, settings and first seed (whose
    first seed is this run): the file keeps its seeds' mean, spread and intervals (its sweep's
    full-pairs point is that first seed's fit); ``result`` otherwise."""
    path = result.path_in(results_dir)
    try:
        previous = RunResult.from_json(path) if path.exists() else None
    except XbtError:
        return result
    if (
        previous is None
        or len(previous.seeds) < 2
        or previous.seeds[0] != result.seed
        or previous.config != result.config
    ):
        return result
    info = {**previous.info, "sweep_wall_time_s": result.info["sweep_wall_time_s"]}
    return previous.model_copy(update={"sweep": result.sweep, "info": info})


def run_sweep(options: RunOptions, counts: Sequence[int], console: Console) -> list[RunResult]:
    """Run ``options.methods`` (default: the sweepable non-variants) on all pairs and on the first
    ``n`` pairs for each of ``counts``; write each method's result with its sweep points."""
    # One seed: each point is one fit, the full-pairs point included.
    options = replace(options, methods=list(options.methods) or sweepable_methods(), n_seeds=1)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    if any(n < 0 for n in counts) or not counts:
        raise XbtError(f"--pairs needs counts >= 0, e.g. 0,500,2000,8000; got {list(counts)}")
    runner = Runner(options, console)
    unsupported = [m for m in runner.method_names if not methods.get(m).sweepable]
    if unsupported:
        raise XbtError(
            f"method(s) {', '.join(unsupported)} do not train on image-text pairs; a sweep "
            f"runs {', '.join(sweepable_methods(variants=True))}"
        )
    if runner.spec.is_chain:
        raise XbtError(f"pair {runner.spec.name!r} is a chain; sweep an upgrade pair instead")
    data = load_pair_data(runner.spec, options, console)
    split, eval_set = next(iter(data.eval_sets.items()))
    available = data.train_pairs.n_images
    results = []
    for method in runner.method_names:
        started = time.perf_counter()
        result = runner.run_pair(method, data)
        # The result's metrics are the full run's, and so is its wall time.
        result.cost.wall_time_s = round(time.perf_counter() - started, 3)
        full = int(result.info.get("stage2", {}).get("pair_images", available))
        points = {full: result.splits[split].metrics[METHOD_OLD]}
        for n in sorted({min(n, available) for n in counts} - {full}):
            runner.options = replace(options, overrides={**options.overrides, "pairs": n})
            fitted = runner.fit(method, runner.spec.old, runner.spec.new, data)
            queries = Embeddings(fitted.encode_images(eval_set), fitted.encode_texts(eval_set))
            gallery = runner.gallery(runner.spec.old, split, eval_set)
            points[n] = score(queries, gallery, eval_set).metrics
            console.print(f"  {method} with {n} pairs: {points[n]['i2t_r1']:.1f} I2T R@1")
        runner.options = options
        sweep = [SweepPoint(n_pairs=n, metrics=points[n]) for n in sorted(points)]
        sweep_time = {"sweep_wall_time_s": round(time.perf_counter() - started, 3)}
        result = result.model_copy(update={"sweep": sweep, "info": {**result.info, **sweep_time}})
        result = onto_seeded_run(result, options.output_dir)
        if distributed.is_main():  # under torchrun, one rank writes
            console.print(f"  wrote {result.save(options.output_dir)}", markup=False)
        results.append(result)
    distributed.barrier()
    return results
