r"""Time embeddings: a scalar ``t`` per sample -> a ``(batch, dim)`` feature vector; the label
embedding of class-conditional networks."""

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


class LabelEmbedding(nn.Embedding):
    """``num_classes + 1`` learned vectors: one per class and the last for the null label
    (``num_classes``, "no label"), the unconditional model that classifier-free guidance contrasts with.
    A network trained with label dropout learns both from one set of weights."""

    def __init__(self, num_classes: int, dim: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def labels(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """``y`` checked to be ``(batch,)`` integer labels (metadata only), or all null for ``None``."""
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if not isinstance(y, Tensor) or y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be (batch,) integer labels, batch={batch}; got {got}")
        return y


def add_label(emb: Tensor, embedding: LabelEmbedding | None, y: Tensor | None, owner: str) -> Tensor:
    """``emb`` plus the embedding of labels ``y`` (``None``: the null label) for a class-conditional
    network; an unconditional one (``embedding=None``) refuses labels, naming ``owner``."""
    if embedding is None:
        if y is not None:
            raise ValueError(f"labels y were given but this {owner} is not class-conditional (num_classes=None)")
        return emb
    return emb + embedding(embedding.labels(y, emb.shape[0], emb.device)).to(emb.dtype)
