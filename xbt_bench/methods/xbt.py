"""The XBT family (SPEC §2): ``xbt-proj`` (stage 1: ψ on text only), ``xbt`` (stage 1, then
LoRA on the frozen NEW towards anchors, without OLD), ``distill`` (XBT's stage 2 with OLD run in
the loop for its targets) and ``finetune`` (stage 2 training all of NEW's weights, no LoRA).

Every training run goes through :func:`xbt_bench.train.train` into a folder of
``ctx.work_dir`` named by a hash of what its result depends on, so stage 1 is shared by every
method of the family and an interrupted run resumes where its last checkpoint left it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..atomic import write_npy
from ..data.base import ImageTextSet, fingerprint_of
from ..errors import XbtError
from ..losses import cosine_loss, info_nce
from ..models.loading import LoadedModel
from ..models.lora import add_lora, count_parameters
from ..models.projection import (
    Projection,
    add_noise,
    embedding_spread,
    noise_std,
    procrustes_map,
)
from ..train import TrainConfig, train
from .base import (
    Cost,
    FitContext,
    FittedMethod,
    Side,
    check_corpus,
    check_pairs,
    measured,
    seeded,
)
from .configs import ProjectionConfig, Stage2Config, parse_config

STAGE2_MODES = ("xbt", "distill", "finetune")
# Batches of embeddings mapped by ψ at once outside training.
_MAP_BATCH = 8192


class MappedEncoder(nn.Module):
    """A compatible query encoder: a CLIP (NEW with LoRA, or fine-tuned) followed by ψ.

    Speaks the embedding extractor's encoder protocol (``encode_image``, ``encode_text``,
    ``preprocess``, ``tokenizer``, ``identity``), so its queries are batched and cached like
    any model's.
    """

    def __init__(self, clip: nn.Module, psi: Projection, new: LoadedModel, name: str) -> None:
        super().__init__()
        self.clip = clip
        self.psi = psi
        self.name = name
        self.preprocess = new.preprocess
        self.tokenizer = new.tokenizer
        self.preprocess_signature = new.preprocess_signature
        self.tokenizer_signature = new.tokenizer_signature
        self.identity = f"{name}:{new.identity}:untrained"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """ψ(N_img(images)), unit rows in OLD's space."""
        return self.psi(F.normalize(self.clip.encode_image(images), dim=-1))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """ψ(N_txt(tokens)), unit rows in OLD's space."""
        return self.psi(F.normalize(self.clip.encode_text(tokens), dim=-1))

    def finish(self) -> MappedEncoder:
        """Freeze, switch to eval mode and set ``identity`` from the trained weights."""
        from ..embed import state_fingerprint

        self.requires_grad_(False)
        self.eval()
        self.identity = f"{self.name}@{state_fingerprint(self)}"
        return self


