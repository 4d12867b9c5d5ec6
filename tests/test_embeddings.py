"""Stored embeddings as a pair's input (docs/embeddings-format.md): the on-disk format in both
layouts, a pair made of them running every method that needs only embeddings (and skipping the
others), its diagnostics, backfill curves and cost, an exported encoder mapping NEW's stored
embeddings, and every kind of damaged input refused in one line naming the file. Everything here
runs on synthetic vectors: no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import run_cli

from xbt_bench import load_query_encoder
from xbt_bench.data.embeddings import SideTiming, load_embeddings_dataset, read_split, write_split
from xbt_bench.errors import XbtError
from xbt_bench.eval import evaluate_retrieval
from xbt_bench.linalg import procrustes_map
from xbt_bench.methods import default_methods, methods
from xbt_bench.models.loading import load_model
from xbt_bench.results import BackfillResult, DiagnosticsResult, RunResult

LATENT, DIMS = 8, {"old": 12, "new": 16}
# images per split (2 captions each); "text" is the text-only corpus
SPLITS = {"test": 40, "support": 30, "pairs": 30}
CORPUS = 300
NEW_IMAGES_PER_S = 20.0  # the NEW manifests' recorded image throughput


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic_pair(root: Path, file_format: str = "npy", dtype: str = "float32") -> Path:
    """OLD's and NEW's embeddings of a synthetic world, as `embeddings dump` lays them out: each
    image a latent point, its two captions noisy copies of it, OLD and NEW seeing the latents
    through different random linear maps (12 and 16 dimensions)."""
    rng = np.random.default_rng(0)
    maps = {role: rng.normal(size=(LATENT, dim)) for role, dim in DIMS.items()}
    splits = {}
    for name, n_images in SPLITS.items():
        latents = rng.normal(size=(n_images, LATENT))
        caption_image = np.repeat(np.arange(n_images), 2)
        captions = latents[caption_image] + 0.8 * rng.normal(size=(2 * n_images, LATENT))
        splits[name] = (latents + 0.4 * rng.normal(size=latents.shape), captions, caption_image)
    corpus = rng.normal(size=(CORPUS, LATENT))
    for role, linear in maps.items():
        common = {"model": f"synthetic-{role}", "fingerprint": f"synthetic-{role}@0",
                  "file_format": file_format, "dtype": dtype}  # fmt: skip
        for name, (images, captions, caption_image) in splits.items():
            timing = {"image": SideTiming(seconds=len(images) / NEW_IMAGES_PER_S, device="gpu")}
            write_split(root / role / name, split=name, image=_unit(images @ linear),
                        text=_unit(captions @ linear), caption_image=caption_image,
                        timing=timing if role == "new" else None, **common)  # fmt: skip
        write_split(root / role / "text", split="text", text=_unit(corpus @ linear), **common)
    return root


@pytest.fixture
def stored_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A registered pair of synthetic stored embeddings: its name and folder."""
    folder = write_synthetic_pair(tmp_path / "embeddings")
    pairs = tmp_path / "pairs"
    monkeypatch.setenv("XBT_BENCH_PAIRS", str(pairs))
    code = run_cli(["pairs", "add", "synthetic", "--from-embeddings", str(folder),
                    "--dir", str(pairs)])  # fmt: skip
    assert code == 0
    return "synthetic", folder


