"""The on-disk embedding cache: embeddings computed once per (model, data, side, transform).

An entry is a folder ``root/<digest>/`` named by the hash of its :class:`EmbeddingKey`. It holds
``.npy`` shards of rows ``[start, end)`` (memory-mappable) inside one *attempt* folder, and
``manifest.json``, written last and atomically: an entry without a manifest does not exist, so
a crash mid-way never leaves a stale or partial entry behind. Several writers (one per rank of a
distributed extraction) may write shards into the same attempt folder; one of them commits.

When an entry is computed, the data fingerprint it was computed from is recorded for its slot
(the same model, split name, side and transform; in the folder ``<root>-slots``), so that new
content under an old name (an edited dataset) is announced in one line as it is re-embedded.

The manifest records each shard's SHA-256 and whether every row had unit norm. An entry is
verified the first time a cache object reads it: a shard whose bytes, shape, finiteness or row
norms do not match is reported in one line naming the entry and treated as absent, so the
caller recomputes it (a damaged cache never turns into wrong numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from ..atomic import make_folder, sha256_of, write_json, write_npy
from ..errors import ConfigError, XbtError
from ..fingerprints import KeyLedger
from ..paths import cache_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
# How far from 1 a stored row's norm may be (float16 storage rounds to ~1e-3).
UNIT_NORM_TOLERANCE = {"float32": 1e-4, "float16": 4e-3}
DEFAULT_SHARD_ROWS = 65536
STORAGE_DTYPES = ("float32", "float16")
SIDES = ("image", "text")
# An unreferenced attempt folder younger than this may belong to a writer still running.
STALE_ATTEMPT_SECONDS = 3600.0
_SHARD_NAME = re.compile(r"rows-(\d{12})-(\d{12})\.npy")



@dataclass(frozen=True)
class EmbeddingKey:
    """Everything that determines a set of embeddings; any change gives a different entry."""

    model: str  # encoder identity, including a hash of its weights
    dataset: str  # fingerprint of the images or texts
    split: str  # human-readable name of what was embedded, e.g. "toy/test"
    side: str  # "image" or "text"
    transform: str  # preprocess signature (image side) or tokenizer signature (text side)
    dtype: str = "float32"  # storage dtype
    precision: str = "fp32"  # compute precision: "fp32" or "bf16-autocast"

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise XbtError(f"embedding side {self.side!r} is not one of {', '.join(SIDES)}")
        if self.dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"embedding storage dtype {self.dtype!r} is not supported; use one of "
                f"{', '.join(STORAGE_DTYPES)}"
            )

    @property
    def digest(self) -> str:
        """A hash of every field: the entry's folder name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self) -> str:
        """``model on split (side)``, for messages."""
        return f"{self.model} on {self.split} ({self.side}s)"

    def label(self) -> str:
        """:meth:`describe` kept short for a progress log: the model's hash cut to 8 digits, a
        long split name (a folder dataset's path) to its last 40 characters."""
        name, _, digest = self.model.partition("@")
        model = f"{name}@{digest[:8]}" if digest else name
        split = self.split if len(self.split) <= 40 else f"…{self.split[-39:]}"
        return f"{model} on {split} ({self.side}s)"


@dataclass(frozen=True)
class Shard:
    """One ``.npy`` file holding rows ``[start, end)`` of an entry."""

    path: str  # relative to the entry folder
    start: int
    end: int
    sha256: str = ""


@dataclass
class EmbedRecord:
    """One request for embeddings: what, how many rows, and whether they were computed."""

    model: str
    split: str
    side: str
    rows: int
    computed: bool
    seconds: float
    path: str
    # How the rows were computed (rows, seconds, ranks, device) where no cache manifest says it:
    # stored embeddings whose manifest records it (xbt_bench.data.embeddings).
    timing: dict[str, object] | None = None


