"""The toy model zoo: configs, content hashes, shipped weights, tiny builds, resume and the
generic loader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xbt_bench import paths
from xbt_bench.atomic import sha256_of
from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.eval import Embeddings
from xbt_bench.models.loading import load_model
from xbt_bench.toy import build as toy_build
from xbt_bench.toy import zoo as toy_models
from xbt_bench.toy.build import (
    embedding_geometry,
    ensure_checkpoint,
    ensure_zoo_models,
    evaluate_toy_model,
    image_tensor,
    ship,
)
from xbt_bench.toy.world import ToyConfig, toy_images
from xbt_bench.toy.zoo import ZooSettings, zoo_entry, zoo_names

TINY_DATA = ToyConfig(
    n_pretrain=96, n_text=8, n_pairs=8, n_support=8, n_test=40, n_test_hard=8, seed=3
)
TINY = ZooSettings(
    steps=6, batch_size=32, lr=2e-3, temperature=0.01, warmup_steps=2, data=TINY_DATA
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine extra ones stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path))
    return tmp_path


def test_three_sizes_with_distinct_dims_and_widths() -> None:
    assert {"toy-s", "toy-m", "toy-l"} <= set(zoo_names())
    configs = [zoo_entry(n, quick=False).model_config for n in ("toy-s", "toy-m", "toy-l")]
    dims = [c["embed_dim"] for c in configs]
    widths = [c["vision_cfg"]["width"] for c in configs]
    assert len(set(dims)) == 3 and len(set(widths)) == 3
    for name in ("toy-s", "toy-m", "toy-l"):
        settings = zoo_entry(name, quick=False).settings
        assert not settings.learn_temperature and 0 < settings.temperature < 0.05
        assert settings.data == ToyConfig()


def test_content_hash_follows_every_setting() -> None:
    entry = zoo_entry("toy-s", quick=False)
    variants = [
        replace(entry, settings=replace(entry.settings, lr=entry.settings.lr * 2)),
        replace(entry, settings=replace(entry.settings, temperature=0.5)),
        replace(entry, settings=replace(entry.settings, data=ToyConfig(seed=1))),
        replace(entry, model_config={**entry.model_config, "embed_dim": 48}),
        zoo_entry("toy-s", quick=True),
    ]
    hashes = {entry.content_hash, *(v.content_hash for v in variants)}
    assert len(hashes) == 1 + len(variants)
    assert entry.content_hash == zoo_entry("toy-s", quick=False).content_hash
    reworded = replace(entry.settings, description="same model, new words")
    assert replace(entry, settings=reworded).content_hash == entry.content_hash
    assert entry.folder.name == f"toy-s-{entry.content_hash}"


def test_quick_recipes_are_small_and_hashed_apart() -> None:
    quick = zoo_entry("toy-m", quick=True)
    assert quick.settings.steps <= toy_models.QUICK_MAX_STEPS
    assert quick.settings.data == toy_models.QUICK_TOY_CONFIG
    assert quick.content_hash != zoo_entry("toy-m").content_hash
    assert not quick.ships_weights  # quick builds are never shipped


@pytest.mark.parametrize("name", zoo_names())
def test_shipped_weights_match_their_card_and_recipe(name: str) -> None:
    entry = zoo_entry(name)
    card = entry.shipped_card()
    assert card is not None and entry.ships_weights, f"{name} ships no weights"
    assert card["content_hash"] == entry.content_hash  # the recipe they were built from
    assert sha256_of(entry.shipped_weights) == card["weights_sha256"]
    assert card["weights_dtype"] == "float16"
    assert load_model(f"zoo:{name}").weights_path == entry.shipped_weights


def test_shipped_weights_stay_small() -> None:
    total = sum(zoo_entry(name).shipped_weights.stat().st_size for name in zoo_names())
    assert total <= 40 * 2**20


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'toy-s'"):
        zoo_entry("toy-z")


def test_geometry_of_known_embeddings() -> None:
    images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    texts = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    geometry = embedding_geometry(Embeddings(images, texts), np.array([0, 1, 1]))
    assert geometry["matched_cosine"] == pytest.approx(1 / 3)
    # centroids (.5, .5, 0) and (1/3, 0, 2/3)
    assert geometry["modality_gap"] == pytest.approx(np.sqrt(1 / 36 + 1 / 4 + 4 / 9))
    assert geometry["image_intra_cosine"] == pytest.approx(0.0)
    assert geometry["text_intra_cosine"] == pytest.approx(1 / 3)


def test_tiny_build_loads_through_the_generic_loader(fresh_home: Path) -> None:
    weights = ensure_checkpoint("toy-s", settings=TINY)
    entry = replace(zoo_entry("toy-s", quick=False), settings=TINY)
    assert weights == entry.weights_path and weights.parent.parent == fresh_home / "zoo"
    card = json.loads((weights.parent / "card.json").read_text())
    assert set(card["geometry"]) == {
        "matched_cosine", "modality_gap", "image_intra_cosine", "text_intra_cosine"
    }
    assert [p["step"] for p in card["curve"]][-1] == 6
    assert not (weights.parent / "training").exists()

    by_file = load_model(f"toy-s:{weights}")
    by_dir = load_model(f"local-dir:{weights.parent}")
    assert by_file.embed_dim == 64 and by_dir.embed_dim == 64
    assert by_file.model.logit_scale.exp().item() == pytest.approx(100.0)

    # Training images are normalised exactly as the eval transform does it.
    images = toy_images("test", TINY_DATA)[:4]
    via_preprocess = torch.stack([by_file.preprocess(Image.fromarray(np.array(x))) for x in images])
    cfg = by_file.model.visual.preprocess_cfg
    assert torch.equal(image_tensor(images, cfg["mean"], cfg["std"]), via_preprocess)

    # The card's retrieval was measured with the weights that were saved.
    with torch.no_grad():
        a = by_file.model.encode_image(via_preprocess, normalize=True)
        b = by_dir.model.encode_image(via_preprocess, normalize=True)
    assert torch.equal(a, b)
    again = evaluate_toy_model(by_file.model, by_file.tokenizer, TINY_DATA)
    assert card["retrieval"] == again["retrieval"] and card["geometry"] == again["geometry"]


@pytest.fixture()
def own_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model zoo of its own holding toy-s's config with the tiny recipe and no weights."""
    folder = tmp_path / "zoo" / "models"
    folder.mkdir(parents=True)
    entry = zoo_entry("toy-s")
    (folder / "toy-s.json").write_text(json.dumps(entry.model_config))
    recipe = TINY.to_dict()
    (folder / "toy-s.train.json").write_text(json.dumps(recipe))
    monkeypatch.setattr(paths, "model_zoo", lambda: tmp_path / "zoo")
    return folder


