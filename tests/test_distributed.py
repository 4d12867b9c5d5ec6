"""torch.distributed helpers, sharded embedding extraction and DDP training (2 gloo processes,
compared with one process on the same global batch); the GPU check in its CPU mode."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
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
from xbt_bench.eval import Embeddings
from xbt_bench.losses import info_nce
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.methods import stage2 as stage2_module
from xbt_bench.methods.base import SIDES, FittedMethod
from xbt_bench.models.loading import load_model
from xbt_bench.results import RunResult, SweepResult
from xbt_bench.scoring import score
from xbt_bench.toy.build import ensure_checkpoint
from xbt_bench.toy.world import ToyConfig, toy_split, toy_text_corpus
from xbt_bench.toy.zoo import ZooSettings
from xbt_bench.train import TrainConfig, train

pytestmark = pytest.mark.slow  # torchrun subprocesses (minutes)

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
    torchrun(str(script), tiny_dir_ref, str(folder / "cache"), str(out))
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
    # images split at multiples of their batch (4), captions at their sort blocks (4 x 5)
    for report, (images, texts) in zip(ranks, [(12, 20), (11, 26)], strict=True):
        first, second, third = report["stats"]["records"]
        assert (first["rows"], first["computed"]) == (images, True)
        assert (second["rows"], second["computed"]) == (texts, True)
        assert (third["rows"], third["computed"]) == (N_IMAGES, False)  # second call: a hit
    assert ranks[0]["shard"] == [0, 1, 2, 3] and ranks[1]["shard"] == [4, 5, 6, 7, 8, 9]


def test_a_failing_rank_fails_every_rank_and_caches_nothing(two_ranks: Path) -> None:
    for rank in (0, 1):
        failure = _report(two_ranks, rank)["failure"]
        assert "rank 1: InputError: image 20 of random/dist cannot be read" in failure
        assert "(OSError: image 20 is unreadable)" in failure
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


# --- DDP training under torchrun: the shared loop, XBT stage 2, toy-zoo builds, `run` ---------

TOY_DDP = ToyConfig(
    image_size=16, n_pretrain=4, n_text=60, n_pairs=24, n_support=12, n_test=12, n_test_hard=6
)
# LoRA on both towers and a trainable ψ, so every kind of trained weight is compared.
XBT_DDP = {
    "proj_steps": 20,
    "proj_batch": 32,
    "proj_hidden": 32,
    "proj_warmup": 2,
    "steps": 8,
    "batch": 8,
    "warmup": 2,
    "checkpoint_every": 3,
    "lora_towers": "both",
    "psi_lr_scale": 0.5,
}
STAGE2_METHODS = ("xbt", "distill", "finetune")
KILL_STEP = 4  # stage 2 of xbt dies before step 4; its last checkpoint is step 3
LOOP_DDP = TrainConfig(steps=12, lr=0.05, warmup_steps=2, checkpoint_every=5, log_every=4)
ZOO_DDP = ZooSettings(
    steps=6,
    batch_size=32,
    lr=2e-3,
    temperature=0.05,
    learn_temperature=True,
    warmup_steps=2,
    data=ToyConfig(n_pretrain=96, n_text=8, n_pairs=8, n_support=8, n_test=40, n_test_hard=8),
)
# 1 vs 2 processes: same global batch, so the same training up to float rounding (the ranks
# encode half batches and DDP averages the two halves' gradients).
WEIGHT_TOL = 1e-4  # max |w_1 - w_2| over every trained weight
RECALL_TOL = 0.1  # recall points


class Killed(Exception):
    """Stands in for a kill of the job during stage 2."""


def regression(rows: int = 8) -> tuple[torch.nn.Module, object, object]:
    """A small regression (no dropout: its masks depend on the batch shape) with a frozen bias."""
    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    module[0].bias.requires_grad_(False)
    target = torch.nn.Linear(8, 1)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(1000 + step))
        return x, target(x).detach()

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": torch.nn.functional.mse_loss(module(x), y)}

    return module, loss_fn, batch_at


def fit_stage2(
    old_ref: str, new_ref: str, work_dir: Path, method: str = "xbt", kill_at: int | None = None
) -> tuple[FitContext, FittedMethod]:
    """``method`` (xbt, distill or finetune) on the tiny toy world with the XBT_DDP settings it
    has; with ``kill_at``, stage 2 raises Killed before that step."""
    ctx = FitContext(
        old=ModelHandle(old_ref),
        new=ModelHandle(new_ref),
        text_corpus=toy_text_corpus(TOY_DDP),
        train_pairs=toy_split("pairs", TOY_DDP),
        support=toy_split("support", TOY_DDP),
        work_dir=work_dir,
        config={k: v for k, v in XBT_DDP.items() if k in methods.get(method).settings.model_fields},
        num_workers=0,
    )
    real_train = stage2_module.train

    def killable_train(module, loss_fn, batch_at, config, checkpoint_dir, desc="", **kw):  # noqa: ANN001, ANN202
        def batches(step: int) -> object:
            if kill_at is not None and "stage 2" in desc and step == kill_at:
                raise Killed(f"killed before step {step}")
            return batch_at(step)

        return real_train(module, loss_fn, batches, config, checkpoint_dir, desc=desc, **kw)

    stage2_module.train = killable_train
    try:
        return ctx, methods.get(method)(ctx)
    finally:
        stage2_module.train = real_train


def query_metrics(ctx: FitContext, fitted: FittedMethod) -> dict[str, float]:
    """Recall of ``fitted``'s queries against OLD's gallery on the tiny toy test split."""
    test = toy_split("test", TOY_DDP)
    gallery = Embeddings(*(ctx.embed("old", test, side, count=False) for side in SIDES))
    queries = Embeddings(fitted.encode_images(test), fitted.encode_texts(test))
    return score(queries, gallery, test.caption_image).metrics


def stage2_weights(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained weights (LoRA and ψ) in a finished stage-2 checkpoint."""
    saved = torch.load(Path(checkpoint_dir) / "last.pt", map_location="cpu", weights_only=True)
    return saved["trainable"]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# Run by torchrun as 2 gloo processes; the helpers above are shared with the reference runs.