@dataclass
class EmbedStats:
    """A running account of embedding requests, for a method's or a run's cost record.

    ``encoded[identity]`` counts forward passes (one per image or text actually encoded);
    ``reused[identity]`` counts rows read back from the cache instead.
    """

    encoded: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    records: list[EmbedRecord] = field(default_factory=list)

    def add(self, record: EmbedRecord) -> None:
        """Count one request."""
        counter = self.encoded if record.computed else self.reused
        counter[record.model] = counter.get(record.model, 0) + record.rows
        self.records.append(record)

    def forward_passes(self, identity: str) -> int:
        """How many images and texts the encoder ``identity`` encoded (0 when all were cached)."""
        return self.encoded.get(identity, 0)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "encoded": dict(self.encoded),
            "reused": dict(self.reused),
            "records": [asdict(r) for r in self.records],
        }


def entry_timing(entry_dir: str | Path) -> dict[str, object] | None:
    """How the cache entry in ``entry_dir`` was computed, from its manifest: ``rows``,
    ``seconds`` (wall time), ``ranks`` (processes that shared it), ``device`` (None for an
    entry written before devices were recorded) and ``other_cpu_share`` (how much of the CPUs
    other processes used meanwhile, :class:`LoadMeter`; None when not recorded); None when
    there is no manifest or no time."""
    try:
        manifest = json.loads((Path(entry_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    seconds = manifest.get("seconds")
    if not isinstance(seconds, int | float) or seconds <= 0:
        return None
    machine = manifest.get("machine")
    share = machine.get("other_cpu_share") if isinstance(machine, dict) else None
    return {
        "rows": int(manifest.get("n_rows", 0)),
        "seconds": float(seconds),
        "ranks": int(manifest.get("ranks", 1)),
        "device": manifest.get("device"),
        "other_cpu_share": float(share) if isinstance(share, int | float) else None,
    }


class LoadMeter:
    """How busy the machine was while embeddings were computed: the share of its CPUs that
    other processes used (system CPU time minus this process's and its children's, over wall
    time times CPUs) and the 1-minute load average per CPU at the end. Recorded in the cache
    entry's manifest beside the seconds it took, so a throughput measured on a busy machine can
    be flagged where it is used."""

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        import psutil

        system = psutil.cpu_times()
        busy = sum(system) - system.idle - getattr(system, "iowait", 0.0)
        process = psutil.Process()
        own = process.cpu_times()
        mine = own.user + own.system + own.children_user + own.children_system
        for child in process.children(recursive=True):  # data-loader workers still running
            try:
                times = child.cpu_times()
                mine += times.user + times.system
            except psutil.Error:
                continue
        return time.monotonic(), busy, mine

    def own_cpu_s(self) -> float:
        """CPU seconds this process and its children used since creation."""
        return self._sample()[2] - self._start[2]

    def reading(self, job_cpu_s: float | None = None) -> dict[str, float]:
        """``{"other_cpu_share": ..., "load_per_cpu": ..., "cpus": ...}`` since creation;
        ``job_cpu_s``: the CPU seconds of every process of this job (the ranks of a torchrun
        job are not "other" processes), default this process's."""
        wall0, busy0, mine0 = self._start
        wall, busy, mine = self._sample()
        ours = mine - mine0 if job_cpu_s is None else job_cpu_s
        span = max(wall - wall0, 1e-6) * self.cpus
        other = min(1.0, max(0.0, ((busy - busy0) - ours) / span))
        load = os.getloadavg()[0] / self.cpus if hasattr(os, "getloadavg") else 0.0
        return {"other_cpu_share": round(other, 3), "load_per_cpu": round(load, 2),
                "cpus": self.cpus}  # fmt: skip


def _shard_file(start: int, end: int) -> str:
    return f"rows-{start:012d}-{end:012d}.npy"


class ShardWriter:
    """Writes one entry's shards into an attempt folder, then commits the manifest.

    Single process: ``write_stream(chunks)`` then ``commit()``. Distributed: every rank opens a
    writer with the same ``attempt`` name and calls ``write(start, rows)`` for its part; after a
    barrier one rank calls ``commit(n_rows)``, which finds every rank's shards on disk.
    """

    def __init__(self, cache: EmbeddingCache, key: EmbeddingKey, attempt: str | None = None):
        self.cache = cache
        self.key = key
        self.attempt = attempt or f"attempt-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.folder = cache.entry_dir(key) / self.attempt
        make_folder(self.folder)

    def write(self, start: int, rows: np.ndarray) -> Shard:
        """Write ``rows`` as the shard holding rows ``[start, start + len(rows))``."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or len(rows) == 0:
            raise XbtError(
                f"embeddings for {self.key.describe()} must be a non-empty [rows, dim] array, "
                f"got shape {rows.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:
            raise XbtError(
                f"the encoder produced NaN or inf embeddings for {self.key.describe()} at rows "
                f"{(bad[:5] + start).tolist()}; nothing was cached (check the model's weights "
                "and precision)"
            )
        end = start + len(rows)
        name = _shard_file(start, end)
        write_npy(self.folder / name, np.ascontiguousarray(rows, dtype=self.key.dtype))
        return Shard(path=f"{self.attempt}/{name}", start=start, end=end)

    def write_stream(self, chunks: Iterable[np.ndarray], start: int = 0) -> int:
        """Write consecutive row ``chunks`` from row ``start`` as shards of the cache's shard
        size; return the row after the last one written."""
        size = self.cache.shard_rows
        pending: list[np.ndarray] = []
        n_pending = 0
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if chunk.ndim == 1:
                chunk = chunk[None]
            pending.append(chunk)
            n_pending += len(chunk)
            while n_pending >= size:
                block = np.concatenate(pending) if len(pending) > 1 else pending[0]
                self.write(start, block[:size])
                start += size
                pending, n_pending = [block[size:]], len(block) - size
        if n_pending:
            self.write(start, np.concatenate(pending))
            start += n_pending
        return start

    def shards(self) -> list[Shard]:
        """The shards in the attempt folder (written by any rank), in row order."""
        found = []
        for path in self.folder.iterdir():
            match = _SHARD_NAME.fullmatch(path.name)
            if match:
                found.append(
                    Shard(f"{self.attempt}/{path.name}", int(match[1]), int(match[2]))
                )
        return sorted(found, key=lambda s: s.start)

    def commit(self, n_rows: int | None = None, **extra: object) -> Path:
        """Check the shards tile rows ``[0, n_rows)`` and write the manifest; return its path.

        ``extra`` fields (e.g. seconds, device) are recorded in the manifest.
        """
        shards = self.shards()
        where = f"embeddings for {self.key.describe()}"
        if not shards:
            raise XbtError(f"no shards were written for {where}; nothing to commit")
        covered = 0
        for shard in shards:
            if shard.start != covered:
                raise XbtError(
                    f"{where}: shards do not tile the rows (gap or overlap at row {covered}, "
                    f"next shard starts at {shard.start}); did every rank finish?"
                )
            covered = shard.end
        if n_rows is not None and covered != n_rows:
            raise XbtError(f"{where}: shards cover {covered} rows but {n_rows} were expected")
        entry = self.cache.entry_dir(self.key)
        arrays = [np.load(entry / shard.path, mmap_mode="r") for shard in shards]
        dims = {a.shape[1] for a in arrays}
        dtypes = {str(a.dtype) for a in arrays}
        if len(dims) != 1 or dtypes != {self.key.dtype}:
            raise XbtError(f"{where}: shards disagree (dims {dims}, dtypes {dtypes})")
        shards = [replace(shard, sha256=sha256_of(entry / shard.path)) for shard in shards]
        tolerance = UNIT_NORM_TOLERANCE[self.key.dtype]
        unit_rows = all(_norm_error(array) <= tolerance for array in arrays)
        manifest = {
            "format": FORMAT_VERSION,
            "key": asdict(self.key),
            "digest": self.key.digest,
            "n_rows": covered,
            "dim": dims.pop(),
            "dtype": self.key.dtype,
            "shards": [asdict(s) for s in shards],
            "unit_rows": unit_rows,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        path = entry / MANIFEST
        write_json(path, manifest)
        self.cache.prune_attempts(self.key, keep=self.attempt)
        return path

    def abort(self) -> None:
        """Remove this attempt's shards (the entry stays absent unless already committed)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _norm_error(rows: np.ndarray) -> float:
    """The largest distance of a row's norm from 1 (inf when a value is not finite)."""
    error = 0.0
    for start in range(0, len(rows), 1 << 16):
        block = np.asarray(rows[start : start + (1 << 16)], dtype=np.float32)
        error = max(error, float(np.abs(np.linalg.norm(block, axis=1) - 1.0).max(initial=0.0)))
    return error if np.isfinite(error) else float("inf")


class EmbeddingCache:
    """Embeddings on disk under ``root`` (default ``$XBT_BENCH_HOME/embeddings``)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        shard_rows: int | None = None,
        console: Console | None = None,
    ):
        self.root = Path(root) if root is not None else cache_dir("embeddings")
        # Where the cache says what it reused, computed or found damaged.
        self.console = console if console is not None else Console(stderr=True)
        # Shard files this object has verified, by (path, size, mtime): each is checked once.
        self._verified: set[tuple[str, int, int]] = set()
        self.shard_rows = DEFAULT_SHARD_ROWS if shard_rows is None else int(shard_rows)
        if self.shard_rows < 1:
            raise ConfigError(f"shard_rows must be positive, got {shard_rows}")

    def entry_dir(self, key: EmbeddingKey) -> Path:
        """The folder of ``key``'s entry (it may not exist)."""
        return self.root / key.digest

    def manifest(self, key: EmbeddingKey) -> dict | None:
        """``key``'s manifest, or None when the entry is absent or not for this key."""
        try:
            manifest = json.loads((self.entry_dir(key) / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != asdict(key):
            return None
        return manifest

    def load_shards(self, key: EmbeddingKey, mmap: bool = True) -> list[np.ndarray] | None:
        """``key``'s shards in row order (memory-mapped read-only by default), or None when
        there is no complete entry."""
        manifest = self.manifest(key)
        if manifest is None:
            return None
        entry = self.entry_dir(key)
        arrays = []
        for shard in manifest["shards"]:
            path = entry / shard["path"]
            try:
                array = np.load(path, mmap_mode="r" if mmap else None)
                problem = self._verify(path, array, shard, manifest)
            except (OSError, ValueError) as error:
                problem = f"unreadable ({type(error).__name__})"
            if problem:
                self.console.print(
                    f"[yellow]cached embeddings for {escape(key.describe())} failed "
                    f"verification: {escape(str(path))} {escape(problem)}; recomputing them "
                    f"(entry {escape(str(entry))})[/yellow]",
                    highlight=False,
                    soft_wrap=True,
                )
                return None
            arrays.append(array)
        return arrays

    def _verify(self, path: Path, array: np.ndarray, shard: dict, manifest: dict) -> str:
        """Why a shard cannot be trusted ("" when it can): checked once per file version."""
        stat = path.stat()
        seen = (str(path), stat.st_size, stat.st_mtime_ns)
        rows = shard["end"] - shard["start"]
        if array.shape != (rows, manifest["dim"]):
            return f"has shape {array.shape}, the manifest says ({rows}, {manifest['dim']})"
        if seen in self._verified:
            return ""
        if sha256_of(path) != shard.get("sha256"):
            return "does not match the checksum recorded when it was written"
        error = _norm_error(array)
        if not np.isfinite(error):
            return "holds NaN or inf values"
        if manifest.get("unit_rows") and error > UNIT_NORM_TOLERANCE[manifest["dtype"]]:
            return f"holds rows whose norm is {error:.3g} from 1 (they were unit rows)"
        self._verified.add(seen)
        return ""

    def load(self, key: EmbeddingKey, mmap: bool = True) -> np.ndarray | None:
        """``key``'s embeddings [rows, dim] in the stored dtype, or None when absent.

        A single-shard entry comes back memory-mapped (read-only) unless ``mmap`` is False;
        several shards are concatenated in memory (use ``load_shards`` to keep them mapped).
        """
        arrays = self.load_shards(key, mmap=mmap)
        if arrays is None:
            return None
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def contains(self, key: EmbeddingKey) -> bool:
        """Whether a complete entry for ``key`` exists and passes verification."""
        return self.load_shards(key) is not None

    def note_content(self, key: EmbeddingKey) -> None:
        """Record ``key``'s data fingerprint as what its slot (the same model, split name, side
        and transform) is computed from now; when it replaces another, say in one line that the
        data changed and is embedded again."""
        slot = replace(key, dataset="").digest
        if KeyLedger(f"{self.root}-slots").update(slot, {"data": key.dataset}):
            self.console.print(
                f"[yellow]the content of {escape(key.split)} changed since its {key.side}s were "
                f"embedded by {escape(key.model)}; embedding them again[/yellow]",
                highlight=False,
                soft_wrap=True,
            )

    def writer(self, key: EmbeddingKey, attempt: str | None = None) -> ShardWriter:
        """A writer for ``key``'s shards (give all ranks the same ``attempt`` name)."""
        return ShardWriter(self, key, attempt)

    def get_or_compute(
        self,
        key: EmbeddingKey,
        compute: Callable[[], np.ndarray | Iterable[np.ndarray]],
        mmap: bool = True,
        **extra: object,
    ) -> tuple[np.ndarray, bool]:
        """``(embeddings, computed)``: the cached entry for ``key`` when there is one (and a
        line saying it was reused), else ``compute()``'s result written to the cache first
        (its manifest records the seconds it took and the ``extra`` fields, e.g. the device).

        ``compute`` returns the whole array or an iterator of consecutive row chunks (streamed
        into shards). If it raises, its partial shards are removed and no entry is created.
        The returned array is what a later hit returns (stored dtype, memory-mapped).
        """
        cached = self.load(key, mmap=mmap)
        if cached is not None:
            self.console.print(
                f"reused embeddings: {key.label()}, {cached.shape[0]}x{cached.shape[1]}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return cached, False
        self.note_content(key)
        writer = self.writer(key)
        started = time.perf_counter()
        meter = LoadMeter()
        try:
            result = compute()
            n_rows = writer.write_stream([result] if isinstance(result, np.ndarray) else result)
            seconds = round(time.perf_counter() - started, 3)
            writer.commit(n_rows, seconds=seconds, machine=meter.reading(), **extra)
        except BaseException:
            writer.abort()
            raise
        loaded = self.load(key, mmap=mmap)
        if loaded is None:
            raise XbtError(
                f"embeddings for {key.describe()} vanished from {self.root} after being "
                "written; is another process clearing the cache?"
            )
        self.console.print(
            f"computed embeddings: {key.label()}, {n_rows}x{loaded.shape[1]} in "
            f"{time.perf_counter() - started:.1f} s (cached)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return loaded, True

    def prune_attempts(self, key: EmbeddingKey, keep: str) -> None:
        """Remove attempt folders of ``key`` other than ``keep`` that no writer still uses."""
        now = time.time()
        for folder in self.entry_dir(key).iterdir():
            if (
                folder.is_dir()
                and folder.name != keep
                and now - folder.stat().st_mtime > STALE_ATTEMPT_SECONDS
            ):
                shutil.rmtree(folder, ignore_errors=True)

    def abandoned_attempts(self, min_age_s: float = STALE_ATTEMPT_SECONDS) -> list[Path]:
        """Attempt folders no manifest uses (a killed or failed extraction's shards) whose last
        change is at least ``min_age_s`` old (a younger one may belong to a running writer)."""
        now = time.time()
        found = []
        entries = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        for entry in entries:
            try:
                manifest = json.loads((entry / MANIFEST).read_text())
                used = {shard["path"].split("/")[0] for shard in manifest.get("shards", [])}
            except (OSError, ValueError):
                used = set()
            for folder in entry.iterdir():
                if (
                    folder.is_dir()
                    and folder.name not in used
                    and now - folder.stat().st_mtime >= min_age_s
                ):
                    found.append(folder)
        return found
