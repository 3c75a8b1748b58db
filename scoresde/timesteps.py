r"""Time grids for samplers: descending from ``t_start`` (default ``T``) to ``t_end`` (default
``t_min``).

=============  ==========================================================================
kind           grid :math:`t_0 = t_{start} > t_1 > \dots > t_N = t_{end}`, :math:`u = i/N`
=============  ==========================================================================
``uniform``    uniform in :math:`t` (Song et al. 2021)
``quadratic``  :math:`t = t_{end} + (t_{start} - t_{end})(1 - u)^2`, denser near the data
               (Song, Meng & Ermon 2021, DDIM)
``log_snr``    uniform in :math:`\lambda = \log(\alpha^2/\sigma^2)` (Lu et al. 2022, DPM-Solver)
``karras``     uniform in :math:`\tilde\sigma^{1/\rho}` with :math:`\tilde\sigma = \sigma/\alpha
               = e^{-\lambda/2}` and :math:`\rho = 7` (Karras et al. 2022, eq. 5)
=============  ==========================================================================

``log_snr`` and ``karras`` map back to ``t`` with :meth:`LinearSDE.inverse_log_snr`, so they
need a :class:`~scoresde.LinearSDE` and ``t_end > 0``. Grids are built in float64 on the CPU
(a one-off at the boundary) and their end points are set exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from scoresde.sde.base import SDE, LinearSDE

GRID_KINDS = ("uniform", "quadratic", "log_snr", "karras")


def default_grid_kind(sde: SDE) -> str:
    """The grid a fixed-step probability-flow solve uses unless told: ``"log_snr"`` for a
    :class:`~scoresde.LinearSDE` (as DPM-Solver recommends), ``"uniform"`` otherwise."""
    return "log_snr" if isinstance(sde, LinearSDE) else "uniform"


def time_grid(
    sde: SDE,
    num_steps: int,
    kind: str = "uniform",
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = 7.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A descending grid of ``num_steps + 1`` times from ``t_start`` to ``t_end``.

    Args:
        sde: the forward SDE (its ``T`` and ``t_min`` are the defaults for the end points).
        num_steps: number of intervals ``N >= 1``.
        kind: one of ``"uniform"``, ``"quadratic"``, ``"log_snr"``, ``"karras"``.
        t_start, t_end: end points, ``0 <= t_end < t_start <= T`` (defaults ``T``, ``t_min``).
        rho: the Karras exponent (only for ``kind="karras"``).

    Returns:
        ``(num_steps + 1,)`` tensor, strictly decreasing.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if kind not in GRID_KINDS:
        raise ValueError(f"kind must be one of {GRID_KINDS}, got {kind!r}")
    t_start = sde.T if t_start is None else float(t_start)
    t_end = sde.t_min if t_end is None else float(t_end)
    if not 0 <= t_end < t_start <= sde.T:
        raise ValueError(f"need 0 <= t_end < t_start <= T={sde.T}, got t_start={t_start!r}, t_end={t_end!r}")
    u = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "uniform":
        grid = t_start + (t_end - t_start) * u
    elif kind == "quadratic":
        grid = t_end + (t_start - t_end) * (1 - u).square()
    else:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"kind={kind!r} needs a LinearSDE (with log_snr), got {type(sde).__name__}")
        if t_end <= 0:
            raise ValueError(f"kind={kind!r} needs t_end > 0 (the log-SNR is infinite at 0), got {t_end!r}")
        ends = torch.tensor([t_start, t_end], dtype=torch.float64)
        lam_start, lam_end = sde.log_snr(ends)
        if kind == "log_snr":
            lam = lam_start + (lam_end - lam_start) * u
        else:
            if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
                raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
            # sigma/alpha = exp(-lambda/2); interpolate its 1/rho-th power
            root_start, root_end = (-lam_start / (2 * rho)).exp(), (-lam_end / (2 * rho)).exp()
            lam = -2 * rho * (root_start + (root_end - root_start) * u).log()
        grid = sde.inverse_log_snr(lam)
    grid[0], grid[-1] = t_start, t_end
    if not (grid[1:] < grid[:-1]).all():
        raise ValueError(
            f"the {kind!r} grid with {num_steps} steps on [{t_end}, {t_start}] is not strictly decreasing "
            "(too many steps for float64, or a schedule whose inverse is not exact): use fewer steps"
        )
    return grid.to(device=device, dtype=dtype)


def check_time_grid(sde: SDE, timesteps: Tensor | Sequence[float]) -> Tensor:
    """Validate a user's grid and return it as a float64 tensor (on its own device).

    It must be 1-D with at least 2 points, finite, strictly decreasing, inside ``[0, T]``.
    """
    grid = torch.as_tensor(timesteps, dtype=torch.float64)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"timesteps must be a 1-D grid of at least 2 times, got shape {tuple(grid.shape)}")
    if not torch.isfinite(grid).all():
        raise ValueError(f"timesteps must be finite, got {grid.tolist()}")
    if not (grid[1:] < grid[:-1]).all():
        raise ValueError(f"timesteps must be strictly decreasing (from T towards 0), got {grid.tolist()}")
    if grid[-1] < 0 or grid[0] > sde.T:
        raise ValueError(f"timesteps must lie in [0, T={sde.T}], got values in [{grid[-1].item()}, {grid[0].item()}]")
    return grid
