"""Reference methods: ``old`` (old→old), ``new`` (new→new, full backfill) and ``identity``
(raw NEW queries against the OLD gallery: how incompatible the two spaces are)."""

from __future__ import annotations

import numpy as np

from .base import Encode, FitContext, FittedMethod, Side, Which, measured
from .configs import parse_config


def _embedder(ctx: FitContext, which: Which, side: Side) -> Encode:
    """Query-time embeddings of ``data`` by OLD or NEW (cached, not counted as training cost)."""
    return lambda data: ctx.embed(which, data, side, count=False)


@measured
def fit_old(ctx: FitContext) -> FittedMethod:
    """OLD's own queries against OLD's gallery: the reference every compatible method must beat."""
    parse_config("old", ctx.config)
    dim = ctx.old.get().embed_dim
    return FittedMethod(
        name="old",
        gallery="old",
        dim=dim,
        image_encoder=_embedder(ctx, "old", "image"),
        text_encoder=_embedder(ctx, "old", "text"),
        needs_old_at_query=True,
    )


@measured
def fit_new(ctx: FitContext) -> FittedMethod:
    """NEW's queries against a NEW gallery (the full backfill the others avoid); never loads OLD."""
    parse_config("new", ctx.config)
    dim = ctx.new.get().embed_dim
    return FittedMethod(
        name="new",
        gallery="new",
        dim=dim,
        image_encoder=_embedder(ctx, "new", "image"),
        text_encoder=_embedder(ctx, "new", "text"),
    )


def _fit_dimension(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` zero-padded or truncated to ``dim`` columns."""
    if x.shape[1] >= dim:
        return x[:, :dim]
    return np.pad(x, ((0, 0), (0, dim - x.shape[1])))


@measured
def fit_identity(ctx: FitContext) -> FittedMethod:
    """Raw NEW queries against the OLD gallery. Applicable only when the dimensions match;
    otherwise the queries are zero-padded or truncated to OLD's dimension and flagged."""
    parse_config("identity", ctx.config)
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
        image_encoder=lambda data: _fit_dimension(
            ctx.embed("new", data, "image", count=False), d_old
        ),
        text_encoder=lambda data: _fit_dimension(
            ctx.embed("new", data, "text", count=False), d_old
        ),
        applicable=applicable,
        reason=reason,
        info={"old_dim": d_old, "new_dim": d_new},
    )
