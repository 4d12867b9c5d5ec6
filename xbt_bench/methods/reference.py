"""Reference methods: ``old`` (old→old), ``new`` (new→new, full backfill) and ``identity``
(raw NEW queries against the OLD gallery: how incompatible the two spaces are)."""

from __future__ import annotations

import numpy as np

from ..eval.compat import NEW_NEW, OLD_OLD
from . import register_method
from .base import FitContext, FittedMethod, QueryPath, Which
from .settings import MethodConfig


def _own_queries(ctx: FitContext, which: Which) -> QueryPath:
    """OLD's or NEW's own query encoder, unchanged."""
    return ctx.query_path({which: ctx.handle(which).get()}, lambda side, vectors: vectors[which])


@register_method(
    "old",
    kind="reference",
    trains="–",
    old_at_query=True,
    notes="old→old: the reference to beat",
    deploys=OLD_OLD,
)
def fit_old(ctx: FitContext, settings: MethodConfig) -> FittedMethod:
    """OLD's own queries against OLD's gallery: the reference every compatible method must beat."""
    return FittedMethod(
        name="old",
        gallery="old",
        dim=ctx.old.get().embed_dim,
        query=_own_queries(ctx, "old"),
    )


@register_method(
    "new",
    kind="reference",
    trains="–",
    notes="new→new: full backfill of the gallery with NEW",
    deploys=NEW_NEW,
)
def fit_new(ctx: FitContext, settings: MethodConfig) -> FittedMethod:
    """NEW's queries against a NEW gallery (the full backfill the others avoid); never loads OLD."""
    return FittedMethod(
        name="new",
        gallery="new",
        dim=ctx.new.get().embed_dim,
        query=_own_queries(ctx, "new"),
    )


def _fit_dimension(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` zero-padded or truncated to ``dim`` columns."""
    if x.shape[1] >= dim:
        return x[:, :dim]
    return np.pad(x, ((0, 0), (0, dim - x.shape[1])))


@register_method(
    "identity",
    kind="reference",
    trains="–",
    notes="raw NEW queries vs OLD gallery (only when dims match): shows incompatibility",
)
def fit_identity(ctx: FitContext, settings: MethodConfig) -> FittedMethod:
    """Raw NEW queries against the OLD gallery. Applicable only when the dimensions match;
    otherwise the queries are zero-padded or truncated to OLD's dimension and flagged."""
    d_old, d_new = ctx.old.get().embed_dim, ctx.new.get().embed_dim
    applicable = d_old == d_new
    reason = (
        ""
        if applicable
        else f"NEW's dimension {d_new} differs from OLD's {d_old}: raw NEW queries cannot search "
        f"the OLD gallery (shown zero-padded/truncated to {d_old} to illustrate)"
    )

    return FittedMethod(
        name="identity",
        gallery="old",
        dim=d_old,
        query=ctx.query_path(
            {"new": ctx.new.get()}, lambda side, vectors: _fit_dimension(vectors["new"], d_old)
        ),
        applicable=applicable,
        reason=reason,
        info={"old_dim": d_old, "new_dim": d_new},
    )
