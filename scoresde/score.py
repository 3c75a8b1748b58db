r"""Adapters from a network's output to a score function ``(x, t) -> grad_x log p_t(x)``.

For a linear SDE, :math:`x_t = \alpha x_0 + \sigma\epsilon`, and the four usual targets are
related by (Tweedie: :math:`E[x_0 \mid x_t] = (x_t + \sigma^2 s)/\alpha`):

- score: :math:`s` as is;
- noise (epsilon): :math:`s = -\hat\epsilon / \sigma`;
- data (x0): :math:`s = (\alpha \hat x_0 - x_t) / \sigma^2`;
- velocity :math:`\hat v = \alpha\epsilon - \sigma x_0`:
  :math:`s = -(\sigma x_t + \alpha \hat v) / (\sigma(\alpha^2 + \sigma^2))`.

Each adapter is an ``nn.Module`` wrapping ``net(x, t)`` (same shape out as in, ``t`` a
``(batch,)`` tensor in the time dtype) so its parameters train and save with it. A
class-conditional network (``net(x, t, y)`` with a ``num_classes`` attribute, e.g.
``MLP(..., num_classes=K)``) makes a conditional score model: ``model(x, t, y)`` is
:math:`\nabla\log p_t(x \mid y)`, and ``model(x, t)`` (or ``y = null_label``) the unconditional score
it learns from dropped labels (:func:`~scoresde.dsm_loss` ``labels=``; classifier-free guidance,
:mod:`scoresde.guidance`).
"""

from __future__ import annotations

from torch import Tensor, nn

from scoresde._tensor import TimeLike, append_dims
from scoresde.sde.base import LinearSDE


class ScoreModel(nn.Module):
    """Base adapter: ``forward(x, t)`` returns the score; subclasses convert ``net``'s output."""

    def __init__(self, net: nn.Module, sde: LinearSDE) -> None:
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"{type(self).__name__} needs a LinearSDE (alpha, sigma), got {type(sde).__name__}")
        self.net = net
        self.sde = sde

    def _coefs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha(t)``, ``sigma(t)`` broadcast against ``x``."""
        return (
            append_dims(self.sde.alpha(t), x.ndim).to(x.dtype),
            append_dims(self.sde.sigma(t), x.ndim).to(x.dtype),
        )

    @property
    def num_classes(self) -> int | None:
        """The network's number of classes (``None``: an unconditional model)."""
        return getattr(self.net, "num_classes", None)

    @property
    def null_label(self) -> int:
        """The label meaning "no class" (``num_classes``) of a conditional model."""
        if self.num_classes is None:
            raise AttributeError(f"this {type(self).__name__} is not class-conditional (num_classes=None)")
        return self.num_classes

    def forward(self, x: Tensor, t: TimeLike, y: Tensor | None = None) -> Tensor:
        """The score at ``x`` ``(batch, *event)``, time ``t``, and for a conditional model labels ``y``
        ``(batch,)`` (``None``: the null label, the unconditional score)."""
        t = self.sde.step_time(t, x)
        if y is not None and self.num_classes is None:
            raise ValueError(f"labels y were given but this {type(self).__name__} is unconditional "
                             f"({type(self.net).__name__} has no num_classes)")  # fmt: skip
        out = self.net(x, t) if y is None else self.net(x, t, y)
        if out.shape != x.shape:
            raise ValueError(f"net output shape {tuple(out.shape)} differs from input shape {tuple(x.shape)}")
        return self.to_score(out, x, t)

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError


class DirectScore(ScoreModel):
    """The network predicts the score itself."""

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return out


class EpsilonScore(ScoreModel):
    r"""The network predicts the noise: :math:`s = -\hat\epsilon/\sigma` (Ho et al. 2020)."""

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        _, sigma = self._coefs(x, t)
        return -out / sigma


class DataScore(ScoreModel):
    r"""The network predicts the clean data: :math:`s = (\alpha\hat x_0 - x_t)/\sigma^2`."""

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self._coefs(x, t)
        return (alpha * out - x) / sigma.square()


class VelocityScore(ScoreModel):
    r"""The network predicts :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022):
    :math:`\epsilon = (\sigma x_t + \alpha v)/(\alpha^2 + \sigma^2)`, :math:`s = -\epsilon/\sigma`."""

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self._coefs(x, t)
        return -(sigma * x + alpha * out) / (sigma * (alpha.square() + sigma.square()))
