"""Small tensor helpers shared by the whole package: broadcasting, time handling and the
boundary checks of arguments (dtype, time, generator, device)."""

from __future__ import annotations

import numbers

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


def check_float(x: Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a real floating-point tensor (integers would truncate
    means and noise, complex numbers have no order). Metadata only: no host sync."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_float_dtype(dtype: torch.dtype | None, name: str = "dtype") -> None:
    """Raise ``TypeError`` unless ``dtype`` is ``None`` or a real floating-point dtype."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{name} must be a real floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")


def check_generator(generator: torch.Generator | None) -> None:
    """Raise ``TypeError`` unless ``generator`` is ``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
            f"got {type(generator).__name__} {generator!r}"
        )


def check_device(device: torch.device | str | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``); ``ValueError`` if it names no
    device or one this machine cannot use (e.g. ``"cuda"`` without CUDA). An empty allocation
    tells: a boundary check, not for a per-step path."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device (e.g. 'cpu', 'cuda:0'), got {device!r}") from err
    try:
        torch.empty(0, device=dev)
    except (AssertionError, RuntimeError) as err:
        raise ValueError(f"device {device!r} is not available here ({err})") from None
    return dev


def check_time(t: TimeLike, T: float, name: str = "t", *, values: bool = True) -> None:
    """Check a time argument: ``TypeError`` unless it is a real number or a real tensor,
    ``ValueError`` unless its values lie in ``[0, T]``.

    A number's value is always checked (free). A tensor's values are checked only with
    ``values=True``, which costs one host sync: the per-step methods (``drift``, score
    functions, ...) pass ``values=False``, so a solver calling them with tensor times every step
    never waits on the device; a sampler has checked its grid once, up front."""
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
        if values and (not torch.isfinite(t).all() or (t < 0).any() or (t > T).any()):
            raise ValueError(f"{name} must lie in [0, T={T}], got values in [{t.min().item()}, {t.max().item()}]")
        return
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__} {t!r}")
    if not 0 <= t <= T:  # False for NaN too
        raise ValueError(f"{name} must lie in [0, T={T}], got {t!r}")


def check_labels(label: int | Tensor, num_classes: int, *, allow_null: bool = False) -> int | Tensor:
    """``label`` (an int, or a ``(batch,)`` integer tensor) if every value lies in ``[0, num_classes)``
    (``[0, num_classes]`` with ``allow_null``: the null label ``num_classes``), else ``ValueError`` naming
    the value. A tensor's values are read once (a host sync: a boundary check)."""
    top = num_classes + 1 if allow_null else num_classes
    if isinstance(label, Tensor):
        if label.ndim != 1 or label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
            raise ValueError(f"labels must be a (batch,) integer tensor, got {label.dtype} {tuple(label.shape)}")
        if label.numel() and (label.min() < 0 or label.max() >= top):
            bad = label[(label < 0) | (label >= top)][0].item()
            raise ValueError(f"label {bad} is outside [0, {top}) (num_classes={num_classes})")
        return label.to(torch.int64)
    if isinstance(label, bool) or not isinstance(label, int):
        raise TypeError(f"label must be an int or a (batch,) integer tensor, got {type(label).__name__} {label!r}")
    if not 0 <= label < top:
        raise ValueError(f"label {label} is outside [0, {top}) (num_classes={num_classes})")
    return label
