"""Shared fixtures: an isolated XBT_BENCH_HOME, offline hubs, and a tiny open_clip model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODEL = "xbt-test-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True, scope="session")
def xbt_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root for the whole test session (toy data and models are built once)."""
    home = Path(os.environ.get("XBT_TEST_HOME") or tmp_path_factory.mktemp("xbt-home"))
    os.environ["XBT_BENCH_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny open_clip config (random weights) and return its name."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-config")
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_weights(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random tiny model saved as .pt, .safetensors and a local-dir folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_model_name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("tiny-weights")
    torch.save(state, folder / "tiny.pt")
    save_file(state, str(folder / "tiny.safetensors"))
    local = folder / "local"
    local.mkdir()
    save_file(state, str(local / "open_clip_model.safetensors"))
    (local / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}})
    )
    return {"pt": folder / "tiny.pt", "safetensors": folder / "tiny.safetensors", "dir": local}