def map_embeddings(psi: Projection, embeddings: np.ndarray, device: str = "cpu") -> np.ndarray:
    """ψ applied to NEW embeddings [n, d_new] -> [n, d_old] float32 unit rows."""
    out = []
    psi.eval()
    with torch.inference_mode():
        for start in range(0, len(embeddings), _MAP_BATCH):
            chunk = torch.as_tensor(np.asarray(embeddings[start : start + _MAP_BATCH]))
            out.append(psi(chunk.to(device).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _log_every(steps: int) -> int:
    """At most ~200 curve points per run."""
    return max(1, steps // 200)


def _log_info(log: Any, checkpoint_dir: Path) -> dict[str, Any]:
    return {
        "steps": log.steps,
        "final_loss": log.final_loss,
        "wall_time_s": round(log.wall_time_s, 3),
        "resumed_from_step": log.resumed_from_step,
        "curve": log.curve,
        "checkpoint_dir": str(checkpoint_dir),
    }


@dataclass
class Stage1:
    """Stage 1's product: the frozen pretrained ψ₀ and what produced it."""

    psi: Projection
    key: str
    info: dict[str, Any]


def pretrain_projection(ctx: FitContext, cfg: ProjectionConfig) -> Stage1:
    """Stage 1: ψ pretrained on the text corpus's (N_txt(t), O_txt(t)) pairs with input noise,
    W initialised with their Procrustes map; returns ψ₀ frozen and in eval mode."""
    check_corpus(ctx.text_corpus)
    new_texts = ctx.embed_corpus("new")
    old_texts = ctx.embed_corpus("old")
    n_texts, d_new = new_texts.shape
    d_old = old_texts.shape[1]
    spread = embedding_spread(new_texts)
    std = noise_std(cfg.noise, spread, d_new)
    settings = {name: getattr(cfg, name) for name in ProjectionConfig.model_fields}
    key = fingerprint_of(
        [
            "stage1",
            sorted(settings.items()),
            ctx.seed,
            ctx.new.get().identity,
            ctx.old.get().identity,
            ctx.text_corpus.fingerprint,
        ]
    )
    with seeded(ctx.seed):
        psi = Projection(d_new, d_old, hidden=cfg.proj_hidden, layers=cfg.proj_layers)
    psi.init_linear(procrustes_map(new_texts, old_texts))
    device = torch.device(ctx.device)
    new_t = torch.from_numpy(new_texts).to(device)
    old_t = torch.from_numpy(old_texts).to(device)
    batch = min(cfg.proj_batch, n_texts)

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
        log_every=_log_every(cfg.proj_steps),
        device=ctx.device,
    )
    checkpoint_dir = ctx.work_dir / f"stage1-{key}"
    log = train(psi, loss_fn, batch_at, config, checkpoint_dir, desc="stage 1: ψ on text")
    psi.requires_grad_(False)
    psi.eval()
    info = {
        "corpus": ctx.text_corpus.name,
        "corpus_texts": n_texts,
        "new_dim": d_new,
        "old_dim": d_old,
        "text_spread": round(spread, 6),
        "noise_relative": cfg.noise,
        "noise_std": round(std, 6),
        "psi_params": count_parameters(psi),
        **_log_info(log, checkpoint_dir),
    }
    return Stage1(psi=psi, key=key, info=info)


def _captions_by_image(data: ImageTextSet) -> list[np.ndarray]:
    order = np.argsort(data.caption_image, kind="stable")
    bounds = np.searchsorted(data.caption_image[order], np.arange(data.n_images + 1))
    groups = [order[bounds[i] : bounds[i + 1]] for i in range(data.n_images)]
    empty = [i for i, g in enumerate(groups) if len(g) == 0]
    if empty:
        raise XbtError(
            f"{data.key}: images {empty[:5]} have no caption; every training image needs one"
        )
    return groups


def surrogate_anchors(ctx: FitContext, stage1: Stage1, pairs: ImageTextSet) -> np.ndarray:
    """a(t) = ψ₀(N_txt(t)) for every caption of ``pairs`` (frozen NEW, frozen ψ₀), computed
    once and kept in ``work_dir``; counted as NEW text forward passes."""
    path = ctx.work_dir / f"anchors-{fingerprint_of([stage1.key, pairs.fingerprint])}.npy"
    if path.exists():
        ctx.count_forward("new", "text", len(pairs.captions))
        return np.load(path)
    anchors = map_embeddings(stage1.psi, ctx.embed("new", pairs, "text"), ctx.device)
    write_npy(path, anchors)
    return anchors


def mean_anchors(caption_anchors: np.ndarray, pairs: ImageTextSet) -> np.ndarray:
    """normalize(mean of a(t) over each image's captions), [n_images, d_old]."""
    sums = np.zeros((pairs.n_images, caption_anchors.shape[1]), dtype=np.float64)
    np.add.at(sums, pairs.caption_image, caption_anchors)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return sums.astype(np.float32)


# Training images are preprocessed once into an in-memory table when it fits this budget (the
# toy world's 8k pairs: ~100 MB); larger sets are decoded and preprocessed batch by batch.
PIXEL_TABLE_BYTES = 2 << 30
_pixel_tables: dict[tuple[str, str], torch.Tensor] = {}


class PixelSource:
    """Preprocessed images of ``data`` by row: from a table built once (and shared by the
    methods of a run) when all rows fit in ``budget`` bytes, else preprocessed per call."""

    def __init__(
        self, data: ImageTextSet, preprocess: Callable, signature: str, budget: int | None = None
    ) -> None:
        self.data, self.preprocess = data, preprocess
        budget = PIXEL_TABLE_BYTES if budget is None else budget
        key = (data.fingerprint, signature)
        self.table = _pixel_tables.get(key)
        if self.table is None:
            first = preprocess(data.load_image(0))
            if first.numel() * first.element_size() * data.n_images <= budget:
                rows = [first] + [preprocess(data.load_image(i)) for i in range(1, data.n_images)]
                self.table = torch.stack(rows)
                _pixel_tables.clear()  # keep one table: a run trains on one pair set
                _pixel_tables[key] = self.table

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        """The preprocessed images of ``rows`` stacked into a batch."""
        if self.table is not None:
            return self.table[torch.from_numpy(rows)]
        return torch.stack([self.preprocess(self.data.load_image(int(i))) for i in rows])


def text_tower_frozen(clip: nn.Module, psi: nn.Module) -> bool:
    """Whether φ_txt = ψ(N_txt) cannot change in training: nothing outside the image tower
    (``visual``) of ``clip`` trains, and ψ is frozen."""
    if any(p.requires_grad for p in psi.parameters()):
        return False
    return not any(
        p.requires_grad
        for name, p in clip.named_parameters()
        if not name.startswith("visual.") and "logit_scale" not in name
    )


@dataclass
class Stage2Setup:
    """Everything one stage-2 run needs: the encoder being trained, its loss and batches."""

    encoder: MappedEncoder
    loss_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    batch_at: Callable[[int], dict[str, Any]]
    param_groups: list[dict[str, Any]]
    train_config: TrainConfig
    checkpoint_dir: Path
    pairs: ImageTextSet
    batch: int
    info: dict[str, Any] = field(default_factory=dict)


def prepare_stage2(ctx: FitContext, cfg: Stage2Config, stage1: Stage1, mode: str) -> Stage2Setup:
    """Build stage 2 of ``mode`` (xbt, distill or finetune) on ``ctx.train_pairs``.

    Loss, with φ = ψ ∘ NEW' the query encoders and (T_txt, T_img) the targets of a batch:
    InfoNCE(φ_img, T_txt) + InfoNCE(φ_txt, T_img) + InfoNCE(φ_img, φ_txt)
    + w·[(1 − cos(φ_txt, T_txt)) + (1 − cos(φ_img, T_img))].
    Targets: ``surrogate`` anchors T_txt = ψ₀(N_txt(t)) and T_img the same (``image_anchor``
    "caption") or its mean over the image's captions ("mean"); ``gallery`` anchors
    T_txt = O_txt(t), T_img = O_img(x) read from the embedding cache; ``distill``: the same
    computed by OLD inside every step.
    """
    if mode not in STAGE2_MODES:
        raise XbtError(f"stage-2 mode {mode!r} is not one of {', '.join(STAGE2_MODES)}")
    pairs = check_pairs(ctx.train_pairs, cfg.pairs)
    new = ctx.new.get()
    device = torch.device(ctx.device)
    with seeded(ctx.seed + 1):
        clip = copy.deepcopy(new.model)
        if mode == "finetune":
            clip.requires_grad_(True)
        else:
            lora = cast(Any, cfg)
            clip = add_lora(clip, lora.lora_towers, lora.lora_rank, lora.lora_alpha)
    psi = copy.deepcopy(stage1.psi)
    psi.requires_grad_(cfg.psi_lr_scale > 0)
    encoder = MappedEncoder(clip, psi, new, mode).to(device)

    anchors = "old-in-the-loop" if mode == "distill" else cast(Any, cfg).anchors
    text_targets = image_targets = None
    old: LoadedModel | None = None
    if anchors == "surrogate":
        caption_anchors = surrogate_anchors(ctx, stage1, pairs)
        text_targets = torch.from_numpy(caption_anchors).to(device)
        if cast(Any, cfg).image_anchor == "mean":
            image_targets = torch.from_numpy(mean_anchors(caption_anchors, pairs)).to(device)
    elif anchors == "gallery":
        text_targets = torch.from_numpy(ctx.gallery_embeddings(pairs, "text")).to(device)
        image_targets = torch.from_numpy(ctx.gallery_embeddings(pairs, "image")).to(device)
    else:
        old = ctx.old.get()
        old.model.requires_grad_(False)
        old.model.eval()

    captions_of = _captions_by_image(pairs)
    batch = min(cfg.batch, pairs.n_images)
    new_pixels = PixelSource(pairs, new.preprocess, new.preprocess_signature)
    old_pixels = (
        PixelSource(pairs, old.preprocess, old.preprocess_signature) if old is not None else None
    )
    # With the text side frozen (LoRA on the image tower only, ψ frozen), φ_txt(t) = ψ₀(N_txt(t))
    # is a fixed table (the surrogate anchors): look it up instead of running NEW's text tower.
    fixed_text = None
    if text_tower_frozen(clip, psi):
        fixed_text = (
            text_targets  # already the surrogate anchors: read and counted once
            if anchors == "surrogate"
            else torch.from_numpy(surrogate_anchors(ctx, stage1, pairs)).to(device)
        )

    def batch_at(step: int) -> dict[str, Any]:
        rng = np.random.default_rng([ctx.seed, 2, step])
        images = rng.choice(pairs.n_images, batch, replace=False)
        picks = rng.random(batch)
        captions = np.array(
            [
                captions_of[i][int(r * len(captions_of[i]))]
                for i, r in zip(images, picks, strict=True)
            ]
        )
        texts = [pairs.captions[int(c)] for c in captions]
        out = {
            "images": new_pixels(images).to(device),
            "image_index": torch.from_numpy(images).to(device),
            "caption_index": torch.from_numpy(captions).to(device),
        }
        if fixed_text is None:
            out["tokens"] = new.tokenizer(texts).to(device)
        if old is not None and old_pixels is not None:
            out["old_images"] = old_pixels(images).to(device)
            out["old_tokens"] = old.tokenizer(texts).to(device)
        return out

    def targets(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if old is not None:
            with torch.no_grad():
                text = F.normalize(old.model.encode_text(batch["old_tokens"]).float(), dim=-1)
                image = F.normalize(old.model.encode_image(batch["old_images"]).float(), dim=-1)
            return text, image
        text = text_targets[batch["caption_index"]]
        if image_targets is None:
            return text, text
        return text, image_targets[batch["image_index"]]

    def loss_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image_q = encoder.encode_image(batch["images"])
        if fixed_text is None:
            text_q = encoder.encode_text(batch["tokens"])
        else:
            text_q = fixed_text[batch["caption_index"]]
        text_t, image_t = targets(batch)
        # Under torchrun: every rank scores the global batch, so DDP's averaged gradient is
        # that of one process on it (as open_clip's ClipLoss with gather_with_grad).
        image_q, text_q, text_t, image_t = (
            distributed.all_gather_with_grad(x) for x in (image_q, text_q, text_t, image_t)
        )
        i2t = info_nce(image_q, text_t, cfg.stage2_tau)
        t2i = info_nce(text_q, image_t, cfg.stage2_tau)
        image_text = info_nce(image_q, text_q, cfg.stage2_tau)
        cos = cosine_loss(text_q, text_t) + cosine_loss(image_q, image_t)
        loss = i2t + t2i + image_text + cfg.stage2_cos_weight * cos
        return {"loss": loss, "i2t": i2t, "t2i": t2i, "image_text": image_text, "cos": cos}

    param_groups = [
        {"params": [p for p in clip.parameters() if p.requires_grad]},
        {"params": list(psi.parameters()), "lr_scale": cfg.psi_lr_scale},
    ]
    settings = {k: v for k, v in cfg.model_dump().items() if k != "checkpoint_every"}
    key = fingerprint_of(["stage2", mode, stage1.key, sorted(settings.items()), pairs.fingerprint])
    train_config = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup, cfg.steps),
        seed=ctx.seed,
        checkpoint_every=cfg.checkpoint_every,
        log_every=_log_every(cfg.steps),
        device=ctx.device,
    )
    info = {
        "mode": mode,
        "anchors": anchors,
        "image_anchor": cast(Any, cfg).image_anchor if anchors == "surrogate" else None,
        "pairs": pairs.key,
        "pair_images": pairs.n_images,
        "pair_captions": len(pairs.captions),
        "psi": "frozen" if cfg.psi_lr_scale == 0 else f"trainable (lr x {cfg.psi_lr_scale:g})",
        "trainable_in_stage2": count_parameters(encoder, trainable_only=True),
        "text_side": "fixed table ψ₀(N_txt)" if fixed_text is not None else "trained",
        "pixels": "in-memory table" if new_pixels.table is not None else "per batch",
    }
    if mode != "finetune":
        lora = cast(Any, cfg)
        info["lora"] = {
            "towers": lora.lora_towers,
            "rank": lora.lora_rank,
            "alpha": lora.lora_alpha or lora.lora_rank,
        }
    return Stage2Setup(
        encoder=encoder,
        loss_fn=loss_fn,
        batch_at=batch_at,
        param_groups=param_groups,
        train_config=train_config,
        checkpoint_dir=ctx.work_dir / f"{mode}-{key}",
        pairs=pairs,
        batch=batch,
        info=info,
    )


def _mapped_encoder(
    ctx: FitContext, psi: Projection, side: Side
) -> Callable[[ImageTextSet], np.ndarray]:
    return lambda data: map_embeddings(psi, ctx.embed("new", data, side, count=False), ctx.device)


@measured
def fit_xbt_proj(ctx: FitContext) -> FittedMethod:
    """Stage 1 only: ψ₀ on the frozen NEW's embeddings (no OLD at query time)."""
    cfg = cast(ProjectionConfig, parse_config("xbt-proj", ctx.config))
    stage1 = pretrain_projection(ctx, cfg)
    psi_params = count_parameters(stage1.psi)
    return FittedMethod(
        name="xbt-proj",
        gallery="old",
        dim=stage1.psi.out_dim,
        image_encoder=_mapped_encoder(ctx, stage1.psi, "image"),
        text_encoder=_mapped_encoder(ctx, stage1.psi, "text"),
        config=cfg.model_dump(),
        info={"stage1": stage1.info},
        cost=_params_cost(ctx, psi_params, stage1.info["wall_time_s"]),
    )


def _params_cost(ctx: FitContext, trainable: int, training_time_s: float) -> Cost:
    return Cost(
        trainable_params=trainable,
        new_params=count_parameters(ctx.new.get().model),
        training_time_s=training_time_s,
    )


def fit_stage2(ctx: FitContext, mode: str, name: str | None = None) -> FittedMethod:
    """Stage 1, then stage 2 of ``mode``; the query encoders are the trained NEW' + ψ.
    ``name`` is the registered method (a variant of ``mode`` with its own defaults)."""
    name = name or mode
    cfg = cast(Stage2Config, parse_config(name, ctx.config))
    check_pairs(ctx.train_pairs, cfg.pairs)
    stage1 = pretrain_projection(ctx, cfg)
    setup = prepare_stage2(ctx, cfg, stage1, mode)
    log = train(
        setup.encoder,
        setup.loss_fn,
        setup.batch_at,
        setup.train_config,
        setup.checkpoint_dir,
        desc=f"{name} stage 2",
        param_groups=setup.param_groups,
        find_unused_parameters=mode == "finetune",  # NEW's logit_scale trains, no loss uses it
    )
    in_loop = cfg.steps * setup.batch
    ctx.count_forward("new", "image", in_loop)
    if setup.info["text_side"] == "trained":
        ctx.count_forward("new", "text", in_loop)
    if mode == "distill":
        ctx.count_forward("old", "image", in_loop)
        ctx.count_forward("old", "text", in_loop)
    trained = setup.info["trainable_in_stage2"]
    if cfg.psi_lr_scale == 0:
        trained += count_parameters(stage1.psi)  # ψ was trained in stage 1
    encoder = setup.encoder.finish()

    def encode(side: Side) -> Callable[[ImageTextSet], np.ndarray]:
        from ..embed.sharded import embed_split_sharded

        return lambda data: np.asarray(
            embed_split_sharded(
                encoder,
                data,
                side,
                cache=ctx.embeddings,
                stats=ctx.embed_stats,
                num_workers=ctx.num_workers,
            )
        )

    return FittedMethod(
        name=name,
        gallery="old",
        dim=encoder.psi.out_dim,
        image_encoder=encode("image"),
        text_encoder=encode("text"),
        config=cfg.model_dump(),
        info={
            "stage1": stage1.info,
            "stage2": {**setup.info, **_log_info(log, setup.checkpoint_dir)},
            "encoder_identity": encoder.identity,
        },
        cost=_params_cost(ctx, trained, stage1.info["wall_time_s"] + log.wall_time_s),
    )


@measured
def fit_xbt(ctx: FitContext) -> FittedMethod:
    """XBT: stage 1 on text, then LoRA on the frozen NEW towards anchors; stage 2 runs no OLD."""
    return fit_stage2(ctx, "xbt")


@measured
def fit_xbt_gallery(ctx: FitContext) -> FittedMethod:
    """XBT whose anchors are OLD's gallery embeddings of the training pairs (read from the
    embedding cache, as a deployed system holds them), LoRA on both towers; no OLD forward."""
    return fit_stage2(ctx, "xbt", "xbt-gallery")


@measured
def fit_distill(ctx: FitContext) -> FittedMethod:
    """XBT's stage 2 with OLD in the loop: targets O_txt(t), O_img(x) computed every step."""
    return fit_stage2(ctx, "distill")


@measured
def fit_finetune(ctx: FitContext) -> FittedMethod:
    """Stage 1, then all of NEW's weights and ψ trained towards the anchors (no LoRA)."""
    return fit_stage2(ctx, "finetune")
