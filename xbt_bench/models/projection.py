"""ψ: the projection from NEW's embedding space into OLD's (stage 1 of XBT, docs/methods.md).

ψ(z) = normalize(W z + MLP(z)), with W initialised to the orthogonal Procrustes map fitted on
text pairs (:func:`xbt_bench.linalg.procrustes_map`) and the MLP's last layer initialised to
zero, so an untrained ψ *is* Procrustes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XbtError


def embedding_spread(embeddings: np.ndarray) -> float:
    """Root-mean-square distance of the rows from their mean (how wide the cone is)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    centred = embeddings - embeddings.mean(axis=0, keepdims=True)
    return float(np.sqrt((centred**2).sum(axis=1).mean()))


def noise_std(relative_sigma: float, spread: float, dim: int) -> float:
    """Per-coordinate std of Gaussian noise whose vectors are ``relative_sigma * spread`` long.

    A noise vector ε ~ N(0, s² I_d) has length ≈ s·√d; this picks s so that length is the given
    share of the embeddings' spread, so the noise never drowns a narrow cone.
    """
    if relative_sigma < 0:
        raise XbtError(
            f"noise must be >= 0 (a share of the text-embedding spread), got {relative_sigma}"
        )
    return float(relative_sigma * spread / np.sqrt(dim))


def add_noise(
    z: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """normalize(z + std·ε), ε ~ N(0, I) (``z`` unchanged but normalised when ``std`` is 0)."""
    if std > 0:
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = z + std * noise
    return F.normalize(z, dim=-1)


class Projection(nn.Module):
    """ψ: R^{d_in} -> R^{d_out}, a linear skip plus a residual MLP, output L2-normalised."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, layers: int = 2) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise XbtError(
                f"projection needs hidden >= 1 and layers >= 1, got hidden={hidden}, "
                f"layers={layers}"
            )
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden, self.layers = hidden, layers
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        blocks.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*blocks)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def architecture(self) -> dict[str, int]:
        """The constructor's arguments: ``Projection(**p.architecture())`` has ``p``'s shape."""
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "hidden": self.hidden,
            "layers": self.layers,
        }

    def init_linear(self, weight: np.ndarray) -> None:
        """Set the skip map to ``weight`` [in_dim, out_dim] (e.g. a Procrustes map)."""
        if weight.shape != (self.in_dim, self.out_dim):
            raise XbtError(
                f"projection skip map must be [{self.in_dim}, {self.out_dim}], got {weight.shape}"
            )
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight.T, dtype=self.linear.weight.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.linear.weight.dtype)
        return F.normalize(self.linear(z) + self.mlp(z), dim=-1)
