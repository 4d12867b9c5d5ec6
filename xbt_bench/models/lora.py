"""LoRA on an open_clip CLIP with peft: the parameter-efficient half of XBT's stage 2.

Targets, per residual block of the chosen towers, the attention module (an
``nn.MultiheadAttention``: peft adapts its fused q/k/v ``in_proj`` and its ``out_proj``, which
it merges for each forward because ``nn.MultiheadAttention`` never calls ``out_proj``) and the
MLP's ``c_fc``/``c_proj``. Targeting ``out_proj`` alone would leave LoRA weights that never get
a gradient.

peft's own merge for ``nn.MultiheadAttention`` (up to at least 0.21) adds the ``out_proj``
delta twice (W + 2ΔW in every forward; huggingface/peft PR #3774) and restores the frozen base
weights by subtraction, which drifts them by rounding at every forward. The attention layers
are therefore switched to :class:`ExactLoraMultiheadAttention`, which applies each delta once
and puts the untouched base parameters back after each forward.
"""

from __future__ import annotations

import re

import torch
from peft.tuners.lora.layer import MultiheadAttention as PeftLoraMultiheadAttention
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..errors import ConfigError, XbtError

LORA_TOWERS = ("image", "text", "both")
# Block-level names of the layers LoRA adapts, relative to a tower's transformer.
_BLOCK_LAYER = re.compile(r"transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$")
_TOWER_PREFIXES = {"image": ("visual.",), "text": ("transformer.", "text.transformer.")}


class ExactLoraMultiheadAttention(PeftLoraMultiheadAttention):
    """peft's LoRA ``nn.MultiheadAttention`` with a merge that adds each delta once (with its
    gradient) and an unmerge that re-registers the original, bit-identical base parameters."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Swap in W + ΔW for ``in_proj_weight`` and ``out_proj.weight`` (kept differentiable
        in the adapters), remembering the base parameters."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        active = [name for name in adapter_names if name in self.lora_A]
        if not active:
            return
        attention = self.get_base_layer()
        out_linear = attention.out_proj.get_base_layer()
        if not self.merged:
            self._base_weights = (attention.in_proj_weight, out_linear.weight)
        in_weight: torch.Tensor = attention.in_proj_weight
        out_weight: torch.Tensor = out_linear.weight
        for name in active:
            in_weight = in_weight.detach() + self.get_delta_weight(name).to(in_weight.dtype)
            delta = attention.out_proj.get_delta_weight(name).to(out_weight.dtype)
            out_weight = out_weight.detach() + delta
            self.merged_adapters.append(name)
        if safe_merge and not (
            torch.isfinite(in_weight).all() and torch.isfinite(out_weight).all()
        ):
            self.unmerge()
            raise ValueError(f"NaNs in the merged weights of adapters {active}")
        del attention.in_proj_weight
        attention.in_proj_weight = in_weight
        del out_linear.weight
        out_linear.weight = out_weight

    def unmerge(self) -> None:
        """Re-register the base parameters saved by :meth:`merge` (exactly as they were)."""
        if not self.merged:
            return
        attention = self.get_base_layer()
        out_linear = attention.out_proj.get_base_layer()
        in_param, out_param = self._base_weights
        del attention.in_proj_weight
        attention.register_parameter("in_proj_weight", in_param)
        del out_linear.weight
        out_linear.register_parameter("weight", out_param)
        del self._base_weights
        self.merged_adapters.clear()


def check_lora_settings(towers: str, rank: int) -> None:
    """ConfigError unless ``towers`` is image/text/both and ``rank`` >= 1."""
    if towers not in LORA_TOWERS:
        raise ConfigError(
            f"lora_towers {towers!r} is not known; use one of {', '.join(LORA_TOWERS)}"
        )
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError(f"lora_rank must be an integer >= 1, got {rank!r}")


def lora_targets(model: nn.Module, towers: str) -> list[str]:
    """Full names of the modules LoRA adapts in ``towers`` (image, text or both) of ``model``."""
    check_lora_settings(towers, 1)
    prefixes = tuple(
        p
        for tower in ("image", "text")
        if towers in (tower, "both")
        for p in _TOWER_PREFIXES[tower]
    )
    targets = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefixes)
        and _BLOCK_LAYER.search(name)
        and isinstance(module, (nn.Linear, nn.MultiheadAttention))
    ]
    if not targets:
        raise XbtError(
            f"no transformer attention/MLP layers found in the {towers} tower(s) of "
            f"{type(model).__name__}; LoRA needs transformer towers (set lora_towers to a tower "
            "that is a transformer, or use the finetune method)"
        )
    return targets


def _width(module: nn.Module) -> int:
    """The smaller side of an adapted layer's weight (a LoRA rank above it adds nothing)."""
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    return min(module.in_features, module.out_features)


def add_lora(
    model: nn.Module, towers: str, rank: int, alpha: float | None = None, dropout: float = 0.0
) -> nn.Module:
    """Inject LoRA adapters (rank ``rank``, scale ``alpha / rank``; ``alpha`` defaults to
    ``rank``) into ``model`` in place; every base weight is frozen, only adapters train.
    ConfigError when ``rank`` exceeds the width of an adapted layer."""
    from peft import LoraConfig, inject_adapter_in_model

    check_lora_settings(towers, rank)
    targets = lora_targets(model, towers)
    width = min(_width(model.get_submodule(name)) for name in targets)
    if rank > width:
        raise ConfigError(
            f"lora_rank={rank} is larger than the width of the layers it adapts in the {towers} "
            f"tower(s) ({width}); set lora_rank to at most {width}"
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=dropout,
        # A full-match pattern: a list would also match by suffix ("transformer.resblocks.0.attn"
        # is a suffix of the image tower's "visual.transformer.resblocks.0.attn").
        target_modules="|".join(re.escape(name) for name in targets),
        bias="none",
    )
    model = inject_adapter_in_model(config, model)
    for module in model.modules():
        if type(module) is PeftLoraMultiheadAttention:
            module.__class__ = ExactLoraMultiheadAttention
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA adapter tensors of ``model`` by name."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
