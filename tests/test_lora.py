"""LoRA wiring on open_clip's CLIP: the right layers, every adapter trains, base weights exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from xbt_bench.errors import ConfigError, XbtError
from xbt_bench.models.lora import (
    ExactLoraMultiheadAttention,
    add_lora,
    count_parameters,
    lora_parameters,
    lora_targets,
)

WIDTH, BLOCKS = 32, 1  # conftest's tiny model: width 32, one block per tower


@pytest.fixture
def tiny(tiny_model_name: str) -> nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model(tiny_model_name)


def _batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 16, 16, generator=generator)
    tokens = torch.randint(1, 1000, (4, 16), generator=generator)
    return images, tokens


def _loss(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    image = nn.functional.normalize(model.encode_image(images), dim=-1)
    text = nn.functional.normalize(model.encode_text(tokens), dim=-1)
    return -(image * text).sum() + image.pow(3).sum() + text.pow(3).sum()


def test_targets_are_attention_and_mlp_layers_of_the_chosen_towers(tiny: nn.Module) -> None:
    image = lora_targets(tiny, "image")
    text = lora_targets(tiny, "text")
    assert image == [
        "visual.transformer.resblocks.0.attn",
        "visual.transformer.resblocks.0.mlp.c_fc",
        "visual.transformer.resblocks.0.mlp.c_proj",
    ]
    assert text == [
        "transformer.resblocks.0.attn",
        "transformer.resblocks.0.mlp.c_fc",
        "transformer.resblocks.0.mlp.c_proj",
    ]
    assert sorted(lora_targets(tiny, "both")) == sorted(image + text)


@pytest.mark.parametrize("towers", ["image", "text", "both"])
def test_every_trainable_lora_tensor_gets_a_gradient(tiny: nn.Module, towers: str) -> None:
    model = add_lora(copy.deepcopy(tiny), towers, rank=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    adapters = lora_parameters(model)
    assert trainable == set(adapters)
    # Per tower: in_proj (32 -> 96) and out_proj (32 -> 32) of attention, c_fc (32 -> 128),
    # c_proj (128 -> 32); LoRA adds rank x (in + out) each.
    per_tower = 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert count_parameters(model, trainable_only=True) == per_tower * (
        2 if towers == "both" else 1
    )
    images, tokens = _batch(model)
    optimizer = torch.optim.SGD(list(adapters.values()), lr=0.1)
    _loss(model, images, tokens).backward()  # lora_B starts at 0: only B gets a gradient
    optimizer.step()
    optimizer.zero_grad()
    _loss(model, images, tokens).backward()
    dead = [name for name, p in adapters.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_untrained_adapters_change_nothing_and_base_weights_stay_exact(tiny: nn.Module) -> None:
    base = {k: v.clone() for k, v in tiny.state_dict().items()}
    model = add_lora(copy.deepcopy(tiny), "both", rank=4)
    images, tokens = _batch(model)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), tiny.encode_image(images))
        assert torch.equal(model.encode_text(tokens), tiny.encode_text(tokens))
    for p in lora_parameters(model).values():
        nn.init.normal_(p, std=0.1)
    for _ in range(3):
        _loss(model, images, tokens).backward()
    lora_free = {
        k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k
    }
    assert lora_free.keys() == base.keys()
    assert all(torch.equal(lora_free[k], base[k]) for k in base)  # no drift from merge/unmerge
    assert all(torch.equal(tiny.state_dict()[k], base[k]) for k in base)


def test_attention_adapter_applies_each_delta_once() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.resblocks = nn.ModuleList([nn.Module()])
            self.transformer.resblocks[0].attn = copy.deepcopy(attention)

    model = add_lora(Block(), "text", rank=2)
    adapted = model.transformer.resblocks[0].attn
    assert isinstance(adapted, ExactLoraMultiheadAttention)
    for p in lora_parameters(model).values():
        nn.init.normal_(p)
    x = torch.randn(3, 5, 8)
    out = adapted(x, x, x, need_weights=False)[0]
    reference = copy.deepcopy(attention)
    with torch.no_grad():
        reference.in_proj_weight += adapted.get_delta_weight("default")
        reference.out_proj.weight += adapted.base_layer.out_proj.get_delta_weight("default")
    expected = reference(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_bad_lora_settings_are_clear_errors(tiny: nn.Module) -> None:
    with pytest.raises(ConfigError, match="lora_rank must be an integer >= 1, got 0"):
        add_lora(copy.deepcopy(tiny), "image", rank=0)
    with pytest.raises(ConfigError, match="lora_towers 'vision' is not known"):
        add_lora(copy.deepcopy(tiny), "vision", rank=4)
    with pytest.raises(XbtError, match="no transformer attention/MLP layers"):
        add_lora(nn.Sequential(nn.Linear(4, 4)), "both", rank=4)
