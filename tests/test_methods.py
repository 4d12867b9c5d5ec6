"""Every registered method on tiny random models and a tiny toy world (timm-style registry loop),
plus the properties docs/methods.md promises: Procrustes recovers a rotation, SLERP's endpoints,
identity's applicability, stage 2 without OLD, NEW untouched, resume and seeding."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xbt_bench.cli import main
from xbt_bench.data.base import ImageTextSet
from xbt_bench.errors import ConfigError, NotFoundError, XbtError
from xbt_bench.linalg import procrustes_map
from xbt_bench.methods import FitContext, ModelHandle, methods
from xbt_bench.methods import stage2 as stage2_module
from xbt_bench.methods.closed_form import slerp
from xbt_bench.methods.stage1 import pretrain_projection
from xbt_bench.toy.world import ToyConfig, toy_split, toy_text_corpus

WIDE_MODEL = "xbt-test-tiny-wide"
WIDE_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TOY = ToyConfig(
    image_size=16, n_pretrain=4, n_text=60, n_pairs=24, n_support=12, n_test=12, n_test_hard=6
)
STAGE1 = {"proj_steps": 20, "proj_batch": 32, "proj_hidden": 32, "proj_warmup": 2}
STAGE2 = {**STAGE1, "steps": 6, "batch": 8, "warmup": 2, "checkpoint_every": 3}


def tiny(method: str) -> dict[str, Any]:
    """The tiny training settings, for every method that has them (every trained one)."""
    fields = methods.get(method).settings.model_fields
    return {key: value for key, value in STAGE2.items() if key in fields}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def refs(tiny_model_name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """OLD (16-d), NEW (24-d) and a second 16-d model, as ``NAME:/path.pt`` references."""
    import open_clip

    folder = tmp_path_factory.mktemp("wide-config")
    (folder / f"{WIDE_MODEL}.json").write_text(json.dumps(WIDE_CONFIG))
    open_clip.add_model_config(folder)
    out = {}
    for key, name, seed in (
        ("old", tiny_model_name, 1),
        ("new", WIDE_MODEL, 2),
        ("new16", tiny_model_name, 3),
    ):
        torch.manual_seed(seed)
        path = folder / f"{key}.pt"
        torch.save(open_clip.create_model(name).state_dict(), path)
        out[key] = f"{name}:{path}"
    return out


@pytest.fixture(scope="module")
def toy() -> dict[str, Any]:
    return {
        "corpus": toy_text_corpus(TOY),
        "pairs": toy_split("pairs", TOY),
        "support": toy_split("support", TOY),
        "test": toy_split("test", TOY),
    }


def make_ctx(
    refs: dict[str, str],
    toy: dict[str, Any],
    work_dir: Path,
    method: str,
    new: str = "new",
    seed: int = 0,
    **settings: Any,
) -> FitContext:
    return FitContext(
        old=ModelHandle(refs["old"]),
        new=ModelHandle(refs[new]),
        text_corpus=toy["corpus"],
        train_pairs=toy["pairs"],
        support=toy["support"],
        work_dir=work_dir,
        config={**tiny(method), **settings},
        seed=seed,
        num_workers=0,
    )


def fit(refs, toy, work_dir, method, **kwargs):  # noqa: ANN001, ANN201
    ctx = make_ctx(refs, toy, work_dir, method, **kwargs)
    return ctx, methods.get(method)(ctx)


@pytest.mark.parametrize("method", methods.names())
def test_every_method_gives_unit_queries_in_the_gallery_space(refs, toy, tmp_path, method) -> None:
    ctx, fitted = fit(refs, toy, tmp_path, method)
    test: ImageTextSet = toy["test"]
    images, texts = fitted.encode_images(test), fitted.encode_texts(test)
    dim = 24 if method == "new" else 16
    assert fitted.name == method and fitted.dim == dim
    assert fitted.gallery == ("new" if method == "new" else "old")
    assert images.shape == (test.n_images, dim) and texts.shape == (len(test.captions), dim)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert fitted.needs_old_at_query == methods.get(method).old_at_query
    assert fitted.cost.fit_time_s > 0 and fitted.cost.peak_memory_mb > 0
    assert fitted.config == methods.get(method).parse_settings(ctx.config).model_dump()
    if method == "new":
        assert not ctx.old.loaded  # new->new never touches OLD
    if method in ("xbt", "distill", "finetune"):
        assert [p["step"] for p in fitted.info["stage2"]["curve"]][-1] == 6
        assert fitted.info["stage1"]["curve"][-1]["step"] == 20
    # The query path that is timed is the one that is scored: raw images and captions through
    # the encoders' forward passes give the rows the cached embeddings gave.
    rows = [0, 3, 5]
    raw_images = fitted.encode_inputs("image", [test.load_image(i) for i in rows])
    raw_texts = fitted.encode_inputs("text", [test.captions[i] for i in rows])
    np.testing.assert_allclose(raw_images, images[rows], atol=1e-4)
    np.testing.assert_allclose(raw_texts, texts[rows], atol=1e-4)
    assert ("old" in fitted.query.encoders) == methods.get(method).old_at_query


def test_reference_methods_return_the_models_own_embeddings(refs, toy, tmp_path) -> None:
    from xbt_bench.embed import embed_split

    test = toy["test"]
    _, old = fit(refs, toy, tmp_path, "old")
    _, new = fit(refs, toy, tmp_path, "new")
    loaded_old = ModelHandle(refs["old"]).get()
    expected = np.asarray(embed_split(loaded_old, test, "text", num_workers=0))
    np.testing.assert_allclose(old.encode_texts(test), expected, atol=1e-6)
    assert new.encode_images(test).shape == (test.n_images, 24)


def test_procrustes_recovers_a_known_rotation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    np.testing.assert_allclose(procrustes_map(x, x @ rotation), rotation, atol=1e-5)
    # A 5-d source rotated into an 8-d target: zero-padding recovers the map exactly.
    source = x[:, :5]
    padded = np.pad(source, ((0, 0), (0, 3)))
    weight = procrustes_map(source, padded @ rotation)
    assert weight.shape == (5, 8)
    np.testing.assert_allclose(source @ weight, padded @ rotation, atol=1e-5)
    # ...and back: the 8-d target mapped to the 5-d source.
    back = procrustes_map(padded @ rotation, source)
    np.testing.assert_allclose(padded @ rotation @ back, source, atol=1e-5)


def test_procrustes_method_maps_new_text_close_to_old_text(refs, toy, tmp_path) -> None:
    _, fitted = fit(refs, toy, tmp_path, "procrustes")
    _, old = fit(refs, toy, tmp_path, "old")
    _, identity = fit(refs, toy, tmp_path, "identity", new="new16")
    support = toy["support"]
    mapped = np.sum(fitted.encode_texts(support) * old.encode_texts(support), axis=1).mean()
    raw = np.sum(identity.encode_texts(support) * old.encode_texts(support), axis=1).mean()
    assert mapped > raw + 0.05  # the fitted rotation aligns NEW's texts with OLD's
    assert fitted.cost.forward_passes["old_text"] == len(toy["corpus"].texts)
    assert fitted.cost.forward_passes["new_text"] == len(toy["corpus"].texts)


def test_slerp_endpoints_and_midpoint() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 6))
    b = rng.normal(size=(10, 6))
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(slerp(a, b, 0.0), unit_a, atol=1e-6)
    np.testing.assert_allclose(slerp(a, b, 1.0), unit_b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    np.testing.assert_allclose((mid * unit_a).sum(1), (mid * unit_b).sum(1), atol=1e-5)
    np.testing.assert_allclose(slerp(a, a, 0.3), unit_a, atol=1e-6)  # parallel inputs


def test_slerp_method_endpoints_are_old_and_procrustes(refs, toy, tmp_path) -> None:
    test = toy["test"]
    _, at_old = fit(refs, toy, tmp_path, "slerp", alpha=0.0)
    _, at_new = fit(refs, toy, tmp_path, "slerp", alpha=1.0)
    _, old = fit(refs, toy, tmp_path, "old")
    _, procrustes = fit(refs, toy, tmp_path, "procrustes")
    np.testing.assert_allclose(at_old.encode_texts(test), old.encode_texts(test), atol=1e-5)
    np.testing.assert_allclose(
        at_new.encode_images(test), procrustes.encode_images(test), atol=1e-5
    )
    _, chosen = fit(refs, toy, tmp_path, "slerp")
    for direction in ("i2t", "t2i"):  # per direction: best R@1 on support, ties to smaller α
        scores = chosen.info["support_score_by_alpha"][direction]
        alpha = chosen.info["alpha"][direction]
        assert len(scores) == 11 and scores[f"{alpha:g}"] == max(scores.values())
        assert all(scores[key] < max(scores.values()) for key in scores if float(key) < alpha)


def test_identity_is_not_applicable_when_dims_differ(refs, toy, tmp_path) -> None:
    _, fitted = fit(refs, toy, tmp_path, "identity")
    assert not fitted.applicable and "24" in fitted.reason and "16" in fitted.reason
    assert fitted.encode_images(toy["test"]).shape == (toy["test"].n_images, 16)
    _, same = fit(refs, toy, tmp_path, "identity", new="new16")
    _, new16 = fit(refs, toy, tmp_path, "new", new="new16")
    assert same.applicable and same.reason == ""
    np.testing.assert_allclose(same.encode_texts(toy["test"]), new16.encode_texts(toy["test"]))


def _count_forwards(model: torch.nn.Module) -> dict[str, int]:
    """Count images and texts through ``model``'s towers with forward hooks."""
    calls = {"image": 0, "text": 0}

    def on_image(module, args, output) -> None:  # noqa: ANN001
        calls["image"] += len(args[0])

    def on_text(module, args, output) -> None:  # noqa: ANN001
        calls["text"] += len(args[0])

    model.visual.register_forward_hook(on_image)
    model.token_embedding.register_forward_hook(on_text)
    return calls


