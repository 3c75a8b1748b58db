r"""Discrete data and bits/dim: the map between integer levels and model space, uniform
dequantization, and the dequantization bound on the discrete log-likelihood.

Levels :math:`x \\in \\{0, \\dots, K-1\\}^D` are dequantized to :math:`u = (x + \\nu)/K`,
:math:`\\nu \\sim U[0, 1)^D`, and carried to model space by an invertible affine
:class:`DataTransform` :math:`y = T(u)` (default :math:`y = 2u - 1`); :func:`to_levels` is the
inverse (the bin holding ``y``). :func:`bits_per_dim` bounds :math:`-\\log_2 P(x)/D` with the
model density of :func:`~scoresde.log_likelihood`; :func:`evaluate_bpd` averages it over a data set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scoresde._tensor import check_finite, check_generator
from scoresde.likelihood import log_likelihood
from scoresde.progress import progress_bar
from scoresde.sde.base import SDE, ScoreFn

__all__ = [
    "BitsPerDimResult",
    "BpdEvaluation",
    "DataTransform",
    "bits_per_dim",
    "dequantize",
    "evaluate_bpd",
    "to_levels",
]


@dataclass(frozen=True)
class BitsPerDimResult:
    """Output of :func:`bits_per_dim`.

    Attributes:
        bits_per_dim: ``(batch,)`` the dequantization bound in bits/dim, averaged over the
            dequantization samples.
        log_prob: ``(num_dequant_samples, batch)`` model log-density of the transformed
            dequantized points (nats, model space).
        nfe: score evaluations spent.
    """

    bits_per_dim: Tensor
    log_prob: Tensor
    nfe: int


@dataclass(frozen=True)
class BpdEvaluation:
    """Output of :func:`evaluate_bpd`: mean bits/dim over the data set, its standard error
    (sample std over data points / sqrt(n); it includes dequantization and Hutchinson noise),
    the number of data points and the total NFE."""

    mean: float
    std_error: float
    num_samples: int
    nfe: int


@dataclass(frozen=True, eq=False)
class DataTransform:
    r"""The elementwise affine map from dequantized data :math:`u \in [0, 1]^D` to model space,
    :math:`y = \text{scale}\cdot u + \text{shift}`, with
    :math:`\log|\det \partial y/\partial u| = \sum_i \log|\text{scale}_i|`.

    ``scale`` and ``shift`` are numbers or tensors broadcastable to the event shape (e.g. a
    per-pixel standardisation). The default is ``[0, 1] -> [-1, 1]``.
    """

    scale: float | Tensor = 2.0
    shift: float | Tensor = -1.0

    @classmethod
    def to_interval(cls, low: float, high: float) -> DataTransform:
        """The map taking ``[0, 1]`` onto ``[low, high]``."""
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
        return cls(scale=high - low, shift=low)

    def __call__(self, u: Tensor) -> Tensor:
        return u * self._as_tensor(self.scale, u) + self._as_tensor(self.shift, u)

    def inverse(self, y: Tensor) -> Tensor:
        """:math:`u = (y - \\text{shift}) / \\text{scale}`, the map back to ``[0, 1]``."""
        return (y - self._as_tensor(self.shift, y)) / self._as_tensor(self.scale, y)

    def log_abs_det(self, like: Tensor) -> Tensor:
        """:math:`\\sum_i \\log|\\text{scale}_i|` over one event of ``like`` (``(batch, *event)``),
        a 0-d tensor in ``like``'s dtype."""
        scale = self._as_tensor(self.scale, like).expand(like.shape[1:])
        return scale.abs().log().sum()

    @staticmethod
    def _as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def check(self, like: Tensor) -> None:
        """Raise ``ValueError`` unless scale and shift are finite, scale is non-zero and both
        broadcast to the event shape of ``like``."""
        for name in ("scale", "shift"):
            value = self._as_tensor(getattr(self, name), like)
            try:
                torch.broadcast_shapes(value.shape, like.shape[1:])
            except RuntimeError:
                raise ValueError(
                    f"transform {name} of shape {tuple(value.shape)} does not broadcast to the event shape "
                    f"{tuple(like.shape[1:])}"
                ) from None
            if not torch.isfinite(value).all():
                raise ValueError(f"transform {name} must be finite")
        if (self._as_tensor(self.scale, like) == 0).any():
            raise ValueError("transform scale must be non-zero (the map must be invertible)")


def dequantize(
    levels: Tensor,
    num_bins: int,
    transform: DataTransform | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    centre: bool = False,
) -> Tensor:
    r"""Integer levels ``(..., *event)`` -> model space: :math:`y = T((x + \\nu)/K)`, ``K = num_bins``,
    :math:`\\nu` uniform on ``[0, 1)`` drawn with ``generator`` on ``levels``' device (or ``0.5``, the
    bin centre, with ``centre=True``). ``dtype``: the float type (default ``levels``' own if it is a
    float, else torch's default)."""
    transform = DataTransform() if transform is None else transform
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    x = levels.to(dtype)
    offset = 0.5 if centre else torch.rand(x.shape, generator=generator, device=x.device, dtype=dtype)
    return transform((x + offset) / num_bins)


def to_levels(y: Tensor, num_bins: int, transform: DataTransform | None = None) -> Tensor:
    r"""Model space -> integer levels: the bin :math:`\\lfloor K\\,T^{-1}(y)\\rfloor` holding ``y``,
    clamped to ``[0, K - 1]`` (``uint8`` when ``K <= 256``); the inverse of :func:`dequantize`."""
    transform = DataTransform() if transform is None else transform
    levels = (transform.inverse(y) * num_bins).floor().clamp(0, num_bins - 1)
    return levels.to(torch.uint8 if num_bins <= 256 else torch.int64)


