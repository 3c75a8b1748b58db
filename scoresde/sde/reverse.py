r"""The reverse-time SDE and the probability-flow ODE of a forward SDE with a score.

With :math:`s(x, t) \approx \nabla_x \log p_t(x)`:

.. math::
    \text{reverse SDE (Anderson 1982):}\quad dx = [f(x, t) - g(t)^2 s(x, t)]\,dt + g(t)\,d\bar w,
    \qquad
    \text{probability flow (Song et al. 2021):}\quad \frac{dx}{dt} = f(x, t) - \tfrac12 g(t)^2 s(x, t),

both run from ``T`` down to ``t_min`` (``dt < 0``); the ODE shares the SDE's marginals.
"""

from __future__ import annotations

from torch import Tensor

from scoresde._tensor import TimeLike, append_dims, as_time
from scoresde.sde.base import SDE, ScoreFn


class _ScoreDriven:
    r"""A forward SDE paired with a score: the drifts :math:`f - w\,g^2 s` of the reverse-time
    dynamics (``w = 1`` for the SDE, ``1/2`` for the ODE)."""

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(score_fn).__name__}")
        self.sde = sde
        self.score_fn = score_fn

    def _drift(self, x: Tensor, t: TimeLike, weight: float) -> Tensor:
        t = self.sde.step_time(t, x)
        g2 = append_dims(self.sde.diffusion(t).square(), x.ndim).to(x.dtype)
        return self.sde.drift(x, t) - weight * g2 * self.score_fn(x, t)


class ReverseSDE(_ScoreDriven):
    """Drift and diffusion of the reverse-time SDE of ``sde`` under ``score_fn``."""

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        r""":math:`f(x, t) - g(t)^2 s(x, t)` (the drift in forward time; integrate with ``dt < 0``)."""
        return self._drift(x, t, 1.0)

    def diffusion(self, t: Tensor) -> Tensor:
        """:math:`g(t)`, as for the forward SDE."""
        return self.sde.diffusion(t)

    def discretize(self, x: Tensor, t: TimeLike, dt: TimeLike) -> tuple[Tensor, Tensor]:
        r"""One reverse step from ``t`` to ``t - dt`` (``dt > 0``) as :math:`x - f_i + G_i^2 s + G_i z`
        from the forward discretisation ``(f_i, G_i)`` over ``[t - dt, t]`` (Song et al.'s
        reverse-diffusion predictor). Returns ``(drift_term, G_i)``; the step is
        ``x + drift_term + G_i z``."""
        t = self.sde.step_time(t, x)
        dt = as_time(dt, x)
        f, g = self.sde.discretize(x, t - dt, dt)
        return -f + append_dims(g.square(), x.ndim) * self.score_fn(x, t), g


class ProbabilityFlowODE(_ScoreDriven):
    """Velocity of the probability-flow ODE of ``sde`` under ``score_fn``."""

    def velocity(self, x: Tensor, t: TimeLike) -> Tensor:
        r""":math:`dx/dt = f(x, t) - \frac12 g(t)^2 s(x, t)`, shaped like ``x``."""
        return self._drift(x, t, 0.5)
