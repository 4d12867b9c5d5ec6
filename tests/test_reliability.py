"""Nothing silently wrong (issue 16): each defect a careful user found in v0.1, reproduced, with
the behaviour it has now. Damaged caches are recomputed and never turn into numbers; results
that do not belong together are refused; bad input is one line with the fix, no traceback."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from support import run_cli, tiny_settings, write_folder_dataset

from xbt_bench.data.base import ImageTextSet
from xbt_bench.embed import EmbeddingCache, embed_split, split_key
from xbt_bench.errors import ConfigError
from xbt_bench.models.loading import LoadedModel, load_model
from xbt_bench.results import RunResult, load_results
from xbt_bench.train import TrainConfig, train


def random_set(n_images: int = 8) -> ImageTextSet:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n_images, 20, 20, 3), dtype=np.uint8)
    return ImageTextSet(
        name="random",
        split="rows",
        n_images=n_images,
        load_image=lambda i: Image.fromarray(pixels[i]),
        captions=[f"caption number {i}" for i in range(n_images)],
        caption_image=np.arange(n_images),
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_name: str, tiny_weights: dict[str, Path]) -> LoadedModel:
    return load_model(f"{tiny_model_name}:{tiny_weights['safetensors']}")


def _shard(cache: EmbeddingCache, key) -> Path:  # noqa: ANN001
    manifest = cache.manifest(key)
    return cache.entry_dir(key) / manifest["shards"][0]["path"]


@pytest.mark.parametrize("damage", ["random floats", "nan", "truncated"])
def test_a_damaged_embedding_shard_is_recomputed_not_used(
    tiny: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Defects 1–2: random floats (or NaNs, or a cut file) in a cached shard."""
    data = random_set()
    cache = EmbeddingCache(tmp_path / "emb")
    good = np.array(embed_split(tiny, data, "image", cache=cache, num_workers=0))
    key = split_key(tiny, data, "image")
    shard = _shard(cache, key)
    rows = np.load(shard)
    if damage == "random floats":  # same shape and dtype: only the checksum can tell
        rows = np.random.default_rng(1).normal(size=rows.shape).astype(rows.dtype)
        np.save(shard, rows)
    elif damage == "nan":
        rows[2] = np.nan
        np.save(shard, rows)
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    fresh = EmbeddingCache(tmp_path / "emb")  # another process reading the same cache
    again = np.array(embed_split(tiny, data, "image", cache=fresh, num_workers=0))
    np.testing.assert_array_equal(again, good)
    err = capsys.readouterr().err.replace("\n", "")
    assert "failed verification" in err and str(fresh.entry_dir(key)) in err
    assert "recomputing" in err
    assert fresh.contains(key)  # the recomputed entry passes


