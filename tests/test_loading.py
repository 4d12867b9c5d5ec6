import time
from pathlib import Path

import pytest
import torch

from xbt_bench.errors import ConfigError, NotFoundError, XbtError
from xbt_bench.models.loading import load_model
from xbt_bench.models.refs import parse_model_ref


def embed(loaded, image: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return loaded.model.encode_image(image), loaded.model.encode_text(loaded.tokenizer(texts))


def test_pt_safetensors_and_local_dir_load_identically(tiny_model_name, tiny_weights) -> None:
    refs = [
        f"{tiny_model_name}:{tiny_weights['pt']}",
        f"{tiny_model_name}:{tiny_weights['safetensors']}",
        f"local-dir:{tiny_weights['dir']}",
    ]
    image = torch.rand(2, 3, 16, 16)
    texts = ["a red circle", "a blue square"]
    loaded = [load_model(ref) for ref in refs]
    outputs = [embed(m, image, texts) for m in loaded]
    for image_out, text_out in outputs[1:]:
        assert torch.equal(image_out, outputs[0][0]) and torch.equal(text_out, outputs[0][1])
    assert all(m.embed_dim == 16 for m in loaded)
    assert not loaded[0].model.training
    # identity carries the weights hash: same weights in .pt and .safetensors differ as files
    assert loaded[0].identity.startswith(f"{tiny_model_name}@")
    assert loaded[0].identity != loaded[1].identity
    assert loaded[1].identity.split("@")[1] == loaded[2].identity.split("@")[1]


def test_changed_weights_change_identity(tiny_model_name, tiny_weights, tmp_path: Path) -> None:
    state = torch.load(tiny_weights["pt"], weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, tmp_path / "other.pt")
    a = load_model(f"{tiny_model_name}:{tiny_weights['pt']}")
    b = load_model(f"{tiny_model_name}:{tmp_path / 'other.pt'}")
    assert a.identity != b.identity


def test_offline_missing_pretrained_tag_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    start = time.perf_counter()
    with pytest.raises(XbtError) as info:
        load_model("ViT-B-32:openai")
    elapsed = time.perf_counter() - start
    assert elapsed < 5, elapsed
    message = str(info.value)
    assert "not available offline" in message and "ViT-B-32:/path/to/weights" in message


def test_bad_references_give_clear_errors(tiny_model_name, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NAME:TAG"):
        parse_model_ref("ViT-B-32")
    with pytest.raises(NotFoundError, match="does not exist"):
        load_model(f"{tiny_model_name}:{tmp_path / 'missing.pt'}")
    with pytest.raises(NotFoundError, match="tag 'nope' not known"):
        load_model("ViT-B-32:nope")
    with pytest.raises(NotFoundError, match="open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")
