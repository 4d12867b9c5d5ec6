"""``xbt-bench run`` end to end on the shipped toy models and small on-disk datasets (folders, a
Flickr-format root, a webdataset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import KEYS, SMALL_WORLD, run_cli, tiny_settings

from xbt_bench.methods import default_methods, methods
from xbt_bench.results import BackfillResult, RunResult, SweepResult
from xbt_bench.toy.world import toy_split

pytestmark = pytest.mark.slow  # end-to-end runs of every method


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
    # the shipped toy models retrieve far above chance (1/80 images), NEW better than OLD
    assert old_old["t2i_r1"] > 10 * 100 / 80 and old_old["i2t_r1"] > 10 * 100 / 80
    assert results["new"].metrics["new->new"]["rsum"] > old_old["rsum"]
    for name in ("procrustes", "slerp", "xbt-proj", "xbt", "distill", "finetune"):
        assert set(results[name].metrics["method->old"]) == set(KEYS)
        assert results[name].compatibility.cells_total == 6
    assert not results["identity"].applicable  # toy-s and toy-m differ in dimension
    # every result records its query encoder's latency (text and image queries, batch 1 and
    # 256, OLD's own timed alongside), FAISS's build rates and the gallery's shape
    for name, result in results.items():
        latency = result.query_latency
        assert latency is not None and latency.device == "cpu", name
        assert {(p.side, p.batch) for p in latency.points} == {
            (side, batch) for side in ("text", "image") for batch in (1, 256)
        }
        assert all(p.seconds > 0 and p.old_seconds > 0 for p in latency.points)
        assert ("old" in latency.encoders) == methods.get(name).old_at_query, name
        assert result.index_build is not None and result.index_build.s_per_mac > 0
        assert (result.gallery.images, result.gallery.captions) == (80, 400)
    assert all(p.added_ms_per_query == 0 for p in results["old"].query_latency.points)
    assert results["slerp"].query_latency.encoders == ["old", "new"]
    # the bill does not count twice the passes whose time is the training time
    assert results["xbt"].cost.in_loop_passes == {"new_image": 4 * 16}  # steps x batch
    assert results["xbt"].cost.forward_passes["new_image"] > 4 * 16
    # OLD embeds the text corpus once for stage 1; stage 2 adds no OLD forward pass...
    stage1_old = results["xbt-proj"].cost.forward_passes["old_text"]
    assert stage1_old > 0
    assert results["xbt"].cost.forward_passes["old_text"] == stage1_old
    assert results["xbt"].cost.forward_passes["old_image"] == 0
    assert results["distill"].cost.forward_passes["old_image"] > 0  # ...distill's does
    assert 0 < results["xbt"].cost.trainable_share < results["finetune"].cost.trainable_share
    # xbt's margin over stitch (what stage 2 adds), paired, on every split
    vs = results["xbt"].splits["test"].baseline_margin
    assert vs.method == "stitch"
    for key in KEYS:
        expected = results["xbt"].metrics["method->old"][key] - results["stitch"].metrics[
            "method->old"][key]  # fmt: skip
        assert vs.margin[key] == pytest.approx(expected)
        assert vs.interval[key][0] <= vs.interval[key][1]
    # what each method needs, as the leaderboard groups it
    needs = {name: r.needs for name, r in results.items()}
    assert needs["slerp"].group == "OLD kept at query time" and needs["slerp"].old_at_query
    assert needs["xbt"].group == "OLD retired" and needs["xbt"].training == "text embeddings"
    assert needs["distill"].training == "OLD forward passes"
    assert needs["xbt"].image_text_pairs == 60 and needs["stitch"].image_text_pairs == 0
    assert needs["old"].group == "reference"
    assert results["xbt"].settings_source["steps"] == "--set" and results["xbt"].tuned is None

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
    (path,) = out.glob(f"{small_pair}/*/xbt.sweep.json")
    sweep = SweepResult.from_json(path)
    assert [p.n_pairs for p in sweep.points] == [0, 30, 60]
    assert all(set(p.metrics) == set(KEYS) for p in sweep.points)
    assert not list(out.glob(f"{small_pair}/*/xbt.json"))  # a sweep writes no run result
    # 60 pairs is the full run: its point is the run's own method->old score
    run = ["run", "--pair", small_pair, "--method", "xbt", "--output-dir", str(out)]
    assert run_cli([*run, *tiny_settings()]) == 0
    result = RunResult.from_json(path.with_name("xbt.json"))
    assert sweep.points[-1].metrics == result.metrics["method->old"]
    assert sweep.references == {k: result.metrics[k] for k in ("old->old", "new->new")}
    # a rerun with other settings replaces the run's file and leaves the sweep's alone
    before = path.read_bytes()
    assert run_cli([*run, *tiny_settings(), "--set", "lora_rank=2"]) == 0
    assert path.read_bytes() == before
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
                    "--method", "new", "--method", "procrustes"])
    assert code == 0, capsys.readouterr().err
    (folder,) = (out / small_pair).glob("wds_shapes-*")  # the slug of wds/shapes and its hash
    files = {path.stem: path for path in folder.glob("*.json")}
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


PLUGIN = """
from xbt_bench.methods import register_method
from xbt_bench.methods.base import FittedMethod



