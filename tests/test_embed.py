"""Embedding extraction and the on-disk embedding cache."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xbt_bench.data.base import ImageTextSet, TextCorpus
from xbt_bench.embed import (
    EmbeddingCache,
    EmbeddingKey,
    EmbedStats,
    as_encoder,
    embed_corpus,
    embed_images,
    embed_set,
    embed_split,
    embed_texts,
    iter_image_embeddings,
    split_key,
    state_fingerprint,
)
from xbt_bench.errors import XbtError
from xbt_bench.models.loading import LoadedModel, load_model

N_IMAGES = 6
WORDS = ["red", "blue", "green", "circle", "square", "left", "right", "big", "small", "two"]


def random_set(n_images: int = N_IMAGES, seed: int = 0, fingerprint: str = "") -> ImageTextSet:
    """``n_images`` random RGB images with two short captions each."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n_images, 20, 20, 3), dtype=np.uint8)
    captions = [" ".join(rng.choice(WORDS, size=4)) + f" {i}" for i in range(2 * n_images)]
    return ImageTextSet(
        name="random",
        split=f"seed{seed}",
        n_images=n_images,
        load_image=lambda i: Image.fromarray(pixels[i]),
        captions=captions,
        caption_image=np.repeat(np.arange(n_images), 2),
        fingerprint=fingerprint,
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_name: str, tiny_weights: dict[str, Path]) -> LoadedModel:
    return load_model(f"{tiny_model_name}:{tiny_weights['safetensors']}")


@pytest.fixture(scope="module")
def tiny_other(tiny_model_name: str, tiny_weights_seed1: Path) -> LoadedModel:
    return load_model(f"{tiny_model_name}:{tiny_weights_seed1}")


@pytest.fixture
def cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(tmp_path / "embeddings")


def test_extraction_equals_direct_encoding(tiny: LoadedModel) -> None:
    data = random_set()
    images = embed_images(tiny, data, batch_size=4, num_workers=0)
    texts = embed_texts(tiny, data.captions, batch_size=5)
    with torch.no_grad():
        pixels = torch.stack([tiny.preprocess(data.load_image(i)) for i in range(N_IMAGES)])
        direct_images = F.normalize(tiny.model.encode_image(pixels), dim=-1).numpy()
        tokens = tiny.tokenizer(list(data.captions))
        direct_texts = F.normalize(tiny.model.encode_text(tokens), dim=-1).numpy()
    assert images.dtype == np.float32 and images.shape == (N_IMAGES, tiny.embed_dim)
    assert texts.shape == (2 * N_IMAGES, tiny.embed_dim)
    np.testing.assert_allclose(images, direct_images, atol=1e-6)
    np.testing.assert_allclose(texts, direct_texts, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-6)
    # Different images give different embeddings (not a constant output).
    assert np.abs(images[0] - images[1]).max() > 1e-3


def test_second_request_computes_nothing(
    tiny: LoadedModel, cache: EmbeddingCache, capsys: pytest.CaptureFixture[str]
) -> None:
    data = random_set()
    stats = EmbedStats()
    first = embed_split(tiny, data, "image", cache=cache, stats=stats, num_workers=0)
    assert stats.forward_passes(tiny.identity) == N_IMAGES
    assert "reused" not in capsys.readouterr().err
    second = embed_split(tiny, data, "image", cache=cache, stats=stats, num_workers=0)
    assert stats.forward_passes(tiny.identity) == N_IMAGES  # unchanged: nothing computed
    assert stats.reused == {tiny.identity: N_IMAGES}
    assert [r.computed for r in stats.records] == [True, False]
    assert "reused embeddings: " in capsys.readouterr().err
    np.testing.assert_array_equal(first, second)

    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.ones((3, 4), dtype=np.float32)

    key = EmbeddingKey(model="m@1", dataset="d", split="s", side="text", transform="t")
    for expect_computed in (True, False, False):
        array, computed = cache.get_or_compute(key, compute)
        assert computed is expect_computed
        np.testing.assert_array_equal(array, np.ones((3, 4)))
    assert len(calls) == 1


