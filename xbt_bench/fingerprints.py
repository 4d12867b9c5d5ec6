"""Cache keys that cannot go stale: what a cached thing was computed from, by content.

- :func:`file_hashes`: the SHA-256 of each file's bytes (datasets are keyed by their images'
  content, not their names and sizes). Each file is read once; its hash is remembered by
  (path, size, mtime) in ``$XBT_BENCH_HOME/file-hashes.sqlite3``, so a rerun reads no unchanged
  file. A file changed in the last seconds is not remembered (its mtime may not move yet).
- :func:`code_version`: a hash of each named module's code (its syntax tree, so comments and
  formatting do not count), for keys of training checkpoints.
- :class:`KeyLedger`: the content each cache *slot* (a cached thing's identity: settings,
  models, data names) was last computed from, so that when a key changes because its content
  did, the run can say in one line what changed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from functools import cache
from pathlib import Path

from .atomic import sha256_of, write_json
from .errors import StorageError, XbtError
from .paths import cache_dir

HASH_INDEX = "file-hashes.sqlite3"
# A file modified this recently may change again within the same mtime tick: hash, not remember.
RACY_SECONDS = 2.0


def _index_path() -> Path:
    return cache_dir() / HASH_INDEX


def _open_index(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60)
    connection.execute(
        "CREATE TABLE IF NOT EXISTS hashes "
        "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
    )
    return connection


def _index_error(path: Path, error: sqlite3.Error) -> XbtError:
    return StorageError(
        f"cannot use the file-hash index {path} ({error}); free space on that disk or make it "
        "writable, or delete the file (it only remembers hashes)"
    )


def file_hashes(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The SHA-256 of each file of ``paths`` (in order), each read only when its (path, size,
    mtime) is not in the index of earlier reads (module docstring); OSError when one is
    missing."""
    resolved = [str(Path(p).resolve()) for p in paths]
    stats = [os.stat(p) for p in resolved]
    index = _index_path()
    try:
        with closing(_open_index(index)) as connection:
            known = {}
            for start in range(0, len(resolved), 500):  # SQLite's limit on bound parameters
                chunk = resolved[start : start + 500]
                marks = ",".join("?" * len(chunk))
                known.update(
                    ((path, size, mtime), sha)
                    for path, size, mtime, sha in connection.execute(
                        f"SELECT path, size, mtime_ns, sha256 FROM hashes WHERE path IN ({marks})",
                        chunk,
                    )
                )
            hashes, fresh = [], []
            now = time.time_ns()
            for path, stat in zip(resolved, stats, strict=True):
                seen = (path, stat.st_size, stat.st_mtime_ns)
                digest = known.get(seen) or sha256_of(path)
                hashes.append(digest)
                if seen not in known and now - stat.st_mtime_ns > RACY_SECONDS * 1e9:
                    fresh.append((*seen, digest))
            if fresh:
                with connection:
                    connection.executemany(
                        "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", fresh
                    )
    except sqlite3.Error as error:
        raise _index_error(index, error) from None
    return hashes


@cache
def _module_hash(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise XbtError(f"module {name} is not importable; its code cannot key a cache")
    source = Path(spec.origin).read_text(encoding="utf-8")
    return hashlib.sha256(ast.dump(ast.parse(source)).encode()).hexdigest()[:16]


def code_version(modules: Iterable[str]) -> dict[str, str]:
    """``{"code of MODULE": hash}`` for each module name: a hash of its syntax tree (edits to
    comments and formatting leave it unchanged), read once per process."""
    return {f"code of {name}": _module_hash(name) for name in modules}


class KeyLedger:
    """What each cache slot under ``folder`` was last computed from: one small JSON file a
    slot, holding named content hashes (code versions, data fingerprints)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def update(self, slot: str, content: Mapping[str, str]) -> list[str]:
        """Record ``content`` as what ``slot`` is computed from now; return the names whose
        hash differs from the previous record (empty for a first record or no change)."""
        path = self.folder / f"{slot}.json"
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        changed = [name for name, value in content.items() if previous.get(name, value) != value]
        if previous != dict(content):
            write_json(path, dict(content))
        return changed