@pytest.mark.parametrize(
    ("method", "anchors"), [("xbt", "surrogate"), ("xbt", "gallery"), ("distill", None)]
)
def test_stage2_never_runs_old_except_distill(refs, toy, tmp_path, monkeypatch, method, anchors):
    extra = {"anchors": anchors} if anchors else {}
    ctx = make_ctx(refs, toy, tmp_path, method, **extra)
    old_calls = _count_forwards(ctx.old.get().model)
    during: dict[str, int] = {}
    real_train = stage2_module.train

    def watched_train(module, loss_fn, batch_at, config, checkpoint_dir, desc="", **kw):  # noqa: ANN001, ANN202
        before = dict(old_calls)
        log = real_train(module, loss_fn, batch_at, config, checkpoint_dir, desc=desc, **kw)
        if "stage 2" in desc:
            during.update({side: old_calls[side] - before[side] for side in old_calls})
        return log

    monkeypatch.setattr(stage2_module, "train", watched_train)
    fitted = methods.get(method)(ctx)
    passes = fitted.cost.forward_passes
    if method == "distill":
        assert during == {"image": 6 * 8, "text": 6 * 8}  # OLD in the loop, every step
        assert passes["old_image"] == 48 and passes["old_gallery_reused"] == 0
    else:
        assert during == {"image": 0, "text": 0}
        assert passes["old_image"] == 0
        assert passes["old_text"] == len(toy["corpus"].texts)  # stage 1's text pairs only
        pairs = toy["pairs"]
        reused = pairs.n_images + len(pairs.captions) if anchors == "gallery" else 0
        assert passes["old_gallery_reused"] == reused
    # 6 steps x 8 images, plus (xbt's default image anchors) frozen NEW's pass over the pairs.
    anchor_pass = toy["pairs"].n_images if anchors == "surrogate" else 0
    assert passes["new_image"] == 48 + anchor_pass


