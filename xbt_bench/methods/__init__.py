"""The method registry: every way of building a backward-compatible query encoder.

A method is one function in one module, declared once with :func:`register_method`, which
carries everything the runner, the sweep, the leaderboard and the CLI need to know about it::

    @register_method(
        "procrustes",
        kind="closed form",
        trains="closed form",
        training_needs="text embeddings",
        notes="orthogonal map fitted on text pairs; smaller side zero-padded",
    )
    def fit_procrustes(ctx: FitContext, settings: MethodConfig) -> FittedMethod: ...

The registry validates the method's settings (its ``settings`` class over the pair file's and
the command line's values), times the fit, tracks its peak memory and fills its cost. Built-in
methods are the modules of this package (adding a method is adding a module); an installed
package adds its own through the entry-point group ``xbt_bench.methods`` (each entry point
names a module whose import registers them). Nothing is imported until the registry is first
asked for a method.

    from xbt_bench.methods import methods
    fitted = methods.get("xbt")(ctx)        # the runner's one call
    queries = fitted.encode_texts(test_set)  # [n_captions, dim] in fitted.gallery's space
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

from ..errors import XbtError
from ..eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from ..registry import Registry
from .base import Cost, FitContext, FittedMethod, ModelHandle, QueryEncoderSpec, measured
from .search import Choice, FloatRange, IntRange, SearchSpace, check_space
from .settings import MethodConfig, describe_settings, parse_settings, unknown_settings

ENTRY_POINT_GROUP = "xbt_bench.methods"
Kind = Literal["reference", "closed form", "trained"]
KIND_ORDER = {"reference": 0, "closed form": 1, "trained": 2}
Deploys = Literal["old->old", "new->new", "method->old"]
# What of OLD a method needs while it trains, from least to most.
TrainingNeeds = Literal[
    "nothing", "text embeddings", "OLD embeddings of the pairs", "OLD forward passes"
]
TRAINING_NEEDS: tuple[str, ...] = TrainingNeeds.__args__  # type: ignore[attr-defined]
Group = Literal["reference", "OLD retired", "OLD kept at query time"]
GROUPS: tuple[str, ...] = ("OLD retired", "OLD kept at query time", "reference")
Fit = Callable[[FitContext, Any], FittedMethod]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: its fit function, settings class and card.

    - ``kind``: ``reference`` (old, new: scored, never fitted), ``closed form`` (fitted without
      training, deterministic) or ``trained`` (stochastic: ``xbt-bench run --seeds N`` repeats
      it);
    - ``trains``, ``notes``: what ``methods list`` prints;
    - ``old_at_query``: whether its queries need OLD at query time;
    - ``variant``: another setting of a method, run only when named with ``--method``;
    - ``deploys``: the setting its queries are scored in (``method->old``, or the references'
      own ``old->old`` / ``new->new``);
    - ``sweepable``: trains on image–text pairs, so ``xbt-bench sweep`` refits it on fewer;
    - ``extends``: another method whose settings this one's include: a pair file's table for
      that method applies to this one too (its own table wins), so both train the same way and
      share their checkpoints;
    - ``report``: what the fitted method shows on the leaderboard, ``{key: label}``; each fit
      fills ``FittedMethod.report`` with exactly these keys (e.g. slerp's α per direction);
    - ``search``: the ranges ``xbt-bench tune`` searches its settings over (trained methods);
    - ``training_needs``: what of OLD it needs while it trains (:data:`TRAINING_NEEDS`);
    - ``baseline``: another method its result is compared with, seed by seed, on every split
      (``xbt``'s margin over ``stitch`` is what its stage 2 adds).
    - ``needs_models``: fitting it or computing its queries runs OLD's or NEW's network, not
      only their embeddings (LoRA, fine-tuning, OLD in the loop): on a pair of stored
      embeddings (``embeddings:DIR``) it is skipped, in one line. The default (False) is a
      method that reads embeddings only, which runs on every pair.
    """

    name: str
    fit: Fit
    settings: type[MethodConfig]
    kind: Kind
    trains: str
    old_at_query: bool
    notes: str
    variant: bool = False
    deploys: Deploys = METHOD_OLD
    sweepable: bool = False
    extends: str | None = None
    report: Mapping[str, str] = field(default_factory=dict)
    search: SearchSpace | None = None
    training_needs: TrainingNeeds = "nothing"
    baseline: str | None = None

    @property
    def group(self) -> Group:
        """Where the leaderboard ranks it: ``reference`` (old, new), ``OLD kept at query time``
        or ``OLD retired`` (backfill-free: OLD can be switched off)."""
        if self.deploys != METHOD_OLD:
            return "reference"
        return "OLD kept at query time" if self.old_at_query else "OLD retired"
    needs_models: bool = False

    def parse_settings(self, values: Mapping[str, Any] | MethodConfig | None) -> MethodConfig:
        """``values`` over this method's defaults; ConfigError naming the bad key."""
        return parse_settings(self.name, self.settings, values)

    def describe_settings(self) -> list[tuple[str, str, str]]:
        """``(name, default, description)`` of each setting."""
        return describe_settings(self.settings)

    def unknown_settings(self, keys: Any) -> list[str]:
        """The ``keys`` this method has no setting for."""
        return unknown_settings(self.settings, keys)

    def __call__(self, ctx: FitContext) -> FittedMethod:
        """Fit on ``ctx`` (settings from ``ctx.config``): timed, with peak memory and cost."""
        settings = self.parse_settings(ctx.config)
        fitted = measured(ctx, lambda: self.fit(ctx, settings))
        if set(fitted.report) != set(self.report):
            raise XbtError(
                f"method {self.name!r} reported {sorted(fitted.report)} but declares "
                f"{sorted(self.report)} (register_method(report=...)); fix the method"
            )
        fitted.config = settings.model_dump()
        fitted.needs_old_at_query = self.old_at_query
        return fitted


