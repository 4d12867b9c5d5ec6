"""One small registry type for pairs, methods and datasets (after lm-eval's registry).

Entries are registered with a decorator or as lazy ``"module:attr"`` strings that are
imported on first use, so listing names never imports heavy code. A registry may also take a
``populate`` function, called once before its first lookup, that imports the modules whose
decorators fill it (built-ins and entry points of installed packages).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import NotFoundError, XbtError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` names them in errors, ``hint`` says how to list)."""

    def __init__(
        self, kind: str, hint: str = "", populate: Callable[[], None] | None = None
    ) -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}
        self._populate = populate

    def _populated(self) -> None:
        """Run ``populate`` once (it may register entries, so it is cleared first)."""
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate()

    def register(
        self, name: str, obj: T | str | None = None, *, aliases: tuple[str, ...] = ()
    ) -> Callable[[T], T] | T | str:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``.

        Without ``obj`` this returns a decorator.
        """
        if obj is None:

            def decorator(target: T) -> T:
                self._add(name, target, aliases)
                return target

            return decorator
        self._add(name, obj, aliases)
        return obj

    def _add(self, name: str, obj: T | str, aliases: tuple[str, ...]) -> None:
        if name in self._entries or name in self._aliases:
            existing = self._entries.get(name)
            if existing is obj:
                return
            raise XbtError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or an alias of it; NotFoundError otherwise."""
        self._populated()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        message = f"{self.kind} {name!r} not found; {did_you_mean(name, self._entries)}"
        if self.hint:
            message += f" (see `{self.hint}`)"
        raise NotFoundError(message)

    def get(self, name: str) -> T:
        """The entry for ``name``, importing it if it was registered lazily."""
        key = self.canonical(name)
        entry = self._entries[key]
        if isinstance(entry, str) and ":" in entry:
            module_name, attr = entry.split(":", 1)
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[key] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Registered names (not aliases), in registration order."""
        self._populated()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._populated()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