@pytest.mark.parametrize("method", ["xbt", "finetune"])
def test_new_weights_are_bit_identical_after_training(refs, toy, tmp_path, method) -> None:
    ctx = (
        make_ctx(refs, toy, tmp_path, method, lora_towers="both")
        if method == "xbt"
        else (make_ctx(refs, toy, tmp_path, method))
    )
    new = ctx.new.get().model
    before = {k: v.clone() for k, v in new.state_dict().items()}
    fitted = methods.get(method)(ctx)
    fitted.encode_texts(toy["test"])
    after = new.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_xbt_trains_few_parameters_and_finetune_trains_all(refs, toy, tmp_path) -> None:
    _, xbt = fit(refs, toy, tmp_path, "xbt")
    _, finetune = fit(refs, toy, tmp_path, "finetune")
    new_params = xbt.cost.new_params
    assert new_params == sum(p.numel() for p in ModelHandle(refs["new"]).get().model.parameters())
    assert 0 < xbt.cost.trainable_share <= 0.05
    assert finetune.cost.trainable_params > new_params
    assert xbt.info["stage2"]["lora"] == {"towers": "image", "rank": 8, "alpha": 8}
    assert xbt.info["stage2"]["psi"] == "frozen"


def test_stage2_changes_queries_and_stage1_is_shared(refs, toy, tmp_path) -> None:
    test = toy["test"]
    _, proj = fit(refs, toy, tmp_path, "xbt-proj")
    _, xbt = fit(refs, toy, tmp_path, "xbt", lr=0.05)
    assert xbt.info["stage1"]["checkpoint_dir"] == proj.info["stage1"]["checkpoint_dir"]
    assert xbt.info["stage1"]["resumed_from_step"] == 20  # reused, not retrained
    # ψ frozen and LoRA on the image tower only: text queries are ψ₀'s, image queries moved.
    np.testing.assert_allclose(xbt.encode_texts(test), proj.encode_texts(test), atol=1e-5)
    assert np.abs(xbt.encode_images(test) - proj.encode_images(test)).max() > 1e-3


def test_mean_image_anchor_averages_the_captions_anchors(refs, toy, tmp_path) -> None:
    from xbt_bench.methods.stage2 import mean_anchors

    pairs = toy["pairs"].subset(2)
    anchors = np.eye(len(pairs.captions), 4, dtype=np.float32)[:, ::-1].copy()
    means = mean_anchors(anchors, pairs)
    first = anchors[pairs.caption_image == 0].sum(0)
    np.testing.assert_allclose(means[0], first / np.linalg.norm(first), atol=1e-6)
    _, fitted = fit(refs, toy, tmp_path, "xbt", image_anchor="mean")
    _, caption = fit(refs, toy, tmp_path, "xbt")
    assert fitted.info["stage2"]["image_anchor"] == "mean"
    assert not np.allclose(fitted.encode_images(toy["test"]), caption.encode_images(toy["test"]))


