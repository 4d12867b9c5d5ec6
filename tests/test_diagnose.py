"""``xbt-bench pairs diagnose`` on the toy pair and on a pair of real-format checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import run_cli

from xbt_bench.pairs import load_pair, pair_registry

FIELDS = {
    "pair", "old_ref", "new_ref", "dataset", "split", "images", "captions", "fit_corpus",
    "fingerprints", "date", "cka_texts", "cka_images", "procrustes", "capability_gap",
    "retrieval",
}  # fmt: skip


def _check(report: dict, tmp_path: Path) -> None:
    assert FIELDS | {"old", "new"} <= set(report)
    for which in ("old", "new"):
        assert 0 < report[which]["modality_gap"] < 2
        assert -1 <= report[which]["matched_cosine"] <= 1
    assert 0 <= report["cka_texts"] <= 1 and 0 <= report["cka_images"] <= 1
    fit = report["procrustes"]
    assert fit["r2_texts"] <= fit["linear_r2_texts"] + 1e-6  # a rotation is a linear map
    gap = report["capability_gap"]
    retrieval = report["retrieval"]
    assert gap["rsum"] == pytest.approx(retrieval["new"]["rsum"] - retrieval["old"]["rsum"])


@pytest.mark.slow
def test_diagnose_the_toy_pair_writes_json_beside_the_results(
    small_pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["pairs", "diagnose", small_pair, "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rotation R² texts" in out and "CKA images" in out
    (path,) = tmp_path.glob(f"{small_pair}/*/diagnostics/test.json")
    report = json.loads(path.read_text())
    assert (report["kind"], report["schema_version"]) == ("diagnostics", 3)
    _check(report, tmp_path)
    assert report["old_ref"] == "zoo:toy-s" and report["images"] == 80


@pytest.mark.slow
def test_diagnose_a_pair_of_local_checkpoint_files(
    small_pair: str,
    tiny_model_name: str,
    tiny_weights: dict[str, Path],
    tiny_weights_seed1: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real-model references (``NAME:/path/to/weights``) on the small folder dataset."""
    from xbt_bench.diagnose import diagnose_pair

    text = pair_registry().get(small_pair).read_text()
    text = text.replace('old = "zoo:toy-s"', f'old = "{tiny_model_name}:{tiny_weights["pt"]}"')
    text = text.replace('new = "zoo:toy-m"', f'new = "{tiny_model_name}:{tiny_weights_seed1}"')
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "tiny-files.toml").write_text(text)
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(folder))
    report = diagnose_pair(load_pair("tiny-files")).to_dict()
    _check(report, tmp_path)
    assert report["old_ref"].endswith("tiny.pt") and report["fingerprints"]["old"].startswith(
        f"{tiny_model_name}@"
    )
