"""Every method's settings, with defaults: validated, typed, and recorded with each result.

A method's effective config is its defaults, updated by the pair file's ``[methods.NAME]``
table, updated by command-line overrides (:func:`resolve_config`). Unknown keys are errors
that suggest the closest known key.

The XBT family's defaults were chosen on the ``support`` split of ``toy-s-to-m`` (never on a
test split; the grid and its numbers are in the issue-5 note): a strong cosine term (weight 10)
and a low temperature (0.02) in both stages, a 3-layer ψ (hidden 352, so ψ + rank-8 LoRA stay
under 5% of toy-m's parameters) trained 3000 steps of 512 texts at lr 3e-3, input noise 0.2 of
the text spread, then 300 stage-2 steps with LoRA on the image tower only and ψ frozen. The
stage-1 lr mattered most (1e-3 → 3e-3: image→text R@1 on support 41.3 → 46.2); 600 stage-2
steps instead of 300 added about half a point. Stage-1 settings are shared by xbt-proj, xbt,
xbt-gallery, distill and finetune, so they all start from the same ψ₀.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError


class MethodConfig(BaseModel):
    """Base of every method's settings (no settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SlerpConfig(MethodConfig):
    """SLERP between the OLD query (α = 0) and the Procrustes-mapped NEW query (α = 1)."""

    alpha: float | None = Field(
        None, ge=0, le=1, description="fixed weight; None chooses it from alpha_grid on support"
    )
    alpha_grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        min_length=1,
        description="candidate weights, scored by rsum of method->old retrieval on support",
    )


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
    checkpoint_every: int = Field(100, ge=1, description="stage-2 checkpoint interval (steps)")


class LoraSettings(MethodConfig):
    """LoRA knobs of the parameter-efficient stage 2 (mixed into xbt and distill)."""

    lora_towers: Literal["image", "text", "both"] = Field(
        "image", description="towers of NEW that get LoRA adapters"
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scale numerator; None = rank")


class AnchorSettings(MethodConfig):
    """Where stage 2's targets come from when OLD is not run (xbt, finetune)."""

    anchors: Literal["surrogate", "gallery"] = Field(
        "surrogate",
        description="surrogate: ψ₀(N_txt(t)), no OLD at all; gallery: OLD embeddings of the "
        "training pairs as a deployed system already holds them",
    )
    image_anchor: Literal["caption", "mean"] = Field(
        "caption",
        description="surrogate target of an image query: the anchor of the caption drawn with "
        "it, or the mean anchor of all the image's captions",
    )


class XbtConfig(Stage2Config, LoraSettings, AnchorSettings):
    """XBT: stage 1, then LoRA on frozen NEW towards anchors, without OLD."""


class XbtGalleryConfig(XbtConfig):
    """XBT with the gallery's OLD embeddings of the training pairs as anchors and LoRA on both
    towers: zero OLD forward passes in training, and a text side that can learn OLD's images."""

    anchors: Literal["surrogate", "gallery"] = Field(
        "gallery", description="as for xbt; this variant reads OLD's gallery embeddings"
    )
    lora_towers: Literal["image", "text", "both"] = Field(
        "both", description="towers of NEW that get LoRA adapters"
    )


class DistillConfig(Stage2Config, LoraSettings):
    """Distillation: XBT's stage 2 with OLD run in the loop for its targets."""


class FinetuneConfig(Stage2Config, AnchorSettings):
    """Full fine-tuning of NEW and ψ towards the anchors (no LoRA)."""

    lr: float = Field(1e-4, gt=0, description="stage-2 learning rate of NEW's weights")


CONFIGS: dict[str, type[MethodConfig]] = {
    "old": MethodConfig,
    "new": MethodConfig,
    "identity": MethodConfig,
    "procrustes": MethodConfig,
    "slerp": SlerpConfig,
    "xbt-proj": ProjectionConfig,
    "xbt": XbtConfig,
    "xbt-gallery": XbtGalleryConfig,
    "distill": DistillConfig,
    "finetune": FinetuneConfig,
}


def config_class(method: str) -> type[MethodConfig]:
    """The settings class of ``method`` (registered methods without one take no settings)."""
    return CONFIGS.get(method, MethodConfig)


def parse_config(method: str, values: Mapping[str, Any] | MethodConfig | None) -> MethodConfig:
    """``values`` over ``method``'s defaults, validated; ConfigError naming the bad key."""
    cls = config_class(method)
    if isinstance(values, cls):
        return values
    values = dict(values.model_dump() if isinstance(values, BaseModel) else values or {})
    known = list(cls.model_fields)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or '(none)'}"
            )
            raise ConfigError(f"method {method!r} has no setting {key!r}; {hint}")
    try:
        return cls(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = f"setting {field}={values[field]!r}" if field in values else "settings"
        raise ConfigError(f"method {method!r}: {where}: {first['msg']}") from None


def resolve_config(
    method: str,
    pair_settings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``method``'s effective settings: defaults <- pair file ``[methods.NAME]`` <- overrides."""
    merged = {**(pair_settings or {}), **(overrides or {})}
    return parse_config(method, merged).model_dump()


def describe_settings(method: str) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` of each setting of ``method``."""
    cls = config_class(method)
    defaults = cls().model_dump()
    return [
        (name, repr(defaults[name]), field.description or "")
        for name, field in cls.model_fields.items()
    ]
