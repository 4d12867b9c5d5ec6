"""Result files: one typed, versioned JSON file per command's output, the reports' only input.

``run`` writes :class:`RunResult` (``<pair>/<dataset>/<method>.json``), ``sweep``
:class:`SweepResult` (``<method>.sweep.json``), ``backfill`` :class:`BackfillResult`
(``<method>.backfill.json``), ``pairs diagnose`` :class:`DiagnosticsResult`
(``diagnostics/<split>.json``), ``tune`` :class:`TuneResult` (``<pair>/tuned/<method>.json``)
and ``run --index`` :class:`IndexResult` (``<method>.index-<name>.json``); :func:`load_result_set`
reads a whole folder for the reports.
"""

from .backfill import BackfillResult
from .base import SCHEMA_VERSION, ResultFile, collect_versions, git_revision, path_component
from .diagnostics import DiagnosticsResult
from .index import IndexResult
from .run import (
    EmbeddingThroughput,
    GalleryShape,  # issue 22: the upgrade bill's gallery
    MethodResult,
    Needs,
    ReportValue,
    RunResult,
)
from .store import (
    ResultSet,
    check_results,
    load_result_set,
    load_results,
    read_result,
    result_files,
)
from .sweep import SweepResult
from .tune import Budget, Trial, TuneResult, tuned_settings

__all__ = [
    "SCHEMA_VERSION",
    "BackfillResult",
    "Budget",
    "DiagnosticsResult",
    "EmbeddingThroughput",
    "GalleryShape",
    "IndexResult",
    "MethodResult",
    "Needs",
    "ReportValue",
    "ResultFile",
    "ResultSet",
    "RunResult",
    "SweepResult",
    "Trial",
    "TuneResult",
    "check_results",
    "collect_versions",
    "git_revision",
    "load_result_set",
    "load_results",
    "path_component",
    "read_result",
    "result_files",
    "tuned_settings",
]
