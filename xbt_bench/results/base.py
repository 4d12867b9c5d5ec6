"""The base of every result file: a typed, versioned JSON object that one command writes.

Each command writes its own kind of file, and only that one (``run``: :class:`RunResult`,
``sweep``, ``backfill``, ``tune``, ``diagnostics``); nothing reads a file back to merge into it,
and the reports join the kinds when they read them (:mod:`xbt_bench.results.store`). Every
file carries its ``kind`` and ``schema_version``: a file of another version is refused with one
line that says how to regenerate it (an older one) or to upgrade xbt-bench (a newer one), never
misread.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from abc import abstractmethod
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Self

from xbt_bench import __version__
from xbt_bench.atomic import write_json
from xbt_bench.errors import ConfigError, NotFoundError, validation_message

# Version 2: sweeps and partial-backfill curves live in their own files; every file says its
# kind; diagnostics are typed.
# Version 3: production indexes in their own files (kind "index"), not run results with an
# approximate_index; partial-backfill curves record the monotone calibrations and the
# uncertainty order chosen on support.
SCHEMA_VERSION = 3
PROVENANCE_KEYS = ("versions", "git_revision", "date")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def collect_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a result depends on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    distributions = {
        "torch": ("torch",),
        "open_clip": ("open_clip_torch",),
        "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
        "numpy": ("numpy",),
    }
    for key, names in distributions.items():
        for name in names:
            try:
                versions[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    versions["xbt_bench"] = __version__
    return versions


def git_revision(path: Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), with ``+dirty``
    when tracked files under ``path`` changed (the code, not results written beside it); None
    outside a git repository or before the first commit."""
    where = str(path or Path(__file__).resolve().parents[1])

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        revision = git("rev-parse", "--verify", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return None
    return revision + ("+dirty" if dirty else "")


def path_component(value: str) -> str:
    """``value`` as one safe path component: itself when it is one, else a readable slug plus a
    short hash of the whole value (``folder:/data/a/b`` -> ``folder_data_a_b-3f2a9c1d``), so two
    values never share a component."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip(".") or "_"
    if safe == value:
        return safe
    return f"{safe[:60]}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


class ResultFile(BaseModel):
    """One result file: ``kind`` and ``schema_version`` first, then the subclass's fields, then
    provenance (package versions, git revision, date). Reads and writes itself (atomically)."""

    model_config = ConfigDict(extra="forbid")

    kind: ClassVar[str]
    # How to regenerate a file of this kind, formatted with its fields (for version errors).
    command: ClassVar[str]
    # Keys written first (after kind and version): what the file is about.
    leading: ClassVar[tuple[str, ...]] = ()

    schema_version: int = SCHEMA_VERSION
    versions: dict[str, str] = Field(default_factory=collect_versions)
    git_revision: str | None = Field(default_factory=git_revision)
    date: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @abstractmethod
    def relative_path(self) -> Path:
        """Where the file lives under a results folder."""

    def path_in(self, results_dir: str | Path) -> Path:
        """Where this result lives under ``results_dir``."""
        return Path(results_dir) / self.relative_path()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``kind``, ``schema_version`` and the :attr:`leading` keys first,
        provenance last."""
        data = self.model_dump(mode="json")
        head = {"kind": self.kind, "schema_version": data.pop("schema_version")}
        head |= {key: data.pop(key) for key in self.leading}
        provenance = {key: data.pop(key) for key in PROVENANCE_KEYS}
        return {**head, **data, **provenance}

    def to_json(self, path: str | Path) -> Path:
        """Write the result atomically to ``path`` and return it."""
        write_json(path, self.to_dict())
        return Path(path)

    def save(self, results_dir: str | Path) -> Path:
        """Write the result atomically to its place under ``results_dir``."""
        return self.to_json(self.path_in(results_dir))

    @classmethod
    def from_data(cls, data: dict[str, Any], path: Path) -> Self:
        """Validate a file's JSON object (its kind and version already checked)."""
        fix = "rerun the command that wrote it, or delete it"
        try:
            return cls.model_validate({k: v for k, v in data.items() if k != "kind"})
        except ValidationError as error:
            where, message, _ = validation_message(error)
            raise ConfigError(
                f"result file {path} is malformed at {where}: {message}; {fix}"
            ) from error

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        """Read a result file of this kind; a one-line error naming the file and the fix when
        it is unreadable, of another kind or of another schema version."""
        path = Path(path)
        data = read_object(path)
        kind = file_kind(data, path)
        if kind != cls.kind:
            raise ConfigError(
                f"result file {path} holds a {kind!r} result, not a {cls.kind!r} one"
            )
        check_version(cls, data, path)
        return cls.from_data(data, path)


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; one-line errors for a missing, unreadable or non-object
    file."""
    fix = "rerun the command that wrote it, or delete it"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise NotFoundError(f"result file {path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"result file {path} is not valid JSON ({error}); {fix}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"result file {path} must hold a JSON object; {fix}")
    return data


def file_kind(data: dict[str, Any], path: Path) -> str:
    """The ``kind`` a result file declares (files of schema version 1 had none: all were run
    results)."""
    kind = data.get("kind", "run")
    if not isinstance(kind, str):
        raise ConfigError(f"result file {path}: 'kind' must be a string, got {kind!r}")
    return kind


def check_version(cls: type[ResultFile], data: dict[str, Any], path: Path) -> None:
    """ConfigError unless ``data`` has this xbt-bench's schema version: an older file names the
    command that regenerates it, a newer one asks for a newer xbt-bench."""
    version = data.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(
            f"result file {path} has schema version {version!r}; this xbt-bench reads version "
            f"{SCHEMA_VERSION}: upgrade xbt-bench to read it (pip install -U xbt-bench)"
        )
    fields = {key: data.get(key, "?") for key in ("pair", "method", "split")}
    raise ConfigError(
        f"result file {path} has schema version {version}, older than this xbt-bench's "
        f"{SCHEMA_VERSION}; regenerate it with `{cls.command.format(**fields)}` (or delete it)"
    )
