r"""A small DDPM++-style U-Net for images (after Ho et al. 2020 and Song et al. 2021, §H).

``UNet(x, t[, y]) -> out`` shaped like ``x`` ``(batch, C, H, W)``: a convolutional encoder–
decoder with ``len(channel_mults)`` resolution levels, each holding ``num_res_blocks``
residual blocks (GroupNorm, SiLU, 3x3 convolutions, dropout) with the time embedding — and
the class embedding, if any — projected and added inside every block, self-attention after
the blocks of the levels in ``attention_levels`` and at the bottleneck, and skip
connections from every encoder stage to the decoder. Residual sums are scaled by
:math:`1/\sqrt2` and the last convolution of every branch starts at zero, so each block is the
identity at initialisation and the network outputs 0 (DDPM++'s ``skip_rescale`` and
zero-init). ``H`` and ``W`` must be divisible by :math:`2^{\text{levels}-1}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoresde.nn.embeddings import LabelEmbedding, add_label, time_embedding

_SQRT_HALF = 1 / math.sqrt(2)


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels each (fewer for tiny widths)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= min(4, channels))
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    r""":math:`(\text{skip}(h) + \text{conv}(\text{drop}(\phi(\text{GN}(u)))))/\sqrt2`,
    :math:`u = \text{conv}(\phi(\text{GN}(h))) + W e`, :math:`\phi` = SiLU, ``e`` the (time + class)
    embedding ``(batch, embed_dim)``."""

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.embed = nn.Linear(embed_dim, out_ch)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.embed(emb)[:, :, None, None]
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return (self.skip(h) + out) * _SQRT_HALF


class SelfAttention(nn.Module):
    r"""Multi-head self-attention over the ``H*W`` positions, residual:
    :math:`(h + \text{proj}(\text{softmax}(QK^\top/\sqrt d)V))/\sqrt2`."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, height, width = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (b, HW, c)
        qkv = self.qkv(tokens).reshape(b, height * width, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, HW, c/heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, height * width, c)
        return (h + self.proj(out).transpose(1, 2).reshape(b, c, height, width)) * _SQRT_HALF


class _Down(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(h)


class _Up(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM++-style U-Net: ``net(x, t, y=None)``, ``x`` ``(batch, in_channels, H, W)``, ``t``
    ``(batch,)``, output shaped like ``x``. Wrap it in a :mod:`scoresde.score` adapter (e.g.
    :class:`~scoresde.EpsilonScore`) to get a score model.

    Args:
        in_channels: image channels (1 grey, 3 colour).
        channels: base width; level ``i`` has ``channels * channel_mults[i]`` channels.
        channel_mults: one multiplier per resolution level; ``H`` and ``W`` must be divisible
            by ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of the levels (0 = full resolution) with self-attention
            after each residual block; the bottleneck always has one attention layer.
        num_heads: attention heads. dropout: dropout rate inside the residual blocks.
        embedding: ``"fourier"`` (Gaussian Fourier features of t) or ``"sinusoidal"``.
        num_classes: if given, the network takes labels ``y`` in ``0..num_classes-1``, or
            :attr:`null_label` (= ``num_classes``) for "no label" — the unconditional model that
            classifier-free guidance contrasts with; ``y=None`` means all null.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        num_heads: int = 1,
        dropout: float = 0.1,
        embedding: str = "fourier",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks),
                        ("num_heads", num_heads)):  # fmt: skip
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        channel_mults = tuple(channel_mults)
        if not channel_mults or not all(isinstance(m, int) and m >= 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults!r}")
        attention_levels = tuple(attention_levels)
        if not all(isinstance(a, int) and 0 <= a < len(channel_mults) for a in attention_levels):
            raise ValueError(
                f"attention_levels must be level indices in [0, {len(channel_mults) - 1}], got {attention_levels!r}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.in_channels = in_channels
        self.num_levels = len(channel_mults)
        self.num_classes = num_classes

        embed_dim = 4 * channels
        self.time_embed = nn.Sequential(
            time_embedding(embedding, channels), nn.Linear(channels, embed_dim), nn.SiLU(),
            nn.Linear(embed_dim, embed_dim),
        )  # fmt: skip
        self.class_embed = LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None

        def block(cin: int, cout: int, level: int) -> nn.ModuleList:
            layers: list[nn.Module] = [ResBlock(cin, cout, embed_dim, dropout)]
            if level in attention_levels:
                layers.append(SelfAttention(cout, num_heads))
            return nn.ModuleList(layers)

        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch = channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, channels * mult, level))
                ch = channels * mult
                skip_channels.append(ch)
            if level < self.num_levels - 1:
                self.down.append(nn.ModuleList([_Down(ch)]))
                skip_channels.append(ch)

        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, embed_dim, dropout), SelfAttention(ch, num_heads), ResBlock(ch, ch, embed_dim, dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_channels.pop(), channels * mult, level))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.ModuleList([_Up(ch)]))
        assert not skip_channels
        self.head = nn.Sequential(_group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    @property
    def null_label(self) -> int:
        """The label index meaning "unconditional" (``num_classes``)."""
        if self.num_classes is None:
            raise AttributeError("this UNet is not class-conditional (num_classes=None)")
        return self.num_classes

    def _embedding(self, t: Tensor, y: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if t.shape != (batch,):
            raise ValueError(f"t must be a (batch,) tensor with batch={batch}, got shape {tuple(t.shape)}")
        return add_label(self.time_embed(t), self.class_embed, y, "UNet").to(like.dtype)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet(in_channels={self.in_channels}) needs x of shape (batch, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        factor = 2 ** (self.num_levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"image size {x.shape[2]}x{x.shape[3]} is not divisible by {factor} "
                f"(2 ** (levels - 1) for {self.num_levels} levels)"
            )
        emb = self._embedding(t, y, x.shape[0], x)
        h = self.stem(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb)
        return self.head(h)
