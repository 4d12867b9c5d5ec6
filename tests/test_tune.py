"""``xbt-bench tune``: a seeded Optuna study on support that finds a setting whose best value is
known, resumes, never reads an evaluation split, and whose result ``run`` then uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field
from support import run_cli

from xbt_bench.methods import (
    Choice,
    FittedMethod,
    FloatRange,
    IntRange,
    MethodConfig,
    SearchSpace,
    methods,
    register_method,
)
from xbt_bench.methods.base import FitContext
from xbt_bench.results import Budget, RunResult, TuneResult, tuned_settings
from xbt_bench.tune import objective_value, tunable_methods

KNOWN = "noisy-old"


class NoisyOldConfig(MethodConfig):
    noise: float = Field(1.0, ge=0, le=2, description="noise added to OLD's own queries")


@pytest.fixture()
def noisy_old() -> Iterator[str]:
    """A method whose best setting is known: OLD's own queries plus ``noise`` times Gaussian
    noise, so support rsum is highest at noise 0 (registered for the test only)."""

    def fit(ctx: FitContext, settings: NoisyOldConfig) -> FittedMethod:
        def combine(side, vectors):  # noqa: ANN001, ANN202
            clean = vectors["old"]
            noise = np.random.default_rng(ctx.seed).standard_normal(clean.shape)
            return clean + settings.noise * noise.astype(np.float32) / np.sqrt(clean.shape[1])

        query = ctx.query_path({"old": ctx.old.get()}, combine)
        return FittedMethod(KNOWN, "old", ctx.old.get().embed_dim, query)

    register_method(
        KNOWN,
        settings=NoisyOldConfig,
        kind="trained",
        trains="nothing",
        notes="test only",
        variant=True,
        search=SearchSpace({"noise": FloatRange(0.0, 2.0)}),
    )(fit)
    try:
        yield KNOWN
    finally:
        methods._entries.pop(KNOWN)


def test_objectives() -> None:
    old = dict.fromkeys(("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"), 50.0)
    ours = {**old, "t2i_r1": 51.0, "i2t_r1": 49.0, "rsum": 300.0}
    assert objective_value(ours, old, "rsum") == 300.0
    assert objective_value(ours, old, "t2i_r1") == 51.0
    assert objective_value(ours, old, "cells") == pytest.approx(1.3)  # one cell, rsum / 1000


def test_every_trained_method_has_a_space_that_holds_its_defaults() -> None:
    """The spaces hold the configured defaults (today's research-chosen recipe), so the tuner
    can rediscover them, and they search the knobs the research log tried."""
    for name in ("xbt", "xbt-gallery", "distill", "finetune", "xbt-proj"):
        assert name in tunable_methods(variants=True)
        spec = methods.get(name)
        defaults = spec.parse_settings({}).model_dump()
        assert spec.search.including(defaults) == spec.search, name
    xbt = methods.get("xbt").search.dimensions
    assert {"lr", "steps", "stage2_cos_weight", "image_text_weight", "image_anchor",
            "lora_rank", "lora_towers"} <= set(xbt)  # fmt: skip
    assert isinstance(xbt["steps"], IntRange) and xbt["steps"].capped
    assert {"noise", "proj_layers", "proj_skip"} <= set(methods.get("xbt-proj").search.dimensions)
    capped = methods.get("xbt").search.capped({"steps": 150}).dimensions["steps"]
    assert (capped.low, capped.high) == (100, 150)


def test_a_space_is_checked_against_the_settings() -> None:
    with pytest.raises(Exception, match="not one of its settings"):
        register_method(
            "bad-space", settings=NoisyOldConfig, kind="trained", trains="-", notes="-",
            search=SearchSpace({"nois": FloatRange(0.0, 1.0)}),
        )(lambda ctx, settings: None)  # fmt: skip
    with pytest.raises(Exception, match="noise"):
        register_method(
            "bad-range", settings=NoisyOldConfig, kind="trained", trains="-", notes="-",
            search=SearchSpace({"noise": Choice((0.0, 5.0))}),  # 5 is above the setting's limit
        )(lambda ctx, settings: None)  # fmt: skip
    assert "bad-space" not in methods and "bad-range" not in methods


@pytest.mark.slow
def test_tune_finds_the_known_best_resumes_and_run_uses_it(
    small_pair: str, noisy_old: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from xbt_bench import options

    loaded: list[str] = []
    real_load = options.load_dataset

    def no_test_split(name: str, split: str, root=None):  # noqa: ANN001, ANN202
        loaded.append(split)
        if split in ("test", "test-hard"):
            raise AssertionError(f"tune loaded the evaluation split {split!r}")
        return real_load(name, split, root)

    out = tmp_path / "results"
    tune = ["tune", "--pair", small_pair, "--method", noisy_old, "--output-dir", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(options, "load_dataset", no_test_split)
        assert run_cli([*tune, "--trials", "3", "--seed", "5"]) == 0, capsys.readouterr().err
        first = tuned_settings(out, small_pair, noisy_old).trials
        assert run_cli([*tune, "--trials", "10", "--seed", "5"]) == 0, capsys.readouterr().err
    assert "support" in loaded and not {"test", "test-hard"} & set(loaded)
    assert "resuming study" in capsys.readouterr().out
    result = tuned_settings(out, small_pair, noisy_old)
    assert isinstance(result, TuneResult) and result.support.endswith("support")
    assert [t.number for t in result.trials] == list(range(10))
    assert [t.params for t in result.trials[:3]] == [t.params for t in first]  # resumed
    assert result.trials[0].params == {"noise": 1.0}  # trial 0: the configured settings
    assert result.best["noise"] < 0.3 and result.best_value > result.configured_value
    assert result.budget == Budget(trials=10, max_steps=600, max_proj_steps=3000)
    raw = json.loads((out / small_pair / "tuned" / f"{noisy_old}.json").read_text())
    assert raw["kind"] == "tune" and raw["searched"] == ["noise"]

    # run uses the tuned settings, says so, and records where every setting came from
    args = ["run", "--pair", small_pair, "--method", noisy_old, "--output-dir", str(out)]
    assert run_cli(args) == 0
    assert "tuned settings from" in capsys.readouterr().out
    (path,) = [p for p in out.glob(f"{small_pair}/*/{noisy_old}.json") if p.parent.name != "tuned"]
    run = RunResult.from_json(path)
    assert run.config["noise"] == result.best["noise"]
    assert run.settings_source == {"noise": "tuned"}
    assert run.tuned["study"] == result.study and run.tuned["budget"] == result.budget.label()
    assert run.needs.group == "OLD retired" and run.needs.training == "nothing"
    # --set wins over the tuned value, and says so
    assert run_cli([*args, "--set", "noise=0.5"]) == 0
    again = RunResult.from_json(path)
    assert again.config["noise"] == 0.5 and again.settings_source == {"noise": "--set"}
    assert again.tuned is None
