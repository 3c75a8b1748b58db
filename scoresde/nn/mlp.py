"""A time-conditioned residual MLP for low-dimensional data."""

from __future__ import annotations

import math

from torch import Tensor, nn

from scoresde.nn.embeddings import time_embedding


class _Block(nn.Module):
    """``h + Linear(SiLU(Linear(SiLU(h)) + time))``: a residual block with the time added inside."""

    def __init__(self, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.inp = nn.Linear(hidden, hidden)
        self.time = nn.Linear(embed_dim, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.out(self.act(self.inp(self.act(h)) + self.time(emb)))


class MLP(nn.Module):
    """``net(x, t)`` for ``x`` of shape ``(batch, *event)`` with ``prod(event) = dim``; output
    shaped like ``x``. Wrap it in a :mod:`scoresde.score` adapter to get a score.

    Args:
        dim: number of input values per sample.
        hidden: width. depth: number of residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features) or ``"sinusoidal"``.
        embed_dim: size of the time embedding.
    """

    def __init__(
        self, dim: int, hidden: int = 128, depth: int = 3, embedding: str = "fourier", embed_dim: int = 64
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.dim = dim
        self.embed = nn.Sequential(time_embedding(embedding, embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) got x of shape {tuple(x.shape)}")
        emb = self.embed(t).to(x.dtype)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)
