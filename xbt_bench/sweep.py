"""``xbt-bench sweep``: how many image–text pairs each stage-2 method needs (issue 5, item 7).

The paper's claim is that text-only pretraining (stage 1) cuts the pairs needed. For each
method the sweep runs the pair as ``xbt-bench run`` does (all pairs), then refits it on the
first ``n`` training images for each requested count and scores its method→old retrieval on
the first evaluation split; 0 pairs is stage 1 alone (``xbt-proj``). The points are stored in
the method's result file (``RunResult.sweep``), which the ``plot`` command draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rich.console import Console

from . import distributed
from .errors import XbtError
from .eval import Embeddings
from .report.result import METHOD_OLD, RunResult, SweepPoint
from .runner import Runner, RunOptions, load_pair_data, score

DEFAULT_COUNTS = (0, 500, 2000, 8000)
SWEEP_METHODS = ("xbt", "xbt-gallery", "distill", "finetune")
DEFAULT_SWEEP_METHODS = ("xbt", "distill", "finetune")


def run_sweep(options: RunOptions, counts: Sequence[int], console: Console) -> list[RunResult]:
    """Run ``options.methods`` (default: xbt, distill, finetune) on all pairs and on the first
    ``n`` pairs for each of ``counts``; write each method's result with its sweep points."""
    options = replace(options, methods=list(options.methods) or list(DEFAULT_SWEEP_METHODS))
    if not distributed.is_main():  # under torchrun, rank 0 reports
        console = Console(quiet=True)
    if any(n < 0 for n in counts) or not counts:
        raise XbtError(f"--pairs needs counts >= 0, e.g. 0,500,2000,8000; got {list(counts)}")
    runner = Runner(options, console)
    unsupported = [m for m in runner.method_names if m not in SWEEP_METHODS]
    if unsupported:
        raise XbtError(
            f"method(s) {', '.join(unsupported)} do not train on image-text pairs; a sweep "
            f"runs {', '.join(SWEEP_METHODS)}"
        )
    if runner.spec.is_chain:
        raise XbtError(f"pair {runner.spec.name!r} is a chain; sweep an upgrade pair instead")
    data = load_pair_data(runner.spec, options)
    split, eval_set = next(iter(data.eval_sets.items()))
    available = data.train_pairs.n_images
    results = []
    for method in runner.method_names:
        result = runner.run_pair(method, data)
        full = int(result.info.get("stage2", {}).get("pair_images", available))
        points = {full: result.splits[split].metrics[METHOD_OLD]}
        for n in sorted({min(n, available) for n in counts} - {full}):
            runner.options = replace(options, overrides={**options.overrides, "pairs": n})
            fitted = runner.fit(method if n > 0 else "xbt-proj", runner.spec.old,
                                runner.spec.new, data)  # fmt: skip
            queries = Embeddings(fitted.encode_images(eval_set), fitted.encode_texts(eval_set))
            gallery = runner.gallery(runner.spec.old, split, eval_set)
            points[n] = score(queries, gallery, eval_set).metrics
            console.print(f"  {method} with {n} pairs: {points[n]['i2t_r1']:.1f} I2T R@1")
        runner.options = options
        sweep = [SweepPoint(n_pairs=n, metrics=points[n]) for n in sorted(points)]
        result = result.model_copy(update={"sweep": sweep})
        if distributed.is_main():  # under torchrun, one rank writes
            console.print(f"  wrote {result.save(options.output_dir)}")
        results.append(result)
    distributed.barrier()
    return results
