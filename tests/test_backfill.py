"""Partial backfill: merged retrieval over a gallery half OLD, half NEW, checked against a
brute-force implementation; the calibrations recover a known distortion of the scores, and a
monotone one lifts a NEW part that raw scores bury; the informed orders put the worst-served
items first, the uncertainty order from OLD's gallery alone; calibration and orders are chosen
on support only; the curves in results, leaderboard and plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import run_cli

from xbt_bench.errors import InputError
from xbt_bench.eval import evaluate_retrieval
from xbt_bench.eval.backfill import (
    IDENTITY,
    BackfillSet,
    Calibration,
    IsotonicCalibration,
    ScoreCalibration,
    backfilled_at,
    evaluate_partial_backfill,
    fit_calibrations,
    gallery_features,
    interior,
    isotonic_knots,
    merged_ranks,
    old_margin_order,
    plan_backfill,
    positive_pairs,
    random_order,
    tail_knots,
    through_knots,
)
from xbt_bench.eval.retrieval import Embeddings
from xbt_bench.report import build_leaderboards
from xbt_bench.report.leaderboard import backfill_display
from xbt_bench.report.plots import backfill_curves as backfill_plot
from xbt_bench.scoring import backfill_curves

N_IMAGES, PER_IMAGE = 60, 3
CAPTION_IMAGE = np.repeat(np.arange(N_IMAGES), PER_IMAGE)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _space(rng: np.random.Generator, dim: int, noise: float) -> Embeddings:
    """Images and captions (3 per image) around shared concepts: a model's embeddings."""
    concepts = rng.normal(size=(N_IMAGES, dim))
    images = concepts + noise * rng.normal(size=(N_IMAGES, dim))
    texts = concepts[CAPTION_IMAGE] + noise * rng.normal(size=(len(CAPTION_IMAGE), dim))
    return Embeddings(_unit(images), _unit(texts))


def _lifted(space: Embeddings, keep: float) -> Embeddings:
    """``space`` with scores distorted to keep·s + (1 − keep): each vector scaled by √keep and
    given a shared extra component √(1 − keep) (unit norm kept)."""
    return Embeddings(
        *(
            np.hstack([np.sqrt(keep) * x, np.full((len(x), 1), np.sqrt(1 - keep))]).astype(
                np.float32
            )
            for x in space
        )
    )


@pytest.fixture(scope="module")
def world() -> dict[str, Embeddings]:
    rng = np.random.default_rng(0)
    old = _space(rng, 8, 0.5)
    method = Embeddings(*(_unit(x + 0.3 * rng.normal(size=x.shape)) for x in old))
    return {"old": old, "method": method, "new": _space(rng, 12, 0.6)}


def _brute_ranks(
    old_q: np.ndarray,
    old_g: np.ndarray,
    new_q: np.ndarray,
    new_g: np.ndarray,
    flags: np.ndarray,
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    k_max: int,
    calibration: Calibration,
) -> np.ndarray:
    """Full score matrix: each part's scores through its map of ``calibration``."""
    scores = np.where(
        flags[None, :], calibration.new(new_q @ new_g.T), calibration.old(old_q @ old_g.T)
    )
    positive = q_labels[:, None] == g_labels[None, :]
    best = np.where(positive, scores, -np.inf).max(axis=1)
    return np.minimum((scores > best[:, None]).sum(axis=1), k_max)


MONOTONE = IsotonicCalibration(old_knots=((-0.2, 0.3, 0.6), (0.0, 0.1, 0.9)),
                               new_knots=((0.0, 0.5), (0.05, 0.95)))  # fmt: skip


