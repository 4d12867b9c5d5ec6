"""``slerp`` runs SLERP-BC's protocol: the method's α choice and recalls equal a direct
implementation of the authors' rule (zero-padded Procrustes on text, α per retrieval direction
by R@1 on support, ties to the smaller α) on small synthetic pairs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xbt_bench.data.base import ImageTextSet, TextCorpus
from xbt_bench.methods import FitContext, methods

D_OLD, D_NEW = 8, 12
GRID = [round(0.1 * i, 1) for i in range(11)]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(seed: int, n_images: int = 40) -> dict[str, np.ndarray]:
    """OLD (8-d) and NEW (12-d, rotated, other noise per modality) embeddings of one set."""
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(n_images, D_OLD))
    captions = np.repeat(concept, 2, axis=0)
    rotation, _ = np.linalg.qr(np.random.default_rng(99).normal(size=(D_NEW, D_NEW)))

    def new(x: np.ndarray, noise: float) -> np.ndarray:
        padded = np.pad(x + noise * rng.normal(size=x.shape), ((0, 0), (0, D_NEW - D_OLD)))
        return unit(padded @ rotation + 0.3 * rng.normal(size=padded.shape))

    return {
        "old_image": unit(concept + 0.9 * rng.normal(size=concept.shape)),
        "old_text": unit(captions + 0.9 * rng.normal(size=captions.shape)),
        "new_image": new(concept, 0.5),
        "new_text": new(captions, 0.7),
        "caption_image": np.repeat(np.arange(n_images), 2),
    }


class SyntheticContext(FitContext):
    """A FitContext whose models' embeddings are given arrays, by data set and side."""

    def __init__(self, sets: dict[str, dict[str, np.ndarray]], corpus: dict, **kwargs) -> None:
        self.sets, self.corpus = sets, corpus
        old, new = (
            SimpleNamespace(get=lambda which=which: SimpleNamespace(embed_dim=D_OLD, which=which))
            for which in ("old", "new")
        )
        super().__init__(old=old, new=new, **kwargs)

    def query_embeddings(self, encoder, data, side):  # noqa: ANN001, ANN201
        return self.sets[data.split][f"{encoder.which}_{side}"].astype(np.float32)

    def embed_corpus(self, which):  # noqa: ANN001, ANN201
        return self.corpus[f"{which}_text"].astype(np.float32)


def image_text_set(split: str, values: dict[str, np.ndarray]) -> ImageTextSet:
    n = len(values["old_image"])
    return ImageTextSet(
        name="synthetic",
        split=split,
        n_images=n,
        load_image=lambda i: None,
        captions=[f"caption {j}" for j in range(2 * n)],
        caption_image=values["caption_image"],
    )


def direct_recall_at_1(queries: np.ndarray, gallery: np.ndarray, caption_image, t2i: bool):  # noqa: ANN001, ANN201
    """R@1 (percent) by brute force: the best-scoring gallery item is a positive."""
    best = (queries @ gallery.T).argmax(axis=1)
    if t2i:
        return 100 * float(np.mean(best == caption_image))
    return 100 * float(np.mean(caption_image[best] == np.arange(len(queries))))


def direct_slerp(old: np.ndarray, mapped: np.ndarray, alpha: float) -> np.ndarray:
    """SLERP-BC's slerp, written out: old padded to the mapped width, both unit rows."""
    old = unit(np.pad(old, ((0, 0), (0, mapped.shape[1] - old.shape[1]))))
    mapped = unit(mapped)
    theta = np.arccos(np.clip((old * mapped).sum(1, keepdims=True), -1 + 1e-7, 1 - 1e-7))
    out = (np.sin((1 - alpha) * theta) * old + np.sin(alpha * theta) * mapped) / np.sin(theta)
    return unit(out)[:, :D_OLD]


