"""Reading a results folder: every result file, by kind, checked, for the reports to join.

Each command writes its own kind of file (:mod:`xbt_bench.results.base`); :func:`load_result_set`
reads them all into one :class:`ResultSet` (runs, sweeps, backfills, diagnostics, tunes,
production indexes), and the
leaderboard, plots, page and cost join them there, by pair, dataset and method. Nothing here
writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.eval.compat import NEW_NEW, OLD_OLD
from xbt_bench.scoring import SplitResult

from .backfill import BackfillResult
from .base import ResultFile, check_version, file_kind, read_object
from .diagnostics import DiagnosticsResult
from .index import IndexResult
from .run import RunResult
from .sweep import SweepResult
from .tune import TuneResult

RESULT_KINDS: dict[str, type[ResultFile]] = {
    kind.kind: kind
    for kind in (
        RunResult, SweepResult, BackfillResult, DiagnosticsResult, TuneResult, IndexResult
    )
}
HINT = "run `xbt-bench run --pair NAME` first, or pass --results-dir"


def read_result(path: str | Path) -> ResultFile:
    """The result file at ``path``, as the type its ``kind`` names; one-line errors for an
    unknown kind, another schema version or malformed content."""
    path = Path(path)
    data = read_object(path)
    kind = file_kind(data, path)
    if kind not in RESULT_KINDS:
        raise ConfigError(
            f"result file {path} has unknown kind {kind!r} (known: {', '.join(RESULT_KINDS)}); "
            "it was written by another tool or a newer xbt-bench"
        )
    cls = RESULT_KINDS[kind]
    check_version(cls, data, path)
    return cls.from_data(data, path)


def result_files(results_dir: str | Path) -> list[Path]:
    """Every result file under ``results_dir`` (``<pair>/<dataset>/*.json`` and one folder
    deeper, as ``diagnostics/<split>.json``), temporary files skipped."""
    root = Path(results_dir)
    found = [*root.glob("*/*/*.json"), *root.glob("*/*/*/*.json")]
    return sorted(p for p in found if not p.name.startswith("."))


@dataclass
class ResultSet:
    """Every result file of a results folder, by kind (each list in file order)."""

    root: Path
    runs: list[RunResult] = field(default_factory=list)
    run_files: list[Path] = field(default_factory=list)
    sweeps: list[SweepResult] = field(default_factory=list)
    backfills: list[BackfillResult] = field(default_factory=list)
    diagnostics: list[DiagnosticsResult] = field(default_factory=list)
    tunes: list[TuneResult] = field(default_factory=list)
    indexes: list[IndexResult] = field(default_factory=list)
    index_files: list[Path] = field(default_factory=list)

    def add(self, result: ResultFile, path: Path) -> None:
        """File ``result`` (read from ``path``) under its kind."""
        if isinstance(result, RunResult):
            self.runs.append(result)
            self.run_files.append(path)
        elif isinstance(result, SweepResult):
            self.sweeps.append(result)
        elif isinstance(result, BackfillResult):
            self.backfills.append(result)
        elif isinstance(result, DiagnosticsResult):
            self.diagnostics.append(result)
        elif isinstance(result, TuneResult):
            self.tunes.append(result)
        elif isinstance(result, IndexResult):
            self.indexes.append(result)
            self.index_files.append(path)


def load_result_set(results_dir: str | Path) -> ResultSet:
    """Read every result file under ``results_dir``; the runs are checked to belong together
    (:func:`check_results`). NotFoundError when the folder has no run result, ConfigError naming
    the first malformed file."""
    root = Path(results_dir)
    if not root.is_dir():
        raise NotFoundError(f"results folder {root} does not exist; {HINT}")
    found = ResultSet(root)
    for path in result_files(root):
        found.add(read_result(path), path)
    if not found.runs:
        raise NotFoundError(f"no run results (<pair>/<dataset>/<method>.json) in {root}; {HINT}")
    check_results(found.runs, found.run_files)
    check_index_results(found.indexes, found.index_files)
    return found


def load_results(results_dir: str | Path) -> list[RunResult]:
    """The run results under ``results_dir`` (:func:`load_result_set`)."""
    return load_result_set(results_dir).runs


def check_results(results: Sequence[RunResult], files: Sequence[Path]) -> None:
    """ConfigError naming both files when two results would share a leaderboard table without
    belonging together: the same method twice on one (pair, dataset, split), or two
    results of one table scored against different references (old→old or new→new numbers, or
    the models and data they were scored on). A table ranks only results of one run's world."""
    _check_tables((r, path, r.splits, ()) for r, path in zip(results, files, strict=True))


def check_index_results(results: Sequence[IndexResult], files: Sequence[Path]) -> None:
    """:func:`check_results` for the recalls through production indexes: one table per
    (pair, dataset, split, index), with the references through that index."""
    _check_tables(
        (r, path, {split: data.indexed for split, data in r.splits.items()}, (r.index,))
        for r, path in zip(results, files, strict=True)
    )


def _check_tables(
    entries: Iterable[tuple[RunResult | IndexResult, Path, Mapping[str, SplitResult], tuple]],
) -> None:
    """The checks of :func:`check_results` over (result, its file, its scored splits, what
    else names its table) entries."""
    seen: dict[tuple, tuple[RunResult | IndexResult, Path]] = {}
    references: dict[tuple, tuple[Mapping[str, SplitResult], RunResult | IndexResult, Path]] = {}
    for result, path, splits, extra in entries:
        for split, data in splits.items():
            table = (result.pair, result.dataset, split, *extra)
            where = " · ".join([result.pair, result.dataset, f"split {split}", *extra])
            key = (*table, result.method)
            if key in seen:
                raise ConfigError(
                    f"{seen[key][1]} and {path} are both {result.method!r} on {where}; a "
                    "leaderboard ranks one result per method: delete one of them (or keep it in "
                    "another results folder)"
                )
            seen[key] = (result, path)
            if table not in references:
                references[table] = (splits, result, path)
                continue
            first_splits, first, first_path = references[table]
            theirs = first_splits[split]
            differs = [s for s in (OLD_OLD, NEW_NEW) if data.metrics[s] != theirs.metrics[s]]
            differs += [
                f"{name} fingerprint"
                for name in ("old", "new", f"data:{split}")
                if name in result.fingerprints
                and name in first.fingerprints
                and result.fingerprints[name] != first.fingerprints[name]
            ]
            if differs:
                raise ConfigError(
                    f"{path} and {first_path} are on the same table ({where}) but were scored "
                    f"against different references ({', '.join(differs)} differ): their "
                    "margins are not comparable. Rerun one of them, or keep them in separate "
                    "results folders"
                )
