"""The toy-shapes world: determinism, disjoint splits, hard groups, captions and caching."""

from __future__ import annotations

import numpy as np
import pytest

from xbt_bench.toy import world as toy
from xbt_bench.toy.world import (
    COLOUR_WORDS,
    EVAL_SPLITS,
    POSITIONS,
    SHAPE_WORDS,
    SIZE_WORDS,
    TOY_SPLITS,
    TRAIN_SPLITS,
    ToyConfig,
    ToyScene,
    caption_overlap,
    toy_hard_groups,
    toy_images,
    toy_scenes,
    toy_split,
    toy_text_corpus,
)

SMALL = ToyConfig(n_pretrain=400, n_text=200, n_pairs=100, n_support=60, n_test=60, n_test_hard=42)


def _clear_memo() -> None:
    toy._split_data.cache_clear()
    toy_images.cache_clear()


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    """Each test gets its own empty cache and an empty in-process memo."""
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path / "home"))
    _clear_memo()
    yield tmp_path / "home"
    _clear_memo()


def test_splits_have_expected_shapes_and_five_captions_per_image():
    for split in TOY_SPLITS:
        data = toy_split(split, SMALL)
        images = toy_images(split, SMALL)
        n = SMALL.split_size(split)
        assert data.key == f"toy-shapes/{split}"
        assert data.n_images == n
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert len(data.captions) == 5 * n
        np.testing.assert_array_equal(data.caption_image, np.repeat(np.arange(n), 5))
    test = toy_split("test", SMALL)
    image = test.load_image(7)
    assert image.mode == "RGB" and image.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(image), toy_images("test", SMALL)[7])
    # Five captions of one image come from different templates.
    assert all(len(set(test.captions[5 * i : 5 * i + 5])) == 5 for i in range(test.n_images))


def test_generation_is_deterministic_across_fresh_caches(tmp_path, monkeypatch):
    first = {s: (toy_images(s, SMALL).copy(), toy_split(s, SMALL).captions) for s in TOY_SPLITS}
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path / "other"))
    _clear_memo()
    for split in TOY_SPLITS:
        np.testing.assert_array_equal(toy_images(split, SMALL), first[split][0])
        assert toy_split(split, SMALL).captions == first[split][1]
    other_seed = ToyConfig(**{**SMALL.__dict__, "seed": 1})
    assert toy_split("test", other_seed).captions != first["test"][1]
    assert other_seed.fingerprint() != SMALL.fingerprint()
    assert toy_split("test", other_seed).fingerprint != toy_split("test", SMALL).fingerprint


def test_evaluation_scenes_are_distinct_and_never_in_training_splits():
    train = {scene for split in TRAIN_SPLITS for scene in toy_scenes(split, SMALL)}
    seen: set[ToyScene] = set()
    for split in EVAL_SPLITS:
        scenes = toy_scenes(split, SMALL)
        assert len(set(scenes)) == len(scenes), f"{split} repeats a scene"
        assert not set(scenes) & train, f"{split} shares a scene with a training split"
        assert not set(scenes) & seen, f"{split} shares a scene with another evaluation split"
        seen |= set(scenes)
    # Objects are in canonical (grid) order at distinct positions.
    for scene in toy_scenes("pretrain", SMALL):
        cells = [POSITIONS.index(o.position) for o in scene.objects]
        assert cells == sorted(set(cells)) and 1 <= len(cells) <= 2


def _differences(base: ToyScene, other: ToyScene) -> list[tuple[int, str]]:
    return [
        (k, field)
        for k, (a, b) in enumerate(zip(base.objects, other.objects, strict=True))
        for field in ("shape", "colour", "size", "position")
        if getattr(a, field) != getattr(b, field)
    ]


def test_hard_groups_differ_from_their_base_in_exactly_one_attribute():
    scenes = toy_scenes("test-hard", SMALL)
    groups = toy_hard_groups(SMALL)
    assert len(groups) == SMALL.n_test_hard and np.all(np.diff(groups) >= 0)
    sizes = np.bincount(groups)
    assert sizes.min() >= 2 and sizes.max() <= 5 and np.mean(sizes >= 4) > 0.7
    kinds = set()
    for g in range(len(sizes)):
        base, *variants = [scenes[i] for i in np.flatnonzero(groups == g)]
        for variant in variants:
            assert len(variant.objects) == len(base.objects)
            diff = _differences(base, variant)
            swapped = (
                len(base.objects) == 2
                and variant.objects[0].position == base.objects[0].position
                and variant.objects[0].shape == base.objects[1].shape
                and variant.objects[0].colour == base.objects[1].colour
                and variant.objects[0].size == base.objects[1].size
                and variant.objects[1].shape == base.objects[0].shape
                and variant.objects[1].colour == base.objects[0].colour
                and variant.objects[1].size == base.objects[0].size
            )
            assert len(diff) == 1 or swapped, (base, variant)
            kinds.add("swap" if swapped and len(diff) != 1 else diff[0][1])
    assert kinds == {"shape", "colour", "size", "swap"}


