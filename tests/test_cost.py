"""The cost model: its arithmetic on given throughputs, the throughputs it reads from results,
a user's hardware file, and `xbt-bench cost`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.report.cost import CostInputs, Hardware, cost_inputs, estimate, plans_frame
from xbt_bench.results import load_results

GIVEN = CostInputs(
    device="gpu",
    devices=4,
    new_item_per_s=1000.0,
    new_text_per_s=10_000.0,
    old_text_per_s=20_000.0,
    xbt_training_s=1800.0,
    xbt_texts_old=36_000,
    xbt_texts_new=72_000,
)


def test_estimate_arithmetic_on_given_throughputs() -> None:
    plans = {p.plan: p for p in estimate(GIVEN, 3_600_000, [0.25, 0.5])}
    full = plans["full backfill"]
    assert full.embedded == 3_600_000
    assert full.device_hours == pytest.approx(1.0)  # 3.6M images at 1000/s
    assert full.wall_hours == pytest.approx(0.25)  # on 4 devices
    xbt = plans["xbt (nothing re-embedded)"]
    # 1800 s of training + 36k texts with OLD at 20k/s + 72k texts with NEW at 10k/s
    assert xbt.device_hours == pytest.approx((1800 + 1.8 + 7.2) / 3600)
    assert xbt.wall_hours == xbt.device_hours  # one device
    assert plans["partial backfill 25%"].embedded == 900_000
    assert plans["partial backfill 25%"].device_hours == pytest.approx(0.25)
    assert plans["partial backfill 50%"].wall_hours == pytest.approx(0.125)
    # XBT does not grow with the gallery; a backfill does, linearly
    bigger = {p.plan: p for p in estimate(GIVEN, 36_000_000, [0.25])}
    assert bigger["xbt (nothing re-embedded)"].device_hours == xbt.device_hours
    assert bigger["full backfill"].device_hours == pytest.approx(10.0)
    frame = plans_frame(list(plans.values()), GIVEN)
    assert list(frame.columns) == ["plan", "NEW embeddings", "device-hours (gpu)",
                                   "wall time (4 devices)"]  # fmt: skip
    assert frame.iloc[0].tolist() == ["full backfill", "3,600,000", "1", "15.0 min"]
    with pytest.raises(ConfigError, match="at least 1"):
        estimate(GIVEN, 0)


def test_inputs_come_from_results_and_a_hardware_file(
    synthetic_results: Path, tmp_path: Path
) -> None:
    results = load_results(synthetic_results)
    measured = cost_inputs(results, "toy-s-to-m")
    # synthetic throughputs: NEW images 2000 in 4 s, NEW texts 10000 in 5 s, OLD texts 10000 in 2 s
    assert measured.new_item_per_s == 500 and measured.new_text_per_s == 2000
    assert measured.old_text_per_s == 5000 and measured.device == "cpu"
    assert measured.xbt_training_s == 72.0  # xbt's training_time_s
    assert (measured.xbt_texts_old, measured.xbt_texts_new) == (20_000, 60_000)
    assert measured.sources["new_image_per_s"].startswith("measured: 2,000 rows in 4.0 device-s")
    text_side = cost_inputs(results, "toy-s-to-m", gallery_side="text")
    assert text_side.new_item_per_s == 2000

    path = tmp_path / "hardware.toml"
    path.write_text('device = "8x H100"\ndevices = 8\nnew_image_per_s = 2500\n'
                    "xbt_training_hours = 0.5\n")  # fmt: skip
    entered = cost_inputs(results, "toy-s-to-m", hardware=Hardware.from_toml(path))
    assert (entered.device, entered.devices, entered.new_item_per_s) == ("8x H100", 8, 2500)
    assert entered.xbt_training_s == 1800 and entered.new_text_per_s == 2000  # kept measured
    assert entered.sources["new_image_per_s"] == "entered (--hardware)"

    path.write_text("new_image_per_sec = 10\n")
    with pytest.raises(ConfigError, match=r"hardware\.toml: new_image_per_sec.*keys: device"):
        Hardware.from_toml(path)
    with pytest.raises(NotFoundError, match="no results for pair 'b32-to-l14'"):
        cost_inputs(results, "b32-to-l14")


def test_cost_command_prints_an_estimate_table(synthetic_results: Path, capsys) -> None:
    args = ["cost", "--pair", "toy-s-to-m", "--gallery-size", "100000000",
            "--results-dir", str(synthetic_results)]  # fmt: skip
    assert run_cli(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(ESTIMATE)" in out and "Estimate: linear in throughputs" in out
    # 1e8 images at 500/s = 55.6 device-hours; xbt 72 s + 4 s + 30 s = 106 s
    assert "full backfill │ 100,000,000 │ 55.6 │ 2.3 d" in out
    assert "xbt (nothing re-embedded) │ 60,000 │ 0.0294 │ 1.8 min" in out
    assert "partial backfill 25% │ 25,000,000 │ 13.9 │ 13.9 h" in out
    assert "30.8/44.2" in out  # xbt's own method->old R@1, from its result
    assert run_cli([*args[:-2], "--results-dir", str(synthetic_results), "--gallery-side",
                    "video"]) == 1  # fmt: skip
    assert "--gallery-side 'video'" in capsys.readouterr().err
