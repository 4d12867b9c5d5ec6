"""The upgrade's whole bill: what each way of upgrading re-embeds, trains, rebuilds, stores and
costs at query time, for a gallery of N items, from one device profile.

The ways (:func:`upgrade_ways`): a **full backfill** (every gallery item re-embedded with NEW,
queries by NEW); each **backfill-free method** that searches OLD's gallery (a closed form or a
trained one: nothing re-embedded, OLD's index kept); and a **partial backfill** at a share p of
the items (random order), whose queries search OLD's part with a method's query encoder (OLD's
own for ``old``) and the re-embedded part with NEW's.

What a way costs (:func:`bill`), per retrieval direction served (``t2i``: the gallery's images
are searched; ``i2t``: its captions, ``captions_per_item`` per item, from the dataset):

- **re-embedding**: the gallery's images (T2I) and captions (I2T) NEW re-embeds, at NEW's
  throughputs; a method's training texts and pairs, from its recorded ``Cost.forward_passes``
  less the passes inside training steps (``Cost.in_loop_passes``, whose time is the training
  time), at OLD's and NEW's throughputs; and its training time;
- **index rebuild**: a new FAISS index over NEW's vectors (none for a backfill-free method),
  from FAISS build rates measured on OLD's gallery and scaled (:mod:`xbt_bench.eval.index_cost`);
- **storage**: float32 vectors, ``4·d`` bytes each, per item one image and its captions; a
  backfill keeps OLD's vectors while it runs (peak = OLD's + NEW's);
- **query time**: each query runs the method's query encoder (OLD's forward pass included where
  it needs OLD), and a partial backfill's queries NEW's too; latency at batch 1 and device time
  at batch 256, measured per method on the run's device (``RunResult.query_latency``).

**One device profile** (:class:`Profile`): either every rate measured on the run's device (from
the results), or a hardware file (:class:`Hardware`) that gives them. A rate that the profile
lacks (a file that leaves it out, or a measurement made on another device) is never borrowed:
the figures that need it are left blank, and the output names the rate, what its measured
value was and where it came from. The numbers are estimates: linear in rates measured on small
samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xbt_bench.errors import ConfigError, NotFoundError, validation_message
from xbt_bench.eval.compat import METHOD_OLD
from xbt_bench.eval.index_cost import HNSW_M
from xbt_bench.methods import methods
from xbt_bench.results import GalleryShape, ResultSet, RunResult

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
DIRECTIONS = ("t2i", "i2t")
QUERY_SIDE = {"t2i": "text", "i2t": "image"}  # a direction's queries
BYTES_PER_DIM = 4  # float32 vectors in a flat index
ESTIMATE_NOTE = (
    "Estimate: linear in rates measured by this suite on small samples (or entered with "
    "--hardware); real pipelines add I/O, scheduling and failures."
)
EMBED_KEYS = ("new_image_per_s", "new_text_per_s", "old_image_per_s", "old_text_per_s")
LATENCY_KEYS = ("new_image_ms", "new_text_ms", "old_image_ms", "old_text_ms")
RATE_HELP = {
    "new_image_per_s": "images NEW embeds per device-second (batched)",
    "new_text_per_s": "texts NEW embeds per device-second (batched)",
    "old_image_per_s": "images OLD embeds per device-second (batched)",
    "old_text_per_s": "texts OLD embeds per device-second (batched)",
    "new_image_ms": "milliseconds of one image query through NEW (batch 1)",
    "new_text_ms": "milliseconds of one text query through NEW (batch 1)",
    "old_image_ms": "milliseconds of one image query through OLD (batch 1)",
    "old_text_ms": "milliseconds of one text query through OLD (batch 1)",
    "index_vectors_per_s": "vectors per second of a FAISS index rebuild (train and add)",
}

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Hardware(BaseModel):
    """A device profile entered as a TOML file: a label, the rates of one device of that kind
    and, optionally, its price. Every rate the estimate uses must be given; one that is left
    out leaves the figures that need it blank, and the output names it.

    .. code-block:: toml

        device = "1x A100 80GB"        # the label of every figure
        devices = 1                    # devices that re-embed the gallery in parallel
        price_per_device_hour = 1.50   # optional: money next to hours
        currency = "USD"
        new_image_per_s = 800          # batched embedding, per device
        new_text_per_s = 9000
        old_image_per_s = 12000
        old_text_per_s = 20000
        new_image_ms = 9.0             # one query at batch 1
        new_text_ms = 6.0
        old_image_ms = 5.0
        old_text_ms = 4.0
        index_vectors_per_s = 200000   # FAISS index rebuild (train and add)

        [training_hours]               # device-hours of each trained method
        xbt = 1.5
    """

    model_config = ConfigDict(extra="forbid")

    device: str = Field("your hardware", min_length=1)
    devices: int = Field(1, ge=1)
    price_per_device_hour: Positive | None = None
    currency: str = Field("USD", min_length=1)
    new_image_per_s: Positive | None = None
    new_text_per_s: Positive | None = None
    old_image_per_s: Positive | None = None
    old_text_per_s: Positive | None = None
    new_image_ms: Positive | None = None
    new_text_ms: Positive | None = None
    old_image_ms: Positive | None = None
    old_text_ms: Positive | None = None
    index_vectors_per_s: Positive | None = None
    training_hours: dict[str, NonNegative] = Field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: str | Path) -> Hardware:
        """Read a hardware file; a one-line error naming the file and the bad key."""
        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"hardware file {path} does not exist")
        if not path.is_file():
            raise ConfigError(f"hardware file {path} is not a regular file; pass a TOML file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"hardware file {path} is not valid TOML: {error}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            where, message, _ = validation_message(error)
            known = ", ".join(cls.model_fields)
            raise ConfigError(
                f"hardware file {path}: {where}: {message} (keys: {known})"
            ) from None


@dataclass(frozen=True)
class Figure:
    """A number of the estimate, or None when the profile lacks a rate it needs (``missing``
    names them)."""

    value: float | None
    missing: frozenset[str] = frozenset()

    @classmethod
    def lacking(cls, *keys: str) -> Figure:
        """A blank figure that needs ``keys``."""
        return cls(None, frozenset(keys))

    def __add__(self, other: Figure) -> Figure:
        missing = self.missing | other.missing
        if self.value is None or other.value is None:
            return Figure(None, missing)
        return Figure(self.value + other.value, missing)

    def __sub__(self, other: Figure) -> Figure:
        return self + other.times(-1)

    def times(self, factor: float) -> Figure:
        """This figure multiplied by ``factor``."""
        return Figure(None if self.value is None else self.value * factor, self.missing)


def total(figures: Iterable[Figure]) -> Figure:
    """The sum of ``figures`` (blank when any is)."""
    out = Figure(0.0)
    for figure in figures:
        out = out + figure
    return out


@dataclass(frozen=True)
class Rate:
    """One rate of a profile and where it came from."""

    value: float
    source: str


@dataclass
class Profile:
    """One device's rates (module docstring). ``rates`` holds scalar rates by key
    (:data:`RATE_HELP`, ``training_hours.<method>``); a measured profile also holds each
    method's measured query latency and the measured FAISS build rates, which depend on the
    method and the gallery. ``missing`` says, for each rate it lacks, why and what was known."""

    label: str
    device: str
    devices: int
    measured: bool
    rates: dict[str, Rate] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    results: dict[str, RunResult] = field(default_factory=dict)
    price: float | None = None
    currency: str = "USD"

    def rate(self, key: str) -> Figure:
        """The rate ``key`` as a figure (blank and named when the profile lacks it)."""
        if key in self.rates:
            return Figure(self.rates[key].value)
        return Figure.lacking(key)

    def per_rate(self, count: float, key: str) -> Figure:
        """Seconds to process ``count`` items at rate ``key`` (items per second); 0 for none."""
        if count <= 0:
            return Figure(0.0)
        rate = self.rate(key)
        return Figure(None, rate.missing) if rate.value is None else Figure(count / rate.value)

    def training_s(self, method: str) -> Figure:
        """Device-seconds of ``method``'s training (0 for a method that does not train)."""
        result = self.results.get(method)
        if result is None or result.cost.training_time_s == 0:
            return Figure(0.0)
        hours = self.rate(f"training_hours.{method}")
        return hours.times(3600)

    def index_s(self, vectors: int, dim: int, index: str) -> Figure:
        """Seconds of a FAISS ``index`` (ivf or hnsw) rebuild over ``vectors`` of ``dim``."""
        if vectors <= 0:
            return Figure(0.0)
        if not self.measured:
            return self.per_rate(vectors, "index_vectors_per_s")
        build = next((r.index_build for r in self.results.values() if r.index_build), None)
        if build is None or "index_build" in self.missing:
            return Figure.lacking("index_build")
        seconds = build.ivf_seconds if index == "ivf" else build.hnsw_seconds
        return Figure(seconds(vectors, dim))

    def query(self, paths: Sequence[str], side: str) -> QueryTime:
        """One query on ``side`` through the query encoders of ``paths`` (method names) in
        turn, and through OLD's own query encoder."""
        if self.measured:
            return self._measured_query(paths, side)
        latency, seconds = Figure(0.0), Figure(0.0)
        for path in paths:
            for which in query_encoders(path, self.results.get(path)):
                latency = latency + self.rate(f"{which}_{side}_ms")
                seconds = seconds + self.per_rate(1, f"{which}_{side}_per_s")
        old = self.rate(f"old_{side}_ms")
        return QueryTime(latency, latency - old, seconds, self.per_rate(1, f"old_{side}_per_s"))

    def _measured_query(self, paths: Sequence[str], side: str) -> QueryTime:
        latency, seconds = Figure(0.0), Figure(0.0)
        old: tuple[Figure, Figure] | None = None
        for path in paths:
            key = f"query_latency.{path}"
            result = self.results.get(path)
            recorded = result.query_latency if result is not None else None
            if recorded is None or key in self.missing:
                return QueryTime(*(Figure.lacking(key),) * 4)
            single, batch = recorded.point(side, 1), recorded.point(side, 256)  # type: ignore[arg-type]
            latency = latency + Figure(single.ms_per_query)
            seconds = seconds + Figure(1 / batch.queries_per_s)
            if old is None:  # OLD's own encoder, timed in the same loop as the first path
                old = (Figure(1000 * single.old_seconds), Figure(batch.old_seconds / batch.batch))
        assert old is not None
        return QueryTime(latency, latency - old[0], seconds, old[1])


