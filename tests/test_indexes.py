"""Production indexes (`run --index`): sizes that follow the gallery, one-line errors, recalls
through IVF at or below exact and equal to it when every list is probed, the losses and their
paired intervals, the result files and the leaderboard's section per index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import run_cli

from xbt_bench.errors import ConfigError
from xbt_bench.eval.compat import METHOD_OLD, NEW_NEW, OLD_OLD
from xbt_bench.eval.indexes import IndexSpec, build_search_indexes
from xbt_bench.eval.retrieval import METRIC_KEYS, Embeddings
from xbt_bench.options import index_specs
from xbt_bench.report import build_leaderboards
from xbt_bench.report.leaderboard import index_display
from xbt_bench.results import IndexResult, RunResult, load_result_set
from xbt_bench.scoring import References, index_split, method_split, score

N_IMAGES, PER_IMAGE = 400, 3
CAPTION_IMAGE = np.repeat(np.arange(N_IMAGES), PER_IMAGE)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _space(rng: np.random.Generator, dim: int = 16, noise: float = 0.6) -> Embeddings:
    """Images and their captions around 40 shared topics: clustered, as real embeddings are."""
    topics = rng.normal(size=(40, dim))
    concepts = topics[rng.integers(0, 40, N_IMAGES)] + 0.7 * rng.normal(size=(N_IMAGES, dim))
    images = concepts + noise * rng.normal(size=(N_IMAGES, dim))
    texts = concepts[CAPTION_IMAGE] + noise * rng.normal(size=(len(CAPTION_IMAGE), dim))
    return Embeddings(_unit(images), _unit(texts))


@pytest.fixture(scope="module")
def world() -> dict[str, Embeddings]:
    rng = np.random.default_rng(0)
    old = _space(rng)
    # a method maps NEW's queries into OLD's space imperfectly: OLD's queries plus noise
    method = Embeddings(*(_unit(x + 0.35 * rng.normal(size=x.shape)) for x in old))
    return {"old": old, "method": method, "new": _space(rng, dim=24)}


def test_index_sizes_follow_the_gallery() -> None:
    ivf = IndexSpec("ivf")
    assert ivf.resolve(1000, 64) == ("IVF25,Flat", "nprobe=5")  # at most 1000 / 39 lists
    assert ivf.resolve(5000, 64) == ("IVF128,Flat", "nprobe=11")
    assert ivf.resolve(100_000_000, 512) == ("IVF40000,Flat", "nprobe=200")  # 4·√n lists
    assert IndexSpec("ivfpq").resolve(1000, 64) == ("IVF25,PQ16x4np", "nprobe=5")  # 2^4·39 ≤ 1000
    assert IndexSpec("ivfpq").resolve(5000, 96) == ("IVF128,PQ24x7np", "nprobe=11")
    assert IndexSpec("ivfpq").resolve(10**6, 512) == ("IVF4000,PQ128x8np", "nprobe=63")
    assert IndexSpec("ivfpq").sizes(10**8, 512) == {  # what the build trains: 39 rows a list
        "nlist": 40000, "nprobe": 200, "pq_m": 128, "pq_nbits": 8
    }
    assert IndexSpec("hnsw").resolve(1000, 64) == ("HNSW32", "efSearch=64")
    assert IndexSpec("flat").resolve(1000, 64) == ("Flat", None)
    wide = IndexSpec("ivf", {"nprobe": 100})  # more lists probed than there are: all of them
    assert wide.resolve(1000, 64) == ("IVF25,Flat", "nprobe=25")
    assert wide.name == "ivf nprobe=100" and IndexSpec("hnsw").name == "hnsw"
    one, other = (IndexSpec("ivf", {"nprobe": 4, "nlist": n}) for n in (8, 8))
    assert one == other and hash(one) == hash(other)  # a dict key: indexes are built once
    assert IndexSpec("ivf", {"nprobe": 4, "nlist": 8}).params == (("nlist", 8), ("nprobe", 4))


def test_index_options_fail_in_one_line(capsys) -> None:
    with pytest.raises(ConfigError, match="'ivff' is not an index kind; did you mean 'ivf'"):
        IndexSpec("ivff")
    with pytest.raises(ConfigError, match="index 'hnsw' has no parameter 'nprobe'"):
        IndexSpec("hnsw", {"nprobe": 4})
    with pytest.raises(ConfigError, match="nlist=0: use a positive integer"):
        IndexSpec("ivf", {"nlist": 0})
    with pytest.raises(ConfigError, match="pq_m=5 must divide the gallery's dimension 64"):
        IndexSpec("ivfpq", {"pq_m": 5}).resolve(1000, 64)
    with pytest.raises(ConfigError, match="--index-param needs an index"):
        index_specs([], {"nprobe": 3})
    with pytest.raises(ConfigError, match="did you mean 'nprobe'"):
        index_specs(["ivf"], {"nprob": 3})
    ivf, hnsw = index_specs(["ivf", "hnsw"], {"nprobe": 8})  # each kind takes what it has
    assert ivf.params == (("nprobe", 8),) and hnsw.params == ()
    for args, message in (
        (["--pair", "toy-s-to-m", "--index", "hnws"], "did you mean 'hnsw'"),
        (["--pair", "toy-s-m-l", "--index", "ivf"], "'toy-s-m-l' is a chain; --index scores"),
        (["--pair", "toy-s-to-m", "--index-param", "nprobe=2"], "--index-param needs an index"),
    ):
        assert run_cli(["run", *args]) == 1
        err = capsys.readouterr().err
        assert message in " ".join(err.split()) and "Traceback" not in err


def test_ivf_is_exact_when_every_list_is_probed_and_loses_with_fewer(world) -> None:
    old = world["old"]
    exact = score(old, old, CAPTION_IMAGE)
    every = IndexSpec("ivf", {"nlist": 8, "nprobe": 8})
    through = score(old, old, CAPTION_IMAGE, indexes=build_search_indexes(old, every))
    assert through.search == "images IVF8,Flat (nprobe=8); captions IVF8,Flat (nprobe=8)"
    assert through.metrics == exact.metrics
    np.testing.assert_array_equal(through.t2i_ranks, exact.t2i_ranks)
    one = IndexSpec("ivf", {"nlist": 8, "nprobe": 1})
    fewer = score(old, old, CAPTION_IMAGE, indexes=build_search_indexes(old, one)).metrics
    assert all(fewer[k] <= exact.metrics[k] for k in METRIC_KEYS)
    assert fewer["rsum"] < exact.metrics["rsum"] - 5  # one list of eight misses positives
    found = {
        kind: score(old, old, CAPTION_IMAGE, indexes=build_search_indexes(old, IndexSpec(kind)))
        for kind in ("ivf", "hnsw", "ivfpq")
    }
    # a graph over 400 points with efSearch 64 finds them all; 3-bit codes (all 400 images can
    # train) lose more than the lists alone, yet retrieve far above chance (R@10 2.5%)
    assert found["hnsw"].metrics["rsum"] == pytest.approx(exact.metrics["rsum"], abs=1)
    assert found["ivfpq"].search.startswith("images IVF10,PQ4x3np (nprobe=3)")
    assert found["ivfpq"].metrics["rsum"] < found["ivf"].metrics["rsum"] - 50
    assert found["ivfpq"].metrics["t2i_r10"] > 50


def test_index_split_reports_losses_with_paired_intervals(world) -> None:
    """old→old and a method through IVF with one probed list in 8: the losses are exact −
    indexed per setting, and the method's loss beyond OLD's is the difference of the two, its
    interval around it; a method whose queries are OLD's own loses exactly what OLD loses."""
    old, method, new = world["old"], world["method"], world["new"]
    spec = IndexSpec("ivf", {"nlist": 8, "nprobe": 1})
    built = {"old": build_search_indexes(old, spec), "new": build_search_indexes(new, spec)}
    exact_refs = References.score(old, new, CAPTION_IMAGE)
    refs = References.score(old, new, CAPTION_IMAGE, (built["old"], built["new"]))
    searches = {"old images": built["old"].image_search, "old captions": "…"}

    def split_of(queries: Embeddings):
        exact = [score(queries, old, CAPTION_IMAGE)]
        through = [score(queries, old, CAPTION_IMAGE, indexes=built["old"])]
        return index_split(
            method_split(through, refs),
            {OLD_OLD: [exact_refs.old_old], NEW_NEW: [exact_refs.new_new], METHOD_OLD: exact},
            {OLD_OLD: [refs.old_old], NEW_NEW: [refs.new_new], METHOD_OLD: through},
            searches,
            CAPTION_IMAGE,
        )

    mapped = split_of(method)
    assert mapped.exact[OLD_OLD] == exact_refs.old_old.metrics
    for setting in (OLD_OLD, NEW_NEW, METHOD_OLD):
        for key in METRIC_KEYS:
            loss = mapped.loss[setting][key]
            exact = mapped.exact[setting][key]
            assert loss == pytest.approx(exact - mapped.indexed.metrics[setting][key], abs=1e-3)
            low, high = mapped.loss_intervals[setting][key]
            assert low <= loss + 1e-6 and loss - 1e-6 <= high
    assert mapped.loss[OLD_OLD]["rsum"] > 5  # one probed list in 8 loses recall
    extra = mapped.extra_loss
    assert extra["rsum"] == pytest.approx(
        mapped.loss[METHOD_OLD]["rsum"] - mapped.loss[OLD_OLD]["rsum"], abs=1e-3
    )
    low, high = mapped.extra_loss_intervals["rsum"]
    assert low < extra["rsum"] < high and high - low < 40
    same = split_of(old)  # OLD's own queries as the "method": no loss beyond OLD's
    assert same.extra_loss == dict.fromkeys(METRIC_KEYS, 0.0)
    assert same.extra_loss_intervals["rsum"] == [0.0, 0.0]


