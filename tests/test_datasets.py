"""On-disk datasets (CLIP_benchmark sets, large-scale variants, webdatasets, folders), text
corpora, reported rows and the `datasets` CLI, all on tiny data written here."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xbt_bench.cli import main
from xbt_bench.data.registry import (
    DATASET_INFOS,
    check_dataset,
    corpus_summary,
    dataset_info,
    datasets,
    load_dataset,
    load_text_corpus,
)
from xbt_bench.errors import NotFoundError, XbtError

N_FLICKR = 12


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def image_array(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_array(seed)).save(path)


def flickr_captions(i: int) -> list[str]:
    """1 to 3 distinct captions for image i, some with commas."""
    return [f"photo {i} of a thing, variant {c}" for c in range(1 + i % 3)]


@pytest.fixture
def flickr_root(tmp_path: Path) -> Path:
    """A Flickr30k root in CLIP_benchmark's layout: *.jpg + flickr30k_test_karpathy.txt, with
    one of image 1002's rows moved to the end of the file."""
    root = tmp_path / "flickr30k"
    rows = []
    for i in range(N_FLICKR):
        write_image(root / f"{1000 + i}.jpg", i)
        rows += [f"{1000 + i}.jpg,{caption}" for caption in flickr_captions(i)]
    rows.append(rows.pop(rows.index("1002.jpg,photo 2 of a thing, variant 0")))
    (root / "flickr30k_test_karpathy.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return root


def test_flickr_loads_with_clip_benchmark_order_and_captions(flickr_root: Path) -> None:
    data = load_dataset("flickr30k", "test", flickr_root)
    assert data.key == "flickr30k/test" and data.n_images == N_FLICKR
    counts = [1 + i % 3 for i in range(N_FLICKR)]
    assert len(data.captions) == sum(counts) == 24
    # Image 1002 keeps index 2 (first appearance); its captions stay in file order.
    assert [c[-9:] for c in data.captions[3:6]] == ["variant 1", "variant 2", "variant 0"]
    assert data.caption_image.tolist() == np.repeat(np.arange(N_FLICKR), counts).tolist()
    image = data.load_image(5)
    assert image.mode == "RGB" and image.size == (24, 24)
    with Image.open(flickr_root / "1005.jpg") as expected:
        assert np.array_equal(np.asarray(image), np.asarray(expected.convert("RGB")))


def test_old_old_recalls_equal_clip_benchmark(flickr_root: Path, tiny_weights: dict) -> None:
    import torch
    import torch.nn.functional as F
    from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    from xbt_bench.eval.retrieval import evaluate_retrieval
    from xbt_bench.models.loading import load_model

    loaded = load_model(f"xbt-test-tiny:{tiny_weights['pt']}")
    data = load_dataset("flickr30k", "test", flickr_root)
    with torch.no_grad():
        pixels = torch.stack([loaded.preprocess(data.load_image(i)) for i in range(data.n_images)])
        images = F.normalize(loaded.model.encode_image(pixels), dim=-1).numpy()
        texts = F.normalize(
            loaded.model.encode_text(loaded.tokenizer(list(data.captions))), dim=-1
        ).numpy()
    ours = evaluate_retrieval(
        text_queries=texts, image_gallery=images, image_queries=images, text_gallery=texts,
        caption_image=data.caption_image,
    ).metrics

    reference = build_dataset(
        "flickr30k", root=str(flickr_root), split="test", transform=loaded.preprocess,
        download=False, task="zeroshot_retrieval",
    )
    loader = torch.utils.data.DataLoader(
        reference, batch_size=5, collate_fn=image_captions_collate_fn
    )
    theirs = evaluate(loaded.model, loader, loaded.tokenizer, "cpu", amp=False,
                      recall_k_list=[1, 5, 10])
    for k in (1, 5, 10):
        assert ours[f"t2i_r{k}"] == pytest.approx(100 * theirs[f"image_retrieval_recall@{k}"])
        assert ours[f"i2t_r{k}"] == pytest.approx(100 * theirs[f"text_retrieval_recall@{k}"])
    # A random model on random images: recalls are neither all perfect nor all zero.
    assert 0 < ours["t2i_r5"] < 100 and ours["rsum"] < 600


def test_root_may_be_a_parent_folder_or_a_template(flickr_root: Path) -> None:
    direct = load_dataset("flickr30k", "test", flickr_root)
    parent = load_dataset("flickr30k", "test", flickr_root.parent)
    template = load_dataset("flickr30k", "test", str(flickr_root.parent / "{dataset}"))
    assert direct.fingerprint == parent.fingerprint == template.fingerprint


def test_fingerprint_follows_content_not_location(flickr_root: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(flickr_root, tmp_path / "elsewhere")
    original = load_dataset("flickr30k", "test", flickr_root).fingerprint
    assert load_dataset("flickr30k", "test", moved).fingerprint == original
    annotation = moved / "flickr30k_test_karpathy.txt"
    annotation.write_text(annotation.read_text().replace("variant 0", "variant zero", 1))
    assert load_dataset("flickr30k", "test", moved).fingerprint != original
    shutil.copy(moved / "1001.jpg", moved / "1000.jpg")  # same name, other bytes
    annotation.write_text((flickr_root / "flickr30k_test_karpathy.txt").read_text())
    assert load_dataset("flickr30k", "test", moved).fingerprint != original


def test_clip_benchmark_download_and_exit_are_refused(tmp_path: Path, monkeypatch) -> None:
    from clip_benchmark.datasets import builder

    from xbt_bench.data.clip_benchmark import build_with_clip_benchmark

    missing = tmp_path / "absent"
    annotation = missing / "flickr30k_test_karpathy.txt"
    # Its download path starts with `call("which kaggle")`: refused, nothing runs.
    with pytest.raises(XbtError, match="never downloads"):
        build_with_clip_benchmark("flickr30k", "test", missing, annotation)
    monkeypatch.setattr(builder, "has_kaggle", lambda: False)  # then it calls sys.exit(1)
    with pytest.raises(XbtError, match="CLIP_benchmark stopped"):
        build_with_clip_benchmark("flickr30k", "test", missing, annotation)
    assert not missing.exists()


def coco_file(images: list[tuple[int, str]], captions: list[tuple[int, str]]) -> str:
    return json.dumps({
        "images": [{"id": i, "file_name": name} for i, name in images],
        "annotations": [
            {"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(captions)
        ],
    })


def test_mscoco_captions_orders_images_by_id(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    names = {7: "COCO_val2014_000000000007.jpg", 3: "COCO_val2014_000000000003.jpg",
             5: "COCO_val2014_000000000005.jpg"}
    for seed, name in enumerate(names.values()):
        write_image(root / "val2014" / name, seed)
    captions = [(7, "seven a"), (3, "three a"), (7, "seven b"), (5, "five a"), (3, "three b")]
    (root / "coco_test_karpathy.json").write_text(coco_file(list(names.items()), captions))
    data = load_dataset("mscoco_captions", "test", tmp_path / "coco")
    assert list(data.captions) == ["three a", "three b", "five a", "seven a", "seven b"]
    assert data.caption_image.tolist() == [0, 0, 1, 2, 2]
    assert data.load_image(2).size == (24, 24)
    with pytest.raises(NotFoundError, match="train2014"):
        (root / "coco_train_karpathy.json").write_text(coco_file([], []))
        load_dataset("mscoco_captions", "train", root)


def karpathy_file(entries: list[tuple[str, str, str, list[str]]]) -> str:
    return json.dumps({"images": [
        {"filepath": path, "filename": name, "split": split,
         "sentences": [{"raw": raw, "tokens": raw.split()} for raw in raws]}
        for path, name, split, raws in entries
    ]})


def test_large_scale_variants_read_whole_karpathy_and_nocaps_sets(
    flickr_root: Path, tmp_path: Path
) -> None:
    splits = ("train", "val", "test")
    entries = [("", f"{1000 + i}.jpg", splits[i % 3], [f"cap {i} a ", f"cap {i} b"])
               for i in range(N_FLICKR)]
    (flickr_root / "dataset_flickr30k.json").write_text(karpathy_file(entries))
    whole = load_dataset("flickr30k-all", "all", flickr_root)
    assert whole.n_images == N_FLICKR and len(whole.captions) == 2 * N_FLICKR
    assert whole.captions[0] == "cap 0 a" and whole.caption_image[-1] == N_FLICKR - 1

    coco = tmp_path / "mscoco_captions"
    coco_entries = []
    for i, split in enumerate(("val", "restval", "test", "train", "restval")):
        folder = "train2014" if split == "train" else "val2014"
        write_image(coco / folder / f"img{i}.jpg", i)
        coco_entries.append((folder, f"img{i}.jpg", split, [f"coco {i}"]))
    (coco / "dataset_coco.json").write_text(karpathy_file(coco_entries))
    val_restval = load_dataset("coco-karpathy-val-restval", "val+restval", tmp_path)
    assert list(val_restval.captions) == ["coco 0", "coco 1", "coco 4"]

    nocaps = tmp_path / "nocaps"
    for i in range(3):
        write_image(nocaps / "val" / f"{i:016x}.jpg", i)
    captions = [(i, f"nocaps {i} {c}") for c in range(10) for i in range(3)]
    (nocaps / "nocaps_val_4500_captions.json").write_text(
        coco_file([(i, f"{i:016x}.jpg") for i in range(3)], captions)
    )
    val = load_dataset("nocaps-val", "val", tmp_path)
    assert val.n_images == 3 and len(val.captions) == 30
    assert val.captions[:2] == ["nocaps 0 0", "nocaps 0 1"]
    with pytest.raises(NotFoundError, match="no split 'test'"):
        load_dataset("nocaps-val", "test", tmp_path)


def write_wds(root: Path, split: str, samples: list[dict], maxcount: int) -> None:
    """Shards in CLIP_benchmark's retrieval layout, as its exporter writes them."""
    import webdataset as wds

    (root / split).mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    sink = wds.ShardWriter(str(root / split / "%d.tar"), maxcount=maxcount, verbose=0)
    for index, sample in enumerate(samples):
        sink.write({"__key__": f"s{index:07d}", **sample})
    shards = sink.shard
    sink.close()
    (root / split / "nshards.txt").write_text(f"{shards}\n")


def encoded(seed: int, fmt: str) -> bytes:
    stream = io.BytesIO()
    options = {"lossless": True} if fmt == "webp" else {}
    Image.fromarray(image_array(seed)).save(stream, format=fmt, **options)
    return stream.getvalue()


@pytest.fixture
def wds_root(tmp_path: Path) -> Path:
    samples = []
    for i in range(7):
        sample = {"webp": encoded(i, "webp"), "txt": "\n".join(flickr_captions(i))}
        if i == 3:  # png and jpg: CLIP_benchmark picks png (webp, png, jpg, jpeg order)
            sample = {"jpg": encoded(100, "jpeg"), "png": encoded(i, "png"), "txt": "only one"}
        samples.append(sample)
    write_wds(tmp_path / "wds_tiny", "test", samples, maxcount=3)
    return tmp_path


@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")
def test_webdataset_matches_clip_benchmark_reader(wds_root: Path) -> None:
    from clip_benchmark.datasets.builder import build_wds_dataset

    data = load_dataset("wds/tiny", "test", wds_root)
    assert data.key == "wds/tiny/test" and data.n_images == 7
    reference = list(build_wds_dataset("tiny", transform=None, split="test",
                                       data_dir=str(wds_root / "wds_tiny")))
    assert [len(captions) for _, captions in reference] == np.bincount(data.caption_image).tolist()
    assert list(data.captions) == [c for _, captions in reference for c in captions]
    load_image = pickle.loads(pickle.dumps(data.load_image))
    for index, (image, _) in enumerate(reference):
        assert np.array_equal(np.asarray(load_image(index)), np.asarray(image.convert("RGB")))
    assert np.array_equal(np.asarray(data.load_image(3)), image_array(3))  # the png, losslessly
    assert data.load_image.describe()["shards"].startswith("3 ")


def test_webdataset_errors(wds_root: Path) -> None:
    with pytest.raises(NotFoundError, match="val/nshards.txt not found"):
        load_dataset("wds/tiny", "val", wds_root)
    (wds_root / "wds_tiny" / "test" / "2.tar").unlink()
    with pytest.raises(NotFoundError, match="1 of 3 shards"):
        load_dataset("wds/tiny", "test", wds_root)
    (wds_root / "wds_tiny" / "dataset_type.txt").write_text("classification\n")
    with pytest.raises(XbtError, match="not a retrieval one"):
        load_dataset("wds/tiny", "test", wds_root)


FOLDER_ROWS = [
    ("images/a.png", "a red, round thing"),
    ("images/b.png", 'a "quoted" caption'),
    ("images/a.png", "the same red thing again"),
    ("images/c.png", "a third image"),
]


def write_folder(folder: Path, fmt: str, rows: list[tuple[str, str]] = FOLDER_ROWS,
                 split: str = "test") -> Path:
    for seed, name in enumerate(("a", "b", "c")):
        write_image(folder / "images" / f"{name}.png", seed)
    if fmt == "csv":
        import csv

        with (folder / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption"])
            writer.writerows(rows)
    else:
        lines = [json.dumps({"image": image, "caption": caption}) for image, caption in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_dataset_groups_captions_by_image(tmp_path: Path, fmt: str) -> None:
    folder = write_folder(tmp_path / "mine", fmt)
    data = load_dataset(f"folder:{folder}", "test")
    assert data.n_images == 3
    # Grouped by image in order of first appearance, as CLIP_benchmark's Flickr reader does.
    assert list(data.captions) == [FOLDER_ROWS[i][1] for i in (0, 2, 1, 3)]
    assert data.caption_image.tolist() == [0, 0, 1, 2]
    assert np.array_equal(np.asarray(data.load_image(2)), image_array(2))
    # Picklable, for data-loader workers.
    unpickled = pickle.loads(pickle.dumps(data.load_image))
    assert np.array_equal(np.asarray(unpickled(2)), image_array(2))
    # Relative to --data-root, and the annotation file itself, give the same set.
    assert load_dataset("folder:mine", "test", tmp_path).fingerprint == data.fingerprint
    assert load_dataset(f"folder:{folder}/test.{fmt}", "test").fingerprint == data.fingerprint


def test_folder_fingerprint_ignores_format_and_place(tmp_path: Path) -> None:
    as_csv = load_dataset(f"folder:{write_folder(tmp_path / 'x', 'csv')}", "test")
    as_jsonl = load_dataset(f"folder:{write_folder(tmp_path / 'y', 'jsonl')}", "test")
    assert as_csv.fingerprint == as_jsonl.fingerprint


def test_jsonl_caption_lists_and_bad_rows(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    write_folder(folder, "jsonl")
    (folder / "test.jsonl").write_text(
        json.dumps({"image": "images/b.png", "caption": ["one", "two"]}) + "\n"
    )
    data = load_dataset(f"folder:{folder}", "test")
    assert data.n_images == 1 and list(data.captions) == ["one", "two"]
    (folder / "test.jsonl").write_text('{"image": "images/b.png", "caption": "x"}\nnot json\n')
    with pytest.raises(XbtError, match="line 2 is not JSON"):
        load_dataset(f"folder:{folder}", "test")
    (folder / "test.csv").write_text("path,words\nimages/a.png,x\n")
    (folder / "test.jsonl").unlink()
    with pytest.raises(XbtError, match="needs a header row"):
        load_dataset(f"folder:{folder}", "test")


def test_text_corpus_is_deduplicated_with_size_and_source(tmp_path: Path) -> None:
    text_file = tmp_path / "captions.txt"
    text_file.write_text("a dog\n\n a dog \na cat\na dog\n")
    corpus = load_text_corpus(str(text_file))
    assert list(corpus.texts) == ["a dog", "a cat"]
    summary = corpus_summary(corpus)
    assert summary["size"] == 2 and "4 non-empty lines" in summary["source"]
    assert summary["fingerprint"] == corpus.fingerprint

    rows = [*FOLDER_ROWS, ("images/b.png", "a third image")]
    folder = write_folder(tmp_path / "mine", "csv", rows)
    from_data = load_text_corpus(f"folder:{folder}:test")
    assert from_data.name == f"folder:{folder}:test"
    assert len(from_data.texts) == 4 and "(5)" in from_data.source

    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(XbtError, match="has no captions"):
        load_text_corpus(str(tmp_path / "empty.txt"))


def test_reported_rows_carry_citations_and_protocol() -> None:
    from xbt_bench.data.reported import CITATIONS, REPORTED_LABEL, load_reported

    table = load_reported()
    assert len(table) == 21 and table["reported"].all()
    assert set(table["protocol"]) == {"large-scale"}
    assert set(table["source_key"]) == {"ricci2026spherical"}
    assert table["citation"].eq(CITATIONS["ricci2026spherical"]).all()
    assert "jang2025xbt" in table["source"].iloc[0] and REPORTED_LABEL == "reported, not re-run"
    l14 = load_reported(old="ViT-B-32:openai", new="ViT-L-14:openai", dataset="flickr30k-all")
    old = l14[l14["setting"] == "old→old"].iloc[0]
    assert (old["i2t_r1"], old["t2i_r10"]) == (40.62, 51.10)
    assert old["rsum"] == pytest.approx(40.62 + 64.75 + 73.72 + 21.73 + 41.56 + 51.10)
    slerp = l14[l14["method"] == "slerp"].iloc[0]
    assert slerp["setting"] == "slerp→old" and slerp["support"] == "text"
    assert np.isnan(slerp["rsum"]) and slerp["i2t_r1"] == 48.00
    # Every reported dataset is a dataset users can run.
    assert set(table["dataset"]) <= set(datasets.names())


def test_registry_lists_and_resolves_every_dataset() -> None:
    assert [info.name for info in DATASET_INFOS] == datasets.names()
    for info in DATASET_INFOS:
        if info.kind != "toy world":
            assert callable(datasets.get(info.name))
    assert dataset_info("flickr30k-all").default_split == "all"
    assert dataset_info("folder:/x").default_split == "test"
    assert dataset_info("mscoco_captions").default_split == "test"
    with pytest.raises(NotFoundError, match="did you mean 'flickr30k'"):
        load_dataset("flickr30", "test", None)


def test_cli_list_and_check(flickr_root: Path, wds_root: Path, capsys) -> None:
    code, out, _ = run_cli(["datasets", "list"], capsys)
    assert code == 0
    for name in ("flickr30k", "mscoco_captions", "nocaps-val", "wds/<name>", "folder:PATH"):
        assert name in out
    code, out, err = run_cli(["datasets", "check", "flickr30k", "--data-root", str(flickr_root)],
                             capsys)
    assert code == 0, err
    assert "flickr30k/test: ok" in out and "images: 12" in out
    assert "captions: 24 (1-3 per image)" in out and "differs from the published size" in out
    code, out, err = run_cli(["datasets", "check", "wds/tiny", "--data-root", str(wds_root)],
                             capsys)
    assert code == 0, err
    assert "images: 7" in out and "captions: 13" in out
    found = check_dataset("flickr30k", "test", flickr_root)
    assert found.sources["annotation"].endswith("flickr30k_test_karpathy.txt")


def test_cli_check_errors_are_one_line(flickr_root: Path, tmp_path: Path, capsys) -> None:
    def check(*args: str) -> tuple[int, str]:
        code, _, err = run_cli(["datasets", "check", *args], capsys)
        return code, err

    code, err = check("flickr30k", "--data-root", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "nowhere", "does not exist")
    code, err = check("flickr30k")
    assert_one_line_error(code, err, "--data-root")
    code, err = check("flickr30k", "--data-root", str(flickr_root), "--split", "val")
    assert_one_line_error(code, err, "flickr30k_val_karpathy.txt not found",
                          "github.com/mehdidc/retrieval_annotations")
    (flickr_root / "flickr30k_val_karpathy.txt").write_text("")
    code, err = check("flickr30k", "--data-root", str(flickr_root), "--split", "val")
    assert_one_line_error(code, err, "flickr30k_val_karpathy.txt is empty")
    (flickr_root / "flickr30k_val_karpathy.txt").write_text("image,caption\n")
    code, err = check("flickr30k", "--data-root", str(flickr_root), "--split", "val")
    assert_one_line_error(code, err, "lists no images")
    (flickr_root / "1003.jpg").unlink()
    code, err = check("flickr30k", "--data-root", str(flickr_root))
    assert_one_line_error(code, err, "1 of 12 images", "(first: 1003.jpg)")
    code, err = check("flickr30k", "--data-root", str(flickr_root), "--split", "dev")
    assert_one_line_error(code, err, "no split 'dev'")

    folder = write_folder(tmp_path / "mine", "csv", [*FOLDER_ROWS, ("images/gone.png", "x")])
    code, err = check(f"folder:{folder}")
    assert_one_line_error(code, err, "1 of 4 images", "test.csv", "images/gone.png")
    (folder / "test.csv").write_text("")
    code, err = check(f"folder:{folder}")
    assert_one_line_error(code, err, "test.csv is empty")
    (folder / "test.csv").write_text("image,caption\n")
    code, err = check(f"folder:{folder}")
    assert_one_line_error(code, err, "no image,caption rows")
    code, err = check(f"folder:{folder}", "--split", "train")
    assert_one_line_error(code, err, "no train.csv or train.jsonl", "test.csv")
