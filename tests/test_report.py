"""RunResult files, leaderboards, plots and the runner's summary, on hand-made results
(the ``synthetic_results`` fixture in conftest.py: realistic toy-like numbers)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import SYNTHETIC_METHODS, SYNTHETIC_NEW, SYNTHETIC_OLD
from pydantic import ValidationError
from rich.console import Console
from test_cli import run_cli

from xbt_bench.errors import ConfigError, NotFoundError
from xbt_bench.methods.base import Cost
from xbt_bench.report import build_leaderboards, make_plots, print_summary
from xbt_bench.results import RunResult, collect_versions, git_revision, load_results
from xbt_bench.scoring import ChainMatrix, SplitResult

ISSUE_KEYS = [
    "pair",
    "old",
    "new",
    "method",
    "dataset",
    "split",
    "metrics",
    "compatibility",
    "cost",
    "config",
    "seed",
    "versions",
    "git_revision",
    "date",
]
METRICS = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum"]
# xbt on `test`: (366.6 - 355.2) / (433.0 - 355.2) of the full-backfill rsum gain.
XBT_GAIN_SHARE = (366.6 - 355.2) / (433.0 - 355.2)


def _result(**changes: object) -> RunResult:
    metrics = {
        "old->old": SYNTHETIC_OLD,
        "new->new": SYNTHETIC_NEW,
        "method->old": SYNTHETIC_METHODS["xbt"],
    }
    fields = {
        "pair": "toy-s-to-m",
        "old": "zoo:toy-s",
        "new": "zoo:toy-m",
        "method": "xbt",
        "dataset": "toy-shapes",
        "split": "test",
        "seed": 0,
        "cost": Cost(wall_time_s=1.0),
        "splits": {"test": SplitResult(metrics=metrics)},
    }
    return RunResult(**fields | changes)


def test_result_json_round_trip_has_the_issue_keys(synthetic_results: Path, tmp_path: Path):
    path = synthetic_results / "toy-s-to-m" / "toy-shapes" / "xbt.json"
    data = json.loads(path.read_text())
    assert [k for k in ISSUE_KEYS if k not in data] == []
    assert set(data["metrics"]) == {"old->old", "new->new", "method->old"}
    assert all(list(values) == METRICS for values in data["metrics"].values())
    assert data["metrics"]["method->old"] == SYNTHETIC_METHODS["xbt"]
    assert set(data["splits"]) == {"test", "test-hard"}
    assert data["splits"]["test"]["metrics"] == data["metrics"]
    compat = data["compatibility"]
    assert compat["cells_held"] == 5 and compat["cells_total"] == 6
    assert compat["held"]["t2i_r1"] is False and compat["held"]["i2t_r1"] is True
    assert compat["margin"]["i2t_r1"] == pytest.approx(44.2 - 40.6)
    assert compat["gain_share"]["rsum"] == pytest.approx(XBT_GAIN_SHARE)
    assert data["flips"]["t2i_nfr"] == 6.5
    assert data["info"]["alpha"] == 0.5  # a numpy float32 written as plain JSON
    assert data["cost"]["trainable_params"] == 41_000
    assert set(data["versions"]) >= {"python", "torch", "open_clip", "faiss", "xbt_bench"}
    assert datetime.fromisoformat(data["date"]).tzinfo is not None

    result = RunResult.from_json(path)
    assert result.path_in(synthetic_results) == path
    assert result.training_curves["stage1"][0] == {
        "step": 0,
        "loss": 4.0,
        "loss_cos": 0.5,
        "lr": 1e-3,
    }
    again = result.to_json(tmp_path / "again.json")
    assert json.loads(again.read_text()) == data


def test_minimal_file_without_splits_loads(tmp_path: Path):
    data = _result().to_dict()
    del data["splits"]
    del data["throughputs"], data["report"]  # optional: a hand-written file may leave them out
    path = tmp_path / "hand-written.json"
    path.write_text(json.dumps(data))
    result = RunResult.from_json(path)
    assert list(result.splits) == ["test"]
    assert result.compatibility.cells_held == 5
    assert result.throughputs == [] and result.report == {}


def _sha8(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_paths_and_provenance(tmp_path: Path):
    assert _result().relative_path() == Path("toy-s-to-m/toy-shapes/xbt.json")
    path = _result(dataset="wds/cars").relative_path()  # unsafe: a slug plus a hash of the name
    assert path.parts[:2] == ("toy-s-to-m", f"wds_cars-{_sha8('wds/cars')}")
    assert git_revision(tmp_path) is None  # not a git checkout: no crash, no revision
    assert collect_versions()["faiss"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('["a list"]', "must hold a JSON object"),
        ('{"schema_version": 3, "pair": "p"}', "lacks the keys ['old', 'new'"),
        ('{"pair": "p", "method": "xbt"}', "has schema version 1, older than this xbt-bench's 3; "
         "regenerate it with `xbt-bench run --pair p --method xbt`"),
        ('{"kind": "sweep", "schema_version": 9}', "has schema version 9; this xbt-bench reads "
         "version 3: upgrade xbt-bench"),
        ('{"kind": "tea", "schema_version": 3}', "has unknown kind 'tea'"),
    ],
)
def test_malformed_file_is_named(tmp_path: Path, text: str, message: str):
    bad = tmp_path / "toy-s-to-m" / "toy-shapes" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_results(tmp_path)
    assert str(bad) in str(error.value)


def test_invalid_values_are_named(tmp_path: Path):
    data = _result().to_dict()
    del data["splits"]
    del data["metrics"]["method->old"]["rsum"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"r\.json is malformed at splits.*lacks \['rsum'\]"):
        RunResult.from_json(path)
    with pytest.raises(NotFoundError, match="does not exist"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(NotFoundError, match="no run results"):
        load_results(tmp_path)


def test_result_validation():
    without_method = SplitResult(metrics={"old->old": SYNTHETIC_OLD, "new->new": SYNTHETIC_NEW})
    with pytest.raises(ValidationError, match=r"lacks settings \['method->old'\]"):
        _result(splits={"test": without_method})
    with pytest.raises(ValidationError, match="needs not_applicable_reason"):
        _result(splits={"test": without_method}, applicable=False)
    with pytest.raises(ValidationError, match="ASCII '->'"):
        SplitResult(metrics={"method→old": SYNTHETIC_OLD})
    with pytest.raises(ValidationError, match="primary split 'test-hard'"):
        _result(split="test-hard")
    with pytest.raises(ValidationError, match="above diagonal"):
        ChainMatrix(models=["a", "b"], matrices={"rsum": [[1.0, 2.0], [3.0, 4.0]]})
    assert (
        _result(
            splits={"test": without_method}, applicable=False, not_applicable_reason="dims differ"
        ).compatibility
        is None
    )


def test_leaderboard_lists_every_method_with_marks(synthetic_results: Path, tmp_path: Path):
    boards = build_leaderboards(synthetic_results, tmp_path)
    names = sorted(p.name for p in boards.files)
    assert names == [
        "backfill.csv",
        "chains.csv",
        "leaderboard-indexes.csv",
        "leaderboard.csv",
        "leaderboard.md",
        "reported.csv",
    ]
    table = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(table["search"]) == {"exact"}  # index rows never mixed in
    pair = table[(table["pair"] == "toy-s-to-m") & (table["split"] == "test")]
    # references, then each deployment group ranked by rsum, not-applicable rows last
    assert pair["method"].tolist() == ["old", "new", "xbt", "procrustes", "slerp", "identity"]
    assert pair["row"].tolist() == ["reference"] + ["method"] * 5
    rows = pair.set_index("method")
    assert rows.loc["xbt", "group"] == "OLD retired" and rows.loc["xbt", "rank"] == 1
    assert rows.loc["procrustes", "rank"] == 2 and rows.loc["slerp", "rank"] == 1
    assert rows.loc["slerp", "group"] == "OLD kept at query time"
    assert rows.loc["slerp", "old_at_query"] and not rows.loc["xbt", "old_at_query"]
    assert rows.loc["old", "group"] == "reference"
    assert rows.loc["xbt", "cells_held"] == 5 and not rows.loc["xbt", "held_t2i_r1"]
    assert rows.loc["slerp", "cells_held"] == 6 and rows.loc["procrustes", "cells_held"] == 0
    assert rows.loc["xbt", "gain_share"] == round(XBT_GAIN_SHARE, 5)  # CSV: 5 decimals
    assert rows.loc["xbt", "trainable_params"] == 41_000
    assert not rows.loc["identity", "applicable"]
    assert rows.loc["old", "rsum"] == SYNTHETIC_OLD["rsum"]
    assert rows.loc["new", "setting"] == "new->new"  # from the `new` result, not duplicated
    hard = table[(table["pair"] == "toy-s-to-m") & (table["split"] == "test-hard")]
    assert hard.set_index("method").loc["old", "t2i_r1"] == pytest.approx(31.2 * 0.8)

    indexes = pd.read_csv(tmp_path / "leaderboard-indexes.csv")
    assert set(indexes["search"]) == {"ivf"}
    assert indexes[indexes["row"] == "method"]["method"].tolist() == ["xbt", "xbt"]
    chains = pd.read_csv(tmp_path / "chains.csv")
    assert chains["AC rsum"].tolist() == [0.66667]  # floats rounded to 5 decimals, as MTEB

    markdown = (tmp_path / "leaderboard.md").read_text()
    xbt_line = next(line for line in markdown.splitlines() if re.match(r"\| 1 +\| xbt ", line))
    assert "30.80 ✗" in xbt_line and "61.00 ✓" in xbt_line and "5/6" in xbt_line
    retired = markdown.index("**OLD retired: backfill-free")
    kept = markdown.index("**OLD kept at query time:")
    first = {m: re.search(rf"\| 1 +\| {m} ", markdown).start() for m in ("xbt", "slerp")}
    assert retired < first["xbt"] < kept < first["slerp"]
    assert "no method was tuned" in markdown
    assert "not applicable: embedding dims differ" in markdown
    exact_at = markdown.index("## toy-s-to-m · toy-shapes · split test\n")
    index_at = markdown.index("## Production indexes")
    reported_at = markdown.index("## Published numbers (reported, not re-run)")
    assert exact_at < index_at < reported_at
    assert "ricci2026spherical" in markdown[reported_at:]
    assert "jang2025xbt: Y. K. Jang" in markdown[reported_at:]


@pytest.mark.slow  # renders every plot
def test_plots_are_written_and_stale_ones_removed(synthetic_results: Path, tmp_path: Path):
    stale = tmp_path / "plots" / "recall-gone-pair-test.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    files = make_plots(synthetic_results, tmp_path)
    stems = {p.stem for p in files}
    assert {
        "recall-toy-s-to-m-toy-shapes-test",
        "recall-toy-s-to-m-toy-shapes-test-hard",
        "gain-vs-cost-toy-s-to-m-toy-shapes-test",
        "chain-toy-s-m-l-toy-shapes-test-xbt",
        "curves-toy-s-to-m-toy-shapes-xbt",
        "sweep-toy-s-to-m-toy-shapes-test",
    } <= stems
    assert len(files) == 2 * len(stems)
    for path in files:
        head = path.read_bytes()[:200]
        assert path.stat().st_size > 5_000, path
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head
    assert not stale.exists()


def test_plots_read_at_a_glance(synthetic_results: Path):
    from xbt_bench.report.leaderboard import leaderboard_frame
    from xbt_bench.report.plots import gain_vs_cost, recall_bars

    frame = leaderboard_frame(load_results(synthetic_results))
    test = frame[(frame["pair"] == "toy-s-to-m") & (frame["split"] == "test")]
    test = test[test["search"] == "exact"]
    ax = recall_bars(test, "test").axes[0]
    bars = {c.get_label(): c for c in ax.containers if hasattr(c, "errorbar")}
    xbt = bars["xbt (method→old)"]
    assert xbt.errorbar is not None  # whiskers: the 95% intervals (±2.5 in the synthetic data)
    low, high = xbt.errorbar.lines[2][0].get_segments()[3][:, 1]  # I2T R@1
    assert (low, high) == pytest.approx((44.2 - 2.5, 44.2 + 2.5))
    assert bars["slerp (method→old)"].errorbar is None  # no intervals recorded for slerp
    # one star: xbt's I2T R@1 is the only recall cell whose paired margin is above 0 at 95%
    assert [t.get_text() for t in ax.texts] == ["*"]

    gain = gain_vs_cost(test, "test").axes[0]
    labels = sorted(t.get_text() for t in gain.texts)
    assert labels == ["procrustes", "slerp", "xbt"]  # identity (not applicable) left out
    bottom, top = gain.get_ylim()  # zoomed: procrustes at -36% .. xbt at +15%, and 0
    assert -50 < bottom < -36 and 15 < top < 30


def test_summary_marks_each_cell(synthetic_results: Path):
    results = [r for r in load_results(synthetic_results) if r.pair == "toy-s-to-m"]
    console = Console(record=True, width=220, color_system="truecolor")
    print_summary(results, console)
    text = console.export_text(clear=False)
    assert text.count("toy-s-to-m · toy-shapes · split") == 2
    rows: dict[str, str] = {}  # first table (split test): method -> its line
    for line in text.splitlines():
        words = line.split()
        if line.startswith("  ") and words:
            rows.setdefault(words[1] if words[0].isdigit() else words[0], line)
    assert "30.80 ✗" in rows["xbt"] and "44.20 ✓" in rows["xbt"] and "5/6" in rows["xbt"]
    assert "6/6" in rows["slerp"] and "0/6" in rows["procrustes"]
    # ranked within deployment groups: OLD retired (xbt, procrustes), then OLD kept (slerp)
    assert text.index(" xbt ") < text.index(" procrustes ") < text.index(" slerp ")
    assert rows["slerp"].split()[0] == "1" and rows["procrustes"].split()[0] == "2"
    assert " yes " in rows["slerp"] and " no " in rows["xbt"]
    assert "identity: not applicable: embedding dims differ" in text
    styled = console.export_html(inline_styles=True)
    assert "color: #008000" in styled and "color: #800000" in styled  # green ✓, red ✗


@pytest.mark.slow  # renders every plot
def test_cli_commands(synthetic_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    args = ["--results-dir", str(synthetic_results), "--output-dir", str(tmp_path)]
    code, out, _ = run_cli(["leaderboard", *args], capsys)
    assert code == 0 and "6 results" in out  # run results; the index result joins them
    assert (tmp_path / "leaderboard.md").exists()
    code, out, _ = run_cli(["plot", *args], capsys)
    assert code == 0 and "wrote 26 plot files" in out
    code, _, err = run_cli(["publish", "--results-dir", str(tmp_path / "missing")], capsys)
    assert code == 1 and "results folder" in err and "Traceback" not in err


def test_leaderboard_reads_copied_results(synthetic_results: Path, tmp_path: Path):
    """Only result files matter: a copied folder gives the same table."""
    copy = shutil.copytree(synthetic_results, tmp_path / "copy")
    first = build_leaderboards(synthetic_results, tmp_path / "a").exact.drop(columns="file")
    second = build_leaderboards(copy, tmp_path / "b").exact.drop(columns="file")
    pd.testing.assert_frame_equal(first, second)


def test_every_command_writes_its_own_file_and_a_rerun_keeps_the_others(tmp_path: Path) -> None:
    from xbt_bench.results import SweepResult, load_result_set
    from xbt_bench.scoring import SweepPoint

    run = _result(seeds=[0, 1, 2], config={"lr": 1e-3})
    sweep = SweepResult(
        **{key: getattr(run, key) for key in ("pair", "old", "new", "method", "dataset")},
        split="test",
        seed=0,
        points=[SweepPoint(n_pairs=0, metrics=SYNTHETIC_OLD)],
        references={"old->old": SYNTHETIC_OLD, "new->new": SYNTHETIC_NEW},
        wall_time_s=3.0,
    )
    paths = [run.save(tmp_path), sweep.save(tmp_path)]
    assert [p.name for p in paths] == ["xbt.json", "xbt.sweep.json"]
    run.model_copy(update={"seeds": [0]}).save(tmp_path)  # a plain rerun of the method
    found = load_result_set(tmp_path)
    assert [r.seeds for r in found.runs] == [[0]]
    assert found.sweeps == [sweep]  # untouched: it lives in its own file
    assert json.loads(paths[1].read_text())["kind"] == "sweep"


def test_pair_diagnostics_join_the_leaderboard(synthetic_results: Path, tmp_path: Path) -> None:
    import shutil

    from xbt_bench.report.leaderboard import build_leaderboards
    from xbt_bench.results import DiagnosticsResult

    results = tmp_path / "results"
    shutil.copytree(synthetic_results, results)
    geometry = {"dim": 64, "matched_cosine": 0.3}
    DiagnosticsResult(
        pair="toy-s-to-m", old_ref="zoo:toy-s", new_ref="zoo:toy-m", dataset="toy-shapes",
        split="support", images=1000, captions=5000, fit_corpus="toy-shapes:text",
        old={**geometry, "modality_gap": 0.61}, new={**geometry, "modality_gap": 0.42},
        cka_texts=0.8, cka_images=0.7,
        procrustes={"fit_texts": 99, "r2_texts": 0.91, "r2_images": 0.52, "residual_texts": 0.1,
                    "residual_images": 0.5, "linear_r2_texts": 0.97},
        capability_gap={"t2i_r1": 12.5, "i2t_r1": 10.0, "rsum": 55.0, "rsum_percent": 14.2},
        retrieval={"old": SYNTHETIC_OLD, "new": SYNTHETIC_NEW},
    ).save(results)  # fmt: skip
    boards = build_leaderboards(results, tmp_path / "boards")
    row = boards.diagnostics.iloc[0]
    assert (row["pair"], row["rotation R² texts"], row["new−old rsum %"]) == (
        "toy-s-to-m",
        0.91,
        14.2,
    )
    assert "Pair diagnostics" in (tmp_path / "boards" / "leaderboard.md").read_text()
    assert (tmp_path / "boards" / "diagnostics.csv").exists()


def test_the_tuning_note_speaks_per_pair(synthetic_results: Path) -> None:
    """A pair that was tuned and one that was not: the note names the budget for the first and
    says the second runs defaults (one sentence for all pairs misled on the committed page)."""
    from xbt_bench.report.leaderboard import tuning_note
    from xbt_bench.results import RunResult

    folder = synthetic_results / "toy-s-to-m" / "toy-shapes"
    xbt = RunResult.from_json(folder / "xbt.json")
    tuned = xbt.model_copy(update={"tuned": {"budget": "10 trials"}})
    other = xbt.model_copy(update={"pair": "toy-m-to-l"})
    note = tuning_note([tuned, other])
    assert note.startswith("toy-m-to-l: no method was tuned")
    assert "toy-s-to-m: xbt were tuned on support with the same budget (10 trials)." in note
    assert tuning_note([tuned]).startswith("Tuning: xbt were tuned")
