"""The XBT family (docs/methods.md): ``xbt-proj`` (stage 1: ψ on text only), ``xbt`` (stage 1, then
LoRA on the frozen NEW towards anchors, without OLD), its ``xbt-gallery`` variant, ``distill``
(XBT's stage 2 with OLD run in the loop for its targets) and ``finetune`` (stage 2 training all
of NEW's weights, no LoRA).

Every training run goes through :func:`xbt_bench.train.train` into a folder of ``ctx.work_dir``
named by a hash of what its result depends on, so stage 1 is shared by every method of the
family and an interrupted run resumes where its last checkpoint left it. Their defaults were
chosen on the ``support`` split of ``toy-s-to-m`` (docs/methods.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import register_method
from .base import FitContext, FittedMethod
from .search import Choice, Dimension, FloatRange, IntRange, SearchSpace
from .stage1 import ProjectionConfig
from .stage2 import (
    IMAGE_ANCHOR_HELP,
    IMAGE_MAP_HELP,
    AnchorSettings,
    LoraSettings,
    Stage2Config,
    fit_projection_only,
    fit_stage2,
)


# A stage-2 method's settings type says what it trains and towards what (stage2_parts): LoRA
# knobs mean adapters on the frozen NEW, anchor knobs mean targets without OLD in the loop.
class XbtConfig(Stage2Config, LoraSettings, AnchorSettings):
    """XBT: stage 1, then LoRA on frozen NEW towards anchors, without OLD.

    Defaults chosen on the toy pair's ``support`` split (docs/methods.md, grids 1–18): image
    queries go through stage 1's text-fitted orthogonal map P (stitch's image queries, which LoRA
    adjusts), learn to find their captions' anchors at temperature 0.05 and are held near
    frozen NEW's images through P by a cosine term; no image–text agreement term.
    """

    lr: float = Field(1e-2, gt=0, description="stage-2 learning rate of the LoRA adapters")
    stage2_cos_weight: float = Field(
        3.0, ge=0, description="stage-2 weight of the cosine terms towards the anchors"
    )
    stage2_tau: float = Field(0.05, gt=0, description="stage-2 InfoNCE temperature")
    image_map: Literal["psi", "procrustes"] = Field("procrustes", description=IMAGE_MAP_HELP)
    image_text_weight: float = Field(
        0.0,
        ge=0,
        description="weight of InfoNCE(φ_img, φ_txt), the agreement of the two query sides",
    )
    image_anchor: Literal["caption", "mean", "procrustes"] = Field(
        "procrustes",
        description=IMAGE_ANCHOR_HELP,
    )


class XbtGalleryConfig(XbtConfig):
    """XBT with the gallery's OLD embeddings of the training pairs as anchors and LoRA on both
    towers: zero OLD forward passes in training, and a text side that can learn OLD's images."""

    anchors: Literal["surrogate", "gallery"] = Field(
        "gallery", description="as for xbt; this variant reads OLD's gallery embeddings"
    )
    lora_towers: Literal["image", "text", "both"] = Field(
        "both", description="towers of NEW that get LoRA adapters"
    )
    lr: float = Field(1e-3, gt=0, description="stage-2 learning rate of the LoRA adapters")
    stage2_cos_weight: float = Field(
        10.0, ge=0, description="stage-2 weight of the cosine terms towards the anchors"
    )
    image_text_weight: float = Field(
        0.0,
        ge=0,
        description="weight of InfoNCE(φ_img, φ_txt); 0 here (support rsum 363.7 against 348.0 "
        "with 1, docs/methods.md)",
    )
    stage2_tau: float = Field(0.02, gt=0, description="stage-2 InfoNCE temperature")
    image_map: Literal["psi", "procrustes"] = Field("psi", description=IMAGE_MAP_HELP)


class DistillConfig(Stage2Config, LoraSettings):
    """Distillation: XBT's stage 2 with OLD run in the loop for its targets."""


class FinetuneConfig(Stage2Config, AnchorSettings):
    """Full fine-tuning of NEW and ψ towards the anchors (no LoRA)."""

    lr: float = Field(1e-4, gt=0, description="stage-2 learning rate of NEW's weights")


