"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


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