@pytest.mark.parametrize("calibration", [ScoreCalibration(scale=1.7, shift=-0.4), MONOTONE])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_merged_ranks_equal_a_brute_force_merge(world, fraction: float, calibration) -> None:
    flags = backfilled_at(random_order(N_IMAGES, 3), fraction)
    image_ids = np.arange(N_IMAGES)
    m, o, n = world["method"], world["old"], world["new"]
    for args in (
        (m.texts, o.images, n.texts, n.images, flags, CAPTION_IMAGE, image_ids),  # T2I
        (m.images, o.texts, n.images, n.texts, flags[CAPTION_IMAGE], image_ids, CAPTION_IMAGE),
    ):
        ours = merged_ranks(*args, 10, calibration)
        assert np.array_equal(ours, _brute_ranks(*args, 10, calibration))
        assert 0 < (ours == 0).mean() < 1  # neither all hits nor all misses: a real check


def test_end_points_are_method_to_old_and_new_to_new(world) -> None:
    m, o, n = world["method"], world["old"], world["new"]
    order = random_order(N_IMAGES, 0)
    calibration = {"t2i": ScoreCalibration(2.0, -1.0), "i2t": ScoreCalibration(0.5, 0.3)}

    def at(fraction: float) -> dict[str, float]:
        return evaluate_partial_backfill(
            method_queries=m,
            old_gallery=o,
            new_embeddings=n,
            caption_image=CAPTION_IMAGE,
            backfilled_images=backfilled_at(order, fraction),
            calibration=calibration,
        ).metrics

    def plain(queries: Embeddings, gallery: Embeddings) -> dict[str, float]:
        return evaluate_retrieval(
            text_queries=queries.texts,
            image_gallery=gallery.images,
            image_queries=queries.images,
            text_gallery=gallery.texts,
            caption_image=CAPTION_IMAGE,
        ).metrics

    assert at(0.0) == plain(m, o)
    assert at(1.0) == plain(n, n)
    assert plain(m, o)["rsum"] < at(0.5)["rsum"] < plain(n, n)["rsum"]


def test_backfilled_items_grow_with_the_fraction() -> None:
    order = random_order(N_IMAGES, 1)
    assert sorted(order) == list(range(N_IMAGES))
    assert not np.array_equal(order, random_order(N_IMAGES, 2))
    previous = np.zeros(N_IMAGES, dtype=bool)
    for fraction, count in ((0.0, 0), (0.1, 6), (0.25, 15), (0.5, 30), (1.0, 60)):
        flags = backfilled_at(order, fraction)
        assert flags.sum() == count and not (previous & ~flags).any()  # nested sets
        previous = flags
    with pytest.raises(InputError, match="between 0 and 1"):
        backfilled_at(order, 1.5)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        interior([0.0, 1.0])


def test_positive_pairs_of_both_directions() -> None:
    rows, cols = positive_pairs(CAPTION_IMAGE, np.arange(N_IMAGES))  # T2I: caption -> its image
    assert np.array_equal(rows, np.arange(len(CAPTION_IMAGE))) and np.array_equal(
        cols, CAPTION_IMAGE
    )
    rows, cols = positive_pairs(np.arange(N_IMAGES), CAPTION_IMAGE)  # I2T: image -> 3 captions
    assert len(rows) == len(CAPTION_IMAGE) and np.array_equal(rows, CAPTION_IMAGE[cols])