DDP_WORKER = f"""
import json, os, sys
from pathlib import Path
import torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_distributed as t
from xbt_bench import distributed
from xbt_bench.errors import ConfigError
from xbt_bench.toy.build import ensure_checkpoint
from xbt_bench.train import train


old_ref, new_ref, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
info = distributed.init_distributed()
torch.set_num_threads(1)
report = dict(rank=info.rank)

# The shared loop, each rank pointed at its own folder: only rank 0's may be written.
module, loss_fn, batch_at = t.regression()
log = train(module, loss_fn, batch_at, t.LOOP_DDP, out / f"loop-rank{{info.rank}}", desc="loop")
report["loop_curve"] = log.curve
report["loop_weights"] = [p.detach().flatten().tolist() for p in module.parameters()]
try:
    train(*t.regression(rows=5), t.LOOP_DDP, out / "uneven", desc="uneven")
    report["uneven"] = ""
except ConfigError as error:
    report["uneven"] = str(error)

for method in t.STAGE2_METHODS:
    ctx, fitted = t.fit_stage2(old_ref, new_ref, out / "stage2", method)
    report[method] = dict(metrics=t.query_metrics(ctx, fitted), stage2=fitted.info["stage2"])
try:
    t.fit_stage2(old_ref, new_ref, out / "killed", kill_at=t.KILL_STEP)
    report["killed"] = False
except t.Killed:
    report["killed"] = True
ctx, resumed = t.fit_stage2(old_ref, new_ref, out / "killed")
report["resumed"] = dict(metrics=t.query_metrics(ctx, resumed), stage2=resumed.info["stage2"])

os.environ["XBT_BENCH_HOME"] = str(out / "zoo-home")
report["zoo"] = str(ensure_checkpoint("toy-s", settings=t.ZOO_DDP))
(out / f"rank{{info.rank}}.json").write_text(json.dumps(report))
distributed.shutdown_distributed()
"""


@pytest.fixture(scope="module")
def ddp_refs(tiny_weights: dict[str, Path], tiny_weights_seed1: Path) -> tuple[str, str]:
    """OLD (the tiny model) and NEW (the tiny architecture, other weights) as local-dir refs,
    which carry their config into any process."""
    new = tiny_weights_seed1.parent / "local"
    new.mkdir(exist_ok=True)
    shutil.copy(tiny_weights_seed1, new / "open_clip_model.safetensors")
    shutil.copy(tiny_weights["dir"] / "open_clip_config.json", new / "open_clip_config.json")
    return f"local-dir:{tiny_weights['dir']}", f"local-dir:{new}"


