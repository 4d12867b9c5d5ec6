"""XBT's stage 2 and its rivals' shared machinery: train NEW (LoRA adapters, or all of
its weights) followed by ψ towards targets in OLD's space, on image–text pairs (docs/methods.md).

Loss, with φ = ψ ∘ NEW' the query encoders and (T_txt, T_img) a batch's targets:
a·InfoNCE(φ_img, T_txt) + b·InfoNCE(φ_txt, T_img) + v·InfoNCE(φ_img, φ_txt)
+ w_txt·(1 − cos(φ_txt, T_txt)) + w·(1 − cos(φ_img, T_img)), with a = b = 1 and w_txt = w unless
set (``i2t_weight``, ``t2i_weight``, ``text_cos_weight``, ``stage2_cos_weight``). Image queries
go through ψ (SPEC §2) or, with ``image_map = "procrustes"``, through stage 1's fixed text-fitted
orthogonal map P: φ_img = normalize(N_img'(x)·P), the ``stitch`` image query that LoRA adjusts.

Where the targets come from is one :class:`Targets` provider per anchor mode:

- :class:`SurrogateTargets` (``anchors = "surrogate"``, XBT): T_txt = a(t) = ψ₀(N_txt(t)) with the
  frozen NEW and the frozen stage-1 ψ₀, computed once; T_img the anchor of the caption drawn
  with the image (``image_anchor = "caption"``) or the mean anchor of its captions (``"mean"``).
  No OLD at all.
- :class:`GalleryTargets` (``anchors = "gallery"``): T_txt = O_txt(t), T_img = O_img(x) read from
  the embedding cache, as a deployed system already holds them (counted as gallery reuse).
- :class:`OldInTheLoop` (``distill``): the same computed by OLD inside every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .. import distributed
from ..atomic import is_intact, write_npy
from ..console import warn
from ..data.base import ImageTextSet, fingerprint_of
from ..embed.tokens import token_table
from ..errors import XbtError
from ..fingerprints import code_version
from ..losses import cosine_loss, info_nce
from ..models.loading import LoadedModel
from ..models.lora import add_lora, count_parameters, lora_parameters
from ..models.projection import Projection
from ..train import TrainConfig, train
from .base import (
    SIDES,
    Cost,
    FitContext,
    FittedMethod,
    QueryEncoderSpec,
    Side,
    check_pairs,
    seeded,
)
from .settings import MethodConfig, batch_size
from .stage1 import (
    ProjectionConfig,
    Stage1,
    log_every,
    log_info,
    map_embeddings,
    pretrain_projection,
    training_key,
)

# Training images are preprocessed once into an in-memory table when it fits this budget (the
# toy world's 8k pairs: ~100 MB); larger sets are decoded and preprocessed batch by batch.
PIXEL_TABLE_BYTES = 2 << 30
# The modules whose code decides what stage 2 trains, besides stage 1's (its checkpoint key
# covers them, see :func:`~xbt_bench.methods.stage1.training_key`).
STAGE2_CODE = (
    "xbt_bench.methods.stage2",
    "xbt_bench.methods.xbt",
    "xbt_bench.models.lora",
    "xbt_bench.embed.tokens",
)


IMAGE_MAP_HELP = (
    "image queries ψ(N_img'(x)) (SPEC §2), or normalize(N_img'(x)·P) with P stage 1's fixed "
    "text-fitted orthogonal map (stitch's image query, adjusted by LoRA)"
)


class Stage2Config(ProjectionConfig):
    """Stage 2 on image–text pairs, shared by xbt, distill and finetune."""

    pairs: int | None = Field(
        None, ge=0, description="training images used (each with its captions); None = all"
    )
    steps: int = Field(300, ge=1, description="stage-2 optimisation steps")
    batch: int = Field(128, ge=2, description="stage-2 batch (images, one caption each)")
    lr: float = Field(1e-3, gt=0, description="stage-2 learning rate (adapters or NEW weights)")
    weight_decay: float = Field(0.0, ge=0, description="stage-2 AdamW weight decay")
    warmup: int = Field(50, ge=0, description="stage-2 warmup steps (capped at steps)")
    psi_lr_scale: float = Field(
        0.0, ge=0, description="ψ's stage-2 lr as a share of lr; 0 keeps ψ frozen"
    )
    stage2_tau: float = Field(0.02, gt=0, description="stage-2 InfoNCE temperature")
    stage2_cos_weight: float = Field(
        10.0, ge=0, description="stage-2 weight of the cosine terms towards the anchors"
    )
    image_text_weight: float = Field(
        1.0,
        ge=0,
        description="weight of InfoNCE(φ_img, φ_txt), the agreement of the two query sides",
    )
    i2t_weight: float = Field(
        1.0, ge=0, description="weight of InfoNCE(φ_img, T_txt): image queries find their captions"
    )
    t2i_weight: float = Field(
        1.0, ge=0, description="weight of InfoNCE(φ_txt, T_img): caption queries find their images"
    )
    text_cos_weight: float | None = Field(
        None,
        ge=0,
        description="weight of 1 − cos(φ_txt, T_txt) alone; None = stage2_cos_weight (the image "
        "side keeps stage2_cos_weight)",
    )
    image_map: Literal["psi", "procrustes"] = Field("psi", description=IMAGE_MAP_HELP)
    checkpoint_every: int = Field(100, ge=1, description="stage-2 checkpoint interval (steps)")


class LoraSettings(MethodConfig):
    """LoRA knobs of the parameter-efficient stage 2 (mixed into xbt and distill)."""

    lora_towers: Literal["image", "text", "both"] = Field(
        "image", description="towers of NEW that get LoRA adapters"
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale numerator; None = rank")


IMAGE_ANCHOR_HELP = (
    "surrogate target of an image query: the anchor of the caption drawn with it, the mean "
    "anchor of all the image's captions, or procrustes: frozen NEW's image embedding through "
    "stage 1's text-fitted orthogonal map P (no OLD)"
)


class AnchorSettings(MethodConfig):
    """Where stage 2's targets come from when OLD is not run (xbt, finetune)."""

    anchors: Literal["surrogate", "gallery"] = Field(
        "surrogate",
        description="surrogate: ψ₀(N_txt(t)), no OLD at all; gallery: OLD embeddings of the "
        "training pairs as a deployed system already holds them",
    )
    image_anchor: Literal["caption", "mean", "procrustes"] = Field(
        "caption",
        description=IMAGE_ANCHOR_HELP,
    )


