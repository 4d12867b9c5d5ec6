"""``xbt-bench backfill``: partial-backfill curves, one :class:`BackfillResult` file per method.

A share of the gallery's items (an image with its captions) is re-embedded with NEW; a query
searches the OLD part with the method's query encoder and the NEW part with NEW's, and the two
lists are merged by score (:mod:`xbt_bench.eval.backfill`). The methods are fitted as ``run``
fits them (same caches and checkpoints, the same :class:`~xbt_bench.runner.Runner`), and the
curves are scored by :func:`~xbt_bench.scoring.backfill_curves`: calibration and orders chosen
on ``support``, curves on every evaluation split, the mean over the method's seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from . import distributed
from .options import RunOptions, check_backfill
from .results import BackfillResult
from .runner import Runner
from .scoring import backfill_curves


def method_curves(runner: Runner, method: str, fractions: Sequence[float]) -> BackfillResult | None:
    """``method``'s partial-backfill curves on every evaluation split of ``runner``'s pair (its
    fits' mean), with the calibration and orders chosen on support with its first fit; None
    for a method whose queries do not search OLD's gallery (``new``) or that does not apply."""
    usable = [f for f in runner.fits(method) if f.gallery == "old" and f.applicable]
    if not usable:
        runner.console.print(f"  {method}: no backfill curve (its queries do not search OLD's "
                             "gallery)", highlight=False)  # fmt: skip
        return None
    data, spec, seed = runner.data, runner.spec, runner.options.seed
    # the support split under its own name in the gallery cache
    support = runner.backfill_set(usable[0], f"support:{data.support.key}", data.support)
    splits = {
        split: [runner.backfill_set(fitted, split, eval_set) for fitted in usable]
        for split, eval_set in data.eval_sets.items()
    }
    curves = backfill_curves(support, splits, fractions, seed, data.support.key)
    for split, by_order in curves.curves.items():
        line = " ".join(
            f"{100 * p.fraction:g}%: {p.metrics['t2i_r1']:.1f}/{p.metrics['i2t_r1']:.1f}"
            for p in by_order["random"]
        )
        runner.console.print(f"  {split} backfill R@1 T2I/I2T (random order) {line}",
                             highlight=False)  # fmt: skip
    return BackfillResult(
        pair=spec.name,
        old=spec.old,
        new=spec.new,
        method=method,
        dataset=runner.dataset,
        config=usable[0].config,
        seeds=runner.seeds(method),
        backfill=curves,
        references={
            split: runner.references(split, eval_set, spec.old, spec.new).metrics
            for split, eval_set in data.eval_sets.items()
        },
        fingerprints=runner.fingerprints(),
        quick=runner.options.quick,
    )


def run_backfill(
    options: RunOptions,
    fractions: Sequence[float],
    console: Console,
    runner: Runner | None = None,
) -> list[BackfillResult]:
    """Write the partial-backfill curves of ``options.methods`` (default: all but variants) at
    ``fractions``; ``runner`` continues a run (its fits are reused) instead of a new one."""
    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    runner = runner or Runner(options, console)
    check_backfill(runner.spec, fractions)
    results = []
    for method in runner.method_names:
        result = method_curves(runner, method, fractions)
        if result is None:
            continue
        if distributed.is_main():  # under torchrun, one rank writes
            console.print(f"  wrote {result.save(options.output_dir)}", markup=False)
        results.append(result)
    distributed.barrier()
    return results