def torchrun(*args: str, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` with one thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"} | env
    done = subprocess.run(
        [*command, "2", *args], env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_runs(ddp_refs: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the DDP worker as a 2-process gloo job once; its output folder."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(DDP_WORKER)
    out = folder / "out"
    out.mkdir()
    torchrun(str(script), *ddp_refs, str(out))
    return out


def _ddp_report(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


def test_ddp_loop_equals_one_process_and_only_rank_0_writes(ddp_runs: Path, tmp_path: Path) -> None:
    module, loss_fn, batch_at = regression()
    log = train(module, loss_fn, batch_at, LOOP_DDP, tmp_path)
    single = [p.detach().flatten().tolist() for p in module.parameters()]
    first, second = (_ddp_report(ddp_runs, r) for r in (0, 1))
    assert first["loop_weights"] == second["loop_weights"]  # DDP keeps the ranks in step
    for ours, theirs in zip(first["loop_weights"], single, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # the curve holds the global batch's loss (the mean of the ranks' half-batch losses)
    assert [e["step"] for e in first["loop_curve"]] == [4, 8, 12]
    for ours, theirs in zip(first["loop_curve"], log.curve, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    written = {p.name for p in (ddp_runs / "loop-rank0").iterdir()}
    assert written == {
        "last.pt", "last.pt.sha256", "previous.pt", "previous.pt.sha256", "train_log.json"
    }
    assert not (ddp_runs / "loop-rank1").exists()  # rank 1 wrote nothing, not even the folder
    for report in (first, second):
        assert "uneven: a global batch of 5 does not split over 2 processes" in report["uneven"]


@pytest.mark.parametrize("method", STAGE2_METHODS)
def test_ddp_stage2_equals_one_process_on_the_same_global_batch(
    ddp_runs: Path, ddp_refs: tuple[str, str], tmp_path: Path, method: str
) -> None:
    ctx, single = fit_stage2(*ddp_refs, tmp_path, method)
    metrics = query_metrics(ctx, single)
    expected = stage2_weights(single.info["stage2"]["checkpoint_dir"])
    first, second = (_ddp_report(ddp_runs, r) for r in (0, 1))
    assert first[method]["metrics"] == second[method]["metrics"]
    for key, value in metrics.items():
        assert abs(first[method]["metrics"][key] - value) <= RECALL_TOL, key
    weights = stage2_weights(first[method]["stage2"]["checkpoint_dir"])
    assert any(k.startswith("psi.") for k in weights)
    trained = "lora_B" if method != "finetune" else "clip.visual.conv1"
    assert any(trained in k for k in weights)
    assert max_abs_diff(weights, expected) < WEIGHT_TOL
    curve, single_curve = first[method]["stage2"]["curve"], single.info["stage2"]["curve"]
    assert [e["step"] for e in curve] == [e["step"] for e in single_curve]
    for ours, theirs in zip(curve, single_curve, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def test_ddp_resume_after_a_kill_gives_the_same_weights(ddp_runs: Path) -> None:
    first = _ddp_report(ddp_runs, 0)
    assert first["killed"] and first["resumed"]["stage2"]["resumed_from_step"] == 3
    straight = stage2_weights(first["xbt"]["stage2"]["checkpoint_dir"])
    resumed = stage2_weights(first["resumed"]["stage2"]["checkpoint_dir"])
    assert max_abs_diff(straight, resumed) == 0.0  # bit-identical, as in one process
    assert first["resumed"]["metrics"] == first["xbt"]["metrics"]


def test_ddp_toy_model_build_equals_one_process(
    ddp_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path))
    single = load_file(str(ensure_checkpoint("toy-s", settings=ZOO_DDP)))
    first, second = (_ddp_report(ddp_runs, r) for r in (0, 1))
    assert first["zoo"] == second["zoo"]
    ours = load_file(first["zoo"])
    assert max_abs_diff(ours, single) < WEIGHT_TOL
    assert float(ours["logit_scale"]) != pytest.approx(np.log(1 / ZOO_DDP.temperature))  # learned
    folder = Path(first["zoo"]).parent
    assert not (folder / "training").exists()  # rank 0 removed the optimizer state


def write_folder_pair(root: Path, old_ref: str, new_ref: str) -> str:
    """The tiny toy world as folder datasets (PNG files plus CSVs) and a caption file, and a
    pair file of OLD -> NEW on them in ``root / "pairs"``; the pair's name."""
    shapes = root / "shapes"
    for split in ("pairs", "support", "test"):
        data = toy_split(split, TOY_DDP)
        (shapes / split).mkdir(parents=True)
        for image in range(data.n_images):
            data.load_image(image).save(shapes / split / f"{image:03d}.png")
        with open(shapes / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for caption, image in zip(data.captions, data.caption_image, strict=True):
                writer.writerow([f"{split}/{image:03d}.png", caption])
    captions = root / "captions.txt"
    captions.write_text("\n".join(toy_text_corpus(TOY_DDP).texts) + "\n")
    (root / "pairs").mkdir()
    (root / "pairs" / "ddp-tiny.toml").write_text(
        f"""description = "two tiny random models on the tiny toy world (DDP test)"
old = "{old_ref}"
new = "{new_ref}"
dataset = "folder:{shapes}"
splits = ["test"]

[data]
text = "{captions}"
pairs = "folder:{shapes}:pairs"
support = "folder:{shapes}:support"
"""
    )
    return "ddp-tiny"


def test_torchrun_run_command_matches_one_process_and_rank_0_writes(
    ddp_refs: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from xbt_bench.cli import main

    pair = write_folder_pair(tmp_path, *ddp_refs)
    settings = [arg for key, value in XBT_DDP.items() for arg in ("--set", f"{key}={value}")]
    run = ["run", "--pair", pair, "--method", "xbt", *settings]
    logs = tmp_path / "logs"
    env = {"XBT_BENCH_PAIRS": str(tmp_path / "pairs"), "XBT_BENCH_HOME": str(tmp_path / "home2")}
    launch = ["--redirects", "3", "--log-dir", str(logs), "-m", "xbt_bench"]
    torchrun(*launch, *run, "--output-dir", str(tmp_path / "two"), **env)
    # each home has its own caches and checkpoints: the one-process run trains afresh
    monkeypatch.setenv("XBT_BENCH_PAIRS", env["XBT_BENCH_PAIRS"])
    monkeypatch.setenv("XBT_BENCH_HOME", str(tmp_path / "home1"))
    try:
        main([*run, "--output-dir", str(tmp_path / "one")])
    except SystemExit as exit_:  # typer exits with the command's status
        assert not exit_.code, capsys.readouterr().err
    single_out = capsys.readouterr().out
    (two,) = (tmp_path / "two").glob(f"{pair}/*/xbt.json")
    (one,) = (tmp_path / "one").glob(f"{pair}/*/xbt.json")
    two_result, one_result = RunResult.from_json(two), RunResult.from_json(one)
    for setting, metrics in one_result.metrics.items():
        for key, value in metrics.items():
            assert abs(two_result.metrics[setting][key] - value) <= RECALL_TOL, (setting, key)
    stdout = {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert "wrote" in stdout[0] and "xbt" in stdout[0]
    assert stdout[1].strip() == ""  # rank 1 prints nothing
    # rank 0 counts the forward passes of both ranks: as many as one process makes
    computed = [
        re.search(r"embeddings: (\d+) computed", text)[1] for text in (stdout[0], single_out)
    ]
    assert computed[0] == computed[1] and int(computed[0]) > 0


def test_torchrun_sweep_command_records_points_and_rank_0_writes(
    ddp_refs: tuple[str, str], tmp_path: Path
) -> None:
    pair = write_folder_pair(tmp_path, *ddp_refs)
    settings = [arg for key, value in XBT_DDP.items() for arg in ("--set", f"{key}={value}")]
    logs = tmp_path / "logs"
    env = {"XBT_BENCH_PAIRS": str(tmp_path / "pairs"), "XBT_BENCH_HOME": str(tmp_path / "home")}
    launch = ["--redirects", "3", "--log-dir", str(logs), "-m", "xbt_bench"]
    sweep = ["sweep", "--pair", pair, "--method", "xbt", "--pairs", "0,8", *settings]
    torchrun(*launch, *sweep, "--output-dir", str(tmp_path / "out"), **env)
    (path,) = (tmp_path / "out").glob(f"{pair}/*/xbt.sweep.json")
    sweep = SweepResult.from_json(path)
    assert [p.n_pairs for p in sweep.points][:2] == [0, 8] and sweep.points[-1].n_pairs > 8
    stdout = {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert "wrote" in stdout[0] and stdout[1].strip() == ""
