"""XBT's stage 1: the projection ψ from NEW's space into OLD's, pretrained on text only.

ψ(z) = normalize(Wz + MLP(z)), W initialised with the text-fitted Procrustes map; trained on
the corpus's (N_txt(t), O_txt(t)) pairs with input noise z̃ = normalize(z + σε) (σ relative to the
spread of NEW's text embeddings) and the loss InfoNCE(ψ(z̃), O_txt) + λ·(1 − cos). Every method
of the XBT family starts from the same ψ₀: the run trains into a folder of ``ctx.work_dir``
named by a hash of what ψ₀ depends on, so it is trained once and an interrupted run resumes.
That hash covers the code that trains it (:data:`STAGE1_CODE`, see :func:`training_key`), so
an edit to that code trains ψ₀ again rather than reusing a checkpoint of the old code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from .. import distributed
from ..console import warn
from ..data.base import fingerprint_of
from ..fingerprints import KeyLedger, code_version
from ..losses import cosine_loss, info_nce
from ..models.lora import count_parameters
from ..models.projection import Projection, add_noise, embedding_spread, noise_std
from ..paths import relative_to_home
from ..train import TrainConfig, TrainLog, train
from .base import FitContext, check_corpus, seeded
from .settings import MethodConfig, batch_size

# Rows mapped by ψ at once outside training.
_MAP_BATCH = 8192
# The modules whose code decides the ψ₀ that stage 1 trains (its checkpoint key covers them).
STAGE1_CODE = (
    "xbt_bench.methods.stage1",
    "xbt_bench.methods.base",
    "xbt_bench.models.projection",
    "xbt_bench.losses",
    "xbt_bench.linalg",
    "xbt_bench.train.loop",
)


def training_key(
    ctx: FitContext, label: str, identity: Sequence[object], content: Mapping[str, str]
) -> str:
    """The checkpoint key of a training run: a hash of what identifies it (``identity``:
    settings, seed, models, data names) and of what it is computed from (``content``: code
    versions, data fingerprints, named). When that content changed since the last run of the
    same identity (recorded under ``ctx.work_dir/keys``), one line says what changed; the new
    key then trains afresh instead of reusing the old checkpoint."""
    slot = fingerprint_of(identity)
    if distributed.is_main():
        changed = KeyLedger(ctx.work_dir / "keys").update(slot, content)
        if changed:
            warn(
                f"{label}: {', '.join(changed)} changed since its last training with these "
                "settings; training it again"
            )
    return fingerprint_of([slot, sorted(content.items())])


class ProjectionConfig(MethodConfig):
    """Stage 1: ψ pretrained on text pairs (N_txt(t), O_txt(t)) with input noise."""

    proj_hidden: int = Field(352, ge=1, description="hidden width of ψ's MLP")
    proj_layers: int = Field(3, ge=1, description="linear layers of ψ's MLP")
    proj_steps: int = Field(3000, ge=1, description="stage-1 optimisation steps")
    proj_batch: int = Field(512, ge=2, description="stage-1 batch (texts)")
    proj_lr: float = Field(3e-3, gt=0, description="stage-1 learning rate")
    proj_weight_decay: float = Field(0.0, ge=0, description="stage-1 AdamW weight decay")
    proj_warmup: int = Field(100, ge=0, description="stage-1 warmup steps (capped at proj_steps)")
    noise: float = Field(
        0.2, ge=0, description="input noise length as a share of the NEW text-embedding spread"
    )
    tau: float = Field(0.02, gt=0, description="stage-1 InfoNCE temperature")
    cos_weight: float = Field(10.0, ge=0, description="stage-1 weight of 1 - cos(ψ(z), O_txt)")
    proj_skip: Literal["trained", "fixed"] = Field(
        "trained",
        description="ψ's linear skip (initialised to the text Procrustes map): trained, or "
        "fixed so that only the residual MLP learns",
    )


@dataclass
class Stage1:
    """Stage 1's product: the frozen pretrained ψ₀, the hash of what produced it, its record."""

    psi: Projection
    key: str
    info: dict[str, Any]
    # The orthogonal NEW→OLD map fitted on the corpus's text pairs (ψ's initial skip).
    text_procrustes: np.ndarray

    def procrustes_mapped(self, new_embeddings: np.ndarray) -> np.ndarray:
        """normalize(z · P) for NEW embeddings z [n, d_new]: float32 unit rows in OLD's space,
        P the text-fitted orthogonal map ``text_procrustes``."""
        mapped = np.asarray(new_embeddings, dtype=np.float32) @ self.text_procrustes
        mapped /= np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)
        return mapped.astype(np.float32)