def _recalls(queries: tuple[np.ndarray, np.ndarray], gallery: tuple[np.ndarray, np.ndarray],
             caption_image: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Recalls of (image queries, caption queries) against (images, captions)."""
    return evaluate_retrieval(
        image_queries=queries[0], text_queries=queries[1], image_gallery=gallery[0],
        text_gallery=gallery[1], caption_image=caption_image,
    ).metrics  # fmt: skip


@pytest.mark.parametrize(("file_format", "dtype"), [("npy", "float32"), ("parquet", "float16")])
def test_a_split_reads_back_as_written(tmp_path: Path, file_format: str, dtype: str) -> None:
    rng = np.random.default_rng(1)
    image, text = _unit(rng.normal(size=(5, 6))), _unit(rng.normal(size=(9, 6)))
    caption_image = np.array([0, 0, 1, 2, 2, 3, 4, 4, 4])
    ids = [f"caption-{i}" for i in range(9)]
    write_split(tmp_path / "test", model="m", fingerprint="m@1", split="test", image=image,
                text=text, caption_image=caption_image, caption_ids=ids,
                file_format=file_format, dtype=dtype)  # fmt: skip
    split = read_split(tmp_path / "test")
    tolerance = 1e-3 if dtype == "float16" else 0
    assert split.manifest.normalized and split.manifest.dim == 6
    assert (split.manifest.images, split.manifest.captions) == (5, 9)
    assert str(split.image.dtype) == dtype
    np.testing.assert_allclose(split.image, image, atol=tolerance)
    np.testing.assert_allclose(split.text, text, atol=tolerance)
    assert split.caption_image.tolist() == caption_image.tolist()
    assert list(split.caption_ids) == ids
    if file_format == "npy":
        assert isinstance(split.image, np.memmap)  # large galleries are never loaded whole
    data = load_embeddings_dataset(tmp_path, "test")
    assert (data.n_images, len(data.captions), data.captions[8]) == (5, 9, "caption-8")
    # the data fingerprint comes from the index, so OLD's and NEW's files agree in any layout
    assert data.fingerprint == split.data_fingerprint


def test_a_stored_gallery_streams_block_by_block_with_the_same_recalls(tmp_path: Path) -> None:
    from xbt_bench.eval.large import EmbeddingShards, evaluate_retrieval_sharded

    folder = write_synthetic_pair(tmp_path / "embeddings") / "old" / "test"
    split = read_split(folder)
    shards = {side: EmbeddingShards.from_files([folder / f"{side}.npy"], side)
              for side in ("image", "text")}  # fmt: skip
    streamed = evaluate_retrieval_sharded(
        text_queries=shards["text"], image_gallery=shards["image"], image_queries=shards["image"],
        text_gallery=shards["text"], caption_image=split.caption_image, block_rows=7,
    ).metrics  # fmt: skip
    in_memory = _recalls((split.image, split.text), (split.image, split.text), split.caption_image)
    assert streamed == pytest.approx(in_memory, abs=1e-9)


def test_rows_stored_without_unit_norm_are_served_normalised(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    write_split(tmp_path / "text", model="m", fingerprint="m@1", split="text",
                text=3 * _unit(rng.normal(size=(4, 5))))  # fmt: skip
    split = read_split(tmp_path / "text")
    assert not split.manifest.normalized and split.manifest.images == 0
    np.testing.assert_allclose(np.linalg.norm(split.text, axis=1), 1, rtol=1e-6)


def test_a_pair_of_stored_embeddings_runs_every_method_that_needs_only_them(
    stored_pair: tuple[str, Path], tmp_path: Path, capsys
) -> None:
    name, folder = stored_pair
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", name, "--output-dir", str(out),
                    "--set", "proj_steps=10", "--set", "proj_batch=64"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    embeddings_only = {m for m in default_methods() if not methods.get(m).needs_models}
    assert {"old", "new", "procrustes", "linear", "slerp"} <= embeddings_only
    results = {p.stem: RunResult.from_json(p) for p in out.glob(f"{name}/*/*.json")}
    assert set(results) == embeddings_only
    skipped = [line for line in captured.out.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split(":")[0][8:] for line in skipped) == sorted(
        set(default_methods()) - embeddings_only
    )
    # the numbers are those of the stored vectors: old->old, new->new and procrustes by hand
    arrays = {role: {split: read_split(folder / role / split) for split in ("test", "text")}
              for role in DIMS}  # fmt: skip
    old, new = arrays["old"]["test"], arrays["new"]["test"]
    caption_image = old.caption_image
    result = results["procrustes"]
    assert result.metrics["old->old"] == pytest.approx(
        _recalls((old.image, old.text), (old.image, old.text), caption_image), abs=1e-6
    )
    assert result.metrics["new->new"] == pytest.approx(
        _recalls((new.image, new.text), (new.image, new.text), caption_image), abs=1e-6
    )
    weight = procrustes_map(arrays["new"]["text"].text, arrays["old"]["text"].text)
    mapped = (_unit(new.image @ weight), _unit(new.text @ weight))
    assert result.metrics["method->old"] == pytest.approx(
        _recalls(mapped, (old.image, old.text), caption_image), abs=1e-6
    )
    assert result.metrics["new->new"]["rsum"] > result.metrics["method->old"]["rsum"] > 100
    assert result.fingerprints["old"] == "synthetic-old@0"
    assert result.info["data"]["text_corpus"]["size"] == CORPUS
    # the NEW manifests' timing is the run's measured throughput (the cost estimate's input)
    image_rate = [t for t in result.throughputs if (t.model, t.side) == ("new", "image")]
    assert [t.rows_per_s for t in image_rate] == [pytest.approx(NEW_IMAGES_PER_S)]
    assert image_rate[0].device == "gpu"

    # a method that needs the models, asked for by name, is skipped in one line, not failed
    code = run_cli(["run", "--pair", name, "--output-dir", str(out), "--method", "xbt"])
    captured = capsys.readouterr()
    assert code == 0
    assert "skipped xbt: it runs the models' networks" in captured.out
    assert not (out / name / next(iter(results.values())).dataset).joinpath("xbt.json").exists()


def test_diagnostics_backfill_and_cost_of_a_pair_of_stored_embeddings(
    stored_pair: tuple[str, Path], tmp_path: Path, capsys
) -> None:
    name, _ = stored_pair
    out = tmp_path / "results"
    assert run_cli(["pairs", "diagnose", name, "--results-dir", str(out)]) == 0
    diagnostics = DiagnosticsResult.from_json(next(out.glob(f"{name}/*/diagnostics/test.json")))
    assert (diagnostics.images, diagnostics.captions) == (SPLITS["test"], 2 * SPLITS["test"])
    assert diagnostics.fingerprints["new"] == "synthetic-new@0"
    code = run_cli(["backfill", "--pair", name, "--method", "procrustes", "--fractions",
                    "0,50,100", "--output-dir", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    curves = BackfillResult.from_json(next(out.glob(f"{name}/*/procrustes.backfill.json")))
    points = curves.backfill.curves["test"]["random"]
    assert [p.fraction for p in points] == [0.0, 0.5, 1.0]
    assert points[-1].metrics == pytest.approx(curves.references["test"]["new->new"], abs=1e-6)
    assert run_cli(["run", "--pair", name, "--method", "new", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    code = run_cli(["cost", "--pair", name, "--gallery-size", "720000", "--results-dir",
                    str(out)])  # fmt: skip
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0
    # 720,000 items with 2 captions each to re-embed; NEW's image rate is the stored timing
    # (40 rows in 2 s); the rates a stored pair cannot measure (NEW's text rate, query latency)
    # are named, never borrowed; no xbt way (no xbt result)
    assert "full backfill │ 720,000 /" in printed and "1,440,000" in printed
    assert "new_image_per_s: 20 — measured: 40 rows in 2.0 device-s" in printed
    assert "MISSING new_text_per_s" in printed and "MISSING query_latency.new" in printed
    assert "xbt" not in printed.replace("xbt-bench", "")


def test_an_exported_map_maps_new_stored_embeddings_as_the_result_scored(
    stored_pair: tuple[str, Path], tmp_path: Path, capsys
) -> None:
    name, folder = stored_pair
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", name, "--method", "procrustes", "--method", "slerp",
                    "--output-dir", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    old, new = (read_split(folder / role / "test") for role in ("old", "new"))
    for method in ("procrustes", "slerp"):
        path = tmp_path / f"{method}.safetensors"
        code = run_cli(["export", "--pair", name, "--method", method, "--output", str(path),
                        "--results-dir", str(out)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        encoder = load_query_encoder(path)
        result = RunResult.from_json(next(out.glob(f"{name}/*/{method}.json")))
        assert encoder.manifest["metrics"]["test"]["method->old"] == result.metrics["method->old"]
        assert encoder.needs_old == (method == "slerp")
        context = {"image": old.image, "text": old.text} if method == "slerp" else {}
        queries = tuple(
            encoder.map_new_embeddings(vectors, side, old=context.get(side))
            for side, vectors in (("image", new.image), ("text", new.text))
        )
        assert queries[0].shape == (SPLITS["test"], DIMS["old"])
        scored = _recalls(queries, (old.image, old.text), old.caption_image)
        assert scored == pytest.approx(result.metrics["method->old"], abs=0.01)
        # NEW is known only by its embeddings here: encoding raw queries says what to do
        with pytest.raises(XbtError, match="known only by its stored embeddings"):
            encoder.encode_text(["a red square"])


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if key.startswith("sha256:"):
            manifest["files"][key[7:]]["sha256"] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def _sha(path: Path) -> str:
    from xbt_bench.atomic import sha256_of

    return sha256_of(path)


def _truncate(folder: Path) -> Path:
    path = folder / "test" / "image.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return path


def _miscount(folder: Path) -> Path:
    _rewrite_manifest(folder / "test", images=SPLITS["test"] - 1)
    return folder / "test" / "image.npy"


def _flip_a_value(folder: Path) -> Path:
    path = folder / "test" / "text.npy"
    array = np.load(path)
    array[3, 0] = -array[3, 0]
    np.save(path, array)
    return path


def _nan_rows(folder: Path) -> Path:
    path = folder / "support" / "text.npy"
    array = np.load(path)
    array[[4, 7]] = np.nan
    np.save(path, array)
    _rewrite_manifest(folder / "support", **{"sha256:text": _sha(path)})  # a user's own manifest
    return path


def _other_dimension(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    split = read_split(folder / "support")
    write_split(folder / "support", model=split.manifest.model, split="support",
                fingerprint=split.manifest.fingerprint, caption_image=split.caption_image,
                image=_unit(rng.normal(size=(SPLITS["support"], 5))),
                text=_unit(rng.normal(size=(2 * SPLITS["support"], 5))))  # fmt: skip
    return folder / "support" / "manifest.json"


DAMAGE = {
    "a truncated array": (_truncate, "truncated"),
    "a count that disagrees with the manifest": (_miscount, "rows but its manifest"),
    "a wrong checksum": (_flip_a_value, "does not match the SHA-256"),
    "NaN rows": (_nan_rows, r"NaN or inf values in rows \[4, 7\]"),
    "a dimension that disagrees between splits": (_other_dimension, "dimension 5, but split"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_embeddings_are_one_line_errors_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    folder = write_synthetic_pair(tmp_path / "embeddings") / "new"
    make, message = DAMAGE[damage]
    path = make(folder)
    with pytest.raises(XbtError, match=message) as info:
        load_model(f"embeddings:{folder}")
    text = str(info.value)
    assert str(path) in text and "\n" not in text


def test_a_truncated_parquet_table_is_named(tmp_path: Path) -> None:
    folder = write_synthetic_pair(tmp_path / "embeddings", file_format="parquet") / "old"
    path = folder / "test" / "text.parquet"
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(XbtError, match="cannot be read as Parquet") as info:
        load_model(f"embeddings:{folder}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nothing_is_scored_from_a_damaged_file(
    stored_pair: tuple[str, Path], tmp_path: Path, capsys
) -> None:
    name, folder = stored_pair
    path = _nan_rows(folder / "new")
    out = tmp_path / "results"
    code = run_cli(["run", "--pair", name, "--method", "new", "--method", "procrustes",
                    "--output-dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error:") and str(path) in err and "\n" not in err
    assert not list(out.glob("**/*.json"))


def test_pairs_add_from_embeddings_names_what_the_folder_lacks(tmp_path: Path, capsys) -> None:
    folder = write_synthetic_pair(tmp_path / "embeddings")
    args = ["pairs", "add", "p", "--from-embeddings", str(folder), "--dir", str(tmp_path)]
    for split in ("text", "support"):
        (folder / "new" / split / "manifest.json").unlink()
    assert run_cli(args) == 1
    assert "lacks the splits ['support', 'text']" in capsys.readouterr().err
    assert run_cli(["pairs", "add", "p", "--from-embeddings", str(folder), "--old", "zoo:toy-s",
                    "--dir", str(tmp_path)]) == 1  # fmt: skip
    assert "drop --old" in capsys.readouterr().err


def test_datasets_check_verifies_a_stored_split(tmp_path: Path, capsys) -> None:
    folder = write_synthetic_pair(tmp_path / "embeddings") / "old"
    assert run_cli(["datasets", "check", f"embeddings:{folder}", "--split", "test"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "images: 40" in out and "captions: 80 (2 per image)" in out
    assert "vectors: dim 12, float32, unit rows" in out
    path = _flip_a_value(folder)
    assert run_cli(["datasets", "check", f"embeddings:{folder}", "--split", "test"]) == 1
    assert str(path) in capsys.readouterr().err