def _words_of(caption: str, table: dict[str, tuple[str, ...]]) -> set[str]:
    """The values of ``table`` that ``caption`` names (longest synonyms first)."""
    found = set()
    for value, words in table.items():
        for word in sorted(words, key=len, reverse=True):
            if f" {word} " in f" {caption.replace(',', ' ')} ":
                found.add(value)
    return found


def test_full_detail_captions_name_every_object_colour_shape_and_size():
    full = ToyConfig(**{**SMALL.__dict__, "detail": 1.0})
    data = toy_split("test", full)
    scenes = toy_scenes("test", full)
    for caption, image in zip(data.captions, data.caption_image, strict=True):
        for obj in scenes[image].objects:
            for words in (COLOUR_WORDS[obj.colour], SHAPE_WORDS[obj.shape], SIZE_WORDS[obj.size]):
                assert any(w in caption for w in words), (caption, obj)
        assert len(caption.split()) <= 20


def test_partial_captions_leave_details_out_but_never_say_anything_false():
    vague = ToyConfig(**{**SMALL.__dict__, "detail": 0.6})
    data = toy_split("test", vague)
    scenes = toy_scenes("test", vague)
    named = []
    for caption, image in zip(data.captions, data.caption_image, strict=True):
        objects = scenes[image].objects
        colours = _words_of(caption, COLOUR_WORDS)
        shapes = _words_of(caption, SHAPE_WORDS)
        assert colours <= {o.colour for o in objects}, (caption, objects)
        assert shapes <= {o.shape for o in objects}, (caption, objects)
        assert _words_of(caption, SIZE_WORDS) <= {o.size for o in objects}, (caption, objects)
        assert colours or shapes, caption
        named.append(len(colours) + len(shapes))
        assert len(caption.split()) <= 20
    # Some captions are vague, some still name both objects' colour and shape.
    assert min(named) == 1 and max(named) == 4
def test_objects_are_drawn_in_their_colour_at_their_cell():
    images = toy_images("test", SMALL)
    for image, scene in zip(images, toy_scenes("test", SMALL), strict=True):
        for obj in scene.objects:
            if obj.shape == "ring":  # its centre is the background
                continue
            cell = POSITIONS.index(obj.position)
            y, x = (int((cell // 3 + 0.5) * 32 / 3), int((cell % 3 + 0.5) * 32 / 3))
            pixel = image[y, x].astype(int)
            expected = np.array(toy._COLOUR_RGB[obj.colour])
            assert np.abs(pixel - expected).max() < 45, (obj, pixel)


def test_second_call_loads_from_disk_without_regenerating(fresh_home, monkeypatch):
    images = toy_images("pairs", SMALL).copy()
    captions = toy_split("pairs", SMALL).captions
    cached = fresh_home / "toy-shapes" / SMALL.fingerprint()
    assert (cached / "pairs.npy").is_file() and (cached / "pairs.json").is_file()
    _clear_memo()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(toy, "_render", fail)
    monkeypatch.setattr(toy, "_captions", fail)
    monkeypatch.setattr(toy, "_sample_codes", fail)
    np.testing.assert_array_equal(toy_images("pairs", SMALL), images)
    assert toy_split("pairs", SMALL).captions == captions
    assert toy_images("pairs", SMALL) is toy_images("pairs", SMALL)


def test_text_corpus_is_the_deduplicated_text_split():
    corpus = toy_text_corpus(SMALL)
    captions = toy_split("text", SMALL).captions
    assert corpus.texts == list(dict.fromkeys(captions))
    assert "text" in corpus.source
    # Only captions were needed: no image of the text split was rendered.
    assert not list((toy.cache_dir("toy-shapes", SMALL.fingerprint())).glob("text.npy"))
    assert 0.0 <= caption_overlap(SMALL) < 0.2
    # Vague captions ("a red circle") recur across splits; full ones almost never do.
    full = ToyConfig(**{**SMALL.__dict__, "detail": 1.0})
    assert caption_overlap(full) < 0.05


def test_unknown_split_and_bad_config_are_rejected():
    with pytest.raises(ValueError, match="did you mean 'test-hard'.*valid splits: pretrain"):
        toy_split("test_hard", SMALL)
    with pytest.raises(ValueError, match="valid splits"):
        toy_images("val", SMALL)
    with pytest.raises(ValueError, match="n_test_hard"):
        ToyConfig(n_test_hard=0)
    with pytest.raises(ValueError, match="distinct scenes"):
        ToyConfig(n_test=200_000)
    assert hash(SMALL) == hash(ToyConfig(**SMALL.__dict__))