def test_calibration_undoes_a_known_distortion(world) -> None:
    """NEW = the method's own space with scores squeezed to 0.3·s + 0.7: the fitted affine map
    is its inverse, and merging with it gives exactly the unsplit ranks; the isotonic maps of
    the two spaces are the same map up to that distortion, so they merge (all but ties at the
    maps' flat ends) as the unsplit ranks too. Without a calibration, NEW's squeezed scores sit
    above every OLD score and the merge is worse."""
    m, o = world["method"], world["old"]
    # T2I searches NEW's captions (queries) against NEW's images (gallery): here the method's
    # queries and OLD's gallery, squeezed.
    new = Embeddings(_lifted(o, 0.3).images, _lifted(m, 0.3).texts)
    fitted = fit_calibrations(m, o, new, CAPTION_IMAGE)["t2i"]
    assert fitted["affine"].scale == pytest.approx(1 / 0.3, rel=1e-4)
    assert fitted["affine"].shift == pytest.approx(-0.7 / 0.3, rel=1e-4)
    old_x, new_x = (np.array(k[0]) for k in (fitted["isotonic"].old_knots,
                                             fitted["isotonic"].new_knots))  # fmt: skip
    np.testing.assert_allclose(new_x, 0.3 * old_x + 0.7, atol=1e-5)  # the knots move with s
    assert fitted["isotonic"].old_knots[1] == fitted["isotonic"].new_knots[1]
    image_ids = np.arange(N_IMAGES)
    flags = backfilled_at(random_order(N_IMAGES, 0), 0.5)
    unsplit = merged_ranks(m.texts, o.images, m.texts, o.images, flags, CAPTION_IMAGE,
                           image_ids, 10)  # fmt: skip
    args = (m.texts, o.images, new.texts, new.images, flags, CAPTION_IMAGE, image_ids, 10)
    assert np.array_equal(merged_ranks(*args, fitted["affine"]), unsplit)
    assert (merged_ranks(*args, fitted["isotonic"]) != unsplit).mean() < 0.03
    assert (merged_ranks(*args) != unsplit).sum() > 10


def test_plan_keeps_the_calibration_and_orders_that_help_on_support(world) -> None:
    m, o = world["method"], world["old"]
    squeezed = Embeddings(_lifted(o, 0.3).images, _lifted(m, 0.3).texts)  # as above
    support = BackfillSet(m, o, squeezed, CAPTION_IMAGE)
    plan = plan_backfill(support, [0.0, 0.25, 0.5, 0.75, 1.0], seed=0)
    t2i = plan.calibration_r1["t2i"]
    assert set(t2i) == {"none", "affine", "quantile", "isotonic"}  # every candidate scored
    assert t2i[plan.chosen["t2i"]] == max(t2i.values()) > t2i["none"]
    # ties go to the simpler candidate: the affine map undoes the distortion exactly
    assert plan.chosen["t2i"] == "affine"
    assert plan.calibration["t2i"] is plan.fitted["t2i"]["affine"]
    assert plan.kept["random"] and set(plan.kept) == {"random", "old-margin", "uncertainty"}
    for name in ("old-margin", "uncertainty"):
        assert plan.kept[name] == (plan.order_r1[name] > plan.order_r1["random"])


def test_monotone_maps_rise_strictly_so_no_distractor_ties_a_positive() -> None:
    """A fitted map that is flat anywhere would tie distinct scores of one part, and a tie
    counts as a hit: the maps rise strictly everywhere, beyond their knots too, and keep knots
    that round to one x apart."""
    rng = np.random.default_rng(2)
    positives, negatives = rng.normal(0.45, 0.05, 300), rng.normal(0.3, 0.05, 3000)
    scores = np.sort(rng.uniform(-0.2, 1.0, 2000))  # below, inside and above the knots
    for knots in (isotonic_knots(positives, negatives), tail_knots(negatives),
                  ((0.2, 0.5), (0.0, 0.0))):  # fmt: skip
        assert np.all(np.diff(knots[0]) > 0)
        assert np.all(np.diff(through_knots(scores, knots)) > 0)
    iso = isotonic_knots(positives, negatives)
    assert iso[1][0] < 0.1 and iso[1][-1] > 0.9 and np.all(np.diff(iso[1]) >= 0)


def _buried(rng: np.random.Generator, world: dict[str, Embeddings]) -> BackfillSet:
    """A support split like `linear`'s image→text on the toy pair: the method's image queries
    do not tell an item's captions from others' (its best caption scores below the hardest
    negatives), at a raw score level (≈ 0.9) above every NEW score."""
    o = _lifted(world["old"], 0.1)  # OLD's scores squeezed to 0.1·s + 0.9
    noise = _unit(rng.normal(size=(N_IMAGES, o.images.shape[1] - 1)))
    image_queries = np.hstack([np.sqrt(0.1) * noise, np.full((N_IMAGES, 1), np.sqrt(0.9))])
    method = Embeddings(image_queries.astype(np.float32), o.texts)
    return BackfillSet(method, o, world["new"], CAPTION_IMAGE)


