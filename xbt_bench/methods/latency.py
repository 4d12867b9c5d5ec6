"""Query-time cost, measured: how long a fitted method's query encoder takes on the run's device.

A query is served from raw input: a decoded image is preprocessed, a caption tokenised, and
every encoder of the method's :class:`~xbt_bench.methods.base.QueryPath` runs on it (OLD's too,
for a method that needs OLD at query time), then the method's map, ψ or interpolation. That
whole path is timed per text query and per image query, at batch 1 (one user's query) and at
batch 256 (a serving batch), after a warm-up, as the median of several repeats. OLD's own query
encoder is timed on the same inputs in the same loop, alternately, so the added latency of a
method is a difference measured under the same load.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, computed_field

from ..record import Record
from .base import FittedMethod, Side, Which

LATENCY_BATCHES = (1, 256)
WARMUP = 1
# Repeats per batch size: single queries are quick and noisy, full batches slow and steady.
# On a busy machine (threads waiting on each other) any timing is noise: measure on a quiet one.
REPEATS = {1: 9, 256: 3}


class LatencyPoint(Record):
    """One side and batch size: the median seconds of one batch through the method's query
    path, and through OLD's own query encoder on the same inputs."""

    side: Literal["image", "text"]
    batch: int = Field(gt=0)
    seconds: float = Field(gt=0, description="median seconds of one batch, the method's path")
    old_seconds: float = Field(gt=0, description="median seconds of one batch, OLD's own path")
    repeats: int = Field(gt=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ms_per_query(self) -> float:
        """Milliseconds per query (the batch's time over its size)."""
        return 1000 * self.seconds / self.batch

    @computed_field  # type: ignore[prop-decorator]
    @property
    def queries_per_s(self) -> float:
        """Queries per device-second at this batch size."""
        return self.batch / self.seconds

    @computed_field  # type: ignore[prop-decorator]
    @property
    def added_ms_per_query(self) -> float:
        """Milliseconds per query over OLD's own query encoder (negative: faster than OLD)."""
        return 1000 * (self.seconds - self.old_seconds) / self.batch


class QueryLatency(Record):
    """A method's query encoder timed on the run's device (module docstring)."""

    device: str
    threads: int = Field(gt=0, description="torch's CPU threads during the measurement")
    encoders: list[Literal["old", "new"]] = Field(
        description="the models a query runs through, by whose compute they cost (NEW with "
        "adapters or fine-tuned weights counts as new)"
    )
    warmup: int = Field(ge=0)
    points: list[LatencyPoint] = Field(min_length=1)

    def point(self, side: Side, batch: int) -> LatencyPoint:
        """The point of ``side`` at ``batch``; KeyError when it was not measured."""
        for point in self.points:
            if (point.side, point.batch) == (side, batch):
                return point
        raise KeyError(f"no {side} latency at batch {batch}")


def _timed(fitted: FittedMethod, side: Side, inputs: Sequence, device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fitted.encode_inputs(side, inputs)  # returns host arrays: the device work has finished
    return time.perf_counter() - started


def measure_query_latency(
    fitted: FittedMethod,
    old: FittedMethod,
    images: Sequence,
    captions: Sequence[str],
    device: str,
    batches: Sequence[int] = LATENCY_BATCHES,
    warmup: int = WARMUP,
    repeats: dict[int, int] | None = None,
) -> QueryLatency:
    """``fitted``'s query path timed on raw ``images`` (decoded) and ``captions``, cycled to
    fill each batch of ``batches``, next to ``old`` (OLD's own query encoder; pass ``fitted``
    itself for OLD), alternately: ``warmup`` untimed calls each, then the median of
    ``repeats[batch]`` (default :data:`REPEATS`, else 3)."""
    import torch

    repeats = REPEATS if repeats is None else repeats
    points = []
    for side, pool in (("text", captions), ("image", images)):
        for batch in batches:
            inputs = [pool[i % len(pool)] for i in range(batch)]
            for _ in range(warmup):
                fitted.encode_inputs(side, inputs)
                if old is not fitted:
                    old.encode_inputs(side, inputs)
            times, old_times = [], []
            for _ in range(repeats.get(batch, 3)):
                times.append(_timed(fitted, side, inputs, device))
                old_times.append(
                    times[-1] if old is fitted else _timed(old, side, inputs, device)
                )
            points.append(
                LatencyPoint(
                    side=side,  # type: ignore[arg-type]
                    batch=batch,
                    seconds=statistics.median(times),
                    old_seconds=statistics.median(old_times),
                    repeats=len(times),
                )
            )
    encoders: list[Which] = list(fitted.query.encoders)
    return QueryLatency(
        device=device,
        threads=torch.get_num_threads(),
        encoders=encoders,
        warmup=warmup,
        points=points,
    )