@dataclass(frozen=True)
class QueryTime:
    """One query: its latency at batch 1 (ms), that latency over OLD's own query encoder's
    (ms), and the device-seconds of one query served in batches of 256, the way's and OLD's."""

    latency_ms: Figure
    added_ms: Figure
    seconds: Figure
    old_seconds: Figure


def query_encoders(method: str, result: RunResult | None) -> list[str]:
    """The models ``method``'s query runs through: as its result recorded them, else as its
    registration says (OLD's own for ``old``, NEW's for ``new``; NEW, plus OLD where the
    method needs OLD at query time)."""
    if result is not None and result.query_latency is not None:
        return list(result.query_latency.encoders)
    if method == "old":
        return ["old"]
    spec = methods.get(method)
    return ["old", "new"] if spec.old_at_query else ["new"]


def pair_results(results: Sequence[RunResult], pair: str) -> dict[str, RunResult]:
    """The newest result of each method of ``pair`` (exact search: index results live in their
    own files)."""
    mine = [r for r in results if r.pair == pair]
    if not mine:
        pairs = sorted({r.pair for r in results})
        raise NotFoundError(
            f"no results for pair {pair!r} (results are for {', '.join(pairs) or 'no pair'}); "
            f"run `xbt-bench run --pair {pair}` first"
        )
    newest: dict[str, RunResult] = {}
    for result in sorted(mine, key=lambda r: r.date):
        newest[result.method] = result
    return newest


