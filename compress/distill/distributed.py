"""Plain DDP under torchrun: process group setup, rank checks and the few collectives the loop needs.

`torchrun --nproc-per-node N kdtool.py distill RECIPE` starts N copies of the CLI with RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. `setup()` (called lazily by the stages,
the trainer and the teacher cache; idempotent) joins them with `init_process_group("env://")`: NCCL on CUDA
(each rank on GPU LOCAL_RANK), Gloo on CPU. Without WORLD_SIZE > 1 every helper here is a no-op,
so single-process code calls them unconditionally.
"""

from __future__ import annotations

import atexit
import math
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from compress.core.errors import KdtoolError


def device_for_training(wanted: str | None = None) -> torch.device:
    """`wanted` ("cpu"/"cuda"; None: CUDA when present), rank-local under torchrun.

    Raises:
        KdtoolError: "cuda" asked for where torch sees no CUDA device (exit 2).
    """
    if wanted == "cuda" and not torch.cuda.is_available():
        raise KdtoolError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA device "
                          f"(built for CUDA {torch.version.cuda or 'none'})",
                          "run on a GPU machine, or remove train.device (CUDA is used when present)")
    if wanted != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def world_size() -> int:
    """Number of processes (WORLD_SIZE, 1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (RANK, 0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0)."""
    return rank() == 0


def active() -> bool:
    """True when a process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup() -> bool:
    """Join the torchrun process group if WORLD_SIZE > 1 (idempotent); returns whether DDP is on.

    Backend: NCCL when CUDA is available (and `torch.cuda.set_device(LOCAL_RANK)`), else Gloo.

    Raises:
        KdtoolError: WORLD_SIZE > 1 without the rendezvous variables torchrun sets.
    """
    if world_size() <= 1:
        return False
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise KdtoolError(f"WORLD_SIZE={world_size()} but {', '.join(missing)} not set",
                          "launch with `torchrun --nproc-per-node N kdtool.py distill RECIPE` "
                          "or unset WORLD_SIZE")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    dist.init_process_group(backend, init_method="env://")
    atexit.register(teardown)
    return True


def teardown() -> None:
    """Leave the process group (safe to call twice or when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if active():
        dist.barrier()


def _flag_device() -> torch.device:
    """Where collective tensors live: the rank's GPU under NCCL, else CPU (Gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_true(flag: bool | torch.Tensor) -> bool:
    """True when `flag` is true on at least one rank (all ranks get the same answer)."""
    value = bool(flag)
    if not active():
        return value
    t = torch.tensor([int(value)], device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_floats(values: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over ranks (keys must be the same on every rank; in sorted order)."""
    if not active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_flag_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable object on every rank (e.g. the epoch's metrics)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running stats) to every rank, so all ranks hold one model."""
    if not active():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def average_gradients(params: Any) -> None:
    """Average the gradients of parameters DDP does not own (the KD objective's adapters) over ranks."""
    if not active():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def shard(ds: Dataset) -> Dataset:
    """This rank's contiguous slice of `ds` (all of it on one process); `gather` puts slices back in order."""
    if not active():
        return ds
    n, per = len(ds), math.ceil(len(ds) / dist.get_world_size())
    start = min(dist.get_rank() * per, n)
    return Subset(ds, range(start, min(start + per, n)))


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's (N_r, ...) CPU tensor concatenated in rank order (the tensor itself on one process)."""
    if not active():
        return tensor
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat([p for p in parts if p.shape[0] > 0])