def test_leaderboard_has_a_section_per_index(synthetic_results: Path, tmp_path: Path) -> None:
    found = load_result_set(synthetic_results)
    (indexed,) = found.indexes
    assert indexed.relative_path() == Path("toy-s-to-m/toy-shapes/xbt.index-ivf.json")
    assert indexed.splits["test"].searches["old images"] == "IVF8,Flat (nprobe=3)"
    boards = build_leaderboards(synthetic_results, tmp_path)
    table = pd.read_csv(tmp_path / "leaderboard-indexes.csv")
    test = table[table["split"] == "test"].set_index("method")
    assert test["row"].to_dict() == {"old": "reference", "new": "reference", "xbt": "method"}
    # recalls through the index, exact beside them, losses and OLD's own loss on every row
    assert test.loc["xbt", "t2i_r1"] == pytest.approx(30.8 - 3.0)
    assert test.loc["xbt", "exact_t2i_r1"] == pytest.approx(30.8)
    assert test.loc["old", "t2i_r1"] == pytest.approx(31.2 - 1.0)
    assert test.loc["xbt", "loss_t2i_r1"] == pytest.approx(3.0)
    assert test.loc["new", "loss_t2i_r1"] == pytest.approx(0.5)
    assert (test["old_loss_rsum"] == 1.0).all()
    assert test.loc["xbt", "extra_loss_rsum"] == pytest.approx(4.0)
    assert test.loc["xbt", "extra_loss_rsum_lo"] == pytest.approx(2.5)
    # the criterion compares through the same index: xbt's T2I R@1 27.8 < old's 30.2
    assert not test.loc["xbt", "held_t2i_r1"]
    group = boards.indexes[boards.indexes["split"] == "test"]
    shown = index_display(group).set_index("method")
    assert shown.loc["xbt", "loss R@1 T2I/I2T"] == "+3.00/+2.00"
    assert shown.loc["xbt", "beyond OLD (rsum)"] == "+4.00 (+2.50 to +5.50)"
    assert shown.loc["old", "loss rsum"] == "+1.00" and shown.loc["old", "beyond OLD (rsum)"] == ""
    markdown = (tmp_path / "leaderboard.md").read_text()
    section = markdown[markdown.index("## Production indexes") :]
    assert "### toy-s-to-m · toy-shapes · split test · index ivf" in section
    assert "old images: IVF8,Flat (nprobe=3); old captions: IVF32,Flat (nprobe=6)" in section
    exact = pd.read_csv(tmp_path / "leaderboard.csv")  # the ranked table stays exact
    assert exact[(exact["method"] == "xbt") & (exact["split"] == "test")]["t2i_r1"].iloc[0] == 30.8


