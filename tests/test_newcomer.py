"""A newcomer's first hour (issue 25): the demo and every run outside `make results` write into a
folder of their own, --quick results are marked and kept apart (and refused by `cost`), long
steps print progress lines in a log, fit time leaves the cache filling out, doubtful throughputs
are flagged, and one-line warnings for fits on too few texts and for heavy de-duplication."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import torch
from support import run_cli

from xbt_bench.embed.cache import EmbedRecord, EmbedStats
from xbt_bench.embed.throughput import EmbeddingThroughput
from xbt_bench.errors import ConfigError
from xbt_bench.report import build_leaderboards
from xbt_bench.report.cost import full_result_set, throughput_doubts
from xbt_bench.results import RunResult, load_result_set

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _committed_copy(cwd: Path) -> dict[str, dict[str, str]]:
    """The repository's committed results/ and leaderboards/ copied into ``cwd``; their trees."""
    for name in ("results", "leaderboards"):
        shutil.copytree(ROOT / name, cwd / name)
    return {name: _tree(cwd / name) for name in ("results", "leaderboards")}


def _demo_commands() -> list[list[str]]:
    """The command lines of the Makefile's ``demo`` recipe, as xbt-bench arguments."""
    lines = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in lines.splitlines()[1:] if line.startswith("\t")]
    assert commands and all(c.startswith("$(BIN)/xbt-bench ") for c in commands), commands
    return [c.split()[1:] for c in commands]


