"""What a run measures beside recall, for the upgrade bill (:mod:`xbt_bench.report.cost`):
each method's query latency next to OLD's own, FAISS's index build rates on OLD's gallery, and
the gallery's shape; and what the run says at its end about its embeddings (computed, reused,
throughputs measured on a busy machine). Measured on rank 0 of the run's machine, once per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import distributed
from .embed.throughput import EmbeddingThroughput, measured_throughputs
from .eval.compat import OLD_OLD
from .eval.index_cost import IndexBuildRates, measure_index_build
from .methods import methods
from .methods.base import FittedMethod
from .methods.latency import LATENCY_BATCHES, QueryLatency, measure_query_latency
from .models.stored import StoredModel
from .paths import relative_to_home
from .results import GalleryShape, RunResult

if TYPE_CHECKING:
    from .runner import Runner


class RunMeasurements:
    """The measurements of one :class:`~xbt_bench.runner.Runner`, each taken once and kept."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._latency_inputs: tuple[list[Any], list[str]] | None = None
        self._index_build: IndexBuildRates | None = None

    def query_latency(self, method: str, fitted: FittedMethod) -> QueryLatency | None:
        """``fitted``'s query encoder timed on raw support images and captions, next to OLD's
        own (:func:`~xbt_bench.methods.latency.measure_query_latency`); None off rank 0, and on a
        pair of stored embeddings (no network to time)."""
        runner = self.runner
        stored = any(isinstance(handle.get(), StoredModel) for handle in runner.handles.values())
        if not distributed.is_main() or stored:
            return None
        old = fitted if methods.get(method).deploys == OLD_OLD else runner.fits("old")[0]
        if self._latency_inputs is None:
            support = runner.training.support
            count = min(support.n_images, max(LATENCY_BATCHES))
            images = [support.load_image(i) for i in range(count)]
            self._latency_inputs = (images, list(support.captions[: max(LATENCY_BATCHES)]))
        images, captions = self._latency_inputs
        runner.console.print(f"  timing {method}'s query encoder", highlight=False)
        return measure_query_latency(fitted, old, images, captions, str(runner.options.device))

    def index_build(self) -> IndexBuildRates | None:
        """FAISS's index build rates on OLD's gallery of the primary split (measured once per
        run; :func:`~xbt_bench.eval.index_cost.measure_index_build`); None off rank 0."""
        if not distributed.is_main():
            return None
        if self._index_build is None:
            runner = self.runner
            split, eval_set = next(iter(runner.data.eval_sets.items()))
            gallery = runner.gallery(runner.spec.old, split, eval_set)
            self._index_build = measure_index_build(np.asarray(gallery.images))
        return self._index_build

    def throughputs(self) -> list[EmbeddingThroughput]:
        """The embedding throughputs of OLD and NEW measured so far (from the embedding
        cache's records, :func:`~xbt_bench.embed.throughput.measured_throughputs`)."""
        runner = self.runner
        roles = {
            runner.handles[ref].get().identity: which
            for which, ref in (("old", runner.spec.old), ("new", runner.spec.new))
            if runner.handles[ref].loaded
        }
        return measured_throughputs(runner.stats, roles, str(runner.options.device))

    def gallery_shape(self) -> GalleryShape:
        """The primary split's images and captions, and OLD's and NEW's dimensions."""
        runner = self.runner
        split, eval_set = next(iter(runner.data.eval_sets.items()))
        return GalleryShape(
            split=split,
            images=eval_set.n_images,
            captions=len(eval_set.captions),
            old_dim=runner.handles[runner.spec.old].get().embed_dim,
            new_dim=runner.handles[runner.spec.new].get().embed_dim,
        )


def report_embeddings(runner: Runner, seconds: float, results: list[RunResult]) -> None:
    """Print how many embeddings ``runner`` computed and reused, and the time taken; and, one
    line each, the throughputs measured while other processes kept the machine busy."""
    reused = sum(runner.stats.reused.values())
    # under torchrun each rank encodes its share of the rows and reads back all of them
    encoded = sum(distributed.all_gather_object(sum(runner.stats.encoded.values())))
    runner.console.print(
        f"embeddings: {encoded} computed, {reused} reused from the cache "
        f"({relative_to_home(runner.cache.root)}); total {seconds:.1f} s",
        markup=False,
        highlight=False,
    )
    busy = {(t.model, t.side): t for result in results[-1:] for t in result.throughputs if t.busy}
    for t in busy.values():
        runner.console.print(
            f"[yellow]{t.model.upper()} {t.side} throughput ({t.rows_per_s:,.0f} rows/s) was "
            f"measured while other processes used {100 * (t.other_cpu_share or 0):.0f}% of the "
            "CPUs: `xbt-bench cost` flags it; rerun on a quiet machine for a cost "
            "estimate[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
