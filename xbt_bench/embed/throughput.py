"""How fast models embedded: throughputs read from the manifests of the cache entries a run
used (each entry records its rows, seconds, ranks and device when it was computed), or of the
stored embeddings it read (where their manifests record it), the input of the cost model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, computed_field

from ..record import Record
from .cache import EmbedStats, entry_timing


class EmbeddingThroughput(Record):
    """How fast a model embedded on the run's machine: ``rows`` images or texts in
    ``device_seconds`` (summed over the cache entries the run used, from their manifests;
    seconds times the ranks that shared the work)."""

    model: Literal["old", "new"]
    side: Literal["image", "text"]
    rows: int = Field(gt=0)
    device_seconds: float = Field(gt=0)
    device: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rows_per_s(self) -> float:
        """Rows embedded per device-second."""
        return self.rows / self.device_seconds



def measured_throughputs(
    stats: EmbedStats, models: Mapping[str, Literal["old", "new"]], device: str
) -> list[EmbeddingThroughput]:
    """OLD's and NEW's throughput per side and device over the cache entries ``stats``
    recorded for the models ``models`` (``{identity: "old" | "new"}``). An entry computed before
    manifests recorded devices counts as ``device`` when this run computed it, else as an
    unrecorded device."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    entries = {r.path: r for r in stats.records if r.model in models}
    for path, record in entries.items():
        timing = record.timing or entry_timing(path)
        if timing is None or not timing["rows"]:
            continue
        where = timing["device"] or (device if record.computed else None)
        where = str(where or "unrecorded device")
        total = totals.setdefault((models[record.model], record.side, where), [0, 0.0])
        total[0] += timing["rows"]
        total[1] += timing["seconds"] * timing["ranks"]
    return [
        EmbeddingThroughput(
            model=which, side=side, rows=int(rows), device_seconds=round(seconds, 3), device=where
        )  # type: ignore[arg-type]
        for (which, side, where), (rows, seconds) in sorted(totals.items())
    ]
