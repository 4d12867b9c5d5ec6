"""Shared fixtures: an isolated XBT_BENCH_HOME, offline hubs, and a tiny open_clip model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models run fastest on one thread (and far faster when the machine is shared).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_MODEL = "xbt-test-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True, scope="session")
def xbt_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root for the whole test session (toy data and models are built once)."""
    home = Path(os.environ.get("XBT_TEST_HOME") or tmp_path_factory.mktemp("xbt-home"))
    os.environ["XBT_BENCH_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register a tiny open_clip config (random weights) and return its name."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-config")
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_weights(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random tiny model saved as .pt, .safetensors and a local-dir folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_model_name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("tiny-weights")
    torch.save(state, folder / "tiny.pt")
    save_file(state, str(folder / "tiny.safetensors"))
    local = folder / "local"
    local.mkdir()
    save_file(state, str(local / "open_clip_model.safetensors"))
    (local / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}})
    )
    return {"pt": folder / "tiny.pt", "safetensors": folder / "tiny.safetensors", "dir": local}


@pytest.fixture(scope="session")
def tiny_weights_seed1(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture with other random weights (seed 1), as .safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model(tiny_model_name)
    path = tmp_path_factory.mktemp("tiny-seed1") / "tiny-seed1.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _recalls(t2i: tuple[float, float, float], i2t: tuple[float, float, float]) -> dict[str, float]:
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
    values = dict(zip(keys, (*t2i, *i2t), strict=True))
    return values | {"rsum": round(sum(values.values()), 2)}


# Hand-made toy-like numbers (percent). Against OLD: xbt holds 5/6 (not T2I R@1), slerp 6/6,
# procrustes 0/6; identity is not applicable.
SYNTHETIC_OLD = _recalls((31.2, 60.4, 72.0), (40.6, 70.2, 80.8))
SYNTHETIC_NEW = _recalls((45.1, 75.3, 84.9), (55.0, 82.6, 90.1))
SYNTHETIC_METHODS = {
    "xbt": _recalls((30.8, 61.0, 73.1), (44.2, 74.0, 83.5)),
    "slerp": _recalls((33.0, 62.0, 74.0), (42.0, 71.0, 81.0)),
    "procrustes": _recalls((25.0, 52.3, 65.0), (38.9, 67.0, 79.9)),
}


# --- issue 22: what the upgrade bill reads from a run, hand-made ---
# Training embeddings: xbt's corpus with OLD and NEW, its captions' anchors, its pairs' images
# (38,400 of those inside training steps); slerp's corpus with OLD and NEW.
XBT_PASSES = {"old_text": 20_000, "new_text": 60_000, "new_image": 46_400, "old_image": 0}
SLERP_PASSES = {"old_text": 20_000, "new_text": 20_000}
# Query latency (ms per query at batch 1, text / image) of each method's path and of OLD's own;
# at batch 256 each query takes the same time (a linear device, for hand arithmetic).
SYNTHETIC_LATENCY_MS = {
    "new": (["new"], 2.0, 4.0),
    "xbt": (["new"], 2.0, 4.0),
    "procrustes": (["new"], 2.0, 4.0),
    "identity": (["new"], 2.0, 4.0),
    "slerp": (["old", "new"], 3.0, 6.0),
}
SYNTHETIC_OLD_MS = (1.0, 2.0)


def bill_fields(method: str) -> dict:
    """The gallery shape, FAISS rates (1e-10 s per multiply-add; HNSW 1 ms per vector at
    d = 64) and query latency of a synthetic toy-s-to-m result."""
    from xbt_bench.eval.index_cost import IndexBuildRates
    from xbt_bench.methods.latency import LatencyPoint, QueryLatency
    from xbt_bench.results import GalleryShape

    encoders, text_ms, image_ms = SYNTHETIC_LATENCY_MS[method]
    points = [
        LatencyPoint(side=side, batch=batch, seconds=ms * batch / 1000,
                     old_seconds=old_ms * batch / 1000, repeats=3)
        for side, ms, old_ms in (("text", text_ms, SYNTHETIC_OLD_MS[0]),
                                 ("image", image_ms, SYNTHETIC_OLD_MS[1]))
        for batch in (1, 256)
    ]  # fmt: skip
    return {
        "gallery": GalleryShape(split="test", images=1000, captions=5000, old_dim=64, new_dim=96),
        "index_build": IndexBuildRates(
            device="cpu, 1 thread (faiss)", dim=64, search_block=1000, search_s=0.0064,
            hnsw_vectors=1000, hnsw_add_s=1.0,
        ),  # fmt: skip
        "query_latency": QueryLatency(
            device="cpu", threads=1, encoders=encoders, warmup=1, points=points
        ),
    }


@pytest.fixture(scope="session")
def synthetic_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of hand-made RunResults: toy-s-to-m (exact, xbt through an IVF index,
    a sweep, training curves, identity not applicable) and the chain toy-s-m-l."""
    import numpy as np

    from xbt_bench.embed.throughput import EmbeddingThroughput
    from xbt_bench.methods.base import Cost
    from xbt_bench.results import (
        BackfillResult,
        IndexResult,
        ReportValue,
        RunResult,
        SweepResult,
    )
    from xbt_bench.scoring import (
        BackfillCurves,
        BackfillPoint,
        CalibrationChoice,
        ChainMatrix,
        IndexSplit,
        OrderChoice,
        SplitResult,
        SweepPoint,
    )

    root = tmp_path_factory.mktemp("results")
    common = {
        "pair": "toy-s-to-m",
        "old": "zoo:toy-s",
        "new": "zoo:toy-m",
        "dataset": "toy-shapes",
        "split": "test",
        "seed": 0,
    }

    def splits(method: dict[str, float] | None) -> dict[str, SplitResult]:
        out = {}
        for name, scale in (("test", 1.0), ("test-hard", 0.8)):
            metrics = {
                "old->old": {k: round(v * scale, 2) for k, v in SYNTHETIC_OLD.items()},
                "new->new": {k: round(v * scale, 2) for k, v in SYNTHETIC_NEW.items()},
            }
            if method is not None:
                metrics["method->old"] = {k: round(v * scale, 2) for k, v in method.items()}
            flips = {"t2i_nfr": 6.5, "t2i_pfr": 7.1, "i2t_nfr": 5.0, "i2t_pfr": 8.6}
            out[name] = SplitResult(metrics=metrics, flips=flips if method else None)
        return out

    curve = [
        {"step": s, "loss": 4.0 / (1 + s / 50), "loss_cos": 0.5 / (1 + s / 50), "lr": 1e-3}
        for s in range(0, 400, 20)
    ]
    fractions = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]

    def backfill(method: dict[str, float], informed: bool) -> BackfillCurves:
        """Curves from method->old (0) to new->new (1), straight lines; the informed order
        (kept when ``informed``) sits half-way between the line and new->new."""

        def points(scale: float, lift: float) -> list[BackfillPoint]:
            out = []
            for f in fractions:
                lifted = f + lift * f * (1 - f)
                values = {
                    k: round(scale * (v + lifted * (SYNTHETIC_NEW[k] - v)), 2)
                    for k, v in method.items()
                    if k != "rsum"
                }
                values["rsum"] = sum(values.values())
                out.append(BackfillPoint(fraction=f, metrics=values))
            return out

        orders = {"random": points, "old-margin": points} if informed else {"random": points}
        return BackfillCurves(
            fractions=fractions,
            seed=0,
            support="toy-shapes/support",
            calibration={
                "t2i": CalibrationChoice(kind="affine", scale=1.5, shift=-0.6, fitted=[1.5, -0.6],
                                         support_r1={"none": 26.0, "affine": 40.4}),
                "i2t": CalibrationChoice(kind="none", fitted=[2.0, -0.9],
                                         support_r1={"none": 47.0, "affine": 46.0}),
            },  # fmt: skip
            orders={
                "random": OrderChoice(support_r1=43.7, kept=True),
                "old-margin": OrderChoice(support_r1=47.5 if informed else 41.0, kept=informed),
            },
            curves={
                split: {
                    name: make(scale, 1.0 if name == "old-margin" else 0.0)
                    for name, make in orders.items()
                }
                for split, scale in (("test", 1.0), ("test-hard", 0.8))
            },
        )

    throughputs = [
        EmbeddingThroughput(model="new", side="image", rows=2000, device_seconds=4.0, device="cpu"),
        EmbeddingThroughput(model="new", side="text", rows=10000, device_seconds=5.0, device="cpu"),
        EmbeddingThroughput(model="old", side="text", rows=10000, device_seconds=2.0, device="cpu"),
    ]
    costs = {
        "xbt": Cost(
            wall_time_s=95.0,
            fit_time_s=80.2,
            training_time_s=72.0,
            trainable_params=41_000,
            new_params=1_952_381,
            peak_memory_mb=900.0,
            forward_passes=XBT_PASSES,
            in_loop_passes={"new_image": 38_400},
        ),
        "slerp": Cost(wall_time_s=4.1, fit_time_s=0.9, forward_passes=SLERP_PASSES),
        "procrustes": Cost(wall_time_s=3.0, fit_time_s=0.05),
    }
    identity = {key: common[key] for key in ("pair", "old", "new", "dataset")}
    references = {
        split: {k: v for k, v in data.metrics.items() if k != "method->old"}
        for split, data in splits(None).items()
    }
    SweepResult(
        **identity,
        method="xbt",
        split="test",
        seed=0,
        points=[
            SweepPoint(n_pairs=n, metrics=_recalls((28 + n / 1000, 58, 70), (41 + n / 800, 72, 82)))
            for n in (0, 500, 2000, 8000)
        ],
        references=references["test"],
        wall_time_s=300.0,
    ).save(root)
    for method, informed in (("xbt", False), ("slerp", True)):
        BackfillResult(
            **identity,
            method=method,
            seeds=[0],
            backfill=backfill(SYNTHETIC_METHODS[method], informed),
            references=references,
        ).save(root)
    for method, values in SYNTHETIC_METHODS.items():
        extra = {}
        if method == "xbt":
            extra = {
                "training_curves": {"stage1": curve, "stage2": curve[:10]},
                "info": {
                    "alpha": np.float32(0.5),
                    "stage1": {"corpus_texts": 20000},
                    "stage2": {"pair_captions": 40000},
                },
                "throughputs": throughputs,
            }
        if method == "slerp":
            extra = {
                "report": {
                    "alpha_i2t": ReportValue(label="α I2T", value=0.1),
                    "alpha_t2i": ReportValue(label="α T2I", value=0.0),
                },
            }
        method_splits = splits(values)
        if method == "xbt":  # 95% intervals on `test`: I2T R@1's margin holds at 95%
            method_splits["test"] = method_splits["test"].model_copy(
                update={
                    "intervals": {
                        setting: {k: [round(v - 2.5, 2), round(v + 2.5, 2)] for k, v in m.items()}
                        for setting, m in method_splits["test"].metrics.items()
                    },
                    "margin_intervals": {
                        k: [round(values[k] - SYNTHETIC_OLD[k] - d, 2),
                            round(values[k] - SYNTHETIC_OLD[k] + d, 2)]
                        for k, d in zip(values, (2, 2, 2, 1.5, 4, 4, 9), strict=True)
                    },  # fmt: skip
                }
            )
        RunResult(
            **common,
            method=method,
            splits=method_splits,
            cost=costs[method],
            config={"lr": 1e-3},
            **extra,
            **bill_fields(method),
        ).save(root)
    RunResult(
        **common,
        method="identity",
        splits=splits(None),
        applicable=False,
        not_applicable_reason="embedding dims differ (64 vs 96)",
        cost=Cost(wall_time_s=0.1),
        **bill_fields("identity"),
    ).save(root)
    RunResult(
        **common, method="new", setting="new->new", splits=splits(None), cost=Cost(wall_time_s=1.0),
        **bill_fields("new"),
    ).save(root)  # fmt: skip
    # xbt through an IVF index: old->old loses 1 point of T2I R@1, new->new 0.5, xbt 3 (and 2
    # of I2T R@1), so xbt loses 4 rsum points beyond OLD's own loss
    drops = {"old->old": {"t2i_r1": 1.0}, "new->new": {"t2i_r1": 0.5},
             "method->old": {"t2i_r1": 3.0, "i2t_r1": 2.0}}  # fmt: skip

    def through_index(exact: SplitResult) -> IndexSplit:
        indexed, loss = {}, {}
        for setting, values in exact.metrics.items():
            lowered = {k: round(v - drops[setting].get(k, 0.0), 2) for k, v in values.items()}
            lowered["rsum"] = round(values["rsum"] - sum(drops[setting].values()), 2)
            indexed[setting] = lowered
            loss[setting] = {k: round(values[k] - lowered[k], 2) for k in values}
        extra = {k: loss["method->old"][k] - loss["old->old"][k] for k in loss["old->old"]}
        searched = {"images": "IVF8,Flat (nprobe=3)", "captions": "IVF32,Flat (nprobe=6)"}
        return IndexSplit(
            searches={f"{m} {side}": v for m in ("old", "new") for side, v in searched.items()},
            indexed=SplitResult(metrics=indexed, flips=exact.flips),
            exact=exact.metrics,
            loss_intervals={
                s: {k: [v - 0.5, v + 0.5] for k, v in m.items()} for s, m in loss.items()
            },
            extra_loss_intervals={k: [v - 1.5, v + 1.5] for k, v in extra.items()},
        )

    IndexResult(
        **identity,
        method="xbt",
        index="ivf",
        split="test",
        seeds=[0],
        splits={name: through_index(d) for name, d in splits(SYNTHETIC_METHODS["xbt"]).items()},
    ).save(root)
    chain = ChainMatrix.from_arrays(
        ["zoo:toy-s", "zoo:toy-m", "zoo:toy-l"],
        {
            "rsum": np.array(
                [[355.2, np.nan, np.nan], [362.0, 433.0, np.nan], [350.1, 440.2, 450.3]]
            )
        },
    )
    chain_splits = splits(SYNTHETIC_METHODS["xbt"])
    chain_splits["test"] = chain_splits["test"].model_copy(update={"chain_matrix": chain})
    RunResult(
        **common | {"pair": "toy-s-m-l", "new": "zoo:toy-l"},
        method="xbt",
        splits=chain_splits,
        cost=costs["xbt"],
    ).save(root)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> str:
    """A registered pair of the toy models whose data are folder datasets and a text file."""
    from support import SMALL_WORLD, write_folder_dataset

    from xbt_bench.toy.world import toy_split

    root = tmp_path_factory.mktemp("small-world")
    for split in ("pairs", "support", "test"):
        write_folder_dataset(root / "shapes", split)
    captions = toy_split("text", SMALL_WORLD).captions
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    pairs_dir = root / "pairs"
    pairs_dir.mkdir()
    shapes = root / "shapes"
    (pairs_dir / "small-s-to-m.toml").write_text(
        f"""description = "toy-s to toy-m on a small folder dataset"
old = "zoo:toy-s"
new = "zoo:toy-m"
dataset = "folder:{shapes}"
splits = ["test"]

[data]
text = "{root / "captions.txt"}"
pairs = "folder:{shapes}:pairs"
support = "folder:{shapes}:support"
"""
    )
    monkeypatch_module.setenv("XBT_BENCH_PAIRS", str(pairs_dir))
    return "small-s-to-m"