def test_ridge_map_recovers_a_stretched_linear_relation() -> None:
    from xbt_bench.methods.linear import ridge_map

    rng = np.random.default_rng(0)
    source = rng.normal(size=(2000, 6))
    true = rng.normal(size=(6, 4)) * np.array([5.0, 1.0, 0.2, 0.05])  # not a rotation
    target = source @ true + 0.01 * rng.normal(size=(2000, 4))
    np.testing.assert_allclose(ridge_map(source, target, 0.0), true, atol=2e-3)
    # The ridge term shrinks the map, as λ·n·||W||² says.
    assert np.linalg.norm(ridge_map(source, target, 10.0)) < 0.5 * np.linalg.norm(true)


def test_linear_maps_new_queries_with_the_text_fitted_ridge_map(refs, toy, tmp_path) -> None:
    """The README's "Add a method" example: one module, registered, and this test."""
    from xbt_bench.methods.linear import ridge_map

    spec = methods.get("linear")
    assert spec.kind == "closed form" and "linear" in methods.names()
    ctx, fitted = fit(refs, toy, tmp_path, "linear", ridge=1e-2)
    weight = ridge_map(ctx.embed_corpus("new"), ctx.embed_corpus("old"), 1e-2)
    test = toy["test"]
    expected = ctx.embed("new", test, "text", count=False) @ weight
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.encode_texts(test), expected, atol=1e-5)
    assert fitted.gallery == "old" and fitted.dim == weight.shape[1]


def test_procrustes_image_anchors_map_frozen_new_images_with_the_text_fitted_map(
    refs, toy, tmp_path
) -> None:
    """xbt's default image targets: normalize(N_img(x) P), P the orthogonal map stage 1 fits on
    the corpus's text pairs; no OLD image is read."""
    ctx = make_ctx(refs, toy, tmp_path, "xbt")
    cfg = methods.get("xbt").parse_settings(ctx.config)
    assert cfg.image_anchor == "procrustes"
    stage1 = pretrain_projection(ctx, cfg)
    p = procrustes_map(ctx.embed_corpus("new"), ctx.embed_corpus("old"))
    np.testing.assert_allclose(stage1.text_procrustes, p, atol=1e-6)
    pairs = toy["pairs"]
    got = stage2_module.procrustes_image_anchors(ctx, stage1, pairs)
    mapped = ctx.embed("new", pairs, "image") @ p
    np.testing.assert_allclose(
        got, mapped / np.linalg.norm(mapped, axis=1, keepdims=True), atol=1e-5
    )
    targets = stage2_module.anchor_targets(cfg)(ctx, stage1, pairs)
    batch = {"caption_index": torch.tensor([0, 1]), "image_index": torch.tensor([2, 0])}
    _, image_t = targets(batch)
    np.testing.assert_allclose(image_t.numpy(), got[[2, 0]], atol=1e-6)
    assert ctx.usage["old_image"] == 0


@pytest.mark.parametrize(
    ("method", "settings", "fixed"),
    [
        ("xbt", {}, True),
        ("distill", {}, True),
        ("xbt", {"lora_towers": "both"}, False),
        ("xbt", {"psi_lr_scale": 0.5}, False),
        ("finetune", {}, False),
    ],
)
def test_a_frozen_text_side_is_a_table_equal_to_running_the_text_tower(
    refs, toy, tmp_path, method, settings, fixed
) -> None:
    ctx = make_ctx(refs, toy, tmp_path, method, **settings)
    cfg = methods.get(method).parse_settings(ctx.config)
    setup = stage2_module.prepare_stage2(ctx, method, cfg, pretrain_projection(ctx, cfg))
    assert setup.info["text_side"] == ("fixed table ψ₀(N_txt)" if fixed else "trained")
    assert setup.info["pixels"] == "in-memory table"
    batch = setup.batch_at(0)
    assert ("tokens" in batch) is not fixed
    pairs = toy["pairs"]
    rows = batch["image_index"].numpy()
    new = ctx.new.get()
    expected = torch.stack([new.preprocess(pairs.load_image(int(i))) for i in rows])
    assert torch.equal(batch["images"], expected)
    # The table holds exactly what the text tower computes for the batch's captions.
    texts = [pairs.captions[int(c)] for c in batch["caption_index"]]
    with torch.no_grad():
        running = setup.encoder.encode_text(new.tokenizer(texts))
        losses = setup.loss_fn(batch)
    if fixed:
        table = stage2_module.surrogate_anchors(ctx, pretrain_projection(ctx, cfg), pairs)
        np.testing.assert_allclose(
            table[batch["caption_index"].numpy()], running.numpy(), atol=1e-5
        )
    assert torch.isfinite(losses["loss"])