def test_a_monotone_calibration_lifts_a_new_part_that_raw_scores_bury(world) -> None:
    """The cause of the image→text dip of `linear` and `xbt-proj`: the affine fit falls back to
    the identity where the method's scores do not rise with a match, and then the OLD part's
    higher raw scores bury every NEW item, so recall falls as more is re-embedded. The isotonic
    maps put both parts on the probability of a match; the plan chooses one on support."""
    support = _buried(np.random.default_rng(5), world)
    fitted = fit_calibrations(support.method_queries, support.old_gallery,
                              support.new_embeddings, CAPTION_IMAGE)["i2t"]  # fmt: skip
    assert fitted["affine"] is IDENTITY  # the fallback
    order = random_order(N_IMAGES, 0)

    def i2t_r1(calibration: Calibration, fraction: float) -> float:
        flags = backfilled_at(order, fraction)
        return support.evaluate(flags, {"i2t": calibration}).metrics["i2t_r1"]

    start, end = i2t_r1(IDENTITY, 0.0), i2t_r1(IDENTITY, 1.0)
    assert start < 5 and end > 75  # the method is at chance, NEW far better
    assert i2t_r1(IDENTITY, 0.5) < start + 5  # buried: half the gallery re-embedded buys nothing
    line = (start + end) / 2
    assert i2t_r1(fitted["isotonic"], 0.5) > line - 5  # lifted to the straight line
    plan = plan_backfill(support, [0.0, 0.25, 0.5, 0.75, 1.0], seed=0)
    assert plan.chosen["i2t"] in ("quantile", "isotonic")
    assert plan.calibration_r1["i2t"]["none"] == plan.calibration_r1["i2t"]["affine"]


FRACTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]


class _Unreadable:
    """Stands for a split's queries that an order must not read."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"the order read the split's queries ({name})")


def _damaged(rng: np.random.Generator, count: int) -> tuple[BackfillSet, np.ndarray]:
    """A split whose ``count`` damaged items have OLD images that point anywhere (OLD serves
    them badly, NEW does not); the method searches OLD's gallery with OLD's own queries."""
    old, new = _space(rng, 8, 0.5), _space(rng, 12, 0.6)
    damaged = rng.choice(N_IMAGES, count, replace=False)
    images = old.images.copy()
    images[damaged] = _unit(rng.normal(size=(count, images.shape[1])))
    gallery = Embeddings(images, old.texts)
    return BackfillSet(gallery, gallery, new, CAPTION_IMAGE), damaged


def test_uncertainty_order_learns_on_support_and_reads_only_the_old_gallery() -> None:
    """Learned on one split (support), the uncertainty order finds another split's damaged
    items from that split's OLD gallery alone: its queries are never read."""
    rng = np.random.default_rng(11)
    support, _ = _damaged(rng, 10)
    plan = plan_backfill(support, FRACTIONS, seed=0)
    assert plan.kept["uncertainty"]
    assert plan.order_r1["uncertainty"] > plan.order_r1["random"] + 2  # cross-fitted on support
    split, damaged = _damaged(rng, 10)
    blind = BackfillSet(_Unreadable(), split.old_gallery, _Unreadable(), CAPTION_IMAGE)
    order = plan.order("uncertainty", blind, seed=0)
    assert sorted(order) == list(range(N_IMAGES))
    assert len(set(order[:10]) & set(damaged)) >= 8
    features = gallery_features(split.old_gallery, CAPTION_IMAGE)
    assert features.shape == (N_IMAGES, 4 + 2 * 8)
    # a damaged item's image and captions agree least
    assert features[damaged, 2].max() < np.median(features[:, 2])


