"""Our old→old and new→new recalls equal CLIP_benchmark's zero-shot retrieval on the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xbt_bench.data.base import ImageTextSet
from xbt_bench.embed import EmbeddingCache, embed_set
from xbt_bench.eval import evaluate_retrieval
from xbt_bench.models.loading import LoadedModel, load_model

N_IMAGES = 30
CAPTIONS_PER_IMAGE = 5
BATCH_IMAGES = 10
KS = [1, 5, 10]
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "left", "right",
         "above", "below", "big", "small", "two", "three", "a"]


def random_retrieval_set() -> ImageTextSet:
    """Random images with five distinct short captions each (CLIP_benchmark's layout)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(N_IMAGES, 24, 24, 3), dtype=np.uint8)
    captions = [
        " ".join(rng.choice(WORDS, size=5)) + f" {j}"
        for j in range(N_IMAGES * CAPTIONS_PER_IMAGE)
    ]
    return ImageTextSet(
        name="random-retrieval",
        split="test",
        n_images=N_IMAGES,
        load_image=lambda i: Image.fromarray(pixels[i]),
        captions=captions,
        caption_image=np.repeat(np.arange(N_IMAGES), CAPTIONS_PER_IMAGE),
    )


class CaptionsDataset(torch.utils.data.Dataset):
    """The dataset in CLIP_benchmark's retrieval format: (image tensor, list of captions)."""

    def __init__(self, data: ImageTextSet, preprocess):
        self.data = data
        self.preprocess = preprocess

    def __len__(self) -> int:
        return self.data.n_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str]]:
        captions = [self.data.captions[j] for j in np.flatnonzero(self.data.caption_image == i)]
        return self.preprocess(self.data.load_image(i)), captions


def clip_benchmark_recalls(model: LoadedModel, data: ImageTextSet) -> dict[str, float]:
    """CLIP_benchmark's own evaluation (float32, no amp), in our metric names (fractions)."""
    from clip_benchmark.datasets.builder import get_dataset_collate_fn
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    loader = torch.utils.data.DataLoader(
        CaptionsDataset(data, model.preprocess),
        batch_size=BATCH_IMAGES,
        collate_fn=get_dataset_collate_fn("mscoco_captions"),
    )
    metrics = evaluate(
        model.model, loader, model.tokenizer, recall_k_list=KS, device="cpu", amp=False
    )
    return {
        **{f"t2i_r{k}": metrics[f"image_retrieval_recall@{k}"] for k in KS},
        **{f"i2t_r{k}": metrics[f"text_retrieval_recall@{k}"] for k in KS},
    }


@pytest.fixture(scope="module")
def old_new(
    tiny_model_name: str, tiny_weights: dict[str, Path], tiny_weights_seed1: Path
) -> tuple[LoadedModel, LoadedModel]:
    return (
        load_model(f"{tiny_model_name}:{tiny_weights['safetensors']}"),
        load_model(f"{tiny_model_name}:{tiny_weights_seed1}"),
    )


@pytest.fixture(scope="module")
def theirs_by_setting(old_new: tuple[LoadedModel, LoadedModel]) -> dict[str, dict[str, float]]:
    data = random_retrieval_set()
    return {
        "old->old": clip_benchmark_recalls(old_new[0], data),
        "new->new": clip_benchmark_recalls(old_new[1], data),
    }


@pytest.mark.parametrize("setting", ["old->old", "new->new"])
def test_recalls_equal_clip_benchmark(
    setting: str,
    old_new: tuple[LoadedModel, LoadedModel],
    theirs_by_setting: dict[str, dict[str, float]],
    tmp_path: Path,
) -> None:
    model = old_new[0] if setting == "old->old" else old_new[1]
    data = random_retrieval_set()
    theirs = theirs_by_setting[setting]

    embedded = embed_set(
        model, data, cache=EmbeddingCache(tmp_path), batch_size=BATCH_IMAGES, num_workers=0
    )
    ours = evaluate_retrieval(
        text_queries=embedded.texts,
        image_gallery=embedded.images,
        image_queries=embedded.images,
        text_gallery=embedded.texts,
        caption_image=data.caption_image,
        ks=KS,
    ).metrics

    n_queries = {"t2i": len(data.captions), "i2t": data.n_images}
    for name, fraction in theirs.items():
        n = n_queries[name[:3]]
        # Same hit count per metric, and the same percentage to float32 precision.
        assert round(ours[name] * n / 100) == round(fraction * n), (setting, name, ours, theirs)
        assert ours[name] == pytest.approx(100 * fraction, abs=1e-4), name
    # Not a vacuous agreement: the recalls are neither all zero nor all perfect.
    assert 0 < ours["t2i_r5"] < 100 and 0 < ours["i2t_r5"] < 100
    assert ours["t2i_r1"] <= ours["t2i_r5"] <= ours["t2i_r10"]


def test_old_and_new_disagree(theirs_by_setting: dict[str, dict[str, float]]) -> None:
    """The two settings are scored on genuinely different models."""
    assert theirs_by_setting["old->old"] != theirs_by_setting["new->new"]