@pytest.mark.slow  # fits and scores the small pair twice
def test_run_with_indexes_records_them_beside_exact(
    small_pair: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results"
    base = ["run", "--pair", small_pair, "--output-dir", str(out), "--method", "old",
            "--method", "procrustes", "--method", "new"]  # fmt: skip
    assert run_cli([*base, "--index", "ivf", "--index", "hnsw"]) == 0, capsys.readouterr().err
    folder = next((out / small_pair).iterdir())
    exact = RunResult.from_json(folder / "procrustes.json")
    ivf = IndexResult.from_json(folder / "procrustes.index-ivf.json")
    assert (ivf.index, ivf.params, ivf.seeds) == ("ivf", {}, [0])
    test = ivf.splits["test"]
    # 80 images, 400 captions of the small world: lists sized to the gallery, √nlist probed
    assert test.searches == {"old images": "IVF2,Flat (nprobe=1)",
                             "old captions": "IVF10,Flat (nprobe=3)",
                             "new images": "IVF2,Flat (nprobe=1)",
                             "new captions": "IVF10,Flat (nprobe=3)"}  # fmt: skip
    assert test.exact == exact.splits["test"].metrics  # the exact numbers of the same fits
    for setting, metrics in test.indexed.metrics.items():
        assert all(metrics[k] <= test.exact[setting][k] for k in METRIC_KEYS), setting
    assert test.loss[OLD_OLD]["rsum"] > 0 and test.loss[METHOD_OLD]["rsum"] > 0
    assert (folder / "procrustes.index-hnsw.json").is_file()
    assert (folder / "old.index-ivf.json").is_file() and (folder / "new.index-hnsw.json").is_file()

    every = ["--index", "ivf", "--index-param", "nlist=4", "--index-param", "nprobe=4"]
    assert run_cli([*base, *every]) == 0, capsys.readouterr().err
    probed = IndexResult.from_json(folder / "procrustes.index-ivf_nlist_4_nprobe_4-"
                                   f"{_sha8('ivf nlist=4,nprobe=4')}.json")  # fmt: skip
    assert probed.params == {"nlist": 4, "nprobe": 4}
    for data in probed.splits.values():  # every list probed: exactly exact search
        assert all(v == 0 for loss in data.loss.values() for v in loss.values())
    boards = build_leaderboards(out, tmp_path / "boards")
    assert set(boards.indexes["search"]) == {"ivf", "hnsw", "ivf nlist=4,nprobe=4"}


def _sha8(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