def measured_profile(results: Sequence[RunResult], pair: str) -> Profile:
    """The rates measured on the run's device, from ``pair``'s newest results: the device is the
    one NEW embedded images on (the backfill's main cost); a rate measured on another device is
    listed as missing, with its value and device."""
    mine = pair_results(results, pair)
    ordered = sorted(mine.values(), key=lambda r: r.date, reverse=True)
    throughputs = {
        (t.model, t.side): (t, r) for r in reversed(ordered) for t in r.throughputs
    }  # the newest run's throughput wins
    anchor = throughputs.get(("new", "image")) or next(iter(throughputs.values()), None)
    device = anchor[0].device if anchor else next(iter(mine.values())).cost.device
    profile = Profile(
        label=f"{device} (measured)", device=device, devices=1, measured=True, results=mine
    )
    for which in ("new", "old"):
        for side in ("image", "text"):
            key = f"{which}_{side}_per_s"
            found = throughputs.get((which, side))
            if found is None:
                profile.missing[key] = "not measured in these results"
                continue
            rate, result = found
            source = (
                f"measured: {rate.rows:,} rows in {rate.device_seconds:.1f} device-s on "
                f"{rate.device} ({result.method} run of {result.date:%Y-%m-%d})"
            )
            _add(profile, key, rate.rows_per_s, source, rate.device)
    for method, result in mine.items():
        if result.cost.training_time_s > 0:
            _add(
                profile,
                f"training_hours.{method}",
                result.cost.training_time_s / 3600,
                f"measured: {result.cost.training_time_s:.1f} s of training steps on "
                f"{result.cost.device} ({method} run of {result.date:%Y-%m-%d})",
                result.cost.device,
            )
        latency = result.query_latency
        if latency is None:
            profile.missing[f"query_latency.{method}"] = (
                f"not recorded; rerun `xbt-bench run --pair {pair} --method {method}`"
            )
        elif latency.device != device:
            profile.missing[f"query_latency.{method}"] = f"measured on {latency.device}"
    build = next((r.index_build for r in ordered if r.index_build), None)
    if build is None:
        profile.missing["index_build"] = (
            f"not recorded; rerun `xbt-bench run --pair {pair}` (runs measure FAISS)"
        )
    elif build.device.split(",")[0] != device:
        profile.missing["index_build"] = f"measured on {build.device}, not on {device}"
    else:
        profile.rates["index_build"] = Rate(
            build.s_per_mac,
            f"measured: FAISS search at {1 / build.s_per_mac / 1e9:.2f} G multiply-adds/s, "
            f"HNSW{HNSW_M} adds at {build.hnsw_vectors / build.hnsw_add_s:,.0f} vectors/s "
            f"(d = {build.dim}) on {build.device}; IVF-Flat with 4·√N lists and HNSW scaled "
            "to the gallery",
        )
    return profile


