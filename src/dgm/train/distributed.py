"""Multi-process training under ``torchrun``: setup, rank queries and reductions.

Started with ``torchrun --nproc_per_node=N -m dgm.cli train ...``, every process runs the same
trainer; gloo is used on CPU and NCCL on CUDA. Each global batch is split across the processes
and the loss is scaled so that the averaged gradient equals the single-process gradient of the
same global batch (see :func:`dgm.train.trainer.train`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = [
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "all_reduce_sum",
    "broadcast",
    "barrier",
    "local_device",
]


def init_distributed(device_type: str) -> bool:
    """Join the process group if started by torchrun (WORLD_SIZE > 1); return whether joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` across processes in place (a no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_device(device: str) -> torch.device:
    """The device for this process: ``auto`` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("train.device is mps but MPS is not available")
    return torch.device(device)


def broadcast(t: Tensor, src: int = 0) -> Tensor:
    """Copy process ``src``'s ``t`` to every process in place (a no-op in one process)."""
    if is_distributed():
        dist.broadcast(t, src)
    return t