# The ranges `xbt-bench tune` searches (docs/methods.md, "Tuning"): they hold every variant
# the research log tried (grids 1–18) and today's defaults, so a tuner can rediscover them.
# Step counts are capped by a tuning budget (IntRange(capped=True)).
STAGE1_SPACE: dict[str, Dimension] = {
    "proj_lr": FloatRange(3e-4, 1e-2, log=True),
    "proj_steps": IntRange(500, 6000, log=True, capped=True),
    "noise": FloatRange(0.0, 1.0),
    "cos_weight": FloatRange(1.0, 30.0, log=True),
    "proj_layers": Choice((1, 2, 3)),
    "proj_skip": Choice(("trained", "fixed")),
}
STAGE2_SPACE: dict[str, Dimension] = {
    "steps": IntRange(100, 1200, log=True, capped=True),
    "stage2_cos_weight": FloatRange(1.0, 100.0, log=True),
    "stage2_tau": FloatRange(0.01, 0.2, log=True),
    "i2t_weight": FloatRange(0.1, 10.0, log=True),
    "t2i_weight": Choice((0.0, 0.3, 1.0, 3.0)),
    "image_text_weight": Choice((0.0, 0.1, 1.0)),
    "psi_lr_scale": Choice((0.0, 0.1)),
    "image_map": Choice(("psi", "procrustes")),
}
# Where every stage-2 method's search starts after its own settings: the research log's best
# stage-2 recipe (rows 82-85: image queries through P, cosine weight 3, temperature 0.05, no
# image–text term), so distill, finetune and xbt-gallery are not left at untuned defaults
# while xbt's defaults are that recipe.
STAGE2_START = {
    "image_map": "procrustes",
    "stage2_cos_weight": 3.0,
    "stage2_tau": 0.05,
    "image_text_weight": 0.0,
}
LORA_SPACE: dict[str, Dimension] = {
    "lr": FloatRange(1e-4, 3e-2, log=True),
    "lora_rank": Choice((4, 8, 16)),
    "lora_towers": Choice(("image", "text", "both")),
}
ANCHOR_SPACE: dict[str, Dimension] = {"image_anchor": Choice(("caption", "mean", "procrustes"))}


@register_method(
    "xbt-proj",
    settings=ProjectionConfig,
    kind="trained",
    trains="stage 1",
    training_needs="text embeddings",
    notes="ablation: ψ alone on the frozen NEW",
    search=SearchSpace(STAGE1_SPACE),
)
def fit_xbt_proj(ctx: FitContext, settings: ProjectionConfig) -> FittedMethod:
    """Stage 1 only: ψ₀ on the frozen NEW's embeddings (no OLD at query time)."""
    return fit_projection_only(ctx, "xbt-proj", settings)


@register_method(
    "xbt",
    settings=XbtConfig,
    kind="trained",
    trains="stages 1+2",
    training_needs="text embeddings",
    notes="the reference recipe: ψ on text, then LoRA on frozen NEW towards ψ₀ anchors",
    sweepable=True,
    search=SearchSpace({**STAGE2_SPACE, **LORA_SPACE, **ANCHOR_SPACE}, (STAGE2_START,)),
    baseline="stitch",
    needs_models=True,
)
def fit_xbt(ctx: FitContext, settings: XbtConfig) -> FittedMethod:
    """XBT: stage 1 on text, then LoRA on the frozen NEW towards anchors; stage 2 runs no OLD."""
    return fit_stage2(ctx, "xbt", settings)


@register_method(
    "xbt-gallery",
    settings=XbtGalleryConfig,
    kind="trained",
    trains="stages 1+2",
    training_needs="OLD embeddings of the pairs",
    notes="xbt with anchors from OLD's gallery embeddings of the training pairs; LoRA on both "
    "towers",
    variant=True,
    sweepable=True,
    search=SearchSpace({**STAGE2_SPACE, **LORA_SPACE}, (STAGE2_START,)),
    baseline="stitch",
    needs_models=True,
)
def fit_xbt_gallery(ctx: FitContext, settings: XbtGalleryConfig) -> FittedMethod:
    """XBT whose anchors are OLD's gallery embeddings of the training pairs (read from the
    embedding cache, as a deployed system holds them); no OLD forward pass."""
    return fit_stage2(ctx, "xbt-gallery", settings)


@register_method(
    "distill",
    settings=DistillConfig,
    kind="trained",
    trains="stage 2 with real OLD targets",
    training_needs="OLD forward passes",
    notes="as xbt, but targets from OLD run in the loop (the old-model-in-the-loop cost baseline)",
    sweepable=True,
    search=SearchSpace({**STAGE2_SPACE, **LORA_SPACE}, (STAGE2_START,)),
    needs_models=True,
)
def fit_distill(ctx: FitContext, settings: DistillConfig) -> FittedMethod:
    """XBT's stage 2 with OLD in the loop: targets O_txt(t), O_img(x) computed every step."""
    return fit_stage2(ctx, "distill", settings)


@register_method(
    "finetune",
    settings=FinetuneConfig,
    kind="trained",
    trains="all NEW weights + ψ",
    notes="not parameter-efficient: shows what PEFT saves",
    sweepable=True,
    training_needs="text embeddings",
    search=SearchSpace(
        {**STAGE2_SPACE, "lr": FloatRange(1e-5, 1e-3, log=True), **ANCHOR_SPACE},
        (STAGE2_START,),
    ),
    needs_models=True,
)
def fit_finetune(ctx: FitContext, settings: FinetuneConfig) -> FittedMethod:
    """Stage 1, then all of NEW's weights and ψ trained towards the anchors (no LoRA)."""
    return fit_stage2(ctx, "finetune", settings)