def _add(profile: Profile, key: str, value: float, source: str, device: str) -> None:
    """Put a measured rate in ``profile``, or list it as missing when measured elsewhere."""
    if device == profile.device:
        profile.rates[key] = Rate(value, source)
    else:
        profile.missing[key] = f"{value:.4g}, {source} — another device than {profile.device}"


def file_profile(
    hardware: Hardware, path: str | Path, results: Sequence[RunResult], pair: str
) -> Profile:
    """The rates of a hardware file; each rate it leaves out is listed as missing, with the
    value measured on the run's device (which the estimate does not use)."""
    measured = measured_profile(results, pair)
    profile = Profile(
        label=f"{hardware.device} ({Path(path).name})",
        device=hardware.device,
        devices=hardware.devices,
        measured=False,
        results=measured.results,
        price=hardware.price_per_device_hour,
        currency=hardware.currency,
    )
    given = f"entered ({Path(path).name})"
    for key in (*EMBED_KEYS, *LATENCY_KEYS, "index_vectors_per_s"):
        value = getattr(hardware, key)
        if value is not None:
            profile.rates[key] = Rate(float(value), given)
        else:
            profile.missing[key] = _elsewhere(measured, key)
    for method, hours in hardware.training_hours.items():
        profile.rates[f"training_hours.{method}"] = Rate(hours, given)
    for method, result in measured.results.items():
        key = f"training_hours.{method}"
        if result.cost.training_time_s > 0 and key not in profile.rates:
            profile.missing[key] = _elsewhere(measured, key)
    return profile


def _elsewhere(measured: Profile, key: str) -> str:
    """What the run's measurement knew of ``key``, said as not used."""
    if key in measured.rates:
        rate = measured.rates[key]
        return f"not in the file (measured {rate.value:.4g}: {rate.source}; not used)"
    return "not in the file" + (f" (measured: {measured.missing[key]})" if key in measured.missing
                                else "")  # fmt: skip


Kind = Literal["full backfill", "backfill-free", "partial backfill"]


@dataclass(frozen=True)
class Way:
    """One way to upgrade: its ``kind``, the method whose queries search OLD's part (``new``
    for a full backfill), and the share of the gallery it re-embeds."""

    kind: Kind
    method: str
    fraction: float

    @property
    def name(self) -> str:
        """How tables name the way."""
        if self.kind == "full backfill":
            return "full backfill"
        if self.kind == "backfill-free":
            return self.method
        return f"partial backfill {100 * self.fraction:g}% ({self.method} queries)"

    @property
    def paths(self) -> tuple[str, ...]:
        """The query encoders a query runs through (method names)."""
        if self.kind == "full backfill":
            return ("new",)
        if self.kind == "backfill-free":
            return (self.method,)
        return (self.method, "new")


