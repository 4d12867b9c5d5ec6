"""torch.distributed helpers and sharded embedding extraction (2 gloo processes); the GPU check
in its CPU mode."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xbt_bench import distributed
from xbt_bench.data.base import ImageTextSet
from xbt_bench.embed import EmbeddingCache, embed_split, split_key
from xbt_bench.embed.sharded import embed_split_sharded
from xbt_bench.errors import XbtError
from xbt_bench.losses import info_nce
from xbt_bench.models.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 23  # not a multiple of the batch sizes or of the ranks
BATCH_IMAGES, BATCH_TEXTS, SHARD_ROWS = 4, 5, 6


def random_set(n_images: int, bad_row: int | None = None) -> ImageTextSet:
    """Random 20x20 images with two captions each; loading ``bad_row`` raises."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n_images, 20, 20, 3), dtype=np.uint8)
    words = ["red", "blue", "green", "circle", "square", "left", "right", "big", "small"]
    captions = [" ".join(rng.choice(words, size=4)) + f" {i}" for i in range(2 * n_images)]

    def load_image(i: int) -> Image.Image:
        if i == bad_row:
            raise OSError(f"image {i} is unreadable")
        return Image.fromarray(pixels[i])

    return ImageTextSet(
        name="random",
        split="dist",
        n_images=n_images,
        load_image=load_image,
        captions=captions,
        caption_image=np.repeat(np.arange(n_images), 2),
    )


# Run by torchrun as 2 gloo processes; imports this module for the data and sizes.
WORKER = f"""
import json, sys
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_distributed import BATCH_IMAGES, BATCH_TEXTS, N_IMAGES, SHARD_ROWS, random_set
from xbt_bench import distributed
from xbt_bench.data.base import TextCorpus
from xbt_bench.embed import EmbeddingCache, EmbedStats
from xbt_bench.embed.sharded import embed_corpus_sharded, embed_split_sharded
from xbt_bench.errors import XbtError
from xbt_bench.losses import info_nce
from xbt_bench.models.loading import load_model

ref, cache_root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
info = distributed.init_distributed()
model = load_model(ref)
cache = EmbeddingCache(cache_root, shard_rows=SHARD_ROWS)
data = random_set(N_IMAGES)
stats = EmbedStats()
options = dict(cache=cache, stats=stats, batch_size=BATCH_IMAGES, num_workers=0)
images = embed_split_sharded(model, data, "image", **options)
texts = embed_split_sharded(model, data, "text", cache=cache, stats=stats, batch_size=BATCH_TEXTS)
again = embed_split_sharded(model, data, "image", **options)
corpus = TextCorpus.from_texts("c", data.captions)
corpus = embed_corpus_sharded(model, corpus, cache=cache, batch_size=BATCH_TEXTS)
try:  # image 20 is on rank 1: every rank must fail, and nothing may be cached
    bad = random_set(N_IMAGES, bad_row=20)
    failed = EmbeddingCache(cache_root / "failed")
    embed_split_sharded(model, bad, "image", cache=failed, batch_size=BATCH_IMAGES, num_workers=0)
    failure = ""
except XbtError as error:
    failure = str(error)

# A contrastive loss over gathered rows: every rank computes the global loss, and each rank's
# rows get the gradient summed over all ranks' copies; DDP's averaging divides it by W.
torch.manual_seed(0)
a = torch.randn(8, 5, dtype=torch.float64)
b = torch.randn(8, 5, dtype=torch.float64)
rows = slice(4 * info.rank, 4 * info.rank + 4)
local = a[rows].clone().requires_grad_(True)
gathered = distributed.all_gather_with_grad(local), distributed.all_gather_with_grad(b[rows])
loss = info_nce(*gathered, 0.1)
loss.backward()
grads = distributed.all_gather_object(local.grad / info.world_size)

part = distributed.local_slice(dict(x=torch.arange(6), y=(np.arange(12).reshape(6, 2), "s")))
try:
    distributed.local_slice(torch.arange(5))
    uneven = ""
except Exception as error:
    uneven = str(error)
report = dict(
    slice=[part["x"].tolist(), part["y"][0].tolist(), part["y"][1]], uneven=uneven,
    rank=info.rank, world=info.world_size, backend=info.backend, failure=failure,
    loss=loss.item(), stats=stats.to_dict(), grad=torch.cat(grads).tolist(),
    shard=list(distributed.shard_range(10, info.rank, info.world_size, align=4)),
)
(out / f"rank{{info.rank}}.json").write_text(json.dumps(report))
if info.is_main:
    assert np.array_equal(again, images)
    for name, array in dict(images=images, texts=texts, corpus=corpus).items():
        np.save(out / f"{{name}}.npy", np.asarray(array))
distributed.shutdown_distributed()
"""


@pytest.fixture(scope="module")
def tiny_dir_ref(tiny_weights: dict[str, Path]) -> str:
    return f"local-dir:{tiny_weights['dir']}"


