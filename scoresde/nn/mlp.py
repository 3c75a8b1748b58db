"""Time-conditioned residual MLPs for low-dimensional data: a score network (optionally
class-conditional) and a noisy classifier."""

from __future__ import annotations

import math

from torch import Tensor, nn

from scoresde.nn.embeddings import LabelEmbedding, add_label, time_embedding


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


class _Trunk(nn.Module):
    """The shared body: time embedding (plus an optional label embedding), input layer, residual
    blocks and an output layer of ``out_dim`` values per sample."""

    def __init__(self, dim: int, out_dim: int, hidden: int, depth: int, embedding: str, embed_dim: int,
                 num_classes: int | None) -> None:  # fmt: skip
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.dim = dim
        self.embed = nn.Sequential(time_embedding(embedding, embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU())
        self.class_embed = LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim))

    def features(self, x: Tensor, t: Tensor, y: Tensor | None, owner: str) -> Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"{owner}(dim={self.dim}) got x of shape {tuple(x.shape)}")
        emb = add_label(self.embed(t), self.class_embed, y, owner).to(x.dtype)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class MLP(_Trunk):
    """``net(x, t, y=None)`` for ``x`` of shape ``(batch, *event)`` with ``prod(event) = dim``; output
    shaped like ``x``. Wrap it in a :mod:`scoresde.score` adapter to get a score.

    Args:
        dim: number of input values per sample.
        hidden: width. depth: number of residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features) or ``"sinusoidal"``.
        embed_dim: size of the time embedding.
        num_classes: if given, the network takes labels ``y`` ``(batch,)`` in ``0..num_classes-1``, or
            :attr:`null_label` (= ``num_classes``, also ``y=None``) for "no label": one network for the
            conditional and the unconditional score of classifier-free guidance.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embedding: str = "fourier", embed_dim: int = 64,
                 num_classes: int | None = None) -> None:  # fmt: skip
        super().__init__(dim, dim, hidden, depth, embedding, embed_dim, num_classes)
        self.num_classes = num_classes

    @property
    def null_label(self) -> int:
        """The label index meaning "unconditional" (``num_classes``)."""
        if self.num_classes is None:
            raise AttributeError("this MLP is not class-conditional (num_classes=None)")
        return self.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.features(x, t, y, "MLP").reshape(x.shape)


class ClassifierMLP(_Trunk):
    r"""A time-conditioned classifier network ``net(x, t) -> logits`` ``(batch, num_classes)`` for
    ``x`` ``(batch, *event)`` with ``prod(event) = dim``: the reference network of a noisy classifier
    :math:`p_\phi(y \mid x_t, t)` (wrap it in :class:`scoresde.guidance.NoisyClassifier`). Same body
    as :class:`MLP`."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, depth: int = 3, embedding: str = "fourier",
                 embed_dim: int = 64) -> None:  # fmt: skip
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        super().__init__(dim, num_classes, hidden, depth, embedding, embed_dim, None)
        self.num_classes = num_classes

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.features(x, t, None, "ClassifierMLP")