def direct_rule(support: dict, corpus: dict) -> tuple[dict[str, float], np.ndarray]:
    """The authors' protocol: R = U Vᵀ from SVD(N_textᵀ [O_text, 0]); per direction the α of
    the grid with the best support R@1, the smaller one on ties."""
    old_padded = np.pad(corpus["old_text"], ((0, 0), (0, D_NEW - D_OLD)))
    u, _, vt = np.linalg.svd(corpus["new_text"].T @ old_padded)
    rotation = u @ vt
    ci = support["caption_image"]
    alphas = {}
    for direction, side, t2i, gallery in (
        ("i2t", "image", False, support["old_text"]),
        ("t2i", "text", True, support["old_image"]),
    ):
        scores = [
            direct_recall_at_1(
                direct_slerp(support[f"old_{side}"], support[f"new_{side}"] @ rotation, alpha),
                gallery,
                ci,
                t2i,
            )
            for alpha in GRID
        ]
        alphas[direction] = GRID[min(range(len(GRID)), key=lambda i: (-scores[i], i))]
    return alphas, rotation


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_slerp_chooses_alpha_per_direction_as_its_authors_do(seed: int, tmp_path: Path) -> None:
    support, test, corpus = synthetic(seed), synthetic(seed + 100), synthetic(seed + 200, 200)
    expected, rotation = direct_rule(support, corpus)
    assert expected["i2t"] != expected["t2i"]  # the case the per-direction rule exists for
    ctx = SyntheticContext(
        {"support": support, "test": test, "pairs": support},
        corpus,
        text_corpus=TextCorpus("corpus", ["a", "b"]),
        train_pairs=image_text_set("pairs", support),
        support=image_text_set("support", support),
        work_dir=tmp_path,
    )
    fitted = methods.get("slerp")(ctx)
    assert fitted.info["alpha"] == expected
    test_set = image_text_set("test", test)
    for direction, side, t2i, gallery in (
        ("i2t", "image", False, test["old_text"]),
        ("t2i", "text", True, test["old_image"]),
    ):
        alpha = expected[direction]
        ours = fitted.encode_images(test_set) if side == "image" else fitted.encode_texts(test_set)
        theirs = direct_slerp(test[f"old_{side}"], test[f"new_{side}"] @ rotation, alpha)
        np.testing.assert_allclose(ours, unit(theirs), atol=1e-5)
        assert direct_recall_at_1(ours, gallery, test["caption_image"], t2i) == pytest.approx(
            direct_recall_at_1(unit(theirs), gallery, test["caption_image"], t2i)
        )


def test_the_rsum_variant_picks_one_alpha_for_both_directions(tmp_path: Path) -> None:
    support, corpus = synthetic(2), synthetic(202, 200)
    ctx = SyntheticContext(
        {"support": support, "pairs": support},
        corpus,
        text_corpus=TextCorpus("corpus", ["a", "b"]),
        train_pairs=image_text_set("pairs", support),
        support=image_text_set("support", support),
        work_dir=tmp_path,
        config={"alpha_selection": "rsum"},
    )
    fitted = methods.get("slerp")(ctx)
    alphas = fitted.info["alpha"]
    scores = fitted.info["support_score_by_alpha"]["rsum"]
    assert alphas["i2t"] == alphas["t2i"] and scores[f"{alphas['i2t']:g}"] == max(scores.values())


def test_the_rectangular_map_ranks_like_procrustes_at_alpha_one(tmp_path: Path) -> None:
    support, corpus = synthetic(3), synthetic(203, 200)
    queries = {}
    for name in ("zero-padded", "rectangular"):
        ctx = SyntheticContext(
            {"support": support, "pairs": support},
            corpus,
            text_corpus=TextCorpus("corpus", ["a", "b"]),
            train_pairs=image_text_set("pairs", support),
            support=image_text_set("support", support),
            work_dir=tmp_path,
            config={"map": name, "alpha": 1.0},
        )
        queries[name] = methods.get("slerp")(ctx).encode_texts(image_text_set("support", support))
    np.testing.assert_allclose(queries["zero-padded"], queries["rectangular"], atol=1e-5)
