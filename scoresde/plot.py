"""Matplotlib figures (imported lazily by the CLI; the core never imports this module)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from matplotlib.axes import Axes
from torch import Tensor


def plot_score_field(
    ax: Axes,
    score_fn: Callable[[Tensor, Tensor], Tensor],
    t: float,
    *,
    lim: float = 3.0,
    num: int = 21,
    title: str | None = None,
    **quiver_kwargs,
) -> None:
    """Quiver plot of a 2-D ``score_fn`` at time ``t`` on ``[-lim, lim]^2`` (``num`` x ``num`` arrows)."""
    axis = torch.linspace(-lim, lim, num, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    x = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    with torch.no_grad():
        s = score_fn(x, torch.full((len(x),), t, dtype=torch.float64)).double()
    ax.quiver(x[:, 0], x[:, 1], s[:, 0], s[:, 1], **quiver_kwargs)
    ax.set_aspect("equal")
    ax.set_xlim(-lim * 1.05, lim * 1.05)
    ax.set_ylim(-lim * 1.05, lim * 1.05)
    if title:
        ax.set_title(title)


def plot_density(
    ax: Axes, log_prob_fn: Callable[[Tensor], Tensor], *, lim: float = 3.0, num: int = 200, **contour_kwargs
) -> None:
    """Filled contours of ``exp(log_prob_fn(x))`` for 2-D ``x`` on ``[-lim, lim]^2``."""
    axis = torch.linspace(-lim, lim, num, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    x = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    with torch.no_grad():
        density = log_prob_fn(x).exp().reshape(num, num)
    ax.contourf(gx, gy, density, levels=20, **contour_kwargs)
    ax.set_aspect("equal")
