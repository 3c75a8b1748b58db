"""Processes and devices: the rank and world size of a ``torchrun`` job, joining its process
group (NCCL on GPUs, gloo on CPU), one device per ``LOCAL_RANK``, and how a data set's batches
are dealt to the ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["distributed_context", "init_distributed", "resolve_device", "shard_batches"]


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