def test_pixels_are_preprocessed_per_batch_over_the_memory_budget(refs, toy) -> None:
    new = ModelHandle(refs["new"]).get()
    pairs = toy["pairs"]
    shared: dict = {}
    source = stage2_module.PixelSource(pairs, new.preprocess, "sig", shared, budget=1)
    assert source.table is None and not shared
    rows = np.array([3, 0, 3])
    expected = torch.stack([new.preprocess(pairs.load_image(int(i))) for i in rows])
    assert torch.equal(source(rows), expected)
    table = stage2_module.PixelSource(pairs, new.preprocess, "sig", shared)
    assert table.table is not None and torch.equal(table(rows), expected)
    # A second source of the same run reuses the run's table instead of preprocessing again.
    again = stage2_module.PixelSource(pairs, lambda image: 1 / 0, "sig", shared)
    assert again.table is table.table


def test_same_seed_same_queries_other_seed_other_queries(refs, toy, tmp_path) -> None:
    test = toy["test"]
    _, first = fit(refs, toy, tmp_path / "a", "xbt", lora_towers="both", psi_lr_scale=0.5)
    _, again = fit(refs, toy, tmp_path / "b", "xbt", lora_towers="both", psi_lr_scale=0.5)
    _, other = fit(refs, toy, tmp_path / "c", "xbt", seed=1, lora_towers="both",
                   psi_lr_scale=0.5)  # fmt: skip
    np.testing.assert_array_equal(first.encode_images(test), again.encode_images(test))
    np.testing.assert_array_equal(first.encode_texts(test), again.encode_texts(test))
    assert not np.array_equal(first.encode_texts(test), other.encode_texts(test))


def test_resume_after_a_kill_gives_the_same_queries(refs, toy, tmp_path, monkeypatch) -> None:
    test = toy["test"]
    settings = {"lora_towers": "both", "psi_lr_scale": 0.5}
    _, straight = fit(refs, toy, tmp_path / "straight", "xbt", **settings)
    real_train = stage2_module.train

    def killed_at_step_4(module, loss_fn, batch_at, config, checkpoint_dir, desc="", **kw):  # noqa: ANN001, ANN202
        def batches(step: int):  # noqa: ANN202
            if "stage 2" in desc and step == 4:
                raise KeyboardInterrupt("killed")
            return batch_at(step)

        return real_train(module, loss_fn, batches, config, checkpoint_dir, desc=desc, **kw)

    monkeypatch.setattr(stage2_module, "train", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        fit(refs, toy, tmp_path / "killed", "xbt", **settings)
    monkeypatch.setattr(stage2_module, "train", real_train)
    _, resumed = fit(refs, toy, tmp_path / "killed", "xbt", **settings)
    assert resumed.info["stage2"]["resumed_from_step"] == 3  # the checkpoint before the kill
    np.testing.assert_array_equal(resumed.encode_images(test), straight.encode_images(test))
    np.testing.assert_array_equal(resumed.encode_texts(test), straight.encode_texts(test))


class _EmptyCorpus:
    name = "empty"
    texts: list[str] = []
    fingerprint = "empty"


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("xbt", {"pairs": -1}, "pairs=-1"),
        ("xbt", {"lora_rank": 0}, "lora_rank=0"),
        ("distill", {"lora_rank": -2}, "lora_rank=-2"),
        ("xbt", {"lora_rnk": 4}, "did you mean 'lora_rank'"),
        ("slerp", {"alpha": 1.5}, "alpha=1.5"),
    ],
)
def test_bad_settings_give_clear_errors(refs, toy, tmp_path, method, settings, message) -> None:
    with pytest.raises(XbtError, match=message):
        fit(refs, toy, tmp_path, method, **settings)


def test_settings_beyond_the_models_and_the_data_are_refused(refs, toy, tmp_path) -> None:
    """Issue 24: lr=inf, lora_rank=100000 and batch=1e8 passed validation."""
    with pytest.raises(ConfigError, match="setting lr=inf: Input should be a finite number"):
        fit(refs, toy, tmp_path, "xbt", lr=float("inf"))
    width = "larger than the width of the layers it adapts in the image tower(s) (32)"
    with pytest.raises(ConfigError, match=rf"lora_rank=100000 is {re.escape(width)}"):
        fit(refs, toy, tmp_path, "xbt", lora_rank=100000)
    images = f"larger than the 24 training images of {toy['pairs'].key}; set it to at most 24"
    with pytest.raises(ConfigError, match=rf"batch=100000000 is {re.escape(images)}"):
        fit(refs, toy, tmp_path, "xbt", batch=1e8)
    texts = f"larger than the {len(toy['corpus'].texts)} texts of {toy['corpus'].name}"
    with pytest.raises(ConfigError, match=f"proj_batch=100000 is {re.escape(texts)}"):
        fit(refs, toy, tmp_path, "xbt-proj", proj_batch=100000)
    # an unset batch larger than a small dataset still takes all of it
    ctx = make_ctx(refs, toy, tmp_path, "xbt")
    ctx.config = {k: v for k, v in ctx.config.items() if k != "batch"}
    assert methods.get("xbt")(ctx).info["stage2"]["pair_images"] == 24