def test_zoo_refs_load_shipped_weights_else_a_build(fresh_home: Path, own_zoo: Path) -> None:
    with pytest.raises(NotFoundError, match="xbt-bench zoo build toy-s"):
        load_model("zoo:toy-s")
    ensure_zoo_models(["zoo:toy-s", "ViT-B-32:openai"])  # what the runner does first
    entry = zoo_entry("toy-s")
    built = load_model("zoo:toy-s")
    assert built.weights_path == entry.built_weights and entry.is_built
    assert entry.card()["settings"]["steps"] == TINY.steps
    shipped_path = ship(entry)
    assert shipped_path == own_zoo / "toy-s.safetensors" and entry.ships_weights
    shipped = load_model("zoo:toy-s")
    assert shipped.weights_path == shipped_path and shipped.identity != built.identity
    with torch.no_grad():  # fp16 weights: the same model up to half-precision rounding
        tokens = built.tokenizer(["a small red circle in the center"])
        a = built.model.encode_text(tokens, normalize=True)
        b = shipped.model.encode_text(tokens, normalize=True)
    assert 0 < float((a - b).abs().max()) < 1e-2
    card = entry.shipped_card()
    assert card["weights_sha256"] == sha256_of(shipped_path) and "retrieval" in card


def test_second_build_is_a_noop_and_resume_is_exact(
    fresh_home: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = ensure_checkpoint("toy-s", settings=TINY).read_bytes()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a built toy model was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(toy_build, "train", no_training)
        assert ensure_checkpoint("toy-s", settings=TINY).read_bytes() == reference

    # A build interrupted at step 4 (checkpoint at step 3) resumes to the same weights.
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path_factory.mktemp("resume-home")))
    real_train = toy_build.train
    resumed_from = []

    def interrupted(module, loss_fn, batch_at, config, checkpoint_dir, desc):  # noqa: ANN001
        def failing(step: int) -> object:
            if step == 4:
                raise KeyboardInterrupt
            return batch_at(step)

        config = replace(config, checkpoint_every=3)
        return real_train(module, loss_fn, failing, config, checkpoint_dir, desc)

    def recording(module, loss_fn, batch_at, config, checkpoint_dir, desc):  # noqa: ANN001
        log = real_train(module, loss_fn, batch_at, config, checkpoint_dir, desc)
        resumed_from.append(log.resumed_from_step)
        return log

    with monkeypatch.context() as patch:
        patch.setattr(toy_build, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ensure_checkpoint("toy-s", settings=TINY)
    monkeypatch.setattr(toy_build, "train", recording)
    assert ensure_checkpoint("toy-s", settings=TINY).read_bytes() == reference
    assert resumed_from == [3]


def test_cli_build_then_cached_and_list(
    fresh_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xbt_bench.cli import main

    def run(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        assert exit_.value.code in (0, None)
        return capsys.readouterr().out

    monkeypatch.setattr(toy_models, "QUICK_TOY_CONFIG", TINY_DATA)
    monkeypatch.setattr(toy_models, "QUICK_MAX_STEPS", 2)
    monkeypatch.setattr(toy_models, "QUICK_BATCH_SIZE", 16)
    out = run("zoo", "build", "toy-s", "--quick", "--threads", "1")
    assert "toy-s: built in" in out and "gap" in out
    out = run("zoo", "build", "toy-s", "--quick")
    assert "all 1 toy models are cached; nothing to build" in out
    rows = [line for line in run("zoo", "list", "--quick").splitlines() if "toy-" in line]
    assert any("toy-s" in r and "built" in r for r in rows)
    assert any("toy-l" in r and "none" in r for r in rows)


def test_captions_longer_than_the_context_are_refused(fresh_home: Path) -> None:
    entry = zoo_entry("toy-s", quick=False)
    text_cfg = {**entry.model_config["text_cfg"], "context_length": 12}
    short = {**entry.model_config, "text_cfg": text_cfg}
    with pytest.raises(ConfigError, match="raise text_cfg.context_length"):
        toy_build.build(replace(entry, model_config=short, settings=TINY))


def test_batches_walk_each_epoch_once_and_span_epoch_ends() -> None:
    images = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    images = images.repeat(3, 3)
    tokens = torch.arange(20)[:, None] * 10 + torch.arange(3)  # 2 captions per image
    batches = toy_build._PretrainBatches(
        images=images, tokens=tokens, captions_per_image=2, batch_size=4, seed=0,
        mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255),
    )
    seen = []
    for step in range(5):  # 20 positions = exactly two epochs, batch 2 spans both
        pixels, caption_tokens = batches(step)
        image_ids = pixels[:, 0, 0, 0].round().long()
        assert torch.equal(caption_tokens[:, 0] // 20, image_ids)  # each caption is its image's
        seen += image_ids.tolist()
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]
    again = toy_build._PretrainBatches(**{**batches.__dict__, "_orders": {}})
    assert torch.equal(again(3)[1], batches(3)[1])
