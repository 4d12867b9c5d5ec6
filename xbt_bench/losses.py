"""The losses XBT and its rivals train with: symmetric InfoNCE and a cosine regression term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric CLIP contrastive loss between rows of ``a`` and ``b`` (row i pairs with row i).

    Both are L2-normalised here; ``tau`` is the softmax temperature.
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.T / tau
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos(a_i, b_i)`` over rows: pulls each row onto its target's direction."""
    return (1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()