@dataclass(frozen=True)
class Scale:
    """The deployment being priced: items, directions served, captions per item, queries per
    day (a share of them image queries when both directions are served), the horizon and the
    index to rebuild."""

    gallery_size: int
    directions: tuple[str, ...] = DIRECTIONS
    captions_per_item: float = 5.0
    queries_per_day: float = 0.0
    image_query_share: float = 0.5
    horizon_days: float = 365.0
    index: Literal["ivf", "hnsw"] = "ivf"

    def __post_init__(self) -> None:
        if self.gallery_size < 1:
            raise ConfigError(f"--gallery-size must be at least 1, got {self.gallery_size}")
        if not self.directions or any(d not in DIRECTIONS for d in self.directions):
            raise ConfigError(f"directions {self.directions} must be t2i, i2t or both")
        checks = {
            "--captions-per-item": (self.captions_per_item, 0, math.inf),
            "--queries-per-day": (self.queries_per_day, 0, math.inf),
            "--image-query-share": (self.image_query_share, 0, 1),
            "--horizon-days": (self.horizon_days, 0, math.inf),
        }
        for option, (value, low, high) in checks.items():
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{option} must be a finite number in [{low}, {high}], "
                                  f"got {value}")  # fmt: skip

    def query_share(self, direction: str) -> float:
        """The share of queries in ``direction`` (all of them when it is the only one)."""
        if direction not in self.directions:
            return 0.0
        if len(self.directions) == 1:
            return 1.0
        return self.image_query_share if direction == "i2t" else 1 - self.image_query_share


@dataclass(frozen=True)
class Bill:
    """What one way costs at one scale on one profile (figures in device-hours unless named)."""

    way: Way
    images: int  # gallery images re-embedded (T2I)
    captions: int  # gallery captions re-embedded (I2T)
    training_passes: dict[str, int]  # "<model>_<side>": embeddings outside training steps
    gallery_hours: Figure
    passes_hours: Figure
    training_hours: Figure
    index_hours: Figure
    storage_bytes: int  # while the way runs (peak)
    final_bytes: int  # once it is done
    old_at_query: bool
    latency_ms: dict[str, Figure]  # per direction, batch 1
    added_ms: dict[str, Figure]  # over OLD's own query encoder
    query_hours_per_million: dict[str, Figure]  # per direction, batches of 256
    query_hours_per_day: Figure
    old_query_hours_per_day: Figure
    devices: int

    @property
    def one_off_hours(self) -> Figure:
        """Device-hours before the upgrade serves: re-embedding, training, index rebuild."""
        return total((self.gallery_hours, self.passes_hours, self.training_hours,
                      self.index_hours))  # fmt: skip

    @property
    def wall_hours(self) -> Figure:
        """Hours until done: the gallery's re-embedding split over the devices, the rest on
        one."""
        rest = total((self.passes_hours, self.training_hours, self.index_hours))
        return self.gallery_hours.times(1 / self.devices) + rest

    @property
    def added_query_hours_per_day(self) -> Figure:
        """Query device-hours per day over OLD's own query encoder's."""
        return self.query_hours_per_day - self.old_query_hours_per_day

    def total_hours(self, days: float) -> Figure:
        """Device-hours over ``days`` days: the one-off work plus serving the queries."""
        return self.one_off_hours + self.query_hours_per_day.times(days)

    def figures(self) -> list[Figure]:
        """Every figure the bill shows (to name the rates they lack)."""
        return [
            self.one_off_hours,
            self.query_hours_per_day,
            self.old_query_hours_per_day,
            *self.added_ms.values(),
            *self.query_hours_per_million.values(),
        ]


def training_passes(result: RunResult | None) -> dict[str, int]:
    """Embeddings a method computed for training outside its training steps, per model and
    side: its recorded forward passes less those inside training steps."""
    if result is None:
        return {}
    cost = result.cost
    out = {}
    for key, count in cost.forward_passes.items():
        if key == "old_gallery_reused":
            continue
        outside = count - cost.in_loop_passes.get(key, 0)
        if outside > 0:
            out[key] = outside
    return out


