"""The one training loop: AdamW, warmup + cosine, clipping, checkpoints and exact resume.

Every trained thing in xbt-bench (toy zoo models, XBT, distillation, fine-tuning) goes through
:func:`train`. The caller gives a module whose trainable parameters have ``requires_grad``, a
loss function of a batch, and ``batch_at(step)`` — a deterministic function of the step index,
so that a run interrupted at any point and restarted from its last checkpoint sees exactly the
batches it would have seen and ends with bit-identical weights (on CPU).

``checkpoint_dir/last.pt`` holds the trainable parameters, optimizer, scheduler, RNG states,
the training curve (per ``log_every`` steps: the mean of each loss scalar and the lr) and
the config; it is written atomically, with its SHA-256 beside it, every ``checkpoint_every``
steps and after the last step, so a finished run's rerun returns at once. The checkpoint it
replaces is kept as ``previous.pt``. Checkpoints hold tensors and plain values only and are read
with ``torch.load(weights_only=True)``; one that fails its checksum or does not load is moved
aside (``*.corrupt``) with a line naming it, and training resumes from ``previous.pt``, or from
scratch.

Under ``torchrun`` (a process group of more than one, see :mod:`xbt_bench.distributed`) the
same call is data-parallel: ``batch_at(step)`` still returns the *global* batch, each rank
keeps its contiguous slice of it, and the module trains inside
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on GPU), which averages
the gradients over ranks. A ``loss_fn`` that gathers its rows across ranks
(:func:`~xbt_bench.distributed.all_gather_with_grad`) therefore gets exactly the gradient of
its loss on the global batch, as one process would. Only rank 0 writes the checkpoint and the
log; every rank resumes from rank 0's checkpoint; the logged scalars are means over ranks.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..atomic import checksum_path, is_intact, make_folder, write_checked, write_json
from ..console import StepProgress, warn
from ..errors import ConfigError, require

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"
LOG_NAME = "train_log.json"
# Config fields that may change between a run and its resume without changing its result.
_RESUME_FREE_FIELDS = ("checkpoint_every", "log_every", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (all recorded with its result)."""

    steps: int
    lr: float
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    device: str = "cpu"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "checkpoint_every": self.checkpoint_every >= 1,
            "log_every": self.log_every >= 1,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
        }
        require(
            self,
            checks,
            "training config",
            "steps >= 1, lr > 0, weight_decay >= 0, 0 <= warmup_steps <= steps, grad_clip > 0 "
            "or None, checkpoint_every >= 1, log_every >= 1, 0 <= min_lr_ratio <= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier applied at ``step`` (linear warmup, then cosine)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


@dataclass
class TrainLog:
    """What a training run did: its loss curve, how long it took and where it resumed."""

    steps: int
    curve: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    resumed_from_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The last logged loss (NaN before anything was logged)."""
        return self.curve[-1]["loss"] if self.curve else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The log as plain JSON values."""
        return asdict(self)


def _param_groups(
    module: torch.nn.Module,
    param_groups: Iterable[Mapping[str, Any]] | None,
    config: TrainConfig,
) -> list[dict[str, Any]]:
    """Optimizer groups with their base lr; by default no weight decay on gains and biases."""
    if param_groups is None:
        decay, no_decay = [], []
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            exempt = param.ndim < 2 or "logit_scale" in name or name.endswith("bias")
            (no_decay if exempt else decay).append(param)
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        groups = []
        for group in param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            groups.append(
                {
                    "params": params,
                    "weight_decay": group.get("weight_decay", config.weight_decay),
                    "lr": config.lr * float(group.get("lr_scale", 1.0)),
                }
            )
    for group in groups:
        group.setdefault("lr", config.lr)
        group["initial_lr"] = group["lr"]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError(
            "nothing to train: no parameter has requires_grad=True; unfreeze the parameters "
            "to train or pass param_groups"
        )
    return groups


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().clone()
        for name, param in module.named_parameters()
        if param.requires_grad
    }


def _load_trainable_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ConfigError(
            f"checkpoint does not match the module's trainable parameters (missing {missing}, "
            f"unexpected {extra}); delete the checkpoint folder to start over"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device))


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_resumable(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    changed = [
        key
        for key, value in current.items()
        if key not in _RESUME_FREE_FIELDS and saved.get(key) != value
    ]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"checkpoint {path} was made with different training settings ({diffs}); "
            "delete it or train into another folder"
        )