def test_changed_model_transform_or_data_misses(
    tiny: LoadedModel, tiny_other: LoadedModel, cache: EmbeddingCache
) -> None:
    import open_clip

    data = random_set()
    stats = EmbedStats()
    base = embed_split(tiny, data, "image", cache=cache, stats=stats, num_workers=0)

    assert tiny_other.identity != tiny.identity
    other = embed_split(tiny_other, data, "image", cache=cache, stats=stats, num_workers=0)
    assert stats.forward_passes(tiny_other.identity) == N_IMAGES
    assert np.abs(other - base).max() > 1e-3

    transform = open_clip.image_transform(16, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    retransformed = dataclasses.replace(tiny, preprocess=transform)
    assert retransformed.preprocess_signature != tiny.preprocess_signature
    changed = embed_split(retransformed, data, "image", cache=cache, stats=stats, num_workers=0)
    assert stats.forward_passes(tiny.identity) == 2 * N_IMAGES
    assert np.abs(changed - base).max() > 1e-3

    # Same images and model, another dataset fingerprint: a new entry.
    embed_split(tiny, random_set(fingerprint="v2"), "image", cache=cache, stats=stats,
                num_workers=0)
    assert stats.forward_passes(tiny.identity) == 3 * N_IMAGES
    # Other captions: the text side misses too.
    embed_split(tiny, data, "text", cache=cache, stats=stats)
    embed_split(tiny, random_set(seed=1), "text", cache=cache, stats=stats)
    assert stats.forward_passes(tiny.identity) == 3 * N_IMAGES + 4 * N_IMAGES
    assert not any(r.computed is False for r in stats.records)
    assert len({p.name for p in cache.root.iterdir()}) == 6


def test_memory_mapped_and_float16(tiny: LoadedModel, cache: EmbeddingCache) -> None:
    data = random_set()
    full = embed_split(tiny, data, "text", cache=cache)
    assert isinstance(full, np.memmap) and not full.flags.writeable
    half = embed_split(tiny, data, "text", cache=cache, dtype="float16")
    assert half.dtype == np.float16 and isinstance(half, np.memmap)
    np.testing.assert_allclose(half, full, atol=1e-3)
    half_manifest = cache.manifest(split_key(tiny, data, "text", dtype="float16"))
    assert half_manifest is not None and half_manifest["dtype"] == "float16"
    key = split_key(tiny, data, "text")
    manifest = cache.manifest(key)
    assert manifest["n_rows"] == 2 * N_IMAGES and manifest["dim"] == tiny.embed_dim
    assert manifest["dtype"] == "float32" and manifest["key"]["side"] == "text"
    shard = manifest["shards"][0]
    assert (shard["start"], shard["end"]) == (0, 2 * N_IMAGES)
    loaded = np.load(cache.entry_dir(key) / shard["path"], mmap_mode="r")
    np.testing.assert_array_equal(loaded, full)


def test_shards_of_fixed_size(tiny: LoadedModel, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, shard_rows=4)
    data = random_set(n_images=5)
    texts = embed_split(tiny, data, "text", cache=cache, batch_size=3)
    manifest = cache.manifest(split_key(tiny, data, "text"))
    assert [(s["start"], s["end"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_allclose(texts, embed_texts(tiny, data.captions), atol=1e-6)
    assert [len(a) for a in cache.load_shards(split_key(tiny, data, "text"))] == [4, 4, 2]


def test_crash_mid_compute_leaves_no_entry(cache: EmbeddingCache) -> None:
    cache.shard_rows = 2
    key = EmbeddingKey(model="m@1", dataset="d", split="s", side="image", transform="t")

    def crashing():
        yield np.ones((3, 4), dtype=np.float32)  # one full shard is written before the crash
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_compute(key, crashing)
    assert not cache.contains(key)
    assert not (cache.entry_dir(key) / "manifest.json").exists()
    assert list(cache.entry_dir(key).rglob("*.npy")) == []
    array, computed = cache.get_or_compute(key, lambda: np.zeros((3, 4), dtype=np.float32))
    assert computed and array.shape == (3, 4) and not array.any()


def test_nan_embeddings_are_not_cached(cache: EmbeddingCache) -> None:
    key = EmbeddingKey(model="m@1", dataset="d", split="s", side="text", transform="t")
    bad = np.ones((4, 2), dtype=np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(XbtError, match=r"NaN or inf embeddings .* rows \[2\]"):
        cache.get_or_compute(key, lambda: bad)
    assert not cache.contains(key)


def test_sharded_writes_equal_single_process(tiny: LoadedModel, cache: EmbeddingCache) -> None:
    data = random_set()
    single = embed_images(tiny, data, batch_size=3, num_workers=0)
    key = split_key(tiny, data, "image")
    # Two "ranks", each embedding its half into the same attempt; rank 0 commits.
    for rank, rows in enumerate([range(0, 3), range(3, 6)]):
        writer = cache.writer(key, attempt="run-42")
        chunks = iter_image_embeddings(tiny, data, rows=rows, batch_size=3, num_workers=0)
        assert writer.write_stream(chunks, start=rows.start) == rows.stop
        if rank == 0:
            with pytest.raises(XbtError, match="cover 3 rows but 6"):
                writer.commit(N_IMAGES)
    writer.commit(N_IMAGES)
    stats = EmbedStats()
    sharded = embed_split(tiny, data, "image", cache=cache, stats=stats, num_workers=0)
    assert stats.encoded == {} and stats.reused == {tiny.identity: N_IMAGES}
    np.testing.assert_array_equal(sharded, single)

    gap = cache.writer(dataclasses.replace(key, split="gap"), attempt="run-43")
    gap.write(0, single[:2])
    gap.write(3, single[3:])
    with pytest.raises(XbtError, match="gap or overlap at row 2"):
        gap.commit()


def test_corpus_and_set(tiny: LoadedModel, cache: EmbeddingCache) -> None:
    corpus = TextCorpus.from_texts("captions", ["a red circle", "two blue squares", "a red circle"])
    stats = EmbedStats()
    first = embed_corpus(tiny, corpus, cache=cache, stats=stats)
    again = embed_corpus(tiny, corpus, cache=cache, stats=stats)
    assert first.shape == (2, tiny.embed_dim)
    assert stats.encoded == {tiny.identity: 2} and stats.reused == {tiny.identity: 2}
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, embed_texts(tiny, corpus.texts), atol=1e-6)

    both = embed_set(tiny, random_set(), cache=cache, stats=stats, num_workers=0)
    assert both.images.shape == (N_IMAGES, tiny.embed_dim)
    assert both.texts.shape == (2 * N_IMAGES, tiny.embed_dim)
    assert stats.forward_passes(tiny.identity) == 2 + 3 * N_IMAGES


class ProjectedEncoder(torch.nn.Module):
    """A method-style query encoder: a frozen model followed by a trainable projection."""

    def __init__(self, base: LoadedModel, out_dim: int):
        super().__init__()
        self.base = base.model
        self.projection = torch.nn.Linear(base.embed_dim, out_dim)
        self.dropout = torch.nn.Dropout(0.5)
        self.preprocess = base.preprocess
        self.tokenizer = base.tokenizer

    @property
    def identity(self) -> str:
        return f"projected@{state_fingerprint(self)}"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.projection(self.base.encode_image(images)))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.projection(self.base.encode_text(tokens)))


def test_any_module_encoder(tiny: LoadedModel, cache: EmbeddingCache) -> None:
    torch.manual_seed(0)
    encoder = ProjectedEncoder(tiny, out_dim=8)
    encoder.train()
    data = random_set()
    stats = EmbedStats()
    texts = embed_split(encoder, data, "text", cache=cache, stats=stats)
    assert encoder.training  # restored after extraction
    with torch.no_grad():
        base = tiny.model.encode_text(tiny.tokenizer(list(data.captions)))
        expected = F.normalize(encoder.projection(base), dim=-1).numpy()  # eval: no dropout
    np.testing.assert_allclose(texts, expected, atol=1e-6)
    identity = encoder.identity
    with torch.no_grad():
        encoder.projection.weight.add_(0.1)
    assert encoder.identity != identity
    embed_split(encoder, data, "text", cache=cache, stats=stats)
    assert stats.encoded == {identity: 2 * N_IMAGES, encoder.identity: 2 * N_IMAGES}


def test_bad_inputs_name_the_problem(tiny: LoadedModel, cache: EmbeddingCache) -> None:
    with pytest.raises(XbtError, match="side 'audio'"):
        embed_split(tiny, random_set(), "audio", cache=cache)
    with pytest.raises(XbtError, match="lacks identity, preprocess, tokenizer, encode_image"):
        embed_split(object(), random_set(), "image", cache=cache)
    with pytest.raises(XbtError, match="dtype 'int8'"):
        embed_split(tiny, random_set(), "text", cache=cache, dtype="int8")
    on_cuda = dataclasses.replace(as_encoder(tiny), device=torch.device("cuda"))
    assert on_cuda.precision(amp=True) == "bf16-autocast" and on_cuda.precision(False) == "fp32"
    # bf16 embeddings are another entry than fp32 ones of the same model and data.
    assert split_key(on_cuda, random_set(), "image") != split_key(tiny, random_set(), "image")
    with pytest.raises(XbtError, match="contiguous range"):
        embed_images(tiny, random_set(), rows=range(0, 10), num_workers=0)


def test_manifest_is_the_commit_point(cache: EmbeddingCache) -> None:
    key = EmbeddingKey(model="m@1", dataset="d", split="s", side="text", transform="t")
    cache.get_or_compute(key, lambda: np.eye(3, dtype=np.float32))
    manifest_path = cache.entry_dir(key) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["key"]["model"] == "m@1" and manifest["created"]
    # A manifest written for another key (hash collision, hand edits) is never trusted.
    manifest["key"]["model"] = "m@2"
    manifest_path.write_text(json.dumps(manifest))
    assert cache.load(key) is None


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named_in_one_line(
    tiny: LoadedModel, tmp_path: Path, workers: int
) -> None:
    good = random_set(6)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")

    def load_image(i: int) -> Image.Image:
        return Image.open(broken) if i == 4 else good.load_image(i)

    data = dataclasses.replace(good, load_image=load_image)
    with pytest.raises(XbtError) as error:
        embed_images(tiny, data, batch_size=2, num_workers=workers)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"image 4 of {data.key} cannot be read (UnidentifiedImageError")
    assert str(broken) in message and "replace the file" in message