def bill(way: Way, scale: Scale, profile: Profile, gallery: GalleryShape) -> Bill:
    """What ``way`` costs for ``scale`` on ``profile`` (module docstring)."""
    t2i, i2t = "t2i" in scale.directions, "i2t" in scale.directions
    images = round(way.fraction * scale.gallery_size) if t2i else 0
    captions = round(way.fraction * scale.gallery_size * scale.captions_per_item) if i2t else 0
    result = profile.results.get(way.method) if way.kind != "full backfill" else None
    passes = training_passes(result)
    gallery_s = profile.per_rate(images, "new_image_per_s") + profile.per_rate(
        captions, "new_text_per_s"
    )
    passes_s = total(profile.per_rate(count, f"{key}_per_s") for key, count in passes.items())
    training_s = profile.training_s(way.method) if result is not None else Figure(0.0)
    index_s = profile.index_s(images, gallery.new_dim, scale.index) + profile.index_s(
        captions, gallery.new_dim, scale.index
    )
    vectors = (1 if t2i else 0) + (scale.captions_per_item if i2t else 0)
    old_bytes = round(scale.gallery_size * vectors * BYTES_PER_DIM * gallery.old_dim)
    new_bytes = round(scale.gallery_size * vectors * BYTES_PER_DIM * gallery.new_dim)
    if way.kind == "full backfill":
        peak, final = old_bytes + new_bytes, new_bytes
    else:
        peak = final = old_bytes + round(way.fraction * new_bytes)
    latency, added, per_million = {}, {}, {}
    per_day, old_per_day = Figure(0.0), Figure(0.0)
    for direction in scale.directions:
        query = profile.query(way.paths, QUERY_SIDE[direction])
        latency[direction], added[direction] = query.latency_ms, query.added_ms
        per_million[direction] = query.seconds.times(1e6 / 3600)
        share = scale.queries_per_day * scale.query_share(direction) / 3600
        per_day = per_day + query.seconds.times(share)
        old_per_day = old_per_day + query.old_seconds.times(share)
    old_at_query = any("old" in query_encoders(p, profile.results.get(p)) for p in way.paths)
    return Bill(
        way=way,
        images=images,
        captions=captions,
        training_passes=passes,
        gallery_hours=gallery_s.times(1 / 3600),
        passes_hours=passes_s.times(1 / 3600),
        training_hours=training_s.times(1 / 3600),
        index_hours=index_s.times(1 / 3600),
        storage_bytes=peak,
        final_bytes=final,
        old_at_query=old_at_query,
        latency_ms=latency,
        added_ms=added,
        query_hours_per_million=per_million,
        query_hours_per_day=per_day,
        old_query_hours_per_day=old_per_day,
        devices=profile.devices,
    )


def upgrade_ways(
    found: ResultSet, pair: str, fractions: Sequence[float] | None = None
) -> list[Way]:
    """Every way the results of ``pair`` can price: the full backfill, each applicable
    backfill-free method (method→old), and each method's partial backfill at each share of its
    curves strictly between 0 and 1 (``fractions``: only those)."""
    mine = pair_results(found.runs, pair)
    ways = [Way("full backfill", "new", 1.0)]
    ways += [
        Way("backfill-free", name, 0.0)
        for name, result in mine.items()
        if result.setting == METHOD_OLD and result.applicable
    ]
    for backfill in found.backfills:
        if backfill.pair != pair:
            continue
        shares = [f for f in backfill.backfill.fractions if 0 < f < 1]
        if fractions is not None:
            shares = [f for f in shares if any(math.isclose(f, g) for g in fractions)]
        ways += [Way("partial backfill", backfill.method, f) for f in shares]
    return ways


def pair_gallery(results: Sequence[RunResult], pair: str) -> GalleryShape:
    """The gallery shape the newest results of ``pair`` recorded; NotFoundError when none did."""
    for result in sorted(pair_results(results, pair).values(), key=lambda r: r.date,
                         reverse=True):  # fmt: skip
        if result.gallery is not None:
            return result.gallery
    raise NotFoundError(
        f"the results of {pair!r} do not record their gallery (images, captions, dimensions); "
        f"rerun `xbt-bench run --pair {pair}`"
    )


def hours_text(figure: Figure) -> str:
    """Hours in human units, or what the figure lacks."""
    if figure.value is None:
        return "needs " + ", ".join(sorted(figure.missing))
    hours = figure.value
    if hours >= 100:
        return f"{hours:,.0f}"
    if abs(hours) >= 0.001:
        return f"{hours:.3g}"
    return "0" if hours == 0 else f"{hours:.1e}"


def duration_text(figure: Figure) -> str:
    """A duration in hours as s, min, h or d, or what it lacks."""
    if figure.value is None:
        return "needs " + ", ".join(sorted(figure.missing))
    seconds = figure.value * 3600
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def ms_text(figure: Figure, signed: bool = False) -> str:
    """Milliseconds, or what the figure lacks."""
    if figure.value is None:
        return "needs " + ", ".join(sorted(figure.missing))
    return f"{figure.value:+.2f}" if signed else f"{figure.value:.2f}"


def bytes_text(count: float) -> str:
    """Bytes in decimal units (GB, TB)."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"


def money_text(figure: Figure, profile: Profile) -> str:
    """``figure`` device-hours priced with the profile's price, or '–' without one."""
    if profile.price is None:
        return "–"
    if figure.value is None:
        return "needs " + ", ".join(sorted(figure.missing))
    return f"{figure.value * profile.price:,.2f} {profile.currency}"