@pytest.mark.slow
def test_a_run_over_a_random_floats_shard_writes_the_right_metrics(
    small_pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 1 end to end: new→new rsum is the same after a cached shard was overwritten."""
    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--method", "new", "--output-dir", str(out)]
    assert run_cli(args) == 0
    (path,) = out.glob(f"{small_pair}/*/new.json")
    before = RunResult.from_json(path).metrics["new->new"]
    cache = EmbeddingCache()
    for manifest in cache.root.glob("*/manifest.json"):
        entry = json.loads(manifest.read_text())
        if entry["key"]["side"] == "image" and entry["key"]["model"].startswith("toy-m@"):
            shard = manifest.parent / entry["shards"][0]["path"]
            rows = np.load(shard)
            np.save(shard, np.random.default_rng(0).normal(size=rows.shape).astype(rows.dtype))
    capsys.readouterr()
    assert run_cli(args) == 0
    assert "failed verification" in capsys.readouterr().err
    assert RunResult.from_json(path).metrics["new->new"] == before


def test_the_leaderboard_refuses_results_that_do_not_belong_together(
    synthetic_results: Path, tmp_path: Path
) -> None:
    """Defect 3: a copied result, beside the first or in another pair's folder."""
    from xbt_bench.report.leaderboard import build_leaderboards

    results = tmp_path / "results"
    shutil.copytree(synthetic_results, results)
    xbt = results / "toy-s-to-m" / "toy-shapes" / "xbt.json"
    copy = results / "toy-m-to-l" / "toy-shapes" / "xbt.json"
    copy.parent.mkdir(parents=True)
    shutil.copy(xbt, copy)
    with pytest.raises(ConfigError, match="are both 'xbt' on toy-s-to-m") as info:
        build_leaderboards(results, tmp_path / "boards")
    assert str(xbt) in str(info.value) and str(copy) in str(info.value)
    copy.unlink()
    # another reference: the same method's old->old scored on something else
    data = json.loads(xbt.read_text())
    data["method"] = "xbt-other"
    for key in ("t2i_r1", "rsum"):  # a consistent file, only scored on something else
        data["splits"]["test"]["metrics"]["old->old"][key] += 1.0
    other = xbt.with_name("xbt-other.json")
    other.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="different references") as info:
        load_results(results)
    assert "old->old" in str(info.value) and str(other) in str(info.value)
    other.unlink()
    assert build_leaderboards(results, tmp_path / "boards").results  # the clean folder builds


def test_folder_datasets_with_similar_paths_get_their_own_files() -> None:
    """Defect 4: ``folder:/data/a/b`` and ``folder:/data/a_b``."""
    from xbt_bench.results import path_component

    first, second = path_component("folder:/data/a/b"), path_component("folder:/data/a_b")
    assert first != second
    assert first.startswith("folder_data_a_b-") and second.startswith("folder_data_a_b-")
    assert path_component("toy-shapes") == "toy-shapes"  # safe names stay as they are


def _regression(rows: int = 16):  # noqa: ANN202
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    x, y = torch.randn(rows, 4), torch.randn(rows, 1)

    def loss_fn(batch):  # noqa: ANN001, ANN202
        return ((module(batch[0]) - batch[1]) ** 2).mean()

    return module, loss_fn, lambda step: (x, y)


def test_a_corrupt_checkpoint_is_named_set_aside_and_training_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 5: a truncated ``last.pt``; checkpoints load with ``weights_only=True``."""
    config = TrainConfig(steps=8, lr=0.05, checkpoint_every=2, log_every=1)
    module, loss_fn, batch_at = _regression()
    train(module, loss_fn, batch_at, config, tmp_path / "straight")
    straight = module.weight.detach().clone()

    def interrupted(step: int):  # noqa: ANN202
        if step == 5:
            raise KeyboardInterrupt
        return batch_at(step)

    module, loss_fn, batch_at = _regression()
    with pytest.raises(KeyboardInterrupt):
        train(module, loss_fn, interrupted, config, tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    torch.load(last, weights_only=True)  # plain tensors and values only
    last.write_bytes(last.read_bytes()[:200])
    module, loss_fn, batch_at = _regression()
    log = train(module, loss_fn, batch_at, config, tmp_path / "run")
    err = capsys.readouterr().err.replace("\n", "")
    assert str(last) in err and "moved it to last.pt.corrupt-" in err
    assert log.resumed_from_step == 2  # previous.pt, the checkpoint before the damaged one
    assert torch.equal(module.weight, straight)  # and the same final weights
    assert list((tmp_path / "run").glob("last.pt.corrupt-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--pair", "toy-s-to-m", "--split", "tset"], "did you mean 'test'"),
        (["datasets", "check", "toy-shapes", "--split", "tset"], "did you mean 'test'"),
        (["embed", "zoo:toy-s", "--split", "tset"], "did you mean 'test'"),
        (["run", "--pair", "toy-s-to-m", "--device", "foo"], "'foo' is not a torch device"),
        (["run", "--pair", "toy-s-to-m", "--workers", "-3"], "Invalid value for '--workers'"),
        (["run", "--pair", "toy-s-to-m", "--set", "lora_rnk=8"], "did you mean 'lora_rank'"),
        (["run", "--pair", "toy-s-to-m", "--method", "xbtt"], "did you mean 'xbt'"),
        (["run", "--pair", "toy-s-to-m", "--set", "lr=inf"], "Input should be a finite number"),
    ],
)
def test_bad_input_is_one_line_without_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defects 6, 8 and 9: each fails at once, before any work, in one line with the fix."""
    assert run_cli(args) != 0
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err


