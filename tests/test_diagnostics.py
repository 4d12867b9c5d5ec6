"""Pair diagnostics on constructed embeddings whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from xbt_bench.errors import InputError
from xbt_bench.eval import Embeddings
from xbt_bench.eval.diagnostics import linear_cka, map_fit, modality_gap
from xbt_bench.linalg import procrustes_map
from xbt_bench.scoring import pair_diagnostics as score_pair


def pair_diagnostics(
    old_images: np.ndarray,
    old_texts: np.ndarray,
    new_images: np.ndarray,
    new_texts: np.ndarray,
    caption_image: np.ndarray,
    **fit: np.ndarray,
) -> dict:
    """The typed diagnostics of the two spaces, as a plain dict."""
    old, new = Embeddings(old_images, old_texts), Embeddings(new_images, new_texts)
    return score_pair(old, new, caption_image, **fit).model_dump()


def _rotation(dim: int, seed: int) -> np.ndarray:
    """A random orthogonal [dim, dim] matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pair_set(rng: np.random.Generator, n: int = 60, dim: int = 16) -> tuple[np.ndarray, ...]:
    """Images, two captions per image near it, and caption_image."""
    images = _unit(rng.standard_normal((n, dim)) + 2.0 * np.eye(dim)[0])
    caption_image = np.repeat(np.arange(n), 2)
    texts = _unit(images[caption_image] + 0.3 * rng.standard_normal((2 * n, dim)))
    return images, texts, caption_image


def test_rotated_copy_is_identical_in_every_measure() -> None:
    rng = np.random.default_rng(0)
    images, texts, caption_image = _pair_set(rng)
    rotation = _rotation(16, 1)
    out = pair_diagnostics(images, texts, images @ rotation, texts @ rotation, caption_image)
    assert out["cka_texts"] == pytest.approx(1.0) and out["cka_images"] == pytest.approx(1.0)
    assert out["procrustes"]["r2_texts"] == pytest.approx(1.0)
    assert out["procrustes"]["r2_images"] == pytest.approx(1.0)
    assert out["procrustes"]["residual_texts"] == pytest.approx(0.0, abs=1e-12)
    assert out["procrustes"]["linear_r2_texts"] == pytest.approx(1.0)
    assert out["old"]["modality_gap"] == pytest.approx(out["new"]["modality_gap"])
    assert out["old"]["matched_cosine"] == pytest.approx(out["new"]["matched_cosine"])
    assert out["capability_gap"] == {"t2i_r1": 0.0, "i2t_r1": 0.0, "rsum": 0.0, "rsum_percent": 0.0}


def test_map_into_a_larger_space_is_recovered_through_zero_padding() -> None:
    rng = np.random.default_rng(1)
    images, texts, caption_image = _pair_set(rng, dim=8)
    embed = _rotation(12, 2)[:8]  # orthonormal rows: 8-d into 12-d
    out = pair_diagnostics(images @ embed, texts @ embed, images, texts, caption_image)
    assert out["procrustes"]["r2_texts"] == pytest.approx(1.0)
    assert out["procrustes"]["r2_images"] == pytest.approx(1.0)
    assert (out["old"]["dim"], out["new"]["dim"]) == (12, 8)


def test_stretched_copy_is_linear_but_not_orthogonal() -> None:
    rng = np.random.default_rng(2)
    images, texts, caption_image = _pair_set(rng)
    stretch = np.diag(np.linspace(0.2, 3.0, 16))
    out = pair_diagnostics(images, texts, images @ stretch, texts @ stretch, caption_image)
    fit = out["procrustes"]
    # A linear map undoes the stretch up to each row's length (least squares fits the lengths
    # it cannot undo, so it lands just below 1).
    assert fit["linear_r2_texts"] > 0.99
    assert fit["r2_texts"] < 0.9 and fit["r2_images"] < 0.9
    assert fit["residual_texts"] > 0.05
    assert out["cka_texts"] < 0.95


def test_r2_is_measured_around_the_target_mean() -> None:
    target = _unit(np.array([[1.0, 0.1], [1.0, -0.1]]))
    # A map that outputs OLD's mean direction for every row is worth 0 (up to normalising).
    fit = map_fit(target, target, np.eye(2))
    assert fit["r2"] == pytest.approx(1.0) and fit["residual"] == pytest.approx(0.0)
    flipped = map_fit(target[::-1], target, np.eye(2))
    # ss_res = 2 * |t0 - t1|^2, ss_tot = 2 * |t0 - t1|^2 / 4
    assert flipped["r2"] == pytest.approx(1.0 - 4.0)
    assert flipped["residual"] == pytest.approx(np.sum((target[0] - target[1]) ** 2))


def test_known_modality_gap_and_matched_cosine() -> None:
    images = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    texts = np.array([[0.0, 0.6, 0.8], [0.0, -0.6, 0.8]])
    # Image centroid (.5, .5, 0), text centroid (0, 0, .8).
    assert modality_gap(images, texts) == pytest.approx(np.sqrt(0.5 + 0.64))
    out = pair_diagnostics(images, texts, images, texts, np.array([0, 1]))
    assert out["old"]["modality_gap"] == pytest.approx(np.sqrt(0.5 + 0.64))
    assert out["old"]["matched_cosine"] == pytest.approx(-0.3)  # (0 + -0.6) / 2


def test_cka_of_independent_data_is_low_and_of_scaled_copy_is_one() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 10))
    assert linear_cka(x, 3.0 * x @ _rotation(10, 4)) == pytest.approx(1.0)
    assert linear_cka(x, rng.standard_normal((500, 6))) < 0.1


def test_fit_texts_change_the_map_and_capability_gap_counts_recalls() -> None:
    rng = np.random.default_rng(4)
    images, texts, caption_image = _pair_set(rng)
    # NEW: the same space, OLD: pure noise captions (OLD cannot retrieve anything).
    noisy_texts = _unit(rng.standard_normal(texts.shape))
    corpus = _unit(rng.standard_normal((200, 16)))
    rotation = _rotation(16, 5)
    out = pair_diagnostics(
        images,
        noisy_texts,
        images @ rotation,
        texts @ rotation,
        caption_image,
        fit_texts_old=corpus,
        fit_texts_new=corpus @ rotation,
    )
    assert out["procrustes"]["fit_texts"] == 200
    assert out["procrustes"]["r2_images"] == pytest.approx(1.0)  # the corpus fixes the map
    assert out["capability_gap"]["t2i_r1"] > 50 and out["capability_gap"]["rsum"] > 200
    assert np.allclose(procrustes_map(corpus @ rotation, corpus), rotation.T)


def test_bad_inputs_are_named() -> None:
    images, texts, caption_image = _pair_set(np.random.default_rng(5))
    with pytest.raises(InputError, match="same items"):
        pair_diagnostics(images, texts, images[:-1], texts, caption_image)
    with pytest.raises(InputError, match="or neither"):
        pair_diagnostics(images, texts, images, texts, caption_image, fit_texts_old=texts)
    with pytest.raises(InputError, match="all-zero"):
        modality_gap(np.zeros((2, 3)), texts[:, :3])
