"""Bundled data: generated 2-D toys (no downloads)."""

from __future__ import annotations

import math

import torch

from scoresde.analytic import GaussianMixture


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """``num_modes`` isotropic Gaussians of std ``std`` evenly spaced on a circle of ``radius``
    (the classic 2-D test density; its exact score is known at every t)."""
    if not isinstance(num_modes, int) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    if radius < 0 or std <= 0:
        raise ValueError(f"need radius >= 0 and std > 0, got radius={radius!r}, std={std!r}")
    angle = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means, torch.full((num_modes, 2), std**2, dtype=torch.float64))