def test_cuda_on_a_machine_without_it_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_cli(["run", "--pair", "toy-s-to-m", "--device", "cuda"]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "CUDA is not available" in err and "--device cpu" in err


def test_an_output_dir_that_is_a_file_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xbt_bench import runner

    monkeypatch.setattr(runner, "Runner", lambda *a, **k: pytest.fail("work started"))
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert run_cli(["run", "--pair", "toy-s-to-m", "--output-dir", str(target)]) == 1
    assert "is a file; give a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_an_invalid_setting_fails_before_the_first_method_writes(
    small_pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 8: every selected method's settings are checked before any work."""
    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--method", "procrustes", "--method", "xbt",
            "--set", "lora_rank=0", "--output-dir", str(out)]  # fmt: skip
    assert run_cli(args) == 1
    assert "lora_rank=0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_datasets_check_decodes_every_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Defect 7: a 0-byte or truncated image."""
    folder = tmp_path / "shapes"
    write_folder_dataset(folder, "test")
    assert run_cli(["datasets", "check", f"folder:{folder}", "--split", "test"]) == 0
    capsys.readouterr()
    image = folder / "test" / "0007.png"
    image.write_bytes(b"" if damage == "empty" else image.read_bytes()[:150])
    assert run_cli(["datasets", "check", f"folder:{folder}", "--split", "test"]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "1 of 80 images cannot be decoded; the first is image 7" in err
    assert "Traceback" not in err


def test_a_user_pair_named_like_a_built_in_one_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xbt_bench.pairs import pair_registry, shadowed_pairs

    builtin = pair_registry().get("toy-s-to-m")
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "toy-s-to-m.toml").write_text(builtin.read_text())
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(folder))
    assert shadowed_pairs("toy-s-to-m") == [builtin]
    assert run_cli(["pairs", "list"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert f"{folder / 'toy-s-to-m.toml'} replaces {builtin}" in out


def test_cache_prune_removes_what_a_killed_extraction_left(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path))
    data = random_set()
    cache = EmbeddingCache()
    key = split_key(tiny, data, "text")
    writer = cache.writer(key)
    writer.write(0, np.ones((4, 16), dtype=np.float32) / 4)  # killed before its commit
    stray = tmp_path / "runs" / ".last.pt.abc.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x" * 1000)
    assert run_cli(["cache", "prune", "--older-than", "0"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "2 leftover(s)" in out and "freed" in out
    assert not writer.folder.exists() and not stray.exists()


@pytest.mark.slow
def test_a_rerun_replaces_a_corrupt_result_without_reading_it(
    small_pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--method", "old", "--output-dir", str(out)]
    assert run_cli(args) == 0
    (path,) = out.glob(f"{small_pair}/*/old.json")
    path.write_text("{ not json")
    capsys.readouterr()
    assert run_cli(args) == 0  # each command writes its own file; it never reads it back
    assert RunResult.from_json(path).method == "old"


def test_ctrl_c_exits_130_with_a_resume_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xbt_bench import runner

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert run_cli(["run", "--pair", "toy-s-to-m"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_a_caption_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    from xbt_bench.data.registry import load_text_corpus
    from xbt_bench.errors import XbtError

    path = tmp_path / "captions.txt"
    path.write_bytes(b"a red circle\na blue square\nna\xefve caf\xe9\n")
    with pytest.raises(XbtError, match=r"captions.txt line 3 is not UTF-8"):
        load_text_corpus(str(path))


@pytest.mark.slow  # scores a whole split end to end
def test_scoring_the_text_corpus_split_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xbt_bench.options import RunOptions, load_pair_data
    from xbt_bench.pairs import load_pair

    spec = load_pair("toy-s-to-m")
    load_pair_data(spec, RunOptions(pair=spec.name, splits=["text"]), Console(width=200))
    out = capsys.readouterr().out.replace("\n", " ")
    assert "split 'text' is pair 'toy-s-to-m''s stage-1 text corpus" in out


def test_damaged_toy_data_is_generated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Toy splits and images are cache entries too: verified when read."""
    from xbt_bench.toy import world as toy

    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path))
    config = toy.ToyConfig(n_pretrain=8, n_text=8, n_pairs=8, n_support=8, n_test=8,
                           n_test_hard=8, seed=11)  # fmt: skip
    images = np.array(toy.toy_images("test", config))
    captions = toy.toy_split("test", config).captions
    npy = next(tmp_path.rglob("test.npy"))
    raw = bytearray(npy.read_bytes())
    raw[-10:] = bytes(10)  # a few pixels overwritten
    npy.write_bytes(bytes(raw))
    split_file = next(tmp_path.rglob("test.json"))
    split_file.write_text(split_file.read_text().replace("a ", "the ", 1))
    toy.toy_images.cache_clear()
    toy._split_data.cache_clear()
    assert np.array_equal(np.array(toy.toy_images("test", config)), images)
    assert toy.toy_split("test", config).captions == captions
    err = capsys.readouterr().err.replace("\n", " ")
    assert "fail their checksum" in err and "fails its checksum" in err


# --- Issue 24: nothing stale, nothing injected ------------------------------------------------
# Each test below reproduces one defect of the second probe and pins the behaviour it has now.


def test_file_hashes_read_each_unchanged_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 1, the index: a rerun reads no unchanged file; a changed one is read again."""
    from xbt_bench import fingerprints

    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path / "home"))
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
        os.utime(path, (1_600_000_000, 1_600_000_000))  # not written just now
    reads = []
    real = fingerprints.sha256_of
    monkeypatch.setattr(fingerprints, "sha256_of", lambda p: reads.append(p) or real(p))
    first = fingerprints.file_hashes(files)
    assert len(reads) == 3 and len(set(first)) == 3
    assert fingerprints.file_hashes(files) == first and len(reads) == 3
    files[1].write_bytes(bytes([9]) * 100)  # same size, other content
    os.utime(files[1], (1_600_000_100, 1_600_000_100))
    again = fingerprints.file_hashes(files)
    assert len(reads) == 4 and again[1] != first[1] and again[::2] == first[::2]


def _marked_pairs(tmp_path: Path, description: str) -> Path:
    from xbt_bench.pairs import pair_registry

    folder = tmp_path / "pairs"
    folder.mkdir()
    text = pair_registry().get("toy-s-to-m").read_text()
    text = text.replace(text.splitlines()[0], f"description = {json.dumps(description)}")
    (folder / "marked.toml").write_text(text)
    return folder


def test_rich_markup_in_user_strings_is_printed_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6, rich markup: `[/red]` in a name, `[/bold]` in a description."""
    description = "[/bold]x[bold]y"
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(_marked_pairs(tmp_path, description)))
    assert run_cli(["pairs", "list"]) == 0
    out = capsys.readouterr().out
    assert description in out and "toy-s-to-m" in out
    assert run_cli(["pairs", "show", "[/red]"]) == 1
    err = capsys.readouterr().err
    assert "pair '[/red]' not found" in err and "Traceback" not in err
    assert run_cli(["run", "--pair", "[bold]x"]) == 1
    assert "pair '[bold]x' not found" in capsys.readouterr().err


def test_a_description_with_a_line_break_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: a newline in --description wrote a TOML table header into the pair file."""
    description = "one\n[methods.xbt]\nlora_rank = 4"
    args = ["pairs", "add", "mine", "--old", "zoo:toy-s", "--new", "zoo:toy-m",
            "--description", description, "--dir", str(tmp_path)]  # fmt: skip
    assert run_cli(args) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert "holds a line break" in err and "one line" in err
    assert not (tmp_path / "mine.toml").exists()


def test_csv_cells_that_start_a_formula_are_neutralised(
    synthetic_results: Path, tmp_path: Path
) -> None:
    """Defect 6: CSV cells starting with = + - @ (text only; negative numbers stay numbers)."""
    import csv

    from xbt_bench.report.leaderboard import build_leaderboards

    results = tmp_path / "results"
    shutil.copytree(synthetic_results, results)
    path = results / "toy-s-to-m" / "toy-shapes" / "procrustes.json"
    data = json.loads(path.read_text())
    data["method"] = "=HYPERLINK(\"http://x\")"
    data["cost"]["device"] = "@SUM(A1)"
    path.write_text(json.dumps(data))
    build_leaderboards(results, tmp_path / "boards")
    with open(tmp_path / "boards" / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (row,) = [r for r in rows if "HYPERLINK" in r["method"] and r["split"] == "test"]
    assert row["method"] == "'=HYPERLINK(\"http://x\")" and row["device"] == "'@SUM(A1)"
    assert float(row["gain_share"]) < 0  # procrustes is below old->old: a negative number
    assert not row["gain_share"].startswith("'")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"t2i_r1": 1e6}, "t2i_r1=1e+06 is not a recall in [0, 100]"),
        ({"rsum": -5.0}, "rsum=-5 is not in [0, 600]"),
        ({"i2t_r10": 10.0, "rsum": 293.1}, "i2t R@1, R@5, R@10 = 44.2, 74, 10 do not grow"),
        ({"rsum": 300.0}, "is not the sum of its six recalls"),
    ],
)
def test_results_with_impossible_numbers_are_refused(
    synthetic_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    edit: dict[str, float], message: str,
) -> None:  # fmt: skip
    """Defect 6: recalls of 1e6 % and a negative rsum were ranked."""
    results = tmp_path / "results"
    shutil.copytree(synthetic_results, results)
    path = results / "toy-s-to-m" / "toy-shapes" / "xbt.json"
    data = json.loads(path.read_text())
    data["splits"]["test"]["metrics"]["method->old"].update(edit)
    path.write_text(json.dumps(data))
    args = ["leaderboard", "--results-dir", str(results), "--output-dir", str(tmp_path / "b")]
    assert run_cli(args) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert str(path) in err and message in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_seed_metrics_must_match_the_seeds(synthetic_results: Path, tmp_path: Path) -> None:
    """Defect 6: counts are consistent (one method->old per recorded seed)."""
    path = tmp_path / "xbt.json"
    data = json.loads((synthetic_results / "toy-s-to-m" / "toy-shapes" / "xbt.json").read_text())
    data["seeds"] = [0, 1, 2]
    data["splits"]["test"]["seed_metrics"] = [data["splits"]["test"]["metrics"]["method->old"]]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="has 1 seed_metrics for 3 seeds"):
        RunResult.from_json(path)