@pytest.mark.slow
def test_the_demo_leaves_the_committed_results_alone(
    small_pair: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`make demo`'s own command lines (on a small pair, one method) write into out/ and leave
    a checkout's results/ and leaderboards/ byte for byte as committed."""
    before = _committed_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args in _demo_commands():
        if args[0] == "run":
            args = [a.replace("toy-s-to-m", small_pair) for a in args]
            args += ["--method", "procrustes"]  # closed form: seconds
        assert run_cli(args) == 0, capsys.readouterr().err
    assert {name: _tree(tmp_path / name) for name in before} == before
    assert list((tmp_path / "out" / "results" / small_pair).glob("*/procrustes.json"))
    assert (tmp_path / "out" / "leaderboards" / "index.html").is_file()
    assert "out/leaderboards/index.html" in capsys.readouterr().out  # the demo says where


@pytest.mark.slow
def test_a_quick_run_is_marked_and_kept_apart(
    small_pair: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`run --quick` with no folder named goes to out/quick/results (before: results/, over the
    committed files); its results are marked in the terminal, the Markdown leaderboard, the CSV
    and the page, and a folder holding quick and full results never ranks them together."""
    before = _committed_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = ["run", "--pair", small_pair, "--method", "procrustes"]
    assert run_cli([*run, "--quick"]) == 0
    out = capsys.readouterr().out
    assert "(quick)" in out and "QUICK runs" in out  # the terminal summary
    assert {name: _tree(tmp_path / name) for name in before} == before
    quick_dir = tmp_path / "out" / "quick" / "results"
    (path,) = quick_dir.glob(f"{small_pair}/*/procrustes.json")
    assert RunResult.from_json(path).quick

    assert run_cli(["publish", "--results-dir", str(quick_dir)]) == 0
    boards = tmp_path / "out" / "quick" / "leaderboards"
    markdown = (boards / "leaderboard.md").read_text()
    assert "procrustes (quick)" in markdown and "QUICK runs (not ranked with full runs)" in markdown
    assert pd.read_csv(boards / "leaderboard.csv")["quick"].any()
    page = (boards / "index.html").read_text()
    assert 'procrustes <span class="quick"' in page and "QUICK runs" in page

    # a full run into the same folder: two tables, quick never ranked with full
    full = ["run", "--pair", small_pair, "--method", "linear", "--results-dir", str(quick_dir)]
    assert run_cli(full) == 0
    table = build_leaderboards(quick_dir, tmp_path / "mixed").exact
    methods = table[table["row"] == "method"]
    assert set(methods[methods["runs"] == "quick"]["method"]) == {"procrustes"}
    assert set(methods[methods["runs"] == "full"]["method"]) == {"linear"}
    ranked = build_leaderboards(quick_dir, tmp_path / "ranked", rank_quick=True).exact
    together = ranked[(ranked["row"] == "method") & (ranked["split"] == "test")]
    assert set(together["runs"]) == {"full+quick"} and set(together["method"]) == {
        "procrustes",
        "linear",
    }


@pytest.mark.slow
def test_training_logged_to_a_file_prints_periodic_progress(small_pair: str, tmp_path: Path):
    """Training with its output going to a file (CI, nohup) prints plain progress lines at a
    steady interval (step, rate, ETA, loss), and the cache lines stay short."""
    log = tmp_path / "run.log"
    env = {**os.environ, "XBT_BENCH_PROGRESS_S": "0.2", "PYTHONPATH": str(ROOT)}
    args = ["run", "--pair", small_pair, "--method", "xbt-proj", "--results-dir",
            str(tmp_path / "results"), "--set", "proj_steps=400",
            "--set", "proj_batch=32"]  # fmt: skip
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "xbt_bench", *args], stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=900)  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    progress = re.findall(
        r"stage 1: ψ on text: (\d+)/400 steps \(\d+%\), [\d.e+]+ steps/s, ETA [\w ]+, loss [\d.]+",
        text,
    )
    assert len(progress) >= 2, text[-3000:]
    steps = [int(step) for step in progress]
    assert steps == sorted(steps) and steps[-1] < 400
    assert "stage 1: ψ on text: 400/400 steps (100%), done in" in text
    assert "\x1b[" not in text and "━" not in text  # no bar, no terminal codes in a log
    lines = text.splitlines()
    cache_lines = [line for line in lines if re.match(r"(reused|computed) embeddings: ", line)]
    assert cache_lines and all(len(line) < 120 for line in cache_lines), cache_lines
    assert "/embeddings/" not in text  # no hashed cache paths


def test_progress_lines_come_at_the_interval_when_not_a_terminal(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xbt_bench.train import TrainConfig, train

    monkeypatch.setenv("XBT_BENCH_PROGRESS_S", "0.05")
    module = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4)

    def loss(batch: torch.Tensor) -> torch.Tensor:
        time.sleep(0.004)
        return module(batch).pow(2).mean()

    started = time.monotonic()
    train(module, loss, lambda step: data, TrainConfig(steps=100, lr=1e-2), tmp_path, desc="fit")
    seconds = time.monotonic() - started
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if re.match(r"fit: \d+/100 steps \(\d+%\), \d", line)]
    # at least 0.4 s of steps, one line per 0.05 s at most: a steady interval, not every step
    assert 2 <= len(progress) <= seconds / 0.05 + 1, lines
    assert [line for line in progress if not re.search(r", [\d.,]+ steps/s, ETA \d", line)] == []
    assert all(", loss " in line for line in progress if int(line.split()[1][:-4]) >= 10)
    assert lines[-1].startswith("fit: 100/100 steps (100%), done in")


def test_fit_time_leaves_out_filling_the_cache(tmp_path: Path) -> None:
    from xbt_bench.methods.base import FitContext, FittedMethod, ModelHandle, measured

    stats = EmbedStats()
    ctx = FitContext(
        old=ModelHandle("zoo:toy-s"),  # never loaded
        new=ModelHandle("zoo:toy-m"),
        text_corpus=None,  # type: ignore[arg-type]
        train_pairs=None,  # type: ignore[arg-type]
        support=None,  # type: ignore[arg-type]
        work_dir=tmp_path,
        embed_stats=stats,
    )

    def fit() -> FittedMethod:
        stats.add(EmbedRecord("m", "corpus", "text", 100, True, 0.3, "x"))  # filled: 0.3 s
        stats.add(EmbedRecord("m", "corpus", "text", 100, False, 0.01, "y"))  # reused
        time.sleep(0.35)
        return FittedMethod("m", "old", 2, lambda d: d, lambda d: d)

    cost = measured(ctx, fit).cost
    assert cost.cache_fill_s == pytest.approx(0.3)
    assert 0.04 <= cost.fit_time_s < 0.3  # the sleep's 0.35 s less the 0.3 s of filling


def _with(results: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the ``results`` folder whose xbt result has ``changes``."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    path = copy / "toy-s-to-m" / "toy-shapes" / "xbt.json"
    RunResult.from_json(path).model_copy(update=changes).to_json(path)
    return copy


def test_cost_refuses_a_quick_xbt_unless_asked(
    synthetic_results: Path, tmp_path: Path, capsys
) -> None:
    folder = _with(synthetic_results, tmp_path, quick=True, config={"steps": 60, "quick": True})
    found = load_result_set(folder)
    with pytest.raises(ConfigError, match="60-step training .* --allow-quick"):
        full_result_set(found, "toy-s-to-m")
    assert full_result_set(found, "toy-s-to-m", allow_quick=True) is found
    args = ["cost", "--pair", "toy-s-to-m", "--gallery-size", "1000", "--results-dir", str(folder)]
    assert run_cli(args) == 1
    assert "--allow-quick" in capsys.readouterr().err
    assert run_cli([*args, "--allow-quick"]) == 0


def test_a_busy_or_far_throughput_is_flagged(synthetic_results: Path, tmp_path: Path) -> None:
    def rate(per_s: float, share: float | None) -> EmbeddingThroughput:
        return EmbeddingThroughput(model="new", side="image", rows=1000,
                                   device_seconds=1000 / per_s, device="cpu",
                                   other_cpu_share=share)  # fmt: skip

    results = load_result_set(synthetic_results).runs
    xbt = next(
        r for r in results
        if (r.pair, r.method) == ("toy-s-to-m", "xbt")
    )  # fmt: skip
    now = datetime.now(timezone.utc)
    newest = xbt.model_copy(update={"throughputs": [rate(175.0, 0.64)], "date": now})
    others = [
        r.model_copy(update={"throughputs": [rate(2245.0, 0.05)]})
        for r in results
        if r.pair == "toy-s-to-m" and r.method in ("slerp", "procrustes")
    ]
    doubts = throughput_doubts([newest, *others], "toy-s-to-m")
    assert set(doubts) == {"new_image_per_s"}
    note = doubts["new_image_per_s"]
    assert "other processes used 64% of the CPUs" in note
    assert "12.8x below the median of 2 other measurement(s) here (2,245 rows/s)" in note
    assert "xbt run of" in note  # which run the rate came from
    quiet = newest.model_copy(update={"throughputs": [rate(2100.0, 0.02)]})
    assert throughput_doubts([quiet, *others], "toy-s-to-m") == {}


def test_the_cache_manifest_records_how_busy_the_machine_was(tmp_path: Path) -> None:
    from xbt_bench.embed.cache import EmbeddingCache, EmbeddingKey, entry_timing

    cache = EmbeddingCache(tmp_path)
    key = EmbeddingKey(model="m@1", dataset="d", split="s", side="text", transform="t")
    rows = np.eye(4, dtype=np.float32)
    cache.get_or_compute(key, lambda: rows)
    timing = entry_timing(cache.entry_dir(key))
    assert timing is not None and 0.0 <= timing["other_cpu_share"] <= 1.0


def test_pairs_add_checks_toy_models_and_says_when_real_models_get_toy_data(
    tmp_path: Path, capsys
) -> None:
    base = ["pairs", "add", "--dir", str(tmp_path), "--description", "d"]
    assert run_cli([*base, "mine", "--old", "zoo:toy-s", "--new", "zoo:toy-xl"]) == 1
    err = capsys.readouterr().err
    assert "toy model 'toy-xl' not found" in err and "did you mean" in err
    assert not (tmp_path / "mine.toml").exists()

    assert run_cli([*base, "toys", "--old", "zoo:toy-s", "--new", "zoo:toy-l"]) == 0
    splits = tomllib.loads((tmp_path / "toys.toml").read_text())["splits"]
    assert splits == ["test", "test-hard"]  # as the built-in pairs
    assert "warning" not in capsys.readouterr().err

    real = [*base, "vits", "--old", "ViT-S-32:/w/s.safetensors", "--new", "ViT-B-32:openai"]
    assert run_cli(real) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy world's synthetic shapes" in err


def test_heavy_deduplication_and_too_few_texts_warn_in_one_line(capsys) -> None:
    from xbt_bench.data.base import TextCorpus
    from xbt_bench.linalg import warn_if_underdetermined

    corpus = TextCorpus.from_texts("captions.txt", [f"a {i % 70}" for i in range(240)])
    assert len(corpus.texts) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "170 of its 240 texts (71%) repeat another" in err
    TextCorpus.from_texts("few", ["a", "b", "a"] + [f"t{i}" for i in range(97)])  # 1% dropped
    assert capsys.readouterr().err == ""

    assert warn_if_underdetermined(70, 512, "text corpus 'captions.txt'")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "70 rows for 512 dimensions (n < d)" in err
    assert not warn_if_underdetermined(70, 512, "text corpus 'captions.txt'")  # once
    assert not warn_if_underdetermined(600, 512, "enough")


def test_quick_caps_the_text_corpus(small_pair: str) -> None:
    from rich.console import Console

    from xbt_bench.options import QUICK_CORPUS_TEXTS, RunOptions, load_pair_data
    from xbt_bench.pairs import load_pair

    spec = load_pair(small_pair)
    full = load_pair_data(spec, RunOptions(pair=small_pair), Console(quiet=True)).text_corpus
    quick = load_pair_data(spec, RunOptions(pair=small_pair, quick=True), Console(quiet=True))
    assert len(quick.text_corpus.texts) == min(len(full.texts), QUICK_CORPUS_TEXTS)
    big = full.head(10)
    assert list(big.texts) == list(full.texts[:10]) and big.fingerprint != full.fingerprint
    assert RunOptions(pair=small_pair, quick=True).output_dir == Path("out/quick/results")
    assert RunOptions(pair=small_pair).output_dir == Path("out/results")


def test_the_leaderboard_says_n_a_for_a_method_that_does_not_apply_and_ranks_by_rsum(
    synthetic_results: Path, tmp_path: Path
) -> None:
    from xbt_bench.report.leaderboard import display_frame

    boards = build_leaderboards(synthetic_results, tmp_path)
    group = boards.exact[(boards.exact["pair"] == "toy-s-to-m") & (boards.exact["split"] == "test")]
    identity = display_frame(group).set_index("method").loc["identity"]
    assert {identity["T2I R@1"], identity["held"], identity["gain share"]} == {"n/a"}
    assert identity["NFR T2I/I2T"] == "n/a"
    table = pd.read_csv(tmp_path / "leaderboard.csv")
    shown = table[table["applicable"]]
    assert (shown["main_score"] == shown["rsum"]).all()  # one main score: rsum, as MTEB's
    text = (tmp_path / "leaderboard.csv").read_text()
    decimals = [len(x) for x in re.findall(r"\d\.(\d+)(?=[,\n])", text)]
    assert decimals and max(decimals) <= 5  # rounded to 5 decimals, as MTEB's result files


def test_the_run_footnote_explains_what_the_terminal_shows(synthetic_results: Path) -> None:
    from rich.console import Console

    from xbt_bench.report.summary import print_summary, summary_legend
    from xbt_bench.scoring import SplitResult

    results = [r for r in load_result_set(synthetic_results).runs if r.pair == "toy-s-to-m"]
    small = [
        r.model_copy(update={"splits": {
            name: SplitResult(**split.model_dump(exclude={"compatibility", "seed_std"}) | {
                "images": 36})
            for name, split in r.splits.items()
        }})
        for r in results
    ]  # fmt: skip
    console = Console(record=True, width=200)
    print_summary(small, console)
    text = console.export_text()
    assert "split test · 36 images" in text
    legend = summary_legend(pd.DataFrame())
    for absent in ("NFR", "leaderboard.csv", "1,000"):
        assert absent not in text and absent not in legend, absent
    assert "R@1 margin is ±" in text  # the width of the intervals on these splits


def test_every_plot_gives_a_method_the_same_colour(synthetic_results: Path) -> None:
    from matplotlib.colors import to_rgba
    from matplotlib.container import BarContainer

    from xbt_bench.report.leaderboard import backfill_frame, leaderboard_frame
    from xbt_bench.report.plots import backfill_curves, method_colour, recall_bars

    found = load_result_set(synthetic_results)
    frame = leaderboard_frame(found.runs)
    group = frame[(frame["pair"] == "toy-s-to-m") & (frame["split"] == "test")]
    bars = recall_bars(group, "t")
    colours = {
        container.get_label().split(" ")[0]: container.patches[0].get_facecolor()
        for container in bars.axes[0].containers
        if isinstance(container, BarContainer)
    }
    curves = backfill_frame(found.backfills)
    lines = backfill_curves(curves[curves["split"] == "test"], "t")
    drawn = {h.get_label(): h.get_color() for h in lines.legends[0].legend_handles}
    for method in ("xbt", "slerp"):
        assert to_rgba(drawn[method]) == to_rgba(method_colour(method))
    assert colours and all(
        to_rgba(colour) == to_rgba(method_colour(m)) for m, colour in colours.items() if m != "new"
    )
    assert len({method_colour(m) for m in ("xbt", "slerp", "procrustes", "old", "linear")}) == 5
    # the backfill legend: one entry per method, two line styles and the two references
    assert len(lines.legends[0].legend_handles) == curves["method"].nunique() + 4