class MappedEncoder(nn.Module):
    """A compatible query encoder: a CLIP (NEW with LoRA, or fine-tuned) followed by ψ.

    Speaks the embedding extractor's encoder protocol (``encode_image``, ``encode_text``,
    ``preprocess``, ``tokenizer``, ``identity``), so its queries are batched and cached like
    any model's.
    """

    def __init__(
        self,
        clip: nn.Module,
        psi: Projection,
        new: LoadedModel,
        name: str,
        image_map: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.psi = psi
        # A fixed [d_new, d_old] map for the image queries instead of ψ (``image_map``).
        self.image_map: torch.Tensor | None
        self.register_buffer(
            "image_map", None if image_map is None else torch.as_tensor(image_map).float()
        )
        self.name = name
        self.preprocess = new.preprocess
        self.tokenizer = new.tokenizer
        self.preprocess_signature = new.preprocess_signature
        self.tokenizer_signature = new.tokenizer_signature
        self.identity = f"{name}:{new.identity}:untrained"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """ψ(N_img(images)), or normalize(N_img(images)·P) with a fixed ``image_map`` P: unit
        rows in OLD's space."""
        embedded = F.normalize(self.clip.encode_image(images), dim=-1)
        if self.image_map is None:
            return self.psi(embedded)
        return F.normalize(embedded.float() @ self.image_map, dim=-1)

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


def surrogate_anchors(ctx: FitContext, stage1: Stage1, pairs: ImageTextSet) -> np.ndarray:
    """a(t) = ψ₀(N_txt(t)) for every caption of ``pairs`` (frozen NEW, frozen ψ₀), computed
    once and kept in ``work_dir``; counted as NEW text forward passes."""
    path = ctx.work_dir / f"anchors-{fingerprint_of([stage1.key, pairs.fingerprint])}.npy"
    if is_intact(path):
        ctx.count_forward("new", "text", len(pairs.captions))
        return np.load(path)
    if path.exists():
        warn(f"surrogate anchor table {path} fails its checksum; recomputing it")
    anchors = map_embeddings(stage1.psi, ctx.embed("new", pairs, "text"), ctx.device)
    write_npy(path, anchors, checked=True)
    return anchors


def procrustes_image_anchors(ctx: FitContext, stage1: Stage1, pairs: ImageTextSet) -> np.ndarray:
    """normalize(N_img(x) P) for every image of ``pairs``: frozen NEW's image embeddings through
    stage 1's text-fitted orthogonal map (an orthogonal map keeps the geometry of NEW's image
    region, which ψ's text-trained MLP does not); NEW image forward passes, no OLD."""
    return stage1.procrustes_mapped(ctx.embed("new", pairs, "image"))


def mean_anchors(caption_anchors: np.ndarray, pairs: ImageTextSet) -> np.ndarray:
    """normalize(mean of a(t) over each image's captions), [n_images, d_old]."""
    sums = np.zeros((pairs.n_images, caption_anchors.shape[1]), dtype=np.float64)
    np.add.at(sums, pairs.caption_image, caption_anchors)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return sums.astype(np.float32)


class PixelSource:
    """Preprocessed images of ``data`` by row: a table built once per run, on first use (kept
    in the run's ``ctx.shared`` so the methods of a run share it, and a rerun that finds its
    training finished never builds it) when all rows fit ``budget`` bytes, else preprocessed per
    call."""

    def __init__(
        self,
        data: ImageTextSet,
        preprocess: Callable,
        signature: str,
        shared: dict[Any, Any],
        budget: int = PIXEL_TABLE_BYTES,
    ) -> None:
        self.data, self.preprocess, self.shared = data, preprocess, shared
        self.key = ("pixels", data.fingerprint, signature)
        if self.key in shared:
            self.in_memory = True
        else:
            first = preprocess(data.load_image(0))
            self.in_memory = first.numel() * first.element_size() * data.n_images <= budget

    @property
    def table(self) -> torch.Tensor | None:
        """Every row's pixels (built on first use); None when they do not fit the budget."""
        if not self.in_memory:
            return None
        if self.key not in self.shared:
            rows = [self.preprocess(self.data.load_image(i)) for i in range(self.data.n_images)]
            self.shared[self.key] = torch.stack(rows)
        return self.shared[self.key]

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        """The preprocessed images of ``rows`` stacked into a batch."""
        if self.in_memory:
            return self.table[torch.from_numpy(rows)]
        return torch.stack([self.preprocess(self.data.load_image(int(i))) for i in rows])


@dataclass
class Batch:
    """Row indices of one stage-2 batch: images, and one caption drawn for each."""

    images: np.ndarray
    captions: np.ndarray


def rows_of(table: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows of a token table as the int64 tensor a text tower takes."""
    return torch.from_numpy(np.asarray(table[np.asarray(rows)], dtype=np.int64))


class Targets(Protocol):
    """Stage 2's targets in OLD's space for a batch (one provider per anchor mode)."""

    mode: str
    old_forwards: bool  # whether OLD runs in the loop (counted as OLD forward passes)

    def extra_inputs(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        """Tensors the provider needs in the batch dict (OLD's pixels and tokens)."""
        ...

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_txt, T_img) of the batch."""
        ...

    def info(self) -> dict[str, Any]:
        """What the result records about the targets."""
        ...


class SurrogateTargets:
    """T_txt = ψ₀(N_txt(t)); T_img = the same anchor, or the image's mean anchor."""

    mode = "surrogate"
    old_forwards = False

    def __init__(
        self,
        anchors: np.ndarray,
        pairs: ImageTextSet,
        image_anchor: str,
        device: Any,
        image_targets: np.ndarray | None = None,
    ):
        self.image_anchor = image_anchor
        self.text = torch.from_numpy(anchors).to(device)
        self.image = None
        if image_anchor == "mean":
            self.image = torch.from_numpy(mean_anchors(anchors, pairs)).to(device)
        elif image_anchor == "procrustes":
            if image_targets is None:
                raise XbtError("image_anchor='procrustes' needs the mapped NEW image embeddings")
            self.image = torch.from_numpy(image_targets).to(device)

    def extra_inputs(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text[batch["caption_index"]]
        return text, text if self.image is None else self.image[batch["image_index"]]

    def info(self) -> dict[str, Any]:
        return {"anchors": self.mode, "image_anchor": self.image_anchor}


class GalleryTargets:
    """T_txt = O_txt(t), T_img = O_img(x): OLD's embeddings of the pairs from the cache."""

    mode = "gallery"
    old_forwards = False

    def __init__(self, ctx: FitContext, pairs: ImageTextSet, device: Any) -> None:
        self.text = torch.from_numpy(ctx.gallery_embeddings(pairs, "text")).to(device)
        self.image = torch.from_numpy(ctx.gallery_embeddings(pairs, "image")).to(device)

    def extra_inputs(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text[batch["caption_index"]], self.image[batch["image_index"]]

    def info(self) -> dict[str, Any]:
        return {"anchors": self.mode}


class OldInTheLoop:
    """T_txt = O_txt(t), T_img = O_img(x) computed by OLD inside every step (``distill``)."""

    mode = "old-in-the-loop"
    old_forwards = True

    def __init__(self, ctx: FitContext, pairs: ImageTextSet) -> None:
        self.old = ctx.old.get()
        self.old.model.requires_grad_(False)
        self.old.model.eval()
        self.pixels = PixelSource(
            pairs, self.old.preprocess, self.old.preprocess_signature, ctx.shared
        )
        self.tokens = token_table(self.old.tokenizer, pairs.captions, pairs.fingerprint)

    def extra_inputs(self, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "old_images": self.pixels(batch.images).to(device),
            "old_tokens": rows_of(self.tokens, batch.captions).to(device),
        }

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            text = F.normalize(self.old.model.encode_text(batch["old_tokens"]).float(), dim=-1)
            image = F.normalize(self.old.model.encode_image(batch["old_images"]).float(), dim=-1)
        return text, image

    def info(self) -> dict[str, Any]:
        return {"anchors": self.mode}


TargetFactory = Callable[[FitContext, Stage1, ImageTextSet], Targets]


def anchor_targets(settings: AnchorSettings) -> TargetFactory:
    """The provider of ``settings.anchors`` (surrogate or gallery)."""

    def make(ctx: FitContext, stage1: Stage1, pairs: ImageTextSet) -> Targets:
        if settings.anchors == "gallery":
            return GalleryTargets(ctx, pairs, ctx.device)
        anchors = surrogate_anchors(ctx, stage1, pairs)
        image_targets = None
        if settings.image_anchor == "procrustes":
            image_targets = procrustes_image_anchors(ctx, stage1, pairs)
        return SurrogateTargets(anchors, pairs, settings.image_anchor, ctx.device, image_targets)

    return make


def old_in_the_loop(ctx: FitContext, stage1: Stage1, pairs: ImageTextSet) -> Targets:
    """The ``distill`` provider: OLD runs in every step."""
    return OldInTheLoop(ctx, pairs)


def stage2_parts(cfg: Stage2Config) -> tuple[LoraSettings | None, TargetFactory]:
    """What a stage-2 method trains and towards what, read from its settings' type: LoRA
    adapters when they have LoRA knobs (else all of NEW's weights: fine-tuning), and anchors
    when they have anchor knobs (else OLD runs in the loop: distillation)."""
    lora = cfg if isinstance(cfg, LoraSettings) else None
    targets = anchor_targets(cfg) if isinstance(cfg, AnchorSettings) else old_in_the_loop
    return lora, targets


def trainable_new(new: LoadedModel, lora: LoraSettings | None, seed: int) -> nn.Module:
    """A copy of NEW's CLIP to train: LoRA adapters on ``lora.lora_towers`` (the rest frozen),
    or every weight when ``lora`` is None (fine-tuning)."""
    with seeded(seed):
        clip = copy.deepcopy(new.model)
        if lora is None:
            return clip.requires_grad_(True)
        return add_lora(clip, lora.lora_towers, lora.lora_rank, lora.lora_alpha)


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


class BatchSampler:
    """Stage-2 batches as a function of the step: images without replacement, one of each
    image's captions drawn uniformly (deterministic from the seed, so a resume is exact)."""

    def __init__(self, pairs: ImageTextSet, batch: int, seed: int) -> None:
        self.pairs, self.batch, self.seed = pairs, batch, seed
        self.captions_of = _captions_by_image(pairs)

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 2, step])
        images = rng.choice(self.pairs.n_images, self.batch, replace=False)
        picks = rng.random(self.batch)
        captions = np.array(
            [
                self.captions_of[i][int(r * len(self.captions_of[i]))]
                for i, r in zip(images, picks, strict=True)
            ]
        )
        return Batch(images, captions)


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
    targets: Targets
    fixed_text: bool
    info: dict[str, Any] = field(default_factory=dict)


def stage2_loss(
    encoder: MappedEncoder,
    targets: Targets,
    fixed_text: torch.Tensor | None,
    cfg: Stage2Config,
) -> Callable[[dict[str, Any]], dict[str, torch.Tensor]]:
    """The stage-2 loss of a batch (module docstring); ``fixed_text`` replaces the text tower
    by a table when the text side cannot change."""

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
        text_cos, image_cos = cosine_loss(text_q, text_t), cosine_loss(image_q, image_t)
        if cfg.text_cos_weight is None:  # one weight: summed first, as before the knob existed
            cos = cfg.stage2_cos_weight * (text_cos + image_cos)
        else:
            cos = cfg.text_cos_weight * text_cos + cfg.stage2_cos_weight * image_cos
        loss = (
            cfg.i2t_weight * i2t + cfg.t2i_weight * t2i + cfg.image_text_weight * image_text + cos
        )
        return {
            "loss": loss,
            "i2t": i2t,
            "t2i": t2i,
            "image_text": image_text,
            "text_cos": text_cos,
            "image_cos": image_cos,
        }

    return loss_fn


def prepare_stage2(ctx: FitContext, name: str, cfg: Stage2Config, stage1: Stage1) -> Stage2Setup:
    """Build the stage-2 run of method ``name`` (settings ``cfg``) on ``ctx.train_pairs``: NEW
    with LoRA (or all its weights) followed by a copy of ψ₀, trained towards the targets
    :func:`stage2_parts` reads from ``cfg`` (module docstring)."""
    lora, make_targets = stage2_parts(cfg)
    pairs = check_pairs(ctx.train_pairs, cfg.pairs)
    new = ctx.new.get()
    device = torch.device(ctx.device)
    clip = trainable_new(new, lora, ctx.seed + 1)
    psi = copy.deepcopy(stage1.psi)
    psi.requires_grad_(cfg.psi_lr_scale > 0)
    image_map = stage1.text_procrustes if cfg.image_map == "procrustes" else None
    encoder = MappedEncoder(clip, psi, new, name, image_map).to(device)
    targets = make_targets(ctx, stage1, pairs)
    # With the text side frozen (LoRA on the image tower only, ψ frozen), φ_txt(t) = ψ₀(N_txt(t))
    # is a fixed table (the surrogate anchors): look it up instead of running NEW's text tower.
    fixed_text = None
    if text_tower_frozen(clip, psi):
        table = (
            targets.text  # already the surrogate anchors: read and counted once
            if isinstance(targets, SurrogateTargets)
            else torch.from_numpy(surrogate_anchors(ctx, stage1, pairs)).to(device)
        )
        fixed_text = table
    batch = batch_size(cfg, "batch", pairs.n_images, f"training images of {pairs.key}")
    sampler = BatchSampler(pairs, batch, ctx.seed)
    pixels = PixelSource(pairs, new.preprocess, new.preprocess_signature, ctx.shared)
    tokens = (
        None
        if fixed_text is not None
        else token_table(new.tokenizer, pairs.captions, pairs.fingerprint)
    )

    def batch_at(step: int) -> dict[str, Any]:
        drawn = sampler(step)
        out = {
            "images": pixels(drawn.images).to(device),
            "image_index": torch.from_numpy(drawn.images).to(device),
            "caption_index": torch.from_numpy(drawn.captions).to(device),
            **targets.extra_inputs(drawn, device),
        }
        if tokens is not None:
            out["tokens"] = rows_of(tokens, drawn.captions).to(device)
        return out

    # cfg is the method's whole settings object (LoRA and anchor settings included).
    settings = {k: v for k, v in cfg.model_dump().items() if k != "checkpoint_every"}
    identity = [
        "stage2",
        name,
        targets.mode,
        sorted(settings.items()),
        ctx.seed,
        new.identity,
        ctx.old.ref,
        ctx.text_corpus.name,
        pairs.key,
    ]
    content = {
        **code_version(STAGE2_CODE),
        "stage 1 (ψ₀)": stage1.key,
        f"data of {pairs.key}": pairs.fingerprint,
    }
    key = training_key(ctx, f"{name} stage 2", identity, content)
    info = {
        **targets.info(),
        "pairs": pairs.key,
        "pair_images": pairs.n_images,
        "pair_captions": len(pairs.captions),
        "psi": "frozen" if cfg.psi_lr_scale == 0 else f"trainable (lr x {cfg.psi_lr_scale:g})",
        "image_queries": "ψ(N_img')" if image_map is None else "normalize(N_img' · P)",
        "trainable_in_stage2": count_parameters(encoder, trainable_only=True),
        "text_side": "fixed table ψ₀(N_txt)" if fixed_text is not None else "trained",
        "pixels": "in-memory table" if pixels.in_memory else "per batch",
        "new_weights": "all trained" if lora is None else "frozen, LoRA adapters",
    }
    if lora is not None:
        info["lora"] = {
            "towers": lora.lora_towers,
            "rank": lora.lora_rank,
            "alpha": lora.lora_alpha or lora.lora_rank,
        }
    return Stage2Setup(
        encoder=encoder,
        loss_fn=stage2_loss(encoder, targets, fixed_text, cfg),
        batch_at=batch_at,
        param_groups=[
            {"params": [p for p in clip.parameters() if p.requires_grad]},
            {"params": list(psi.parameters()), "lr_scale": cfg.psi_lr_scale},
        ],
        train_config=TrainConfig(
            steps=cfg.steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=min(cfg.warmup, cfg.steps),
            seed=ctx.seed,
            checkpoint_every=cfg.checkpoint_every,
            log_every=log_every(cfg.steps),
            device=ctx.device,
        ),
        checkpoint_dir=ctx.work_dir / f"{name}-{key}",
        pairs=pairs,
        batch=batch,
        targets=targets,
        fixed_text=fixed_text is not None,
        info=info,
    )


def _params_cost(
    ctx: FitContext, trainable: int, training_time_s: float, image_text_pairs: int = 0
) -> Cost:
    new = ctx.new.get()
    return Cost(
        trainable_params=trainable,
        # NEW known only by its stored embeddings has no weights to count (share left at 0).
        new_params=count_parameters(new.model) if isinstance(new, LoadedModel) else 0,
        training_time_s=round(training_time_s, 3),
        image_text_pairs=image_text_pairs,
    )


def numpy_state(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``tensors`` as float arrays named ``prefix.NAME`` (a query encoder's exported state)."""
    return {f"{prefix}.{name}": t.detach().cpu().numpy() for name, t in tensors.items()}


def mapped_spec(
    psi: Projection,
    clip: nn.Module | None = None,
    lora: dict[str, Any] | None = None,
    image_map: np.ndarray | None = None,
) -> QueryEncoderSpec:
    """Both sides through ψ (tensors ``psi.*``), or images through the fixed matrix
    ``image_map`` (stage 1's text-fitted map P, tensor ``image_map``), after NEW with ``clip``'s
    LoRA adapters (``lora``: towers, rank, alpha) or, without ``lora``, all of ``clip``'s trained
    weights; NEW as it is without ``clip``."""
    tensors = numpy_state("psi", psi.state_dict())
    maps: dict[Side, tuple[Any, str]] = {side: ("psi", "psi") for side in SIDES}
    if image_map is not None:
        maps["image"] = ("matrix", "image_map")
        tensors["image_map"] = np.asarray(image_map, dtype=np.float32)
    adapters = None
    if clip is not None and lora is not None:
        adapters = {"kind": "lora", **lora}
        tensors |= numpy_state("adapters", lora_parameters(clip))
    elif clip is not None:
        adapters = {"kind": "weights"}
        tensors |= numpy_state("new", clip.state_dict())
    return QueryEncoderSpec(
        maps=maps, tensors=tensors, psi={"psi": psi.architecture()}, adapters=adapters
    )


def fit_projection_only(ctx: FitContext, name: str, cfg: ProjectionConfig) -> FittedMethod:
    """Stage 1 only: ψ₀ on the frozen NEW's embeddings (no OLD at query time)."""
    return projection_method(ctx, name, pretrain_projection(ctx, cfg))


def projection_method(ctx: FitContext, name: str, stage1: Stage1) -> FittedMethod:
    """Method ``name`` whose queries are ψ₀(N(x)) of a trained ``stage1`` on the frozen NEW's
    embeddings; its cost is stage 1's (ψ's parameters and training time)."""
    return FittedMethod(
        name=name,
        gallery="old",
        dim=stage1.psi.out_dim,
        query=ctx.query_path(
            {"new": ctx.new.get()},
            lambda side, vectors: map_embeddings(stage1.psi, vectors["new"], ctx.device),
        ),
        info={"stage1": stage1.info},
        cost=_params_cost(ctx, count_parameters(stage1.psi), stage1.info["wall_time_s"]),
        export=mapped_spec(stage1.psi),
    )


def fit_stage2(ctx: FitContext, name: str, cfg: Stage2Config) -> FittedMethod:
    """Stage 1, then stage 2 of method ``name`` (see :func:`prepare_stage2`); the query
    encoders are the trained NEW' + ψ. With ``cfg.pairs == 0`` this is stage 1 alone."""
    if cfg.pairs == 0:
        return fit_projection_only(ctx, name, cfg)
    check_pairs(ctx.train_pairs, cfg.pairs)
    stage1 = pretrain_projection(ctx, cfg)
    setup = prepare_stage2(ctx, name, cfg, stage1)
    log = train(
        setup.encoder,
        setup.loss_fn,
        setup.batch_at,
        setup.train_config,
        setup.checkpoint_dir,
        desc=f"{name} stage 2",
        param_groups=setup.param_groups,
        # Fine-tuning trains NEW's logit_scale, which no loss uses.
        find_unused_parameters=setup.info["new_weights"] == "all trained",
    )
    in_loop = cfg.steps * setup.batch
    ctx.count_forward("new", "image", in_loop, in_loop=True)
    if not setup.fixed_text:
        ctx.count_forward("new", "text", in_loop, in_loop=True)
    if setup.targets.old_forwards:
        ctx.count_forward("old", "image", in_loop, in_loop=True)
        ctx.count_forward("old", "text", in_loop, in_loop=True)
    trained = setup.info["trainable_in_stage2"]
    if cfg.psi_lr_scale == 0:
        trained += count_parameters(stage1.psi)  # ψ was trained in stage 1
    encoder = setup.encoder.finish()
    return FittedMethod(
        name=name,
        gallery="old",
        dim=encoder.psi.out_dim,
        # NEW' + ψ costs what NEW costs at query time (its adapters are small)
        query=ctx.query_path({"new": encoder}, lambda side, vectors: vectors["new"]),
        info={
            "stage1": stage1.info,
            "stage2": {**setup.info, **log_info(log, setup.checkpoint_dir)},
            "encoder_identity": encoder.identity,
        },
        cost=_params_cost(
            ctx, trained, stage1.info["wall_time_s"] + log.wall_time_s, setup.pairs.n_images
        ),
        export=mapped_spec(
            encoder.psi,
            encoder.clip,
            setup.info.get("lora"),
            None if encoder.image_map is None else encoder.image_map.cpu().numpy(),
        ),
    )