@register_method("echo-old", kind="closed form", trains="nothing", old_at_query=True,
                 notes="OLD's own queries under another name (a plugin test)")
def fit_echo_old(ctx, settings):
    old = ctx.old.get()
    return FittedMethod(name="echo-old", gallery="old", dim=old.embed_dim,
                        query=ctx.query_path({"old": old}, lambda side, vectors: vectors["old"]))
"""


def test_an_installed_package_adds_a_method_and_a_pair(
    small_pair: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package on the path with ``xbt_bench.methods`` and ``xbt_bench.pairs`` entry points:
    its method is listed, runs and lands on the leaderboard; its pair is registered."""
    import os
    import subprocess
    import sys

    from xbt_bench.pairs import pair_registry
    from xbt_bench.report.leaderboard import leaderboards

    site = tmp_path / "site"
    (site / "xbt_plugin_demo" / "pairs").mkdir(parents=True)
    (site / "xbt_plugin_demo" / "__init__.py").write_text("")
    (site / "xbt_plugin_demo" / "methods.py").write_text(PLUGIN)
    pair_file = pair_registry().get(small_pair)
    (site / "xbt_plugin_demo" / "pairs" / "plugin-pair.toml").write_text(pair_file.read_text())
    (site / "xbt_plugin_demo" / "__init__.py").write_text(
        "from pathlib import Path\nPAIRS = Path(__file__).parent / 'pairs'\n"
    )
    info = site / "xbt_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xbt-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[xbt_bench.methods]\ndemo = xbt_plugin_demo.methods\n\n"
        "[xbt_bench.pairs]\ndemo = xbt_plugin_demo:PAIRS\n"
    )
    path_entries = [str(site), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path_entries)}
    out = tmp_path / "results"

    def xbt_bench(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "xbt_bench", *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "echo-old" in xbt_bench("methods", "list")
    assert "plugin-pair" in xbt_bench("pairs", "list")
    xbt_bench("run", "--pair", "plugin-pair", "--method", "echo-old", "--output-dir", str(out))
    (path,) = out.glob("plugin-pair/*/echo-old.json")
    result = RunResult.from_json(path)
    assert result.metrics["method->old"] == result.metrics["old->old"]  # OLD's own queries
    boards = leaderboards(out)
    assert "echo-old" in set(boards.exact["method"])


def test_seeds_give_a_mean_a_spread_and_intervals(small_pair: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["run", "--pair", small_pair, "--method", "xbt", "--method", "procrustes",
            "--seeds", "2", "--output-dir", str(out), *tiny_settings()]  # fmt: skip
    assert run_cli(args) == 0
    (xbt_path,) = out.glob(f"{small_pair}/*/xbt.json")
    (procrustes_path,) = out.glob(f"{small_pair}/*/procrustes.json")
    xbt, procrustes = RunResult.from_json(xbt_path), RunResult.from_json(procrustes_path)
    assert xbt.seeds == [0, 1] and procrustes.seeds == [0]  # closed forms run once
    split = xbt.splits["test"]
    assert len(split.seed_metrics) == 2 and split.seed_metrics[0] != split.seed_metrics[1]
    for key in KEYS:
        mean = np.mean([m[key] for m in split.seed_metrics])
        assert split.metrics["method->old"][key] == pytest.approx(mean)
        assert split.seed_std[key] == pytest.approx(
            np.std([m[key] for m in split.seed_metrics], ddof=1), abs=1e-4
        )
        for setting in ("old->old", "new->new", "method->old"):
            low, high = split.intervals[setting][key]
            value = split.metrics[setting][key]
            assert low <= value <= high and (low < high or value in (0, 100, 600))
    compat = split.compatibility
    for key in KEYS:  # 95%: the margin's paired interval is above zero
        low, high = compat.margin_interval[key]
        assert low <= compat.margin[key] <= high
        assert compat.held_95[key] == (low > 0) and (not compat.held_95[key] or compat.held[key])
    assert procrustes.splits["test"].seed_std is None and procrustes.splits["test"].intervals


def test_backfill_curves_hybrid_and_measured_throughputs(small_pair: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    names = ("old", "new", "procrustes", "xbt", "xbt-hybrid")
    methods_args = [a for m in names for a in ("--method", m)]
    args = ["backfill", "--pair", small_pair, "--fractions", "0,50,100", "--output-dir", str(out),
            *methods_args, *tiny_settings()]  # fmt: skip
    assert run_cli(args) == 0
    curves = {p.name.split(".")[0]: BackfillResult.from_json(p)
              for p in out.glob(f"{small_pair}/*/*.backfill.json")}  # fmt: skip
    assert set(curves) == {"old", "procrustes", "xbt", "xbt-hybrid"}  # NEW's queries search NEW
    assert not list(out.glob(f"{small_pair}/*/xbt.json"))  # a backfill writes no run result
    run = ["run", "--pair", small_pair, "--output-dir", str(out), *methods_args]
    assert run_cli([*run, *tiny_settings()]) == 0
    results = {p.stem: RunResult.from_json(p) for p in out.glob(f"{small_pair}/*/*.json")
               if p.name.count(".") == 1}  # fmt: skip
    for name, found in curves.items():
        result, backfill = results[name], found.backfill
        assert backfill.fractions == [0.0, 0.5, 1.0] and backfill.support.endswith("support")
        assert found.references["test"] == {
            k: result.metrics[k] for k in ("old->old", "new->new")
        }
        own = result.metrics["old->old" if name == "old" else "method->old"]
        for order, curve in backfill.curves["test"].items():
            assert backfill.orders[order].kept
            assert curve[0].metrics == own  # nothing re-embedded: the method's own numbers
            assert curve[-1].metrics == result.metrics["new->new"]  # everything: new->new
        for choice in backfill.calibration.values():  # the best on support, every one scored
            assert set(choice.support_r1) == {"none", "affine", "quantile", "isotonic"}
            assert choice.support_r1[choice.kind] == max(choice.support_r1.values())
            assert bool(choice.knots) == (choice.kind in ("quantile", "isotonic"))
        assert set(backfill.orders) == {"random", "old-margin", "uncertainty"}
    # the hybrid reused xbt's training and reports its α per direction
    hybrid, xbt = results["xbt-hybrid"], results["xbt"]
    assert hybrid.info["stage2"]["checkpoint_dir"] == xbt.info["stage2"]["checkpoint_dir"]
    assert set(hybrid.report) == {"alpha_i2t", "alpha_t2i"}
    assert hybrid.report["alpha_i2t"].label == "α I2T"
    # every result carries the embedding throughputs the cost model reads
    measured = {(t.model, t.side): t for t in xbt.throughputs}
    assert {("old", "image"), ("old", "text"), ("new", "image"), ("new", "text")} <= set(measured)
    assert measured["new", "image"].device == "cpu" and measured["new", "image"].rows_per_s > 0
    assert run_cli(["cost", "--pair", small_pair, "--gallery-size", "1000000",
                    "--results-dir", str(out)]) == 0  # fmt: skip
    # a plain rerun leaves the curves alone; a backfill needs a share strictly inside (0, 1)
    path = next(out.glob(f"{small_pair}/*/procrustes.backfill.json"))
    before = path.read_bytes()
    assert run_cli(["run", "--pair", small_pair, "--method", "procrustes",
                    "--output-dir", str(out)]) == 0  # fmt: skip
    assert path.read_bytes() == before
    assert run_cli(["backfill", "--pair", small_pair, "--fractions", "0,100"]) == 1
