"""Search spaces: the ranges ``xbt-bench tune`` searches a method's settings over.

A trained method declares its space once, in its registration next to its settings
(``register_method(..., search=SearchSpace(...))``): a :class:`FloatRange`, :class:`IntRange` or
:class:`Choice` per setting it searches. The registry checks every key against the method's
settings and every value against their validation, so a space can only propose settings the
method accepts. The tuner turns each dimension into an Optuna suggestion; nothing here imports
Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import XbtError


@dataclass(frozen=True)
class FloatRange:
    """A real setting in [low, high] (on a log scale when ``log``)."""

    low: float
    high: float
    log: bool = False

    def values(self) -> list[Any]:
        """The values that must validate: the ends."""
        return [self.low, self.high]


@dataclass(frozen=True)
class IntRange:
    """An integer setting in [low, high] (on a log scale when ``log``); ``capped`` ranges are
    shortened to a tuning budget's step cap (:meth:`SearchSpace.capped`)."""

    low: int
    high: int
    log: bool = False
    capped: bool = False

    def values(self) -> list[Any]:
        """The values that must validate: the ends."""
        return [self.low, self.high]


@dataclass(frozen=True)
class Choice:
    """A setting that takes one of ``options`` (numbers, strings, booleans or None)."""

    options: tuple[Any, ...]

    def values(self) -> list[Any]:
        """The values that must validate: every option."""
        return list(self.options)


Dimension = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class SearchSpace:
    """What a method's settings are searched over: one :data:`Dimension` per setting (ranges
    of training steps are marked ``capped``: a tuning budget caps them), and ``starts``: points
    every method of a family is tried at first, after its own configured settings (e.g. the
    research log's best stage-2 recipe, so no method starts from worse defaults than another)."""

    dimensions: Mapping[str, Dimension]
    starts: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name, dim in self.dimensions.items():
            if isinstance(dim, FloatRange | IntRange) and not dim.low < dim.high:
                raise XbtError(f"search space {name!r}: low {dim.low} must be below high")
            if isinstance(dim, Choice) and len(dim.options) < 2:
                raise XbtError(f"search space {name!r}: a choice needs two or more options")

    def capped(self, caps: Mapping[str, int]) -> SearchSpace:
        """This space with every step-counting range (``capped``) cut to its cap (``caps``:
        setting name -> the most steps a trial may train)."""
        out: dict[str, Dimension] = {}
        for name, dim in self.dimensions.items():
            if isinstance(dim, IntRange) and dim.capped and name in caps:
                high = min(dim.high, caps[name])
                dim = IntRange(min(dim.low, high - 1), high, dim.log, capped=True)
            out[name] = dim
        return SearchSpace(out, self.starts)

    def including(self, values: Mapping[str, Any]) -> SearchSpace:
        """This space widened to hold ``values`` (a method's configured settings, tried first):
        a range is stretched to them, a choice gains them."""
        out: dict[str, Dimension] = {}
        for name, dim in self.dimensions.items():
            value = values.get(name)
            if value is None:
                out[name] = dim
            elif isinstance(dim, Choice):
                out[name] = dim if value in dim.options else Choice((*dim.options, value))
            elif isinstance(dim, IntRange):
                low, high = min(dim.low, int(value)), max(dim.high, int(value))
                out[name] = IntRange(low, high, dim.log, dim.capped)
            else:
                out[name] = FloatRange(min(dim.low, value), max(dim.high, value), dim.log)
        return SearchSpace(out, self.starts)

    def step_settings(self) -> list[str]:
        """The settings the budget's step cap applies to."""
        return [n for n, d in self.dimensions.items() if isinstance(d, IntRange) and d.capped]

    def names(self) -> list[str]:
        """The searched settings."""
        return list(self.dimensions)

    def describe(self) -> list[tuple[str, str]]:
        """``(setting, range)`` of each dimension, for ``methods show``."""
        rows = []
        for name, dim in self.dimensions.items():
            if isinstance(dim, Choice):
                text = " | ".join(map(repr, dim.options))
            else:
                scale = ", log" if dim.log else ""
                cap = ", capped by the budget" if getattr(dim, "capped", False) else ""
                text = f"[{dim.low:g}, {dim.high:g}]{scale}{cap}"
            rows.append((name, text))
        return rows


def check_space(
    method: str, space: SearchSpace, known: Sequence[str], validate: Any
) -> SearchSpace:
    """``space`` after checking that it and its starts name only settings in ``known`` and
    that every value it can propose passes ``validate({setting: value})``; XbtError naming the
    first bad one."""
    for name, dim in space.dimensions.items():
        if name not in known:
            raise XbtError(
                f"method {method!r}: search space names {name!r}, not one of its settings"
            )
        for value in dim.values():
            validate({name: value})
    for start in space.starts:
        for name, value in start.items():
            if name not in space.dimensions:
                raise XbtError(f"method {method!r}: a start sets {name!r}, which is not searched")
            validate({name: value})
    return space
