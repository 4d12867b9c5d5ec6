"""``xbt-bench sweep``: how many image–text pairs each stage-2 method needs.

The paper's claim is that text-only pretraining (stage 1) cuts the pairs needed. For each
method the sweep fits it as ``xbt-bench run`` does (all pairs, the run's first seed) and again
on the first ``n`` training images for each requested count (0 pairs is stage 1 alone), and
scores each fit's method→old retrieval on the first evaluation split. Each method's points go
into its own file, ``<method>.sweep.json`` (:class:`SweepResult`), which the ``plot`` command
draws; the run's result file is not touched. Methods registered as ``sweepable`` (they train on
image–text pairs) can be swept; by default the non-variants.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from rich.console import Console

from . import distributed
from .errors import XbtError
from .methods import methods
from .methods.base import FittedMethod
from .options import RunOptions
from .results import SweepResult
from .runner import Runner
from .scoring import SweepPoint, score

DEFAULT_COUNTS = (0, 500, 2000, 8000)


def sweepable_methods(variants: bool = False) -> list[str]:
    """Registered methods that train on image–text pairs (variants only if asked)."""
    return [
        name
        for name in methods.names()
        if methods.get(name).sweepable and (variants or not methods.get(name).variant)
    ]


def run_sweep(options: RunOptions, counts: Sequence[int], console: Console) -> list[SweepResult]:
    """Fit ``options.methods`` (default: the sweepable non-variants) on all pairs and on the
    first ``n`` pairs for each of ``counts``; write each method's sweep file."""
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
    spec = runner.spec
    if spec.is_chain:
        raise XbtError(f"pair {spec.name!r} is a chain; sweep an upgrade pair instead")
    split, eval_set = next(iter(runner.data.eval_sets.items()))
    available = runner.data.train_pairs.n_images
    references = runner.references(split, eval_set, spec.old, spec.new)

    def method_old(fitted: FittedMethod) -> dict[str, float]:
        queries = runner.queries(fitted, eval_set)
        gallery = runner.gallery(spec.old, split, eval_set)
        return score(queries, gallery, eval_set.caption_image, eval_set.key).metrics

    results = []
    for method in runner.method_names:
        started = time.perf_counter()
        full = runner.fits(method)[0]
        points = {full.cost.image_text_pairs: method_old(full)}
        for n in sorted({min(n, available) for n in counts} - set(points)):
            points[n] = method_old(runner.fit(method, spec.old, spec.new, settings={"pairs": n}))
            console.print(f"  {method} with {n} pairs: {points[n]['i2t_r1']:.1f} I2T R@1")
        result = SweepResult(
            pair=spec.name,
            old=spec.old,
            new=spec.new,
            method=method,
            dataset=runner.dataset,
            config={k: v for k, v in full.config.items() if k != "pairs"},
            split=split,
            seed=options.seed,
            points=[SweepPoint(n_pairs=n, metrics=points[n]) for n in sorted(points)],
            references=references.metrics,
            wall_time_s=round(time.perf_counter() - started, 3),
            fingerprints=runner.fingerprints(),
            quick=options.quick,
        )
        if distributed.is_main():  # under torchrun, one rank writes
            console.print(f"  wrote {result.save(options.output_dir)}", markup=False)
        results.append(result)
    distributed.barrier()
    return results