def map_embeddings(psi: Projection, embeddings: np.ndarray, device: str = "cpu") -> np.ndarray:
    """ψ applied to NEW embeddings [n, d_new] -> [n, d_old] float32 unit rows."""
    out = []
    psi.eval()
    with torch.inference_mode():
        for start in range(0, len(embeddings), _MAP_BATCH):
            chunk = torch.as_tensor(np.asarray(embeddings[start : start + _MAP_BATCH]))
            out.append(psi(chunk.to(device).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def log_every(steps: int) -> int:
    """At most ~200 curve points per run."""
    return max(1, steps // 200)


def log_info(log: TrainLog, checkpoint_dir: Path) -> dict[str, Any]:
    """What a result records about one training run (its folder relative to the cache root)."""
    return {
        "steps": log.steps,
        "final_loss": log.final_loss,
        "wall_time_s": round(log.wall_time_s, 3),
        "resumed_from_step": log.resumed_from_step,
        "curve": log.curve,
        "checkpoint_dir": relative_to_home(checkpoint_dir),
    }


@dataclass
class Stage1Setup:
    """Everything one stage-1 run needs: ψ, its loss and batches, and what the result records."""

    psi: Projection
    loss_fn: Callable[[tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]
    batch_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    train_config: TrainConfig
    checkpoint_dir: Path
    key: str
    info: dict[str, Any]
    text_procrustes: np.ndarray


def prepare_stage1(ctx: FitContext, cfg: ProjectionConfig) -> Stage1Setup:
    """Build stage 1 on the text corpus (module docstring): ψ initialised with the corpus's
    Procrustes map, the noisy-input loss, and batches of text pairs by step."""
    check_corpus(ctx.text_corpus)
    new_texts = ctx.embed_corpus("new")
    old_texts = ctx.embed_corpus("old")
    n_texts, d_new = new_texts.shape
    d_old = old_texts.shape[1]
    spread_key = ("text-spread", id(ctx.new), ctx.text_corpus.fingerprint)  # once per run
    if spread_key not in ctx.shared:
        ctx.shared[spread_key] = embedding_spread(new_texts)
    spread = ctx.shared[spread_key]
    std = noise_std(cfg.noise, spread, d_new)
    settings = {name: getattr(cfg, name) for name in ProjectionConfig.model_fields}
    identity = [
        "stage1",
        sorted(settings.items()),
        ctx.seed,
        ctx.new.get().identity,
        ctx.old.get().identity,
        ctx.text_corpus.name,
    ]
    content = {
        **code_version(STAGE1_CODE),
        f"data of {ctx.text_corpus.name}": ctx.text_corpus.fingerprint,
    }
    key = training_key(ctx, "stage 1 (ψ₀)", identity, content)
    with seeded(ctx.seed):
        psi = Projection(d_new, d_old, hidden=cfg.proj_hidden, layers=cfg.proj_layers)
    text_procrustes = ctx.text_procrustes(new_texts, old_texts)  # computed once per run
    psi.init_linear(text_procrustes)
    psi.linear.requires_grad_(cfg.proj_skip == "trained")
    device = torch.device(ctx.device)
    new_t = torch.from_numpy(new_texts).to(device)
    old_t = torch.from_numpy(old_texts).to(device)
    batch = batch_size(cfg, "proj_batch", n_texts, f"texts of {ctx.text_corpus.name}")

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.random.default_rng([ctx.seed, 1, step]).choice(n_texts, batch, replace=False)
        index = torch.from_numpy(rows).to(device)
        return new_t[index], old_t[index]

    def loss_fn(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Under torchrun every rank maps the whole global batch (ψ is small), so the noise
        # drawn, the loss and DDP's averaged gradient are those of one process.
        z, target = (distributed.all_gather_with_grad(x) for x in pair)
        mapped = psi(add_noise(z, std))
        nce = info_nce(mapped, target, cfg.tau)
        cos = cosine_loss(mapped, target)
        return {"loss": nce + cfg.cos_weight * cos, "nce": nce, "cos": cos}

    config = TrainConfig(
        steps=cfg.proj_steps,
        lr=cfg.proj_lr,
        weight_decay=cfg.proj_weight_decay,
        warmup_steps=min(cfg.proj_warmup, cfg.proj_steps),
        seed=ctx.seed,
        checkpoint_every=max(1, cfg.proj_steps // 4),
        log_every=log_every(cfg.proj_steps),
        device=ctx.device,
    )
    info = {
        "corpus": ctx.text_corpus.name,
        "corpus_texts": n_texts,
        "new_dim": d_new,
        "old_dim": d_old,
        "text_spread": round(spread, 6),
        "noise_relative": cfg.noise,
        "noise_std": round(std, 6),
        "psi_params": count_parameters(psi),
    }
    return Stage1Setup(
        psi, loss_fn, batch_at, config, ctx.work_dir / f"stage1-{key}", key, info, text_procrustes
    )


def pretrain_projection(ctx: FitContext, cfg: ProjectionConfig) -> Stage1:
    """Stage 1 (:func:`prepare_stage1`, then the shared training loop); returns ψ₀ frozen and
    in eval mode."""
    setup = prepare_stage1(ctx, cfg)
    log = train(
        setup.psi,
        setup.loss_fn,
        setup.batch_at,
        setup.train_config,
        setup.checkpoint_dir,
        desc="stage 1: ψ on text",
    )
    setup.psi.requires_grad_(False)
    setup.psi.eval()
    info = {**setup.info, **log_info(log, setup.checkpoint_dir)}
    return Stage1(psi=setup.psi, key=setup.key, info=info, text_procrustes=setup.text_procrustes)
