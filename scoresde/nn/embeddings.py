r"""Time embeddings: a scalar ``t`` per sample -> a ``(batch, dim)`` feature vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianFourierEmbedding(nn.Module):
    r""":math:`[\sin(2\pi W t), \cos(2\pi W t)]` with fixed :math:`W \sim \mathcal N(0, \text{scale}^2)`
    (Tancik et al. 2020; Song et al. 2021 use it for continuous t)."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        arg = 2 * math.pi * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class SinusoidalEmbedding(nn.Module):
    r"""Transformer-style :math:`[\sin(\omega_i s), \cos(\omega_i s)]`, :math:`s = \text{scale}\cdot t`,
    frequencies :math:`\omega_i` geometric from 1 to ``1/max_period`` (Ho et al. 2020 with
    ``scale = 1000`` for t in [0, 1])."""

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.scale = scale
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))

    def forward(self, t: Tensor) -> Tensor:
        arg = self.scale * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def time_embedding(kind: str, dim: int) -> nn.Module:
    """``"fourier"`` or ``"sinusoidal"``."""
    if kind == "fourier":
        return GaussianFourierEmbedding(dim)
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    raise ValueError(f"time embedding must be 'fourier' or 'sinusoidal', got {kind!r}")