def _populate() -> None:
    """Import this package's modules (whose decorators register the built-in methods), then
    every ``xbt_bench.methods`` entry point."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise XbtError(
                f"methods of the installed package entry point {entry_point.name!r} "
                f"({entry_point.value}) could not be loaded: {type(error).__name__}: {error}; "
                "fix or uninstall that package"
            ) from error


methods: Registry[MethodSpec] = Registry(
    "method", hint="xbt-bench methods list", populate=_populate
)


def register_method(
    name: str,
    *,
    kind: Kind,
    trains: str,
    notes: str,
    settings: type[MethodConfig] = MethodConfig,
    old_at_query: bool = False,
    variant: bool = False,
    deploys: Deploys = METHOD_OLD,
    sweepable: bool = False,
    extends: str | None = None,
    report: Mapping[str, str] | None = None,
    search: SearchSpace | None = None,
    training_needs: TrainingNeeds = "nothing",
    baseline: str | None = None,
    needs_models: bool = False,
) -> Callable[[Fit], Fit]:
    """Declare the decorated ``fit(ctx, settings) -> FittedMethod`` as method ``name``
    (fields as :class:`MethodSpec`); the function itself is returned unchanged."""
    if deploys not in (OLD_OLD, NEW_NEW, METHOD_OLD):
        raise XbtError(f"method {name!r}: deploys={deploys!r} is not a setting")
    if training_needs not in TRAINING_NEEDS:
        raise XbtError(
            f"method {name!r}: training_needs={training_needs!r} is not one of {TRAINING_NEEDS}"
        )
    if search is not None:
        check_space(
            name, search, list(settings.model_fields), lambda v: parse_settings(name, settings, v)
        )

    def decorator(fit: Fit) -> Fit:
        spec = MethodSpec(
            name=name,
            fit=fit,
            settings=settings,
            kind=kind,
            trains=trains,
            old_at_query=old_at_query,
            notes=notes,
            variant=variant,
            deploys=deploys,
            sweepable=sweepable,
            extends=extends,
            report=dict(report or {}),
            search=search,
            training_needs=training_needs,
            baseline=baseline,
            needs_models=needs_models,
        )
        methods.register(name, spec)
        return fit

    return decorator


def method_names() -> list[str]:
    """Every registered method: references, then closed forms, then trained ones (each kind
    in registration order)."""
    return sorted(methods.names(), key=lambda name: KIND_ORDER[methods.get(name).kind])


def default_methods() -> list[str]:
    """The methods ``xbt-bench run`` fits when none is named: all but the variants."""
    return [name for name in method_names() if not methods.get(name).variant]


__all__ = [
    "GROUPS",
    "TRAINING_NEEDS",
    "Choice",
    "Cost",
    "FitContext",
    "FittedMethod",
    "FloatRange",
    "IntRange",
    "MethodConfig",
    "MethodSpec",
    "ModelHandle",
    "SearchSpace",
    "QueryEncoderSpec",
    "default_methods",
    "method_names",
    "methods",
    "register_method",
]