def test_calibration_and_orders_are_chosen_on_support_only(world) -> None:
    """The curves of a test split carry the choices made on support, never the ones its own
    data would make (here the two differ), and a test split's content does not move them."""
    support = _buried(np.random.default_rng(5), world)
    old, queries = _lifted(world["old"], 0.9), _lifted(world["method"], 0.9)  # OLD's dimension
    test = BackfillSet(queries, old, world["new"], CAPTION_IMAGE)
    on_support = plan_backfill(support, FRACTIONS, seed=0)
    on_test = plan_backfill(test, FRACTIONS, seed=0)
    assert on_support.chosen != on_test.chosen  # a choice made on test would show
    curves = backfill_curves(support, {"test": [test]}, FRACTIONS, 0, "support")
    assert {d: c.kind for d, c in curves.calibration.items()} == on_support.chosen
    assert {n: o.support_r1 for n, o in curves.orders.items()} == on_support.order_r1
    noisy = BackfillSet(queries, old, _space(np.random.default_rng(9), 12, 2.0), CAPTION_IMAGE)
    again = backfill_curves(support, {"test": [noisy]}, FRACTIONS, 0, "support")
    assert (again.calibration, again.orders) == (curves.calibration, curves.orders)
    assert again.curves != curves.curves


def test_old_margin_order_puts_mismatched_items_first(world) -> None:
    old = world["old"]
    texts = old.texts.copy()
    broken = [7, 31]  # captions that describe other images
    for image in broken:
        texts[CAPTION_IMAGE == image] = old.texts[CAPTION_IMAGE == (image + 1) % N_IMAGES]
    order = old_margin_order(Embeddings(old.images, texts), CAPTION_IMAGE)
    assert sorted(order) == list(range(N_IMAGES))
    assert set(order[:2]) == set(broken)


def test_curves_in_leaderboard_and_plot(synthetic_results: Path, tmp_path: Path) -> None:
    boards = build_leaderboards(synthetic_results, tmp_path)
    frame = pd.read_csv(tmp_path / "backfill.csv")
    assert set(frame["method"]) == {"xbt", "slerp"}
    # slerp's informed order beat random on support, xbt's did not: only slerp reports it
    assert set(frame[frame["method"] == "xbt"]["order"]) == {"random"}
    assert set(frame[frame["method"] == "slerp"]["order"]) == {"random", "old-margin"}
    test = boards.backfill[boards.backfill["split"] == "test"]
    shown = backfill_display(test).set_index(["method", "order"])
    xbt = shown.loc[("xbt", "random")]
    assert xbt["0%"] == "30.8/44.2" and xbt["100%"] == "45.1/55.0"
    # T2I starts below old->old (31.2) and passes it at 10% (30.8 + 0.1·14.3); I2T from 0%
    assert xbt["passes old→old T2I/I2T"] == "10% / 0%"
    assert xbt["calibration T2I / I2T"] == "1.5·s -0.6 / none"
    assert shown.loc[("slerp", "OLD's worst first"), "support R@1"] == "47.50 (random 43.70)"
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "## Partial backfill" in markdown and "| xbt      | random" in markdown
    figure = backfill_plot(test, "test")
    t2i, i2t = figure.axes
    lines = {line.get_label(): line for line in t2i.get_lines()}
    assert set(lines) == {"xbt", "slerp", "slerp (OLD's worst first)", "old→old", "new→new"}
    assert list(lines["xbt"].get_xdata()) == [0, 10, 25, 50, 75, 100]
    assert lines["xbt"].get_ydata()[0] == 30.8 and lines["old→old"].get_ydata()[0] == 31.2
    assert lines["slerp (OLD's worst first)"].get_linestyle() == "--"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pair", "toy-s-m-l"], "'toy-s-m-l' is a chain; backfill an upgrade pair"),
        (["--pair", "toy-s-to-m", "--fractions", "0,150"], "use comma-separated percentages"),
        (["--pair", "toy-s-to-m", "--fractions", "0,100"], "none strictly between 0 and 1"),
    ],
)
def test_backfill_command_fails_in_one_line_before_any_work(args, message, capsys) -> None:
    assert run_cli(["backfill", *args]) == 1
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
