"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import difflib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class XbtError(Exception):
    """An error caused by user input (a name, a file, a setting) whose message says the fix."""


class NotFoundError(XbtError, KeyError):
    """A named thing (pair, method, dataset, model, file) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(XbtError, ValueError):
    """A config file or value is malformed."""


class InputError(XbtError, ValueError):
    """Data handed to a function is malformed (wrong shape, NaN, ids out of range)."""


class StorageError(XbtError):
    """A file or folder could not be written: the disk is full, read-only, or not ours."""


# OSErrors that mean "this disk cannot take the write", with how a message says it.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
WRITE_ELSEWHERE = (
    "or write elsewhere (XBT_BENCH_HOME for caches, --output-dir for results and pages)"
)


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the disk holding ``path`` (its nearest existing folder), or None."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def storage_error(
    path: str | os.PathLike[str], error: OSError, needed: int | None = None, at_least: bool = False
) -> StorageError | None:
    """A one-line :class:`StorageError` for ``error`` when it says the disk cannot take the
    write of ``path`` (full, over quota, read-only, not permitted), naming the path and the
    ``needed`` bytes (``at_least`` when only a lower bound is known); None for any other
    OSError, which the caller re-raises."""
    reason = STORAGE_ERRNOS.get(error.errno or 0)
    if reason is None:
        return None
    path = Path(path)
    size = "" if needed is None else f"{'more than ' if at_least else ''}{needed:,} bytes needed"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path.parent)
        space = [size] if size else []
        space += [f"{free:,} free"] if free is not None else []
        detail = f" ({', '.join(space)})" if space else ""
        return StorageError(
            f"cannot write {path}: {reason}{detail}; free some space there, {WRITE_ELSEWHERE}"
        )
    detail = f" ({size})" if size else ""
    return StorageError(
        f"cannot write {path}: {reason}{detail}; make {path.parent} writable, {WRITE_ELSEWHERE}"
    )


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of
    two neighbours (so ``tset`` is one edit from ``test``, two from ``text``)."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def did_you_mean(name: str, choices: Iterable[str], known: str = "known") -> str:
    """``"did you mean 'x'?"`` for the closest of ``choices`` (fewest edits, then difflib's
    similarity) when it is close enough, else ``"known: a, b, c"``."""
    choices = list(dict.fromkeys(choices))

    def score(choice: str) -> tuple[int, float]:
        ratio = difflib.SequenceMatcher(None, name.lower(), choice.lower()).ratio()
        return _edit_distance(name.lower(), choice.lower()), -ratio

    if choices:
        best = min(choices, key=score)
        edits, ratio = score(best)
        if edits <= max(1, len(name) // 3) or -ratio >= 0.6:
            return f"did you mean {best!r}?"
    return f"{known}: {', '.join(sorted(choices)) or '(none)'}"


def require(owner: object, checks: dict[str, bool], what: str, rules: str) -> None:
    """ConfigError naming the value of every field of ``owner`` whose check failed
    (``"invalid toy recipe: lr=0 (lr > 0, ...)"``); nothing when all hold."""
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        values = ", ".join(f"{name}={getattr(owner, name)!r}" for name in bad)
        raise ConfigError(f"invalid {what}: {values} ({rules})")


def validation_message(error: ValidationError) -> tuple[str, str, str]:
    """The first problem pydantic found, as ``(field, message, error type)``; ``field`` is the
    dotted location (``"(top level)"`` when the whole object is at fault)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return field, first["msg"], first["type"]
