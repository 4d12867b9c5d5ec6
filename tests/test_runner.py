"""``xbt-bench run`` end to end on quick toy models and small on-disk datasets (folders, a
Flickr-format root, a webdataset)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xbt_bench.data.toy import ToyConfig, toy_split
from xbt_bench.methods import default_methods, methods
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
    assert {f.stem for f in files} == set(default_methods())
    assert set(methods.names()) - set(default_methods()) == {"xbt-gallery"}  # a variant
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

    # a variant runs when named; xbt-gallery reads OLD's cached gallery embeddings of the
    # training pairs: no OLD forward pass
    code = run_cli(["run", "--pair", small_pair, "--output-dir", str(out),
                    "--method", "xbt-gallery", *tiny_settings()])
    assert code == 0, capsys.readouterr().err
    gallery = RunResult.from_json(out / small_pair / files[0].parent.name / "xbt-gallery.json")
    assert gallery.cost.forward_passes["old_image"] == 0
    assert gallery.info["stage2"]["anchors"] == "gallery"
    assert gallery.config["lora_towers"] == "both"

    # a rerun reuses every cache and gives the same numbers
    code = run_cli(["run", "--pair", small_pair, "--output-dir", str(out),
                    "--method", "procrustes", "--method", "xbt", *tiny_settings()])
    captured = capsys.readouterr()
    assert code == 0
    assert "0 computed" in captured.out.replace("\n", " ")
    for name in ("procrustes", "xbt"):
        again = RunResult.from_json(out / small_pair / files[0].parent.name / f"{name}.json")
        assert again.metrics == results[name].metrics


def test_sweep_records_points_per_pair_count(small_pair: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--pair", small_pair, "--method", "xbt", "--pairs", "0,30",
            "--output-dir", str(out), *tiny_settings()]  # fmt: skip
    code = run_cli(args)
    assert code == 0, capsys.readouterr().err
    (path,) = out.glob(f"{small_pair}/*/xbt.json")
    result = RunResult.from_json(path)
    assert [p.n_pairs for p in result.sweep] == [0, 30, 60]
    assert all(set(p.metrics) == set(KEYS) for p in result.sweep)
    # 60 pairs is the full run: its point is the run's own method->old score
    assert result.sweep[-1].metrics == result.metrics["method->old"]
    # a plain rerun with the same settings keeps the recorded points; other settings drop them
    run = ["run", "--pair", small_pair, "--method", "xbt", "--output-dir", str(out)]
    assert run_cli([*run, *tiny_settings()]) == 0
    assert RunResult.from_json(path).sweep == result.sweep
    assert run_cli([*run, *tiny_settings(), "--set", "lora_rank=2"]) == 0
    assert RunResult.from_json(path).sweep == []
    assert run_cli(["sweep", "--pair", small_pair, "--method", "slerp"]) == 1
    assert "do not train on image-text pairs" in capsys.readouterr().err


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


def write_toy_wds(root: Path, split: str, n_images: int | None = None) -> Path:
    """A toy split (its first ``n_images``) as a webdataset in CLIP_benchmark's retrieval
    layout under ``root/wds_shapes``, lossless PNG images, 30 samples a shard."""
    import io

    from test_datasets import write_wds

    data = toy_split(split, SMALL_WORLD)
    samples = []
    for image_index in range(n_images or data.n_images):
        png = io.BytesIO()
        data.load_image(image_index).save(png, format="png")
        captions = [data.captions[c] for c in np.flatnonzero(data.caption_image == image_index)]
        samples.append({"png": png.getvalue(), "txt": "\n".join(captions)})
    write_wds(root / "wds_shapes", split, samples, maxcount=30)
    return root / "wds_shapes"


def test_run_on_a_webdataset_root(small_pair: str, tmp_path: Path, capsys) -> None:
    """``xbt-bench run --dataset wds/<name> --data-root``: old->old on the webdataset equals a
    direct evaluation of OLD's embeddings of the same toy images and captions."""
    from xbt_bench.embed import embed_images, embed_texts
    from xbt_bench.eval import evaluate_retrieval
    from xbt_bench.models.loading import load_model

    folder = write_toy_wds(tmp_path / "data", "test")
    assert (folder / "test" / "nshards.txt").read_text().strip() == "3"  # 80 samples, 30 a shard
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", small_pair, "--dataset", "wds/shapes", "--data-root",
                    str(tmp_path / "data"), "--output-dir", str(out), "--method", "old",
                    "--method", "new", "--method", "procrustes", *tiny_settings()])
    assert code == 0, capsys.readouterr().err
    files = {path.stem: path for path in (out / small_pair / "wds_shapes").glob("*.json")}
    assert set(files) == {"old", "new", "procrustes"}
    results = {name: RunResult.from_json(path) for name, path in files.items()}
    for result in results.values():
        assert (result.dataset, result.split) == ("wds/shapes", "test")
        assert result.metrics["old->old"] == results["old"].metrics["old->old"]
        for values in result.metrics.values():
            assert set(values) == set(KEYS)
            for side in ("t2i", "i2t"):
                recalls = [values[f"{side}_r{k}"] for k in (1, 5, 10)]
                assert 0 <= recalls[0] <= recalls[1] <= recalls[2] <= 100
    procrustes = results["procrustes"]
    assert set(procrustes.metrics) == {"old->old", "new->new", "method->old"}
    assert procrustes.compatibility.cells_total == 6

    data = toy_split("test", SMALL_WORLD)
    old = load_model("zoo:toy-s")
    images = embed_images(old, data, num_workers=0)
    texts = embed_texts(old, data.captions)
    direct = evaluate_retrieval(text_queries=texts, image_gallery=images, image_queries=images,
                                text_gallery=texts, caption_image=data.caption_image).metrics
    ours = results["old"].metrics["old->old"]
    assert ours == pytest.approx(direct)
    assert 0 < ours["rsum"] < 600


def test_run_on_a_broken_webdataset_is_one_line(small_pair: str, tmp_path: Path, capsys) -> None:
    from test_datasets import assert_one_line_error

    def run_wds(split: str = "test") -> tuple[int, str]:
        code = run_cli(["run", "--pair", small_pair, "--dataset", "wds/shapes", "--split", split,
                        "--data-root", str(tmp_path), "--method", "old"])
        return code, capsys.readouterr().err

    folder = write_toy_wds(tmp_path, "test", n_images=70)
    assert_one_line_error(*run_wds("val"), "wds/shapes", "val/nshards.txt not found",
                          "clip_benchmark_export_wds")
    (folder / "test" / "1.tar").unlink()
    assert_one_line_error(*run_wds(), "1 of 3 shards", "missing", "1.tar")
    (folder / "test" / "nshards.txt").write_text("three\n")
    assert_one_line_error(*run_wds(), "nshards.txt must hold the number of shards")
    shutil.rmtree(folder / "test")
    assert_one_line_error(*run_wds(), "test/nshards.txt not found")
