"""Processes and devices: the rank and world size of a ``torchrun`` job, joining its process
group (NCCL on GPUs, gloo on CPU), one device per ``LOCAL_RANK``, and how a data set's batches
are dealt to the ranks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["distributed_context", "init_distributed", "resolve_device", "sample_in_shards", "shard_batches"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``): ``cuda:LOCAL_RANK`` if CUDA is available, else CPU; otherwise
    the named device, which must exist."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return resolved


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` >
    1): NCCL on CUDA, gloo on CPU. Returns whether a group is active."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def shard_batches(num_batches: int, rank: int, world_size: int) -> range:
    """The batches of rank ``rank``: every ``world_size``-th, from ``rank`` (whole batches, so a
    batch is solved the same whatever the number of processes). Raises ``ValueError`` if there are
    fewer batches than ranks (a rank would have none to do)."""
    if world_size > num_batches:
        raise ValueError(
            f"{world_size} processes for {num_batches} batches: use at most {num_batches} processes "
            "or a smaller batch size"
        )
    return range(rank, num_batches, world_size)


def sample_in_shards(draw: Callable[[Tensor], Any], num: int, batch_size: int) -> tuple[Tensor, int]:
    """Samples ``0..num-1`` in batches of ``batch_size`` by index, whole batches dealt to the ranks:
    ``draw(indices)`` returns the batch's result (``.x``, ``.nfe``), e.g. a sampler called with
    per-sample seeds and ``sample_indices=indices``, so sample ``i`` does not depend on the number of
    processes. Returns every sample in index order (on every rank) and the total NFE; the ranks meet
    once, after their last batch."""
    rank, world_size = distributed_context()
    batches = shard_batches(math.ceil(num / batch_size), rank, world_size)
    mine = []
    for b in batches:
        result = draw(torch.arange(b * batch_size, min(num, (b + 1) * batch_size)))
        mine.append((b, result.x.cpu(), result.nfe))
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, mine)
        mine = sorted(part for rank_parts in gathered for part in rank_parts)
    return torch.cat([x for _, x, _ in mine]), sum(nfe for _, _, nfe in mine)