@pytest.mark.parametrize("method", ["procrustes", "xbt-proj", "xbt"])
def test_empty_text_corpus_is_a_clear_error(refs, toy, tmp_path, method) -> None:
    ctx = make_ctx(refs, toy, tmp_path, method)
    ctx.text_corpus = _EmptyCorpus()
    with pytest.raises(XbtError, match="text corpus 'empty' has 0 texts"):
        methods.get(method)(ctx)


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(NotFoundError, match="did you mean 'xbt'.*xbt-bench methods list"):
        methods.get("xtb")


def test_zero_pairs_is_stage_one_alone(refs, toy, tmp_path) -> None:
    _, proj = fit(refs, toy, tmp_path, "xbt-proj")
    _, zero = fit(refs, toy, tmp_path, "xbt", pairs=0)
    assert "stage2" not in zero.info
    np.testing.assert_array_equal(zero.encode_images(toy["test"]), proj.encode_images(toy["test"]))


def test_hybrid_reuses_xbt_and_interpolates_with_old(refs, toy, tmp_path) -> None:
    from xbt_bench.methods.closed_form import choose_alphas

    _, xbt = fit(refs, toy, tmp_path, "xbt")
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    ctx, hybrid = fit(refs, toy, tmp_path, "xbt-hybrid")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == folders  # no training
    assert hybrid.info["stage2"]["checkpoint_dir"] == xbt.info["stage2"]["checkpoint_dir"]
    assert hybrid.cost.training_time_s == xbt.cost.training_time_s
    assert hybrid.needs_old_at_query and hybrid.gallery == "old"
    # α per direction: SLERP-BC's rule on support between OLD's and XBT's queries
    support = toy["support"]
    old = {side: ctx.embed("old", support, side, count=False) for side in ("image", "text")}
    ours = {"image": xbt.encode_images(support), "text": xbt.encode_texts(support)}
    grid = [round(0.1 * i, 1) for i in range(11)]
    alphas, _ = choose_alphas(old, ours, support.caption_image, grid, "per-direction")
    assert hybrid.info["alpha"] == alphas
    assert hybrid.report == {"alpha_i2t": alphas["i2t"], "alpha_t2i": alphas["t2i"]}
    test = toy["test"]
    for alpha, expected in ((0.0, "old"), (1.0, "xbt")):
        _, fixed = fit(refs, toy, tmp_path, "xbt-hybrid", alpha=alpha)
        want = (
            ctx.embed("old", test, "text", count=False)
            if expected == "old"
            else (xbt.encode_texts(test))
        )
        np.testing.assert_allclose(fixed.encode_texts(test), want, atol=1e-5)


def test_stitch_is_stage_one_for_captions_and_the_text_procrustes_map_for_images(
    refs, toy, tmp_path
) -> None:
    """stitch = xbt-proj's ψ₀ (the same checkpoint) for captions, normalize(N_img · P) for images,
    P the orthogonal map fitted on the corpus's text pairs (the procrustes method's map)."""
    _, proj = fit(refs, toy, tmp_path, "xbt-proj")
    ctx, stitch = fit(refs, toy, tmp_path, "stitch")
    _, procrustes = fit(refs, toy, tmp_path, "procrustes")
    assert stitch.info["stage1"]["checkpoint_dir"] == proj.info["stage1"]["checkpoint_dir"]
    assert stitch.info["stage1"]["resumed_from_step"] == 20  # ψ₀ reused, not retrained
    test = toy["test"]
    np.testing.assert_array_equal(stitch.encode_texts(test), proj.encode_texts(test))
    p = procrustes_map(ctx.embed_corpus("new"), ctx.embed_corpus("old"))
    mapped = ctx.embed("new", test, "image", count=False) @ p
    expected = mapped / np.linalg.norm(mapped, axis=1, keepdims=True)
    np.testing.assert_allclose(stitch.encode_images(test), expected, atol=1e-6)
    np.testing.assert_allclose(
        stitch.encode_images(test), procrustes.encode_images(test), atol=1e-6
    )
    # ψ₀ maps images elsewhere: stitch's image queries are not xbt-proj's.
    assert np.abs(stitch.encode_images(test) - proj.encode_images(test)).max() > 1e-2
    assert stitch.cost.trainable_params == proj.cost.trainable_params > 0
    spec = methods.get("stitch")
    assert spec.kind == "trained" and not spec.old_at_query and spec.extends == "xbt"


