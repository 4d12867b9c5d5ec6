"""Exact text-length trimming: cut text batches to their longest caption only where it gives
the same embeddings (a causal tower pooling the end-of-text token), and fall back otherwise."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from xbt_bench.models.loading import load_model
from xbt_bench.models.trim import TrimmedTextCLIP, enable_text_trimming, trimming_applies

TOY_CAPTIONS = [
    "a red circle",
    "a small green square at the top left and a large blue star on the right",
    "there is a big ivory hexagon below and to the left of a tiny scarlet ring",
    "a disc",
]
FLICKR_LIKE = [
    "A man in an orange hat starring at something.",
    "Two young guys with shaggy hair look at their hands while hanging out in the yard.",
    "A child in a pink dress is climbing up a set of stairs in an entry way.",
    "A black dog and a spotted dog are fighting",
    "Several men in hard hats are operating a giant pulley system.",
    "A little girl covered in paint sits in front of a painted rainbow with her hands in a bowl.",
    "A dog runs on the green grass near a wooden fence.",
    "Two men, one in a gray shirt, one in a black shirt, standing near a stove.",
]


def full_encode(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own, untrimmed text tower."""
    return CLIP.encode_text(model, tokens, normalize=True)


@pytest.mark.parametrize("name", ["toy-s", "toy-m"])
def test_trimmed_toy_text_towers_equal_the_full_ones(name: str) -> None:
    loaded = load_model(f"zoo:{name}")
    assert type(loaded.model) is TrimmedTextCLIP and loaded.text_trimmed
    tokens = loaded.tokenizer(TOY_CAPTIONS)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]  # there is padding to cut
    with torch.no_grad():
        trimmed = loaded.model.encode_text(tokens, normalize=True)
        full = full_encode(loaded.model, tokens)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_trimmed_real_size_vit_b_32_text_tower_equals_the_full_one() -> None:
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random
    try:
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32").eval()
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokens = tokenizer(FLICKR_LIKE)
    assert enable_text_trimming(model, tokens[:2]) and type(model) is TrimmedTextCLIP
    with torch.no_grad():
        trimmed = model.encode_text(tokens, normalize=True)
        full = full_encode(model, tokens)
    assert int(tokens.argmax(-1).max()) + 1 <= 25  # 77 positions, about a third used
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)


def test_training_gradients_are_those_of_the_full_tower() -> None:
    loaded = load_model("zoo:toy-s")
    tokens = loaded.tokenizer(TOY_CAPTIONS)
    grads = []
    for encode in (
        lambda t: loaded.model.encode_text(t),
        lambda t: CLIP.encode_text(loaded.model, t),
    ):
        loaded.model.zero_grad()
        encode(tokens).pow(2).sum().backward()
        grads.append(loaded.model.transformer.resblocks[0].attn.in_proj_weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_models_where_trimming_is_not_exact_keep_the_full_tower() -> None:
    loaded = load_model("zoo:toy-s")
    model = loaded.model
    model.__class__ = CLIP
    sample = loaded.tokenizer(TOY_CAPTIONS)
    model.text_pool_type = "last"  # the last position sees the padding: not exact
    assert not trimming_applies(model) and not enable_text_trimming(model, sample)
    model.text_pool_type = "argmax"
    mask = model.attn_mask
    model.attn_mask = torch.zeros_like(mask)  # bidirectional: earlier positions see the padding
    assert not trimming_applies(model) and type(model) is CLIP
    model.attn_mask = mask
    assert enable_text_trimming(model, sample) and type(model) is TrimmedTextCLIP
