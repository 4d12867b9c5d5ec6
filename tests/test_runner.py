"""``xbt-bench run`` end to end on quick toy models and small on-disk folder datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from xbt_bench.data.toy import ToyConfig, toy_split
from xbt_bench.methods import methods
from xbt_bench.report.result import RunResult

SMALL_WORLD = ToyConfig(
    seed=3, n_pretrain=10, n_text=300, n_pairs=120, n_support=60, n_test=80, n_test_hard=10
)
# Tiny training so every registered method runs in seconds.
TINY = {"proj_steps": 20, "proj_batch": 64, "steps": 4, "batch": 16, "pairs": 60}
KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")


def write_folder_dataset(folder: Path, split: str) -> None:
    """A toy split as a plain folder: PNG files plus ``{split}.csv`` of image,caption rows."""
    data = toy_split(split, SMALL_WORLD)
    (folder / split).mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image_index in range(data.n_images):
            name = f"{split}/{image_index:04d}.png"
            data.load_image(image_index).save(folder / name)
            for caption_index in np.flatnonzero(data.caption_image == image_index):
                writer.writerow([name, data.captions[caption_index]])


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> str:
    """A registered pair of quick toy models whose data are folder datasets and a text file."""
    root = tmp_path_factory.mktemp("small-world")
    for split in ("pairs", "support", "test"):
        write_folder_dataset(root / "shapes", split)
    captions = toy_split("text", SMALL_WORLD).captions
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    pairs_dir = root / "pairs"
    pairs_dir.mkdir()
    shapes = root / "shapes"
    (pairs_dir / "small-s-to-m.toml").write_text(
        f"""description = "quick toy-s to toy-m on a small folder dataset"
old = "zoo:toy-s"
new = "zoo:toy-m"
dataset = "folder:{shapes}"
splits = ["test"]

[data]
text = "{root / 'captions.txt'}"
pairs = "folder:{shapes}:pairs"
support = "folder:{shapes}:support"
"""
    )
    monkeypatch_module.setenv("XBT_BENCH_PAIRS", str(pairs_dir))
    monkeypatch_module.setenv("XBT_BENCH_ZOO_QUICK", "1")
    return "small-s-to-m"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def run_cli(args: list[str]) -> int:
    from xbt_bench.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def tiny_settings() -> list[str]:
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def test_every_registered_method_runs_and_is_scored(
    small_pair: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", small_pair, "--output-dir", str(out), *tiny_settings()])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    files = sorted(out.glob(f"{small_pair}/*/*.json"))
    assert {f.stem for f in files} == set(methods.names())
    results = {r.method: r for r in map(RunResult.from_json, files)}
    for path in files:
        raw = json.loads(path.read_text())
        for key in ("pair", "old", "new", "method", "dataset", "split", "metrics",
                    "compatibility", "cost", "config", "seed", "versions", "git_revision", "date"):
            assert key in raw, (path.name, key)
        assert set(raw["metrics"]["old->old"]) == set(KEYS)
    old_old = results["old"].metrics["old->old"]
    # every method is scored against the same OLD gallery reference
    assert all(r.metrics["old->old"] == old_old for r in results.values())
    assert 0 < old_old["rsum"] < 600
    for name in ("procrustes", "slerp", "xbt-proj", "xbt", "distill", "finetune"):
        assert set(results[name].metrics["method->old"]) == set(KEYS)
        assert results[name].compatibility.cells_total == 6
    assert not results["identity"].applicable  # toy-s and toy-m differ in dimension
    # OLD embeds the text corpus once for stage 1; stage 2 adds no OLD forward pass...
    stage1_old = results["xbt-proj"].cost.forward_passes["old_text"]
    assert stage1_old > 0
    assert results["xbt"].cost.forward_passes["old_text"] == stage1_old
    assert results["xbt"].cost.forward_passes["old_image"] == 0
    assert results["distill"].cost.forward_passes["old_image"] > 0  # ...distill's does
    assert 0 < results["xbt"].cost.trainable_share < results["finetune"].cost.trainable_share

    # a rerun reuses every cache and gives the same numbers
    code = run_cli(["run", "--pair", small_pair, "--output-dir", str(out),
                    "--method", "procrustes", "--method", "xbt", *tiny_settings()])
    captured = capsys.readouterr()
    assert code == 0
    assert "0 computed" in captured.out.replace("\n", " ")
    for name in ("procrustes", "xbt"):
        again = RunResult.from_json(out / small_pair / files[0].parent.name / f"{name}.json")
        assert again.metrics == results[name].metrics


def test_unknown_method_and_pair_fail_cleanly(small_pair: str, capsys) -> None:
    assert run_cli(["run", "--pair", small_pair, "--method", "xbtt"]) == 1
    assert "did you mean 'xbt'" in capsys.readouterr().err
    assert run_cli(["run", "--pair", "toy-s-to-n"]) == 1
    assert "did you mean 'toy-s-to-m'" in capsys.readouterr().err


def test_run_on_a_flickr_format_root_equals_clip_benchmark(
    small_pair: str, tmp_path: Path, capsys
) -> None:
    """``xbt-bench run --dataset flickr30k --data-root`` on toy images in Flickr30k's layout:
    old->old equals CLIP_benchmark's own evaluation of the same model on the same root."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    from xbt_bench.models.loading import load_model

    root = tmp_path / "flickr30k"
    root.mkdir()
    data = toy_split("test", SMALL_WORLD)
    rows = []
    for i in range(data.n_images):
        data.load_image(i).save(root / f"{i}.jpg", quality=95)
        rows += [f"{i}.jpg,{data.captions[j]}" for j in np.flatnonzero(data.caption_image == i)]
    (root / "flickr30k_test_karpathy.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", small_pair, "--dataset", "flickr30k", "--data-root",
                    str(tmp_path), "--method", "old", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    ours = RunResult.from_json(out / small_pair / "flickr30k" / "old.json").metrics["old->old"]

    old = load_model("zoo:toy-s")
    reference = build_dataset(
        "flickr30k", root=str(root), split="test", transform=old.preprocess,
        download=False, task="zeroshot_retrieval",
    )
    loader = torch.utils.data.DataLoader(
        reference, batch_size=16, collate_fn=image_captions_collate_fn
    )
    theirs = evaluate(old.model, loader, old.tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    for k in (1, 5, 10):
        assert ours[f"t2i_r{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"])
        assert ours[f"i2t_r{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"])
    assert 0 < ours["rsum"] < 600
