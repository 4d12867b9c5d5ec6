"""How fast models embedded: throughputs read from the manifests of the cache entries a run
used (each entry records its rows, seconds, ranks and device when it was computed), or of the
stored embeddings it read (where their manifests record it), the input of the cost model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, computed_field

from ..record import Record
from .cache import EmbedStats, entry_timing

# A throughput measured while other processes used more than this share of the CPUs is flagged
# (wherever it is used: `cost`, the page) as measured on a busy machine.
BUSY_SHARE = 0.25


class EmbeddingThroughput(Record):
    """How fast a model embedded on the run's machine: ``rows`` images or texts in
    ``device_seconds`` (summed over the cache entries the run used, from their manifests;
    seconds times the ranks that shared the work)."""

    model: Literal["old", "new"]
    side: Literal["image", "text"]
    rows: int = Field(gt=0)
    device_seconds: float = Field(gt=0)
    device: str
    other_cpu_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="share of the machine's CPUs other processes used while it was measured "
        "(time-weighted over the entries; None when not recorded)",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rows_per_s(self) -> float:
        """Rows embedded per device-second."""
        return self.rows / self.device_seconds

    @property
    def busy(self) -> bool:
        """Whether other processes used more than :data:`BUSY_SHARE` of the CPUs meanwhile."""
        return self.other_cpu_share is not None and self.other_cpu_share > BUSY_SHARE



def measured_throughputs(
    stats: EmbedStats, models: Mapping[str, Literal["old", "new"]], device: str
) -> list[EmbeddingThroughput]:
    """OLD's and NEW's throughput per side and device over the cache entries ``stats``
    recorded for the models ``models`` (``{identity: "old" | "new"}``). An entry computed before
    manifests recorded devices counts as ``device`` when this run computed it, else as an
    unrecorded device."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    shares: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    entries = {r.path: r for r in stats.records if r.model in models}
    for path, record in entries.items():
        timing = record.timing or entry_timing(path)
        if timing is None or not timing["rows"]:
            continue
        where = timing["device"] or (device if record.computed else None)
        where = str(where or "unrecorded device")
        group = (models[record.model], record.side, where)
        total = totals.setdefault(group, [0, 0.0])
        total[0] += timing["rows"]
        total[1] += timing["seconds"] * timing["ranks"]
        if timing["other_cpu_share"] is not None:
            shares.setdefault(group, []).append((timing["other_cpu_share"], timing["seconds"]))
    return [
        EmbeddingThroughput(
            model=which,
            side=side,
            rows=int(rows),
            device_seconds=round(seconds, 3),
            device=where,
            other_cpu_share=_weighted(shares.get((which, side, where), [])),
        )  # type: ignore[arg-type]
        for (which, side, where), (rows, seconds) in sorted(totals.items())
    ]


def _weighted(shares: list[tuple[float, float]]) -> float | None:
    """The time-weighted mean of ``(share, seconds)`` pairs (None for none)."""
    seconds = sum(weight for _, weight in shares)
    if not shares or seconds <= 0:
        return None
    return round(sum(share * weight for share, weight in shares) / seconds, 3)
