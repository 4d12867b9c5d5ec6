"""Result files: one typed, versioned JSON file per command's output, the reports' only input.

``run`` writes :class:`RunResult` (``<pair>/<dataset>/<method>.json``), ``sweep``
:class:`SweepResult` (``<method>.sweep.json``), ``backfill`` :class:`BackfillResult`
(``<method>.backfill.json``) and ``pairs diagnose`` :class:`DiagnosticsResult`
(``diagnostics/<split>.json``); :func:`load_result_set` reads a whole folder for the reports.
"""

from .backfill import BackfillResult
from .base import SCHEMA_VERSION, ResultFile, collect_versions, git_revision, path_component
from .diagnostics import DiagnosticsResult
from .run import (
    EmbeddingThroughput,
    GalleryShape,  # issue 22: the upgrade bill's gallery
    MethodResult,
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

__all__ = [
    "SCHEMA_VERSION",
    "BackfillResult",
    "DiagnosticsResult",
    "EmbeddingThroughput",
    "GalleryShape",
    "MethodResult",
    "ReportValue",
    "ResultFile",
    "ResultSet",
    "RunResult",
    "SweepResult",
    "check_results",
    "collect_versions",
    "git_revision",
    "load_result_set",
    "load_results",
    "path_component",
    "read_result",
    "result_files",
]
