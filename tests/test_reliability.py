"""Nothing silently wrong (issue 16): each defect a careful user found in v0.1, reproduced, with
the behaviour it has now. Damaged caches are recomputed and never turn into numbers; results
that do not belong together are refused; bad input is one line with the fix, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from support import run_cli, write_folder_dataset

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
    data["splits"]["test"]["metrics"]["old->old"]["t2i_r1"] += 1.0
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