def _save(state: dict[str, Any], path: Path) -> None:
    # Through a Python file: a full disk is then an OSError (ENOSPC), not a RuntimeError.
    with open(path, "wb") as handle:
        torch.save(state, handle)


class Checkpoints:
    """``last.pt`` (and the ``previous.pt`` it replaced) of one training run: written with a
    checksum, read safely, a damaged one moved aside (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.last = folder / CHECKPOINT_NAME
        self.previous = folder / PREVIOUS_NAME

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` as ``last.pt``, keeping the one it replaces as ``previous.pt``."""
        if is_intact(self.last):
            os.replace(self.last, self.previous)
            os.replace(checksum_path(self.last), checksum_path(self.previous))
        write_checked(self.last, lambda tmp: _save(dict(state), tmp))

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint that is intact and loads, or None (nothing to resume)."""
        for path in (self.last, self.previous):
            if not path.exists():
                continue
            try:
                if not is_intact(path):
                    raise ValueError("its checksum does not match (damaged or incomplete)")
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is set aside
                aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
                os.replace(path, aside)
                checksum_path(path).unlink(missing_ok=True)
                warn(
                    f"training checkpoint {path} cannot be used ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}); moved it to "
                    f"{aside.name} and resuming from an earlier checkpoint or from the start"
                )
        return None


@dataclass
class _Progress:
    """Where a run is: its step, its log, and the scalars summed since the last curve point."""

    step: int
    log: TrainLog
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def record(self, scalars: Mapping[str, float], lr: float, log_every: int, last: int) -> bool:
        """Add one step's ``scalars``; every ``log_every`` steps (and at ``last``) append their
        means to the curve. Returns whether a curve point was added."""
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if self.step % log_every and self.step != last:
            return False
        means = {key: total / self.count for key, total in self.sums.items()}
        self.log.curve.append({"step": self.step, **means, "lr": lr})
        self.sums, self.count = {}, 0
        return True


@dataclass
class _Optimisation:
    """The optimizer and schedule of a run, and the step they take."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]
    grad_clip: float | None

    @classmethod
    def create(
        cls,
        module: torch.nn.Module,
        param_groups: Iterable[Mapping[str, Any]] | None,
        config: TrainConfig,
        device: torch.device,
    ) -> _Optimisation:
        groups = _param_groups(module, param_groups, config)
        # One fused kernel instead of a loop of per-tensor ops (the token tables are large).
        optimizer = torch.optim.AdamW(
            groups,
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            fused=device.type in ("cpu", "cuda"),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
        trainable = [p for g in groups for p in g["params"]]
        return cls(optimizer, scheduler, trainable, config.grad_clip)

    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip, update, advance the schedule; returns the lr the step used."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return lr


def _resume(
    checkpoints: Checkpoints,
    module: torch.nn.Module,
    optimisation: _Optimisation,
    config: TrainConfig,
) -> _Progress:
    """Rank 0's checkpoint loaded into every rank (the ranks need not share a filesystem), or
    a fresh start with the run's seeds."""
    saved = checkpoints.load() if distributed.is_main() else None
    saved = distributed.broadcast_object(saved)
    progress = _Progress(step=0, log=TrainLog(steps=config.steps, config=config.to_dict()))
    if saved is None:
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        return progress
    _check_resumable(saved["config"], config, checkpoints.last)
    _load_trainable_state(module, saved["trainable"])
    progress.step = saved["step"]
    progress.log.curve = saved["curve"]
    progress.log.wall_time_s = saved["wall_time_s"]
    progress.log.resumed_from_step = progress.step
    if progress.step < config.steps:
        optimisation.optimizer.load_state_dict(saved["optimizer"])
        optimisation.scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        progress.sums, progress.count = saved["log_accumulator"]
    return progress


def _checkpoint_state(
    module: torch.nn.Module, optimisation: _Optimisation, progress: _Progress, config: TrainConfig
) -> dict[str, Any]:
    return {
        "step": progress.step,
        "config": config.to_dict(),
        "trainable": _trainable_state(module),
        "optimizer": optimisation.optimizer.state_dict(),
        "scheduler": optimisation.scheduler.state_dict(),
        "rng": _rng_state(),
        "curve": progress.log.curve,
        "wall_time_s": progress.log.wall_time_s,
        "log_accumulator": (progress.sums, progress.count),
    }


def _as_loss_dict(out: torch.Tensor | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ConfigError(f"loss_fn returned a dict without 'loss' (keys: {sorted(out)})")
        return out
    return {"loss": out}


def _global_scalars(losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The loss scalars of a step as floats, averaged over ranks under torchrun (so the curve
    holds the loss of the global batch, which every rank's gathered loss already equals)."""
    values = [torch.as_tensor(value).detach().double().reshape(()) for value in losses.values()]
    if distributed.is_distributed():
        values = list(distributed.all_reduce(torch.stack(values), "mean"))
    return {key: float(value) for key, value in zip(losses, values, strict=True)}


def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


class _LossModule(torch.nn.Module):
    """``loss_fn`` as the forward of a module that owns ``module``: DDP hooks the gradients of
    parameters used in its wrapped module's forward, and loss functions here close over the bare
    module, so the loss itself is the forward DDP runs."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Any:
        return self.loss_fn(batch)


def _data_parallel(
    module: torch.nn.Module,
    loss_fn: Callable[[Any], Any],
    device: torch.device,
    find_unused_parameters: bool,
) -> Callable[[Any], Any]:
    """``loss_fn`` run through DistributedDataParallel over ``module`` (which broadcasts rank
    0's parameters and buffers now, and averages gradients over ranks in every backward)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(
        _LossModule(module, loss_fn),
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
    )


def _local_batch(batch: Any, desc: str) -> Any:
    """This rank's slice of the global ``batch`` (the batch itself in one process)."""
    try:
        return distributed.local_slice(batch)
    except ConfigError as error:
        raise ConfigError(f"{desc}: {error}") from None


def train(
    module: torch.nn.Module,
    loss_fn: Callable[[Any], torch.Tensor | Mapping[str, torch.Tensor]],
    batch_at: Callable[[int], Any],
    config: TrainConfig,
    checkpoint_dir: Path,
    desc: str = "training",
    param_groups: Iterable[Mapping[str, Any]] | None = None,
    find_unused_parameters: bool = False,
) -> TrainLog:
    """Train ``module``'s trainable parameters for ``config.steps`` steps, resuming if possible.

    ``loss_fn(batch)`` returns the loss (or a dict with ``"loss"`` and other scalars to log);
    ``batch_at(step)`` must depend on ``step`` only; the tensors in it are moved to the device.
    ``param_groups`` (dicts with ``params`` and optional ``lr_scale`` and ``weight_decay``)
    replaces the default grouping (no weight decay on biases, gains and ``logit_scale``). A
    rerun into the same ``checkpoint_dir`` continues from the last checkpoint; a finished run
    loads its final weights into ``module`` and returns its log without training.

    Under torchrun every rank calls it with the same arguments; the global batch must split
    evenly over the ranks (ConfigError otherwise). See the module docstring. Set
    ``find_unused_parameters`` when some trainable parameter gets no gradient from the loss
    (DDP then searches the graph every step and leaves such a gradient as one process would).
    """
    checkpoint_dir = Path(checkpoint_dir)
    main = distributed.is_main()
    if main:
        make_folder(checkpoint_dir)
    checkpoints = Checkpoints(checkpoint_dir)
    device = torch.device(config.device)
    module.to(device)
    optimisation = _Optimisation.create(module, param_groups, config, device)
    progress = _resume(checkpoints, module, optimisation, config)
    if progress.step >= config.steps:
        return progress.log
    compute_loss = loss_fn
    if distributed.is_distributed():
        compute_loss = _data_parallel(module, loss_fn, device, find_unused_parameters)
    use_autocast = device.type == "cuda"
    was_training = module.training
    module.train()
    started = time.perf_counter()
    try:
        with StepProgress(
            desc, config.steps, completed=progress.step, enabled=main, transient=False
        ) as bar:
            if progress.log.curve:
                bar.fields["loss"] = f"{progress.log.final_loss:.4f}"
            while progress.step < config.steps:
                batch = _to_device(_local_batch(batch_at(progress.step), desc), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                    losses = _as_loss_dict(compute_loss(batch))
                lr = optimisation.step(losses["loss"])
                progress.step += 1
                if progress.record(_global_scalars(losses), lr, config.log_every, config.steps):
                    bar.fields["loss"] = f"{progress.log.curve[-1]['loss']:.4f}"
                bar.advance()
                if progress.step % config.checkpoint_every == 0 or progress.step == config.steps:
                    progress.log.wall_time_s += time.perf_counter() - started
                    started = time.perf_counter()
                    if main:
                        checkpoints.save(_checkpoint_state(module, optimisation, progress, config))
    finally:
        module.train(was_training)
    if main:
        write_json(checkpoint_dir / LOG_NAME, progress.log.to_dict())
    distributed.barrier()  # every rank returns once the files are written
    return progress.log
