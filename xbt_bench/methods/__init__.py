"""The method registry: every way of building a backward-compatible query encoder (SPEC §3).

Each entry is a function ``fit(ctx: FitContext) -> FittedMethod`` (see :mod:`.base`),
registered lazily so that listing methods imports no torch. Each has a :class:`MethodCard`
(what it trains and when it needs OLD) and a settings class in :mod:`.configs`.

    from xbt_bench.methods import methods, FitContext
    fitted = methods.get("xbt")(ctx)        # the runner's one call
    queries = fitted.encode_texts(test_set)  # [n_captions, dim] in fitted.gallery's space
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry
from .base import Cost, FitContext, FittedMethod, ModelHandle
from .configs import CONFIGS, MethodConfig, describe_settings, parse_config, resolve_config


@dataclass(frozen=True)
class MethodCard:
    """What ``xbt-bench methods list`` shows about a method (SPEC §3's table)."""

    name: str
    trains: str
    old_at_query: bool
    old_in_training: str
    notes: str
    # Variants (other settings of a method, for analysis) run only when named with --method.
    in_default_run: bool = True


methods: Registry[Callable[[FitContext], FittedMethod]] = Registry(
    "method", hint="xbt-bench methods list"
)
method_cards: dict[str, MethodCard] = {}


def register_method(
    name: str,
    target: str,
    card: MethodCard,
    settings: type[MethodConfig] = MethodConfig,
) -> None:
    """Register ``target`` (a lazy ``"module:function"``) under ``name`` with its card and
    settings class."""
    methods.register(name, target)
    method_cards[name] = card
    CONFIGS.setdefault(name, settings)


_CARDS = [
    ("old", "reference", "–", True, "–", "old→old: the reference to beat"),
    ("new", "reference", "–", False, "–", "new→new: full backfill of the gallery with NEW"),
    (
        "identity",
        "reference",
        "–",
        False,
        "no",
        "raw NEW queries vs OLD gallery (only when dims match): shows incompatibility",
    ),
    (
        "procrustes",
        "closed_form",
        "closed form",
        False,
        "text embeddings only",
        "orthogonal map fitted on text pairs; smaller side zero-padded",
    ),
    (
        "slerp",
        "closed_form",
        "closed form",
        True,
        "text embeddings only",
        "spherical interpolation of OLD query and Procrustes(NEW query); α chosen on support",
    ),
    (
        "xbt-proj",
        "xbt",
        "stage 1",
        False,
        "text embeddings only",
        "ablation: ψ alone on the frozen NEW",
    ),
    (
        "xbt",
        "xbt",
        "stages 1+2",
        False,
        "no (stage 2)",
        "the reference recipe: ψ on text, then LoRA on frozen NEW towards ψ₀ anchors",
    ),
    (
        "xbt-gallery",
        "xbt",
        "stages 1+2",
        False,
        "no (reads OLD's gallery embeddings)",
        "xbt with anchors from OLD's gallery embeddings of the training pairs; LoRA on both towers",
    ),
    (
        "distill",
        "xbt",
        "stage 2 with real OLD targets",
        False,
        "yes",
        "as xbt, but targets from OLD run in the loop (the old-model-in-the-loop cost baseline)",
    ),
    (
        "finetune",
        "xbt",
        "all NEW weights + ψ",
        False,
        "no",
        "not parameter-efficient: shows what PEFT saves",
    ),
]
_VARIANTS = {"xbt-gallery"}
for _name, _module, _trains, _query, _training, _notes in _CARDS:
    _function = "fit_" + _name.replace("-", "_")
    register_method(
        _name,
        f"xbt_bench.methods.{_module}:{_function}",
        MethodCard(_name, _trains, _query, _training, _notes, _name not in _VARIANTS),
    )


def default_methods() -> list[str]:
    """The methods ``xbt-bench run`` fits when none is named: all but the variants."""
    return [name for name in methods.names() if method_cards[name].in_default_run]


__all__ = [
    "Cost",
    "FitContext",
    "FittedMethod",
    "MethodCard",
    "ModelHandle",
    "default_methods",
    "describe_settings",
    "method_cards",
    "methods",
    "parse_config",
    "register_method",
    "resolve_config",
]