def bills_frame(bills: Sequence[Bill], profile: Profile, scale: Scale) -> pd.DataFrame:
    """The bills as a table: what each way re-embeds, its one-off device-hours (re-embedding,
    training, index rebuild) and wall time, storage, and query time per direction."""
    rows = []
    for item in bills:
        row = {
            "way": item.way.name,
            "re-embedded images / captions": f"{item.images:,} / {item.captions:,}",
            "training embeddings": f"{sum(item.training_passes.values()):,}",
            "gallery h": hours_text(item.gallery_hours),
            "training h (embeddings + steps)": hours_text(item.passes_hours + item.training_hours),
            f"index rebuild h ({scale.index})": hours_text(item.index_hours),
            "one-off device-h": hours_text(item.one_off_hours),
            f"wall ({item.devices} dev.)": duration_text(item.wall_hours),
        }
        if profile.price is not None:
            row[f"one-off {profile.currency}"] = money_text(item.one_off_hours, profile)
        row["storage peak / after"] = (
            f"{bytes_text(item.storage_bytes)} / {bytes_text(item.final_bytes)}"
        )
        row["OLD at query"] = "yes" if item.old_at_query else "no"
        for direction in scale.directions:
            label = direction.upper()
            row[f"{label} added ms"] = ms_text(item.added_ms[direction], signed=True)
            row[f"{label} device-h / M queries"] = hours_text(
                item.query_hours_per_million[direction]
            )
        rows.append(row)
    return pd.DataFrame(rows)


