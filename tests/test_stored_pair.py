"""The toy pair's own embeddings, dumped and registered as a pair of stored embeddings, score as
the model pair does: every method that needs only embeddings, on every evaluation split."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_cli

from xbt_bench.data.embeddings import read_split
from xbt_bench.pairs import load_pair
from xbt_bench.results import RunResult

pytestmark = pytest.mark.slow  # embeds the whole toy world (the training pairs and the corpus)

METHODS = ("old", "new", "procrustes", "linear", "slerp")


def test_dumped_toy_embeddings_score_as_the_toy_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    dump = tmp_path / "toy-embeddings"
    code = run_cli(["embeddings", "dump", "--pair", "toy-s-to-m", "--output", str(dump)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (dump / "new").iterdir()) == [
        "pairs", "support", "test", "test-hard", "text"
    ]  # fmt: skip
    corpus = read_split(dump / "old" / "text")
    assert corpus.manifest.images == 0 and corpus.manifest.dim == 64
    assert read_split(dump / "new" / "test").manifest.timing["image"].seconds > 0
    pairs = tmp_path / "pairs"
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(pairs))
    code = run_cli(["pairs", "add", "toy-stored", "--from-embeddings", str(dump),
                    "--dir", str(pairs)])  # fmt: skip
    assert code == 0
    spec = load_pair("toy-stored")
    assert spec.splits == ["test", "test-hard"] and spec.data.text.endswith("old:text")
    results = {}
    for pair in ("toy-s-to-m", "toy-stored"):
        out = tmp_path / pair
        args = ["run", "--pair", pair, "--output-dir", str(out)]
        code = run_cli([*args, *(arg for m in METHODS for arg in ("--method", m))])
        assert code == 0, capsys.readouterr().err
        results[pair] = {p.stem: RunResult.from_json(p) for p in out.glob(f"{pair}/*/*.json")}
    for method in METHODS:
        model, stored = results["toy-s-to-m"][method], results["toy-stored"][method]
        assert stored.fingerprints == model.fingerprints  # same models, same data
        for split in ("test", "test-hard"):
            for setting, metrics in model.splits[split].metrics.items():
                assert stored.splits[split].metrics[setting] == pytest.approx(metrics, abs=0.01), (
                    method, split, setting,
                )  # fmt: skip
    assert results["toy-stored"]["slerp"].report == results["toy-s-to-m"]["slerp"].report
