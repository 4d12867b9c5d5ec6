"""torch.distributed for xbt-bench: the same code runs as one process or as a torchrun job.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``), :func:`init_distributed` joins the process group: NCCL with one GPU per
process when CUDA is available, gloo on CPU. Without those variables, or with a world of one,
nothing is initialised and every helper here acts as the identity or a no-op for rank 0 of 1.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, XbtError

BACKENDS = ("nccl", "gloo")
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# A rank that dies mid-job leaves the others waiting in a collective; fail rather than hang.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # None when not distributed
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes checkpoints, manifests and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def is_distributed() -> bool:
    """Whether a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the job (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (always true when not distributed)."""
    return rank() == 0


def _default_device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def check_device(text: str) -> str:
    """``text`` when it names a torch device this machine has; XbtError with the fix otherwise
    (an unknown name, CUDA on a machine without it, a GPU index beyond the count)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        message = f"--device {text!r} is not a torch device; use cpu, cuda or cuda:N"
        raise XbtError(message) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise XbtError(
                f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}"
                f" built with {build}, no usable GPU); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise XbtError(
                f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise XbtError(f"--device {text!r}: xbt-bench runs on cpu or cuda devices")
    return text


def dist_info() -> DistInfo:
    """This process's :class:`DistInfo` (rank 0 of 1 when no group is active)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0
    backend = dist.get_backend() if is_distributed() else None
    device = _default_device(local_rank) if backend != "gloo" else torch.device("cpu")
    return DistInfo(rank(), world_size(), local_rank, backend, device)


def init_distributed(
    backend: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> DistInfo:
    """Join the torchrun job described by the environment, once; a no-op for a single process.

    ``backend`` defaults to NCCL when CUDA is available (each process then uses GPU
    ``LOCAL_RANK``) and gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, None, _default_device(0))
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise XbtError(
            f"WORLD_SIZE={world} but {', '.join(missing)} are not set; launch with "
            "`torchrun --nproc-per-node N -m xbt_bench ...` (it sets them)"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise ConfigError(f"distributed backend {backend!r} is not one of {', '.join(BACKENDS)}")
    local_rank = int(os.environ["LOCAL_RANK"])
    options: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise XbtError(
                f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        options["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(**options)
    return dist_info()


def shutdown_distributed() -> None:
    """Leave the process group (if one is active)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (any picklable value) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (any picklable value), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The elementwise ``op`` ("sum", "mean", "min" or "max") of ``tensor`` over ranks (a new
    tensor; no gradient)."""
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}
    ops["max"] = dist.ReduceOp.MAX
    if op not in ops:
        raise XbtError(f"all_reduce op {op!r} is not one of {', '.join(ops)}")
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=ops[op])
        if op == "mean":
            out = out / dist.get_world_size()
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the summed gradient of its rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss used every row: sum the gradients, keep this rank's rows
        # (an all_reduce rather than a reduce_scatter, which gloo lacks).
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, differentiable (as open_clip's
    ``gather_features(gather_with_grad=True)``): a contrastive loss over the result sees the
    global batch, and DDP's gradient averaging then yields the single-process gradient of that
    loss. All ranks must pass the same shape. Identity for a single process."""
    if not is_distributed():
        return x
    shape = torch.tensor(x.shape, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    if len(set(shapes)) != 1:
        raise XbtError(
            f"all_gather_with_grad needs the same shape on every rank, got {shapes}; give each "
            "rank an equal slice of the global batch"
        )
    return _GatherWithGrad.apply(x)


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """``fn`` run on rank 0 only; other ranks skip it and get None (for writes and logs)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def local_slice(batch: T) -> T:
    """This rank's equal share of a global batch: every tensor and array in ``batch`` (nested
    in dicts, lists and tuples, all holding one row per example) cut to this rank's contiguous
    rows; other values unchanged. The global batch must split evenly over the ranks."""
    world = world_size()
    if world == 1:
        return batch
    here = rank()

    def cut(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(cut(item) for item in value)
        if isinstance(value, torch.Tensor | np.ndarray) and value.ndim > 0:
            if len(value) % world:
                raise ConfigError(
                    f"a global batch of {len(value)} does not split over {world} processes; "
                    "make the batch size a multiple of the number of processes"
                )
            size = len(value) // world
            return value[here * size : (here + 1) * size]
        return value

    return cut(batch)


def shard_range(n: int, rank: int, world_size: int, align: int = 1) -> range:
    """Rank ``rank``'s contiguous share of rows ``[0, n)``: near-equal parts whose boundaries
    fall on multiples of ``align`` (so batches of that size are the same as in one process)."""
    if n < 0 or world_size < 1 or not 0 <= rank < world_size or align < 1:
        raise XbtError(f"cannot shard {n} rows for rank {rank} of {world_size} with align {align}")
    blocks = -(-n // align)
    first = rank * blocks // world_size
    last = (rank + 1) * blocks // world_size
    return range(min(first * align, n), min(last * align, n))