def bill_parts(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """:func:`bills_frame` as two narrower tables for a terminal: the one-off work, and storage
    and serving."""
    split = list(frame.columns).index("storage peak / after")
    return [
        ("one-off work", frame.iloc[:, :split]),
        ("storage and serving", frame.iloc[:, [0, *range(split, frame.shape[1])]]),
    ]


def profile_lines(profile: Profile, used: Iterable[Figure] = ()) -> list[str]:
    """Where every rate of the profile came from, then each rate it lacks that a figure in
    ``used`` needed (named, with what was known of it)."""
    lines = [f"{key}: {rate.value:.4g} — {rate.source}" for key, rate in profile.rates.items()]
    needed = sorted(set().union(*(f.missing for f in used)))
    for key in needed:
        why = profile.missing.get(key, "not given")
        lines.append(f"MISSING {key} ({RATE_HELP.get(key, 'a rate')}): {why}")
    return lines


def scale_summary(scale: Scale, gallery: GalleryShape) -> str:
    """One line: what is being priced."""
    served = " and ".join(d.upper() for d in scale.directions)
    return (
        f"{scale.gallery_size:,} items ({scale.captions_per_item:g} captions each), {served}; "
        f"OLD d={gallery.old_dim}, NEW d={gallery.new_dim}, float32 vectors; "
        f"{scale.queries_per_day:,.0f} queries/day"
        + (f" ({100 * scale.image_query_share:g}% image queries)" if len(scale.directions) > 1
           else "")  # fmt: skip
        + f"; index rebuilt: {scale.index}"
    )


DIRECTION_CHOICES = {"both": ("t2i", "i2t"), "t2i": ("t2i",), "i2t": ("i2t",)}


@dataclass(frozen=True)
class BillInputs:
    """What a bill or a decision is computed from: the results, the device profile, the
    scale and the gallery's shape."""

    found: ResultSet
    profile: Profile
    scale: Scale
    gallery: GalleryShape

    def footer(self, figures: Iterable[Figure]) -> list[str]:
        """What was priced, the estimate's caveat, and where each rate came from (the rates
        ``figures`` lacked named)."""
        return [
            f"Scale: {scale_summary(self.scale, self.gallery)}.",
            ESTIMATE_NOTE,
            f"Device profile {self.profile.label}; each rate and where it came from:",
            *("  " + line for line in profile_lines(self.profile, figures)),
        ]


def bill_inputs(
    found: ResultSet,
    pair: str,
    gallery_size: int,
    hardware: str | Path | None = None,
    direction: str = "both",
    captions_per_item: float | None = None,
    queries_per_day: float = 0.0,
    image_query_share: float = 0.5,
    horizon_days: float = 365.0,
    index: str = "ivf",
) -> BillInputs:
    """The inputs of ``pair``'s bill: the measured profile, or the ``hardware`` file's; the
    captions per item of the evaluated dataset unless given. ConfigError naming a bad option."""
    if direction not in DIRECTION_CHOICES:
        raise ConfigError(f"--direction {direction!r} is not one of {', '.join(DIRECTION_CHOICES)}")
    if index not in ("ivf", "hnsw"):
        raise ConfigError(f"--rebuild-index {index!r} is not one of ivf, hnsw")
    gallery = pair_gallery(found.runs, pair)
    if hardware is None:
        profile = measured_profile(found.runs, pair)
    else:
        profile = file_profile(Hardware.from_toml(hardware), hardware, found.runs, pair)
    scale = Scale(
        gallery_size=gallery_size,
        directions=DIRECTION_CHOICES[direction],
        captions_per_item=gallery.captions_per_image if captions_per_item is None
        else captions_per_item,
        queries_per_day=queries_per_day,
        image_query_share=image_query_share,
        horizon_days=horizon_days,
        index=index,  # type: ignore[arg-type]
    )  # fmt: skip
    return BillInputs(found, profile, scale, gallery)


# --- honest inputs (issue 25): no smoke run's numbers, and each rate's doubts said -------------


def full_result_set(found: ResultSet, pair: str, allow_quick: bool = False) -> ResultSet:
    """``found`` without --quick runs (and their backfill curves), what ``cost`` estimates
    from: a smoke run's training time and throughputs are not a method's cost. ConfigError when
    ``pair``'s results are all quick, or its ``xbt`` result is, unless ``allow_quick``."""
    if allow_quick:
        return found
    mine = [r for r in found.runs if r.pair == pair]
    quick = [r for r in mine if r.quick]
    quick_xbt = any(r.method == "xbt" for r in quick)
    full_xbt = any(r.method == "xbt" and not r.quick for r in mine)
    if quick and (len(quick) == len(mine) or (quick_xbt and not full_xbt)):
        steps = next((r.config.get("steps") for r in quick if r.method == "xbt"), None)
        what = f"xbt's {steps}-step training" if steps else "their training"
        raise ConfigError(
            f"the results of pair {pair!r} in {found.root} are --quick runs: {what} and their "
            "throughputs are a smoke run's, not a cost; rerun `xbt-bench run --pair "
            f"{pair}` without --quick, or pass --allow-quick to estimate from them anyway"
        )
    kept = [(r, p) for r, p in zip(found.runs, found.run_files, strict=True) if not r.quick]
    return replace(
        found,
        runs=[r for r, _ in kept],
        run_files=[p for _, p in kept],
        backfills=[b for b in found.backfills if not b.quick],
        sweeps=[s for s in found.sweeps if not s.quick],
    )


# A measured rate this many times above or below the median of the others is flagged.
FAR_FACTOR = 2.0


def throughput_doubts(results: Sequence[RunResult], pair: str) -> dict[str, str]:
    """For each rate ``cost`` takes from ``pair``'s newest result that measured it, a note
    when it is doubtful: measured while other processes kept the machine busy (the share of the
    CPUs they used, recorded in the embedding cache's manifests), or more than
    :data:`FAR_FACTOR` times away from the median of the same rate in the other results here;
    keyed like the profile's rates (``new_image_per_s``)."""
    newest = sorted(pair_results(results, pair).values(), key=lambda r: r.date, reverse=True)
    rest = [r for r in results if r.pair == pair and all(r is not n for n in newest)]
    mine = [*newest, *rest]  # the newest run's measurement first, as the profile takes it
    doubts: dict[str, str] = {}
    for model, side in (("new", "image"), ("new", "text"), ("old", "image"), ("old", "text")):
        found = [
            (result, t)
            for result in mine
            for t in result.throughputs
            if (t.model, t.side) == (model, side)
        ]
        if not found:
            continue
        result, chosen = found[0]
        notes = []
        if chosen.busy:
            notes.append(
                f"measured while other processes used {100 * (chosen.other_cpu_share or 0):.0f}% "
                "of the CPUs"
            )
        others = [t.rows_per_s for r, t in found[1:] if t.device == chosen.device]
        if others:
            median = float(pd.Series(others).median())
            ratio = chosen.rows_per_s / median if median > 0 else 1.0
            if not 1 / FAR_FACTOR <= ratio <= FAR_FACTOR:
                notes.append(
                    f"{chosen.rows_per_s:,.0f} rows/s is {max(ratio, 1 / ratio):.1f}x "
                    f"{'above' if ratio > 1 else 'below'} the median of {len(others)} other "
                    f"measurement(s) here ({median:,.0f} rows/s)"
                )
        if notes:
            doubts[f"{model}_{side}_per_s"] = (
                f"DOUBTFUL ({result.method} run of {result.date:%Y-%m-%d %H:%M}): "
                + "; ".join(notes)
                + "; rerun on a quiet machine or give it in --hardware"
            )
    return doubts