@pytest.fixture(scope="module")
def two_ranks(tiny_dir_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the worker as a 2-process gloo job once; its outputs for the tests below."""
    folder = tmp_path_factory.mktemp("two-ranks")
    script = folder / "worker.py"
    script.write_text(WORKER)
    out = folder / "out"
    out.mkdir()
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    done = subprocess.run(
        [*command, "2", str(script), tiny_dir_ref, str(folder / "cache"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def _report(folder: Path, rank: int) -> dict:
    return json.loads((folder / "out" / f"rank{rank}.json").read_text())


def test_sharded_extraction_is_bit_identical_to_one_process(
    two_ranks: Path, tiny_dir_ref: str, tmp_path: Path
) -> None:
    model = load_model(tiny_dir_ref)
    cache = EmbeddingCache(tmp_path / "single")
    data = random_set(N_IMAGES)
    single_images = embed_split(model, data, "image", cache=cache, batch_size=4, num_workers=0)
    single_texts = embed_split(model, data, "text", cache=cache, batch_size=BATCH_TEXTS)
    images = np.load(two_ranks / "out" / "images.npy")
    texts = np.load(two_ranks / "out" / "texts.npy")
    assert images.shape == (N_IMAGES, 16) and texts.shape == (2 * N_IMAGES, 16)
    assert images.tobytes() == np.asarray(single_images).tobytes()
    assert texts.tobytes() == np.asarray(single_texts).tobytes()
    assert np.load(two_ranks / "out" / "corpus.npy").tobytes() == texts.tobytes()

    # One entry, committed once, with shards from both ranks (rank 1 starts at row 12 = 3x4).
    sharded = EmbeddingCache(two_ranks / "cache")
    manifest = sharded.manifest(split_key(model, data, "image"))
    assert manifest is not None and manifest["ranks"] == 2 and manifest["n_rows"] == N_IMAGES
    spans = [(s["start"], s["end"]) for s in manifest["shards"]]
    assert spans == [(0, 6), (6, 12), (12, 18), (18, 23)]


def test_each_rank_embeds_its_share_and_reuses_the_cache(two_ranks: Path) -> None:
    ranks = [_report(two_ranks, r) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    for report, (images, texts) in zip(ranks, [(12, 25), (11, 21)], strict=True):
        first, second, third = report["stats"]["records"]
        assert (first["rows"], first["computed"]) == (images, True)
        assert (second["rows"], second["computed"]) == (texts, True)
        assert (third["rows"], third["computed"]) == (N_IMAGES, False)  # second call: a hit
    assert ranks[0]["shard"] == [0, 1, 2, 3] and ranks[1]["shard"] == [4, 5, 6, 7, 8, 9]


def test_a_failing_rank_fails_every_rank_and_caches_nothing(two_ranks: Path) -> None:
    for rank in (0, 1):
        failure = _report(two_ranks, rank)["failure"]
        assert "rank 1: OSError: image 20 is unreadable" in failure
        assert "nothing was cached" in failure
    failed = two_ranks / "cache" / "failed"
    assert not list(failed.glob("*/manifest.json"))
    assert not list(failed.glob("*/attempt-*"))


def test_each_rank_gets_its_slice_of_a_global_batch(two_ranks: Path) -> None:
    first, second = (_report(two_ranks, r) for r in (0, 1))
    assert first["slice"] == [[0, 1, 2], [[0, 1], [2, 3], [4, 5]], "s"]
    assert second["slice"] == [[3, 4, 5], [[6, 7], [8, 9], [10, 11]], "s"]
    assert "a global batch of 5 does not split over 2 processes" in first["uneven"]
    batch = {"x": torch.arange(5)}
    assert distributed.local_slice(batch) is batch  # one process: the whole batch


def test_gathered_contrastive_gradient_equals_the_global_batch_gradient(two_ranks: Path) -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, 5, dtype=torch.float64)
    loss = info_nce(a, b, 0.1)
    loss.backward()
    for rank in (0, 1):
        report = _report(two_ranks, rank)
        assert report["loss"] == pytest.approx(loss.item(), abs=1e-12)
        np.testing.assert_allclose(np.array(report["grad"]), a.grad.numpy(), atol=1e-12)


def test_single_process_helpers_are_identities(tiny_dir_ref: str, tmp_path: Path) -> None:
    info = distributed.init_distributed()
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x
    assert distributed.all_gather_object("a") == ["a"]
    assert torch.equal(distributed.all_reduce(x, "mean"), x.detach())
    assert distributed.broadcast_object(7) == 7
    assert distributed.rank_zero_only(lambda: 5)() == 5
    distributed.barrier()
    model = load_model(tiny_dir_ref)
    data = random_set(5)
    cache = EmbeddingCache(tmp_path / "one")
    out = embed_split_sharded(model, data, "image", cache=cache, num_workers=0)
    assert np.array_equal(out, embed_split(model, data, "image", cache=cache, num_workers=0))


def test_shard_ranges_tile_rows_on_batch_boundaries() -> None:
    for n, world, align in [(0, 2, 4), (23, 2, 4), (23, 3, 5), (5, 4, 1), (1000, 8, 256)]:
        parts = [distributed.shard_range(n, r, world, align) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % align == 0 for p in parts if len(p))
    assert distributed.shard_range(1000, 3, 4, 256) == range(768, 1000)
    with pytest.raises(XbtError, match="cannot shard"):
        distributed.shard_range(10, 2, 2)


def test_torchrun_without_its_variables_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(XbtError, match="torchrun --nproc-per-node"):
        distributed.init_distributed()


def test_gpu_check_runs_its_cpu_mode_without_cuda() -> None:
    env = os.environ | {
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--steps", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "CUDA is not available: running the stage-2 step benchmark at a tiny size" in out
    speed = re.search(r"batch 8, 2 timed steps .*: ([\d.]+) s/step, ([\d.]+) images/s", out)
    assert speed and float(speed[1]) > 0 and float(speed[2]) > 0, out
    share = re.search(r"= ([\d.]+)% of NEW", out)
    assert share and 0 < float(share[1]) < 100
    assert re.search(r"peak process RSS: [\d.]+ GiB", out)