def _check_discrete(x: Any, num_bins: int) -> None:
    """Discrete data: a tensor of integer values in ``[0, num_bins - 1]`` (any dtype)."""
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty (batch, *event) tensor, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"x must hold integer levels in a real dtype, got {x.dtype}")
    if x.is_floating_point():
        check_finite(x, "x")
        if (x != x.round()).any():
            raise ValueError("x must hold integer levels (discrete data), got non-integer values")
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > num_bins - 1:
        raise ValueError(f"x must lie in [0, num_bins - 1] = [0, {num_bins - 1}], got values in [{low}, {high}]")


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    num_bins: int,
    transform: DataTransform | None = None,
    num_dequant_samples: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    **likelihood_kwargs: Any,
) -> BitsPerDimResult:
    r"""Bits/dim of discrete data ``x`` (integer levels ``0..num_bins-1``, shape
    ``(batch, *event)``, ``D`` values per event) under the score model, by uniform
    dequantization.

    With :math:`u = (x + \nu)/K`, :math:`\nu \sim U[0, 1)^D`, ``K = num_bins``, and the model
    density :math:`p_y` on :math:`y = \text{transform}(u)`, the discrete probability is the
    integral of :math:`p_u(u) = p_y(y)\,|\det\partial y/\partial u|` over the cube of volume
    :math:`K^{-D}` around :math:`x/K`; Jensen's inequality gives the variational bound

    .. math:: -\log_2 P(x) \le -\frac{1}{\ln 2}\,E_\nu\big[\log p_y(y) + \log|\det\partial y/\partial u|
              - D\log K\big],

    reported per dimension (divided by ``D``), the expectation a mean over
    ``num_dequant_samples`` draws. For the default transform :math:`y = 2u - 1` the
    log-determinant is :math:`D\log 2`, so bits/dim = :math:`-\log_2 p_y/D - 1 + \log_2 K`
    (the "+7 for 256 levels" of other code, here derived; nothing else is added).
    :math:`\log p_y` is :func:`log_likelihood` at ``t_min`` (keyword arguments pass through).

    Random numbers: the dequantization noise ``(num_dequant_samples, batch, *event)`` is drawn
    first from ``generator``, then any Hutchinson probes. ``dtype`` is the float type of the
    computation for integer ``x`` (default: torch's default dtype); a float ``x`` keeps its own.
    """
    _check_discrete(x, num_bins)
    check_generator(generator)
    if not isinstance(num_dequant_samples, int) or isinstance(num_dequant_samples, bool) or num_dequant_samples < 1:
        raise ValueError(f"num_dequant_samples must be a positive int, got {num_dequant_samples!r}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    transform = DataTransform() if transform is None else transform
    levels = x.to(dtype)
    transform.check(levels)

    repeated = levels.expand(num_dequant_samples, *x.shape)
    y = dequantize(repeated, num_bins, transform, generator=generator).flatten(0, 1)  # all draws in one ODE solve
    result = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_kwargs)

    num_dims = x[0].numel()
    log_prob = result.log_prob.reshape(num_dequant_samples, x.shape[0])
    log_discrete = log_prob + transform.log_abs_det(levels) - num_dims * math.log(num_bins)
    bpd = -log_discrete.mean(0) / (num_dims * math.log(2))
    return BitsPerDimResult(bits_per_dim=bpd, log_prob=log_prob, nfe=result.nfe)


def evaluate_bpd(
    score_fn: ScoreFn,
    sde: SDE,
    data: Tensor | Iterable[Any],
    *,
    num_bins: int,
    batch_size: int = 256,
    progress: bool = False,
    **bpd_kwargs: Any,
) -> BpdEvaluation:
    """Mean bits/dim of a data set and its standard error, by :func:`bits_per_dim` batch by
    batch.

    ``data`` is a tensor ``(n, *event)`` (split into ``batch_size`` chunks) or an iterable of
    batches, e.g. a ``DataLoader``; a batch that is a tuple or list (``(x, label)``) contributes
    its first item. ``bpd_kwargs`` go to :func:`bits_per_dim` (``transform``, ``generator``,
    ``divergence``, ``rtol``, ...). ``progress`` shows a tqdm bar over batches.
    """
    if isinstance(data, Tensor):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if data.ndim < 2:
            raise ValueError(f"data must be (n, *event), got shape {tuple(data.shape)}")
        batches: Iterable[Any] = data.split(batch_size)
        total = math.ceil(data.shape[0] / batch_size)
    elif isinstance(data, Iterable):
        batches = data
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    else:
        raise TypeError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")

    per_sample: list[Tensor] = []
    nfe = 0
    with progress_bar(total=total, enabled=progress, desc="bits/dim") as bar:  # type: ignore[arg-type]
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            result = bits_per_dim(score_fn, sde, x, num_bins=num_bins, **bpd_kwargs)
            per_sample.append(result.bits_per_dim.detach().to(torch.float64))
            nfe += result.nfe
            bar.update(1)
            bar.set_postfix(bpd=f"{torch.cat(per_sample).mean().item():.4f}")
    if not per_sample:
        raise ValueError("data holds no batches")
    values = torch.cat(per_sample)
    n = values.numel()
    std_error = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return BpdEvaluation(mean=values.mean().item(), std_error=std_error, num_samples=n, nfe=nfe)
