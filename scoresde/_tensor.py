"""Small tensor helpers shared by the whole package: broadcasting and time handling."""

from __future__ import annotations

import torch
from torch import Tensor

TimeLike = float | Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``v`` until it has ``ndim`` dims (for broadcasting
    a per-sample ``(batch,)`` scalar against a ``(batch, *event)`` state)."""
    extra = ndim - v.ndim
    if extra < 0:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dims")
    return v.reshape(*v.shape, *([1] * extra))


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype time is kept in next to a state of ``dtype``: float64 stays float64,
    everything else (float32, and fp16/bf16, which would collapse a fine time grid) is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_time(t: TimeLike, x: Tensor) -> Tensor:
    """``t`` (a number, a 0-d tensor or a ``(batch,)`` tensor) as a ``(batch,)`` tensor on
    ``x``'s device in the time dtype that goes with ``x`` (see :func:`time_dtype`)."""
    if x.ndim < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    t = torch.as_tensor(t, device=x.device, dtype=time_dtype(x.dtype))
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a number or a (batch,) tensor with batch={x.shape[0]}, "
            f"got shape {tuple(t.shape)}"
        )
    return t


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity (one host sync: boundary use only)."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