def test_stitch_shares_xbts_stage_one_and_uses_no_pairs_and_no_old_forward(
    refs, toy, tmp_path
) -> None:
    xbt_ctx, xbt = fit(refs, toy, tmp_path, "xbt")
    ctx = make_ctx(refs, toy, tmp_path, "stitch")
    ctx.train_pairs = None  # type: ignore[assignment]  # stitch must not need a single pair
    old_calls = _count_forwards(ctx.old.get().model)
    stitch = methods.get("stitch")(ctx)
    # Same stage-1 settings and seed: the very ψ₀ xbt's stage 2 starts from (its text side).
    assert stitch.info["stage1"]["checkpoint_dir"] == xbt.info["stage1"]["checkpoint_dir"]
    test = toy["test"]
    np.testing.assert_allclose(stitch.encode_texts(test), xbt.encode_texts(test), atol=1e-5)
    corpus = len(toy["corpus"].texts)
    assert stitch.cost.forward_passes == {
        "old_image": 0, "old_text": corpus, "new_image": 0, "new_text": corpus,
        "old_gallery_reused": 0,
    }  # fmt: skip
    stitch.encode_images(test)
    assert old_calls["image"] == 0  # OLD's image tower never runs (its corpus texts are cached)
    assert "stage2" not in stitch.info and xbt_ctx.usage["new_image"] > 0
    # Its default stage-1 settings are xbt's, so an unconfigured run shares xbt's ψ₀ too.
    stage1_fields = methods.get("stitch").settings.model_fields
    assert set(stage1_fields) <= set(methods.get("xbt").settings.model_fields)
    defaults = methods.get("xbt").parse_settings({}).model_dump()
    stitch_defaults = methods.get("stitch").parse_settings({}).model_dump()
    assert stitch_defaults == {key: defaults[key] for key in stage1_fields}


def test_image_map_procrustes_sends_images_through_the_text_fitted_map(refs, toy, tmp_path) -> None:
    """image_map = "procrustes": φ_img = normalize(N_img'·P). With LoRA on the text tower only,
    the image queries are stitch's and only the caption queries train."""
    _, stitch = fit(refs, toy, tmp_path, "stitch")
    settings = {"image_map": "procrustes", "lora_towers": "text", "lr": 0.05}
    _, xbt = fit(refs, toy, tmp_path, "xbt", **settings)
    test = toy["test"]
    np.testing.assert_allclose(xbt.encode_images(test), stitch.encode_images(test), atol=1e-5)
    assert np.abs(xbt.encode_texts(test) - stitch.encode_texts(test)).max() > 1e-3
    assert xbt.info["stage2"]["image_queries"] == "normalize(N_img' · P)"
    _, image_lora = fit(refs, toy, tmp_path, "xbt", image_map="procrustes", lr=0.05)
    moved = np.abs(image_lora.encode_images(test) - stitch.encode_images(test)).max()
    assert moved > 1e-3  # LoRA on the image tower adjusts stitch's image queries


