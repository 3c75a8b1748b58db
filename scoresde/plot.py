"""Matplotlib figures (imported lazily by the CLI; the core never imports this module)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from scoresde._atomic import atomic_write


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


def image_grid(images: Tensor, *, num_levels: int, nrow: int | None = None, padding: int = 1) -> Tensor:
    """Tile integer-level images ``(n, C, H, W)`` (C = 1 or 3) into one ``(rows*(H+p)+p, cols*(W+p)+p, C)``
    float image in ``[0, 1]`` (``level / (num_levels - 1)``), ``nrow`` images per row (default
    about ``sqrt(n)``), separated by ``padding`` pixels of white."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (n, 1 or 3, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.ones(rows * (h + padding) + padding, nrow * (w + padding) + padding, c)
    values = images.detach().cpu().float().div(num_levels - 1).clamp(0, 1).permute(0, 2, 3, 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = values[i]
    return grid


def save_image_grid(
    images: Tensor, path: str | Path, *, num_levels: int, nrow: int | None = None, scale: int = 1
) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG, each pixel enlarged ``scale`` times."""
    from matplotlib.image import imsave

    grid = image_grid(images, num_levels=num_levels, nrow=nrow)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    array = grid[..., 0].numpy() if grid.shape[-1] == 1 else grid.numpy()
    return atomic_write(path, lambda f: imsave(f, array, cmap="gray", vmin=0.0, vmax=1.0, format="png"))


def save_figure(fig: Figure, path: str | Path, **savefig_kwargs) -> Path:
    """Write ``fig`` atomically (the format from ``path``'s suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or None, **savefig_kwargs))
    finally:
        plt.close(fig)
