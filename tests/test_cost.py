"""The upgrade bill and the decision card: the arithmetic on given rates (gallery images and
captions, training embeddings, index rebuild, storage, query time, money), one device profile
(a rate a hardware file leaves out is named, never borrowed), the hardware file's checks, the
ranking rule, and `xbt-bench cost` / `xbt-bench decide`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.eval.index_cost import IndexBuildRates, ivf_lists
from xbt_bench.report.cost import (
    Hardware,
    Scale,
    Way,
    bill,
    bill_inputs,
    bills_frame,
    file_profile,
    measured_profile,
    pair_gallery,
    upgrade_ways,
)
from xbt_bench.report.decide import HELD, HELD_95, NOT_HELD, decide, way_recalls
from xbt_bench.results import load_result_set

RATES = """device = "gpu"
devices = 4
price_per_device_hour = 2.0
new_image_per_s = 1000
new_text_per_s = 10000
old_image_per_s = 2000
old_text_per_s = 20000
new_image_ms = 4.0
new_text_ms = 2.0
old_image_ms = 2.0
old_text_ms = 1.0
index_vectors_per_s = 100000

[training_hours]
xbt = 0.5
"""
# 3.6M items with 5 captions each, both directions, 10 queries a second (half of them images)
SCALE = Scale(
    gallery_size=3_600_000, captions_per_item=5, queries_per_day=864_000, horizon_days=100
)


@pytest.fixture
def rates(tmp_path: Path) -> Path:
    path = tmp_path / "gpu.toml"
    path.write_text(RATES)
    return path


def _bills(synthetic_results: Path, hardware: Path, scale: Scale = SCALE) -> dict:
    found = load_result_set(synthetic_results)
    profile = file_profile(Hardware.from_toml(hardware), hardware, found.runs, "toy-s-to-m")
    gallery = pair_gallery(found.runs, "toy-s-to-m")
    ways = upgrade_ways(found, "toy-s-to-m")
    return {w.name: bill(w, scale, profile, gallery) for w in ways}


def test_the_bill_of_each_way_on_given_rates(synthetic_results: Path, rates: Path) -> None:
    bills = _bills(synthetic_results, rates)
    full = bills["full backfill"]
    # 3.6M images at 1000/s (1 h) and 18M captions at 10,000/s (0.5 h): captions count
    assert (full.images, full.captions) == (3_600_000, 18_000_000)
    assert full.gallery_hours.value == pytest.approx(1.5)
    assert full.index_hours.value == pytest.approx(21.6e6 / 1e5 / 3600)  # 216 s
    assert full.training_hours.value == 0 and full.passes_hours.value == 0
    assert full.one_off_hours.value == pytest.approx(1.56)
    assert full.wall_hours.value == pytest.approx(1.5 / 4 + 0.06)  # 4 devices re-embed
    # float32 vectors: an item is 1 image + 5 captions, 64-d in OLD, 96-d in NEW
    old_bytes, new_bytes = 3_600_000 * 6 * 4 * 64, 3_600_000 * 6 * 4 * 96
    assert (full.storage_bytes, full.final_bytes) == (old_bytes + new_bytes, new_bytes)
    # NEW's queries: 2 ms per text (OLD's 1 ms), 4 ms per image (OLD's 2 ms)
    assert full.added_ms["t2i"].value == pytest.approx(1.0)
    assert full.added_ms["i2t"].value == pytest.approx(2.0)
    assert full.query_hours_per_million["t2i"].value == pytest.approx(1e6 / 10_000 / 3600)
    # 432k text queries at 10k/s + 432k image queries at 1k/s = 475.2 s a day; OLD's 237.6 s
    assert full.query_hours_per_day.value == pytest.approx(475.2 / 3600)
    assert full.added_query_hours_per_day.value == pytest.approx(237.6 / 3600)
    assert full.total_hours(100).value == pytest.approx(1.56 + 100 * 475.2 / 3600)
    assert not full.old_at_query

    xbt = bills["xbt"]
    # nothing re-embedded, no index: training (0.5 h) and the embeddings it computed outside
    # training steps: 20k OLD texts (1 s), 60k NEW texts (6 s), 46.4k - 38.4k NEW images (8 s)
    assert (xbt.images, xbt.captions, xbt.index_hours.value) == (0, 0, 0)
    assert xbt.training_passes == {"old_text": 20_000, "new_text": 60_000, "new_image": 8_000}
    assert xbt.passes_hours.value == pytest.approx(15 / 3600)
    assert xbt.one_off_hours.value == pytest.approx(0.5 + 15 / 3600)
    assert xbt.storage_bytes == xbt.final_bytes == old_bytes

    slerp = bills["slerp"]
    # OLD and NEW at query time: their latencies add up, and so do their device-seconds
    assert slerp.old_at_query and slerp.training_hours.value == 0
    assert slerp.added_ms["t2i"].value == pytest.approx(2.0)  # 1 + 2 - 1
    assert slerp.query_hours_per_day.value == pytest.approx((64.8 + 648) / 3600)
    assert slerp.passes_hours.value == pytest.approx(3 / 3600)  # 20k texts each with OLD, NEW

    partial = bills["partial backfill 25% (xbt queries)"]
    # a quarter of the items re-embedded, XBT's training, NEW's index of that quarter; OLD's
    # vectors kept while NEW's quarter is added; each query runs XBT's encoder and NEW's
    assert (partial.images, partial.captions) == (900_000, 4_500_000)
    assert partial.gallery_hours.value == pytest.approx(0.375)
    assert partial.index_hours.value == pytest.approx(5.4e6 / 1e5 / 3600)
    assert partial.storage_bytes == old_bytes + new_bytes // 4
    assert partial.added_ms["i2t"].value == pytest.approx(4 + 4 - 2)
    assert partial.query_hours_per_day.value == pytest.approx((86.4 + 864) / 3600)

    # one direction: text→image search has no caption gallery to re-embed or store
    only_t2i = Scale(gallery_size=3_600_000, directions=("t2i",), queries_per_day=864_000)
    full_t2i = _bills(synthetic_results, rates, only_t2i)["full backfill"]
    assert (full_t2i.images, full_t2i.captions) == (3_600_000, 0)
    assert full_t2i.final_bytes == 3_600_000 * 4 * 96
    assert full_t2i.query_hours_per_day.value == pytest.approx(864_000 / 10_000 / 3600)


def test_a_measured_profile_prices_with_the_runs_rates(synthetic_results: Path) -> None:
    found = load_result_set(synthetic_results)
    profile = measured_profile(found.runs, "toy-s-to-m")
    assert profile.device == "cpu" and profile.price is None
    # measured: NEW images 2000 in 4 s, NEW texts 10000 in 5 s; OLD images were not measured
    assert profile.rates["new_image_per_s"].value == 500
    assert profile.rates["new_image_per_s"].source.startswith("measured: 2,000 rows in 4.0")
    assert "old_image_per_s" in profile.missing
    assert profile.rates["training_hours.xbt"].value == pytest.approx(72 / 3600)
    gallery = pair_gallery(found.runs, "toy-s-to-m")
    assert gallery.captions_per_image == 5
    scale = Scale(gallery_size=1_000_000, queries_per_day=0)
    full = bill(Way("full backfill", "new", 1.0), scale, profile, gallery)
    # 1M images at 500/s, 5M captions at 2000/s; IVF-Flat with 4·√N lists at 1e-10 s/MAC
    assert full.gallery_hours.value == pytest.approx((2000 + 2500) / 3600)
    index = IndexBuildRates(device="cpu", dim=64, search_block=1000, search_s=0.0064,
                            hnsw_vectors=1000, hnsw_add_s=1.0)  # fmt: skip
    for n in (1_000_000, 5_000_000):
        lists = ivf_lists(n)
        assert index.ivf_seconds(n, 96) == pytest.approx(
            (25 * min(n, 256 * lists) + n) * lists * 96 * 1e-10
        )
    expected = index.ivf_seconds(1_000_000, 96) + index.ivf_seconds(5_000_000, 96)
    assert full.index_hours.value == pytest.approx(expected / 3600)
    assert index.hnsw_seconds(1000, 64) == pytest.approx(1.0)  # the measured point itself
    # measured latency: NEW adds 1 ms per text query over OLD's own, timed in the same loop
    assert full.added_ms["t2i"].value == pytest.approx(1.0)
    # xbt trains with the measured 72 s; its embeddings outside training need OLD's text rate
    xbt = bill(Way("backfill-free", "xbt", 0.0), scale, profile, gallery)
    assert xbt.training_hours.value == pytest.approx(72 / 3600)
    assert xbt.passes_hours.value == pytest.approx((20_000 / 5000 + 60_000 / 2000 + 8000 / 500)
                                                   / 3600)  # fmt: skip


def test_a_hardware_file_missing_a_rate_names_it_and_borrows_nothing(
    synthetic_results: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "a100.toml"
    path.write_text(RATES.replace('device = "gpu"', 'device = "A100"')
                    .replace("new_text_per_s = 10000\n", ""))  # fmt: skip
    bills = _bills(synthetic_results, path)
    full = bills["full backfill"]
    assert full.gallery_hours.value is None and full.one_off_hours.value is None
    assert full.one_off_hours.missing == {"new_text_per_s"}
    assert bills["xbt"].one_off_hours.value is None  # its 60k NEW texts need the rate too
    found = load_result_set(synthetic_results)
    profile = file_profile(Hardware.from_toml(path), path, found.runs, "toy-s-to-m")
    frame = bills_frame(list(bills.values()), profile, SCALE)
    assert frame.loc[0, "one-off device-h"] == "needs new_text_per_s"
    assert frame.loc[0, "one-off USD"] == "needs new_text_per_s"  # no money either
    args = ["cost", "--pair", "toy-s-to-m", "--gallery-size", "1000000", "--hardware", str(path),
            "--results-dir", str(synthetic_results)]  # fmt: skip
    assert run_cli(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "on A100 (a100.toml)" in out
    # the rate is named with the value measured on the run's device, marked as not used
    assert "MISSING new_text_per_s (texts NEW embeds per device-second (batched)): not in the " \
        "file (measured 2000: measured: 10,000 rows in 5.0 device-s on cpu" in out
    assert "not used" in out
    # a file with every rate prices the full backfill, with money
    assert run_cli([*args[:5], "--hardware", str(_full_file(tmp_path)), *args[7:]]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "MISSING" not in out and "USD" in out


def _full_file(tmp_path: Path) -> Path:
    path = tmp_path / "full.toml"
    path.write_text(RATES)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("new_image_per_s = nan\n", r"new_image_per_s: .*finite"),
        ("new_image_per_s = -5\n", r"new_image_per_s: .*greater than 0"),
        ("new_image_per_s = inf\n", r"new_image_per_s: .*finite"),
        ("new_image_per_sec = 10\n", r"new_image_per_sec.*keys: device"),
        ("[training_hours]\nxbt = -1\n", r"training_hours\.xbt: .*greater than or equal to 0"),
        ("devices = 0\n", r"devices: .*greater than or equal to 1"),
        ("price_per_device_hour = 'cheap'\n", r"price_per_device_hour: .*number"),
        ("device = \n", r"not valid TOML"),
    ],
)
def test_a_hardware_file_is_checked(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "hardware.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Hardware.from_toml(path)


def test_a_hardware_path_must_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        Hardware.from_toml(tmp_path)
    with pytest.raises(NotFoundError, match="does not exist"):
        Hardware.from_toml(tmp_path / "missing.toml")


def test_the_scale_is_checked(synthetic_results: Path) -> None:
    with pytest.raises(ConfigError, match="--gallery-size must be at least 1"):
        Scale(gallery_size=0)
    with pytest.raises(ConfigError, match="--image-query-share must be a finite number"):
        Scale(gallery_size=10, image_query_share=1.5)
    found = load_result_set(synthetic_results)
    with pytest.raises(ConfigError, match="--direction 'both-ways'"):
        bill_inputs(found, "toy-s-to-m", 10, direction="both-ways")
    with pytest.raises(NotFoundError, match="no results for pair 'b32-to-l14'"):
        bill_inputs(found, "b32-to-l14", 10)


def test_decide_ranks_by_the_criterion_then_total_cost(
    synthetic_results: Path, rates: Path
) -> None:
    found = load_result_set(synthetic_results)
    inputs = bill_inputs(found, "toy-s-to-m", 3_600_000, rates, queries_per_day=864_000,
                         horizon_days=100)  # fmt: skip
    options = decide(found, "toy-s-to-m", inputs.scale, inputs.profile)
    names = [o.bill.way.name for o in options]
    marks = {o.bill.way.name: {d: r.mark for d, r in o.recall.items()} for o in options}
    # xbt misses T2I R@1 (30.8 < 31.2; its I2T margin holds at 95%), procrustes misses both:
    # the last group, cheapest first (procrustes trains nothing: 13.2 device-h of queries;
    # xbt adds its 0.5 h of training and 15 s of embeddings)
    assert marks["xbt"] == {"t2i": NOT_HELD, "i2t": HELD_95}
    assert marks["procrustes"] == {"t2i": NOT_HELD, "i2t": NOT_HELD}
    assert names[-2:] == ["procrustes", "xbt"]
    # the rest beat OLD on the mean (no interval recorded for new→new, slerp or a curve):
    # the full backfill (1.56 h + 100 days x 0.132 h) before slerp (100 days x 0.198 h, OLD and
    # NEW per query), before every partial backfill (training or two encoders per query)
    assert marks["slerp"] == {"t2i": HELD, "i2t": HELD}
    assert names[:2] == ["full backfill", "slerp"]
    assert options[0].total.value == pytest.approx(1.56 + 13.2)
    assert options[1].total.value == pytest.approx(3 / 3600 + 19.8)
    assert "does not beat OLD's R@1 in T2I (-0.4 points)" in options[names.index("xbt")].reason
    tiers = [o.tier for o in options]
    assert tiers == sorted(tiers)
    for group in set(tiers):
        costs = [o.cost for o in options if o.tier == group]
        assert costs == sorted(costs)
    # the cost is money over the horizon: device-hours x 2 USD
    first = options[0]
    assert first.cost == pytest.approx(first.total.value * 2.0)
    assert "the cheapest of its group over 100 days" in first.reason
    # partial backfills' curve points have no interval: ✓ at best
    partial = next(o for o in options if o.bill.way.kind == "partial backfill")
    assert all(r.interval is None and r.mark in (HELD, NOT_HELD) for r in partial.recall.values())
    # xbt's I2T R@1 has a paired interval above 0 on `test`: ✓* with its 95% interval
    recall = way_recalls(found, "toy-s-to-m", Way("backfill-free", "xbt", 0.0), ("i2t",))
    assert recall["i2t"].mark == HELD_95 and recall["i2t"].interval == (41.7, 46.7)


def test_decide_prints_the_card(synthetic_results: Path, rates: Path, capsys) -> None:
    args = ["decide", "--pair", "toy-s-to-m", "--gallery-size", "100000000",
            "--queries-per-day", "10000000", "--results-dir", str(synthetic_results)]  # fmt: skip
    assert run_cli(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Decision card: toy-s-to-m on cpu (measured) (ESTIMATE), horizon 365 days" in out
    assert "Today (old→old, split test): R@1 T2I 31.2, I2T 40.6" in out
    assert " 1. " in out and "why #1:" in out and "Recommended:" in out
    assert "Ranking rule: first the ways that beat today's system" in out
    assert "OLD kept running: yes" in out and "OLD kept running: no" in out
    assert "storage 384 GB at peak, 230 GB after" in out  # 1e8 x 6 x 4 x (64 + 96) bytes
    assert run_cli([*args, "--hardware", str(rates), "--top", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "on gpu (gpu.toml)" in out and "USD" in out and "more ways (--top 0" in out
