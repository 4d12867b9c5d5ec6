"""The shared training loop: it learns, logs, resumes exactly, and skips finished runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from xbt_bench.errors import ConfigError
from xbt_bench.train import TrainConfig, train

CONFIG = TrainConfig(
    steps=30, lr=0.05, warmup_steps=5, checkpoint_every=7, log_every=5, weight_decay=0.01
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine extra ones stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem() -> tuple[torch.nn.Module, object, object]:
    """A small regression with dropout (so RNG state matters) and a frozen layer."""
    torch.manual_seed(1)
    module = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    module[0].bias.requires_grad_(False)
    target = torch.nn.Linear(8, 1)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1000 + step))
        return x, target(x).detach()

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        mse = torch.nn.functional.mse_loss(module(x), y)
        return {"loss": mse, "mse_x2": 2 * mse}

    return module, loss_fn, batch_at


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_learns_logs_and_keeps_frozen_weights(tmp_path: Path) -> None:
    module, loss_fn, batch_at = _problem()
    frozen = module[0].bias.clone()
    log = train(module, loss_fn, batch_at, CONFIG, tmp_path, desc="toy regression")
    assert [e["step"] for e in log.curve] == [5, 10, 15, 20, 25, 30]
    assert log.curve[-1]["loss"] < 0.3 * log.curve[0]["loss"]
    assert log.curve[0]["mse_x2"] == pytest.approx(2 * log.curve[0]["loss"])
    # Warmup reaches the peak lr at step 5 (logged lr is the lr used by the logged step),
    # then the cosine decays it towards 0.
    assert log.curve[0]["lr"] == pytest.approx(0.05)
    assert log.curve[-1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(
        torch.pi * 24 / 25)).item()), rel=1e-5)
    assert torch.equal(module[0].bias, frozen)
    assert log.resumed_from_step == 0 and log.wall_time_s > 0
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert saved["curve"] == log.curve and saved["config"]["steps"] == 30


def test_resume_after_interruption_is_bit_identical(tmp_path: Path) -> None:
    module, loss_fn, batch_at = _problem()
    reference = train(module, loss_fn, batch_at, CONFIG, tmp_path / "straight")
    expected = _weights(module)

    module, loss_fn, batch_at = _problem()

    def failing_batch_at(step: int) -> object:
        if step == 17:
            raise KeyboardInterrupt
        return batch_at(step)

    with pytest.raises(KeyboardInterrupt):
        train(module, loss_fn, failing_batch_at, CONFIG, tmp_path / "interrupted")
    module, loss_fn, batch_at = _problem()  # a fresh process: the module is re-initialised
    resumed = train(module, loss_fn, batch_at, CONFIG, tmp_path / "interrupted")
    assert resumed.resumed_from_step == 14  # the last checkpoint before step 17
    for name, value in _weights(module).items():
        assert torch.equal(value, expected[name]), name
    assert resumed.curve == reference.curve


def test_finished_run_returns_at_once(tmp_path: Path) -> None:
    module, loss_fn, batch_at = _problem()
    first = train(module, loss_fn, batch_at, CONFIG, tmp_path)
    expected = _weights(module)

    module, loss_fn, _ = _problem()

    def never(step: int) -> object:
        raise AssertionError(f"a finished run asked for batch {step}")

    again = train(module, loss_fn, never, CONFIG, tmp_path)
    assert again.resumed_from_step == 30 and again.curve == first.curve
    for name, value in _weights(module).items():
        assert torch.equal(value, expected[name]), name


def test_param_groups_scale_the_learning_rate(tmp_path: Path) -> None:
    module, loss_fn, batch_at = _problem()
    groups = [
        {"params": module[0].parameters(), "lr_scale": 0.1},
        {"params": module[3].parameters(), "lr_scale": 1.0, "weight_decay": 0.0},
    ]
    config = TrainConfig(steps=3, lr=0.01, checkpoint_every=100, log_every=1)
    log = train(module, loss_fn, batch_at, config, tmp_path, param_groups=groups)
    assert log.curve[0]["lr"] == pytest.approx(0.001)  # the first group's lr
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    lrs = [g["initial_lr"] for g in state["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([0.001, 0.01])


def test_changed_settings_and_bad_configs_are_refused(tmp_path: Path) -> None:
    module, loss_fn, batch_at = _problem()
    train(module, loss_fn, batch_at, TrainConfig(steps=2, lr=0.01), tmp_path)
    with pytest.raises(ConfigError, match="lr: 0.01 -> 0.02"):
        train(module, loss_fn, batch_at, TrainConfig(steps=2, lr=0.02), tmp_path)
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(steps=2, lr=0.01, warmup_steps=3)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        train(frozen, loss_fn, batch_at, TrainConfig(steps=1, lr=0.1), tmp_path / "frozen")