def test_sigterm_exits_143_with_the_resume_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: SIGTERM is handled like Ctrl-C."""
    import signal
    import time

    from xbt_bench import runner

    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this at once
        pytest.fail("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(runner, "run", terminated)
    assert run_cli(["run", "--pair", "toy-s-to-m"]) == 143
    err = capsys.readouterr().err
    assert "terminated (SIGTERM); rerun the same command to resume" in err
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whoever called main()


def test_an_interrupted_publish_leaves_the_previous_page_set(
    synthetic_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 6: a killed publish left .tmp files and a new CSV next to an old index.html."""
    publishing = importlib.import_module("xbt_bench.report.publish")
    no_plots = lambda results, folder, rank_quick=False: []  # noqa: E731  (fast)
    monkeypatch.setattr(publishing, "plot_results", no_plots)
    results = tmp_path / "results"
    shutil.copytree(synthetic_results, results)
    site = tmp_path / "site"
    publishing.publish(results, site)
    (site / "notes.txt").write_text("my own file")
    before = {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()}
    (results / "toy-s-to-m" / "toy-shapes" / "procrustes.json").unlink()  # a new table

    def killed(*args: object) -> str:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(publishing, "page", killed)
        with pytest.raises(KeyboardInterrupt):
            publishing.publish(results, site)
    assert {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()} == before
    # what a SIGKILL leaves: a staging folder of a dead process, temporary files of old writes
    (tmp_path / ".site.staged-999999999-dead").mkdir()
    (site / ".index.html.x1.tmp").write_text("half")
    publishing.publish(results, site)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "site"]
    assert not [p for p in site.rglob("*") if p.name.endswith(".tmp")]
    assert (site / "notes.txt").read_text() == "my own file"
    assert "procrustes" not in (site / "leaderboard.csv").read_text()
    assert (site / "index.html").read_bytes() != before["index.html"]


