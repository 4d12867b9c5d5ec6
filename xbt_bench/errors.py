"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
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