def test_stage2_loss_weights_each_term(refs, toy, tmp_path) -> None:
    """loss = a·InfoNCE(φ_img, T_txt) + b·InfoNCE(φ_txt, T_img) + v·InfoNCE(φ_img, φ_txt)
    + w_txt·(1 − cos(φ_txt, T_txt)) + w·(1 − cos(φ_img, T_img)), each term as computed here."""
    from xbt_bench.losses import cosine_loss, info_nce

    weights = {
        "i2t_weight": 0.5, "t2i_weight": 2.0, "image_text_weight": 0.25, "text_cos_weight": 3.0,
        "stage2_cos_weight": 7.0,
    }  # fmt: skip
    ctx = make_ctx(refs, toy, tmp_path, "xbt", lora_towers="both", **weights)
    cfg = methods.get("xbt").parse_settings(ctx.config)
    setup = stage2_module.prepare_stage2(ctx, "xbt", cfg, pretrain_projection(ctx, cfg))
    batch = setup.batch_at(0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in setup.encoder.parameters():
            if p.requires_grad:  # move LoRA off its zero init, so φ_txt leaves its anchor
                p.add_(0.05 * torch.randn_like(p))
        parts = setup.loss_fn(batch)
        image_q = setup.encoder.encode_image(batch["images"])
        text_q = setup.encoder.encode_text(batch["tokens"])
        text_t, image_t = setup.targets(batch)
    expected = {
        "i2t": info_nce(image_q, text_t, cfg.stage2_tau),
        "t2i": info_nce(text_q, image_t, cfg.stage2_tau),
        "image_text": info_nce(image_q, text_q, cfg.stage2_tau),
        "text_cos": cosine_loss(text_q, text_t),
        "image_cos": cosine_loss(image_q, image_t),
    }
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value.item(), rel=1e-5), key
    total = (
        0.5 * expected["i2t"] + 2.0 * expected["t2i"] + 0.25 * expected["image_text"]
        + 3.0 * expected["text_cos"] + 7.0 * expected["image_cos"]
    )  # fmt: skip
    assert parts["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    assert expected["text_cos"].item() > 1e-3 and expected["image_cos"].item() > 1e-3
    # The defaults weigh both InfoNCE terms 1 and both cosine terms stage2_cos_weight; image
    # queries go through ψ (SPEC §2) except in xbt (support evidence, docs/methods.md).
    for method, image_map in (("xbt", "procrustes"), ("xbt-gallery", "psi"), ("distill", "psi")):
        defaults = methods.get(method).parse_settings({})
        weights = (defaults.i2t_weight, defaults.t2i_weight, defaults.text_cos_weight)
        assert weights == (1.0, 1.0, None) and defaults.image_map == image_map, method


def test_an_extending_method_takes_its_base_methods_pair_settings() -> None:
    from xbt_bench.options import RunOptions, method_config
    from xbt_bench.pairs import DataRefs, PairSpec

    spec = PairSpec(
        name="p",
        description="d",
        old="zoo:toy-s",
        new="zoo:toy-m",
        dataset="toy-shapes",
        data=DataRefs(
            text="toy-shapes:text", pairs="toy-shapes:pairs", support="toy-shapes:support"
        ),
        methods={
            "xbt": {"lora_rank": 4, "steps": 50, "proj_hidden": 64},
            "xbt-hybrid": {"steps": 70, "alpha": 0.5},
        },
    )
    options = RunOptions(pair="p", overrides={"proj_steps": 9})
    assert methods.get("xbt-hybrid").extends == "xbt"
    hybrid = method_config(spec, methods.get("xbt-hybrid"), options)
    assert hybrid == {
        "lora_rank": 4, "steps": 70, "alpha": 0.5, "proj_hidden": 64, "proj_steps": 9
    }  # fmt: skip
    assert method_config(spec, methods.get("xbt"), options) == {
        "lora_rank": 4, "steps": 50, "proj_hidden": 64, "proj_steps": 9
    }  # fmt: skip
    # stitch takes xbt's stage-1 settings (and drops its stage-2 ones): the same ψ₀.
    stitch = method_config(spec, methods.get("stitch"), options)
    assert stitch == {"proj_hidden": 64, "proj_steps": 9}


def test_settings_are_defaults_under_given_values() -> None:
    settings = methods.get("xbt").parse_settings({"lora_rank": 16, "steps": 20})
    assert settings.lora_rank == 16 and settings.steps == 20
    assert settings.lora_towers == "image" and settings.anchors == "surrogate"
    with pytest.raises(ConfigError, match="method 'procrustes' has no setting 'steps'"):
        methods.get("procrustes").parse_settings({"steps": 3})


def test_methods_list_cli_shows_the_table(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["methods", "list"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│ ")}
    assert "xbt-gallery (variant)" in rows  # variants run only when named
    for name in methods.names():
        label = f"{name} (variant)" if methods.get(name).variant else name
        cells = [cell.strip() for cell in rows[label].split("│")]
        assert cells[3] == ("yes" if name in ("old", "slerp", "xbt-hybrid") else "no"), cells


def test_query_latency_times_each_side_and_batch_next_to_old(refs, toy, tmp_path) -> None:
    from xbt_bench.methods.latency import measure_query_latency

    _, slerp_fit = fit(refs, toy, tmp_path, "slerp", alpha=0.5)
    _, old = fit(refs, toy, tmp_path, "old")
    test = toy["test"]
    images = [test.load_image(i) for i in range(test.n_images)]
    latency = measure_query_latency(
        slerp_fit, old, images, test.captions, "cpu", batches=(1, 16), warmup=1,
        repeats={1: 3, 16: 2},
    )  # fmt: skip
    assert latency.encoders == ["old", "new"] and latency.device == "cpu"
    assert [(p.side, p.batch, p.repeats) for p in latency.points] == [
        ("text", 1, 3), ("text", 16, 2), ("image", 1, 3), ("image", 16, 2)
    ]  # fmt: skip
    batch = latency.point("image", 16)
    assert batch.seconds > 0 and batch.old_seconds > 0
    assert batch.ms_per_query == pytest.approx(1000 * batch.seconds / 16)
    assert batch.queries_per_s == pytest.approx(16 / batch.seconds)
    assert batch.added_ms_per_query == pytest.approx(
        1000 * (batch.seconds - batch.old_seconds) / 16
    )
    own = measure_query_latency(old, old, images, test.captions, "cpu", batches=(1,), warmup=0)
    assert own.encoders == ["old"]
    assert all(p.added_ms_per_query == 0 for p in own.points)  # OLD against itself: one timing