def test_a_full_disk_is_one_line_naming_the_file_and_the_bytes(
    synthetic_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Defect 6: a full disk ended in an OSError traceback."""
    import errno
    import io
    import re
    from typing import Any

    class FullDisk(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "boards"
    real_open = Path.open

    def full(self: Path, mode: str = "r", buffering: int = -1, **kwargs: Any):  # noqa: ANN202
        if str(self).startswith(str(out)) and "w" in mode:  # every write fails with ENOSPC
            disk = FullDisk()
            return disk if "b" in mode else io.TextIOWrapper(disk, write_through=True)
        return real_open(self, mode, buffering, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    args = ["leaderboard", "--results-dir", str(synthetic_results), "--output-dir", str(out)]
    assert run_cli(args) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"cannot write {out / 'leaderboard.csv'}: no space left on the device" in err
    assert re.search(r"\(\d[\d,]* bytes needed, [\d,]+ free\)", err)
    assert "Traceback" not in err
    assert list(out.iterdir()) == []  # nothing half-written, no temporary file


def test_a_read_only_home_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: a read-only home ended in an OSError traceback."""
    import errno

    home = tmp_path / "home"
    monkeypatch.setenv("XBT_BENCH_HOME", str(home))
    real_mkdir = os.mkdir

    def read_only(path: object, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(home)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    args = ["pairs", "add", "mine", "--old", "zoo:toy-s", "--new", "zoo:toy-m",
            "--description", "mine"]  # fmt: skip
    assert run_cli(args) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"cannot write {home / 'pairs'}: the file system is read-only" in err
    assert "XBT_BENCH_HOME" in err and "Traceback" not in err


def test_annotation_rows_must_stay_inside_the_dataset_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: rows naming /etc/passwd or ../ were read."""
    # what --allow-outside-root sets; "0" here so that the test's end removes it again
    monkeypatch.setenv("XBT_BENCH_ALLOW_OUTSIDE_ROOT", "0")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "outside.png")
    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("RGB", (8, 8), "blue").save(folder / "inside.png")
    for row in ("../outside.png", "/etc/passwd"):
        (folder / "test.csv").write_text(f"image,caption\ninside.png,a\n{row},b\n")
        assert run_cli(["datasets", "check", f"folder:{folder}", "--split", "test"]) == 1
        err = capsys.readouterr().err.replace("\n", " ")
        assert f"names 1 image(s) outside the dataset folder {folder} (first: '{row}')" in err
    (folder / "test.csv").write_text("image,caption\ninside.png,a\n../outside.png,b\n")
    args = ["--allow-outside-root", "datasets", "check", f"folder:{folder}", "--split", "test"]
    assert run_cli(args) == 0
    assert "images: 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "is not a regular file"),
        ("new_image_per_s = inf\n", "new_image_per_s: Input should be a finite number"),
    ],
)
def test_hardware_must_be_a_finite_regular_file(
    synthetic_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    content: str | None, message: str,
) -> None:  # fmt: skip
    """Defect 6: --hardware accepted inf, and a folder gave a traceback."""
    hardware = tmp_path / "hardware.toml"
    hardware.mkdir() if content is None else hardware.write_text(content)
    args = ["cost", "--pair", "toy-s-to-m", "--gallery-size", "1000", "--hardware",
            str(hardware), "--results-dir", str(synthetic_results)]  # fmt: skip
    assert run_cli(args) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert message in err and str(hardware) in err and "Traceback" not in err


def test_long_names_and_broken_entries_in_a_pairs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect 6: a 300-character name, a link loop, a folder named x.toml or a bad file broke
    `pairs list` with a traceback; each is now skipped with one line."""
    folder = _marked_pairs(tmp_path, "fine")
    (folder / "x.toml").mkdir()
    (folder / "loop.toml").symlink_to(folder / "loop.toml")
    (folder / "bad.toml").write_text("description = ")
    (folder / f"{'a' * 150}.toml").write_text((folder / "marked.toml").read_text())
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(folder))
    assert run_cli(["pairs", "list"]) == 0
    captured = capsys.readouterr()
    assert "marked" in captured.out and "toy-s-to-m" in captured.out
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 4, captured.err
    for name in ("x.toml", "loop.toml", "bad.toml", "is 150 characters long"):
        assert sum(name in line for line in skipped) == 1, name
    args = ["pairs", "add", "b" * 300, "--old", "zoo:toy-s", "--new", "zoo:toy-m",
            "--description", "long", "--dir", str(tmp_path)]  # fmt: skip
    assert run_cli(args) == 1
    err = capsys.readouterr().err
    assert "is 300 characters long; use at most 100" in err and "Traceback" not in err


def test_written_files_get_the_umask_permissions(synthetic_results: Path, tmp_path: Path) -> None:
    """Defect 6: every result, page and cache file was created 0600 (mkstemp then rename)."""
    import stat

    from xbt_bench.atomic import write_npy
    from xbt_bench.report.leaderboard import build_leaderboards

    mask = os.umask(0o022)  # the process's umask (set back at once)
    os.umask(mask)
    if mask & 0o077 == 0o077:
        pytest.skip(f"umask {mask:o} gives 0600 itself")
    build_leaderboards(synthetic_results, tmp_path / "boards")
    write_npy(tmp_path / "cache" / "rows.npy", np.zeros(3), checked=True)
    RunResult.from_json(next(synthetic_results.rglob("xbt.json"))).save(tmp_path / "out")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(0o666 & ~mask)}


