r"""Flow velocities: a network predicting :math:`dx/dt`, and its exact conversions to and from
score, noise and data predictions on any Gaussian path (any :class:`~scoresde.LinearSDE`).

On the path :math:`x_t = \alpha x_0 + \sigma\epsilon` the marginal velocity is the posterior mean of
the conditional one, :math:`v(x, t) = E[\dot\alpha x_0 + \dot\sigma\epsilon \mid x_t = x]
= \dot\alpha\hat x_0 + \dot\sigma\hat\epsilon` with :math:`x = \alpha\hat x_0 + \sigma\hat\epsilon`
and :math:`\hat\epsilon = -\sigma s` (Tweedie). Solving the 2x2 system, with
:math:`\Delta = \alpha\dot\sigma - \sigma\dot\alpha > 0` (:math:`= \alpha^2\,d(\sigma/\alpha)/dt`):

.. math::
    \hat x_0 = \frac{\dot\sigma x - \sigma v}{\Delta}, \qquad
    \hat\epsilon = \frac{\alpha v - \dot\alpha x}{\Delta}, \qquad
    s = \frac{\dot\alpha x - \alpha v}{\sigma\Delta},

none of which divides by :math:`\alpha` (finite at the singular end of the linear path); and back,

.. math::
    v = \frac{\dot\alpha x + \sigma(\dot\alpha\sigma - \alpha\dot\sigma)\,s}{\alpha}
      = \frac{\dot\alpha x + \Delta\hat\epsilon}{\alpha}
      = \frac{\dot\sigma x - \Delta\hat x_0}{\sigma}.

This :math:`v` is exactly the probability-flow velocity :math:`f x - \tfrac12 g^2 s` of the path's
SDE (:mod:`scoresde.sde.paths`), so a velocity model used as a score function makes every sampler,
likelihood and grid of the library integrate :math:`dx/dt = v` itself. Not to be confused with
:class:`~scoresde.VelocityScore`, Salimans & Ho's v-prediction :math:`\alpha\epsilon - \sigma x_0`.

Shapes: ``out`` and ``x`` are ``(batch, *event)``; ``t`` a number or a ``(batch,)`` tensor.
"""

from __future__ import annotations

from torch import Tensor

from scoresde._tensor import TimeLike, append_dims, check_float
from scoresde.score import ScoreModel
from scoresde.sde.base import LinearSDE

__all__ = [
    "FlowVelocity",
    "eps_to_velocity",
    "score_to_velocity",
    "velocity_to_eps",
    "velocity_to_score",
    "velocity_to_x0",
    "x0_to_velocity",
]

OUTPUTS = ("score", "velocity")


def _coefs(sde: LinearSDE, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r""":math:`\alpha, \sigma, \dot\alpha, \dot\sigma, \Delta` at ``t``, broadcast against ``x`` in its dtype."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"velocity conversions need a LinearSDE (a Gaussian path), got {type(sde).__name__}")
    t = sde.step_time(t, x)
    a, s, da, ds = (append_dims(fn(t), x.ndim) for fn in (sde.alpha, sde.sigma, sde.d_alpha, sde.d_sigma))
    return tuple(c.to(x.dtype) for c in (a, s, da, ds, a * ds - s * da))  # type: ignore[return-value]


def _check_pair(out: Tensor, x: Tensor, name: str) -> None:
    check_float(out, name)
    check_float(x, "x")
    if out.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(out.shape)} but x has shape {tuple(x.shape)}: they must match")


def velocity_to_score(v: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The score :math:`s = (\dot\alpha x - \alpha v)/(\sigma\Delta)` of the velocity ``v`` at ``(x, t)``."""
    _check_pair(v, x, "v")
    a, s, da, _, delta = _coefs(sde, x, t)
    return (da * x - a * v) / (s * delta)


def velocity_to_eps(v: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The noise prediction :math:`\hat\epsilon = (\alpha v - \dot\alpha x)/\Delta`."""
    _check_pair(v, x, "v")
    a, _, da, _, delta = _coefs(sde, x, t)
    return (a * v - da * x) / delta


def velocity_to_x0(v: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The data prediction :math:`\hat x_0 = (\dot\sigma x - \sigma v)/\Delta`."""
    _check_pair(v, x, "v")
    _, s, _, ds, delta = _coefs(sde, x, t)
    return (ds * x - s * v) / delta


def score_to_velocity(score: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The velocity :math:`v = (\dot\alpha x - \sigma\Delta\,s)/\alpha` of the score ``score``."""
    _check_pair(score, x, "score")
    a, s, da, _, delta = _coefs(sde, x, t)
    return (da * x - s * delta * score) / a


def eps_to_velocity(eps: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The velocity :math:`v = (\dot\alpha x + \Delta\hat\epsilon)/\alpha` of the noise prediction ``eps``."""
    _check_pair(eps, x, "eps")
    a, _, da, _, delta = _coefs(sde, x, t)
    return (da * x + delta * eps) / a


def x0_to_velocity(x0: Tensor, x: Tensor, t: TimeLike, sde: LinearSDE) -> Tensor:
    r"""The velocity :math:`v = (\dot\sigma x - \Delta\hat x_0)/\sigma` of the data prediction ``x0``."""
    _check_pair(x0, x, "x0")
    _, s, _, ds, delta = _coefs(sde, x, t)
    return (ds * x - delta * x0) / s


class FlowVelocity(ScoreModel):
    r"""A flow model: ``net(x, t)`` predicts the velocity :math:`dx/dt` of the path ``sde`` (flow
    matching, rectified flow), shaped like ``x``.

    ``model(x, t)`` is the score :math:`s = (\dot\alpha x - \alpha v)/(\sigma\Delta)` (module
    docstring), so the model is a ``score_fn`` for every sampler and likelihood, and the ODE they
    integrate is :math:`dx/dt = v` exactly; ``model.velocity(x, t)`` (or ``model(x, t,
    output="velocity")``, which also passes through ``DistributedDataParallel``) is the raw velocity
    the flow-matching loss trains.

    Args:
        net: ``(x, t) -> v`` with ``t`` a ``(batch,)`` tensor in the time dtype.
        sde: the path (any :class:`~scoresde.LinearSDE`, e.g. :class:`~scoresde.LinearPath`).
    """

    def forward(self, x: Tensor, t: TimeLike, *, output: str = "score") -> Tensor:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        t = self.sde.step_time(t, x)
        v = self.net(x, t)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"the velocity network returned shape {got} for x of shape {tuple(x.shape)}: "
                "a velocity dx/dt is shaped like x"
            )
        return v if output == "velocity" else self.to_score(v, x, t)

    def velocity(self, x: Tensor, t: TimeLike) -> Tensor:
        """The network's velocity :math:`v(x, t)`, shaped like ``x``."""
        return self(x, t, output="velocity")

    def to_score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return velocity_to_score(out, x, t, self.sde)