@pytest.mark.slow
def test_swapped_images_of_a_folder_dataset_give_the_cold_cache_numbers(
    small_pair: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Defect 1 end to end: two same-size images swapped gave "0 computed" and the old numbers
    (the fingerprint covered names and sizes only). BMP files of one size make every pair of
    images the same size."""
    folder = tmp_path / "bmp"
    write_folder_dataset(folder, "test", suffix=".bmp")
    first, second = folder / "test" / "0000.bmp", folder / "test" / "0001.bmp"
    assert first.stat().st_size == second.stat().st_size

    def metrics(out: Path) -> dict[str, dict[str, float]]:
        args = ["run", "--pair", small_pair, "--method", "old", "--dataset", f"folder:{folder}",
                "--output-dir", str(out)]  # fmt: skip
        assert run_cli(args) == 0
        (path,) = out.glob(f"{small_pair}/*/old.json")
        return RunResult.from_json(path).metrics

    before = metrics(tmp_path / "warm")
    contents = first.read_bytes(), second.read_bytes()
    first.write_bytes(contents[1])
    second.write_bytes(contents[0])
    capsys.readouterr()
    again = metrics(tmp_path / "warm")
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"the content of folder:{folder}/test changed since its images were embedded" in err
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path / "cold-home"))
    cold = metrics(tmp_path / "cold")
    assert again == cold
    assert again["old->old"]["t2i_r1"] != before["old->old"]["t2i_r1"]


@pytest.mark.slow
def test_a_code_edit_to_stage_2_trains_again(small_pair: str, tmp_path: Path) -> None:
    """Defect 2 end to end: after an edit that zeroes stage 2's cosine term, the rerun reused
    the checkpoint of the old code. Now the edit is named, stage 2 trains again, and its
    weights and numbers are those of a cold run of the edited code."""
    import subprocess
    import sys

    import xbt_bench
    from xbt_bench.paths import model_zoo

    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--method", "xbt", *tiny_settings(),
            "--output-dir", str(out)]  # fmt: skip
    assert run_cli(args) == 0
    (path,) = out.glob(f"{small_pair}/*/xbt.json")
    original = RunResult.from_json(path)
    code = tmp_path / "edited"
    shutil.copytree(Path(xbt_bench.__file__).parent, code / "xbt_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (code / "model_zoo").symlink_to(model_zoo())
    stage2 = code / "xbt_bench" / "methods" / "stage2.py"
    source = stage2.read_text()
    term = "cfg.stage2_cos_weight * (text_cos + image_cos)"  # xbt's cosine term
    assert source.count(term) == 1
    stage2.write_text(source.replace(term, "0.0 * (text_cos + image_cos)"))

    # One process of the edited code runs `run` over the warm cache, then with no checkpoint.
    script = f"""
import shutil, sys
from xbt_bench.cli import main
from xbt_bench.paths import home

def run(copy):
    try:
        main({args!r})
    except SystemExit as exit_:
        assert not exit_.code, exit_.code
    shutil.copy({str(path)!r}, copy)

run({str(tmp_path / "retrained.json")!r})
print("--- cold ---", file=sys.stderr)
shutil.rmtree(home() / "runs" / {small_pair!r})
run({str(tmp_path / "cold.json")!r})
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,  # `python -c` imports from the working directory first
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warm_err = done.stderr.split("--- cold ---")[0].replace("\n", " ")
    assert "xbt stage 2: code of xbt_bench.methods.stage2 changed since its last" in warm_err
    retrained, cold = (RunResult.from_json(tmp_path / f"{n}.json") for n in ("retrained", "cold"))
    identity = [r.info["encoder_identity"] for r in (original, retrained, cold)]
    assert identity[0] != identity[1] == identity[2]
    assert retrained.splits == cold.splits


def test_tampered_shipped_weights_are_refused(
    small_pair: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Defect 4 end to end: noise added to one tensor of toy-s.safetensors gave other numbers
    without a word; the weights are now checked against their card's SHA-256."""
    from safetensors.torch import load_file, save_file

    from xbt_bench.models import loading
    from xbt_bench.toy import zoo as toy_zoo

    zoo = tmp_path / "models"
    shutil.copytree(toy_zoo.zoo_models_dir(), zoo,
                    ignore=shutil.ignore_patterns("toy-l.safetensors"))  # fmt: skip
    for module in (toy_zoo, loading):
        monkeypatch.setattr(module, "zoo_models_dir", lambda: zoo)
    weights = zoo / "toy-s.safetensors"
    state = load_file(str(weights))
    name = "visual.proj"
    torch.manual_seed(0)
    state[name] = state[name] + 0.05 * torch.randn_like(state[name])
    save_file(state, str(weights))
    out = tmp_path / "results"
    assert run_cli(["run", "--pair", small_pair, "--method", "old", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"shipped weights {weights} do not match the weights_sha256 of their card" in err
    assert "`xbt-bench zoo build toy-s --ship`" in err
    assert not list(out.rglob("*.json"))
