r"""Coordinates in which the adaptive solvers integrate the probability-flow ODE.

In :math:`y = x/\alpha_t` and :math:`\bar\sigma = \sigma_t/\alpha_t` every linear SDE has the
same probability-flow ODE (Karras et al. 2022); SDEs differ only in how time and state are
parametrised, and an adaptive solver's cost depends on that. VE's own time is
:math:`\log\bar\sigma` up to scale, so its state grows like :math:`\sigma_t` and the error control
has to follow the exponential; in VP's time and unit-variance state the same flow is cheaper (a
VE likelihood takes 20-45 % fewer evaluations for the same accuracy on the benchmark and notebook
mixtures, ``benchmarks/README.md``).

So a :class:`~scoresde.LinearSDE` is integrated in the coordinates of the reference VP SDE
(:math:`\beta \in [0.1, 20]`, Song et al. 2021), whatever SDE it is: the clock :math:`u` with
:math:`\lambda(u) = -\log\operatorname{expm1}(B(u))`, :math:`B(u) = 0.1\,u + 9.95\,u^2` (the
reference VP SDE's own time) and :math:`t = \lambda_{sde}^{-1}(\lambda(u))`, and the state
:math:`w = x / s_t`, :math:`s_t^2 = \alpha_t^2 + \sigma_t^2` (the marginal standard deviation of
unit-variance data; 1 for VP). Then

.. math:: \frac{dw}{du} = -\tfrac12\,\beta(u)\,\big(w + s_t\, s_\theta(s_t w,\, t)\big),
          \qquad \beta(u) = B'(u), \qquad \log p_w(w) = \log p_x(x) + D\log s_t,

and :math:`dw/du = 0` for :math:`\mathcal N(0, I)` data. For the reference VP SDE this is the
identity: same ODE, same steps. Any other :class:`~scoresde.SDE`, and a linear SDE without a
closed-form ``inverse_log_snr``, is integrated as :math:`dx/dt` in its own time
(:func:`flow_coordinates`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scoresde._tensor import append_dims, as_time
from scoresde.sde.base import SDE, LinearSDE
from scoresde.solvers._common import CountingScore
from scoresde.solvers.odeint import FlowField

BETA_MIN, BETA_MAX = 0.1, 20.0
"""The reference VP schedule whose time is the clock."""


def _clock_integral(u: Tensor) -> Tensor:
    """:math:`B(u) = \\int_0^u \\beta`, so that :math:`\\bar\\sigma^2 = e^{B} - 1`."""
    return u * (BETA_MIN + 0.5 * (BETA_MAX - BETA_MIN) * u)


def log_snr_of_clock(u: Tensor) -> Tensor:
    r""":math:`\lambda(u) = -\log(e^{B(u)} - 1)`."""
    return -torch.expm1(_clock_integral(u)).log()


def clock_of_log_snr(lam: Tensor) -> Tensor:
    r"""The clock at log-SNR ``lam``: :math:`B = \log(1 + e^{-\lambda})`, then the positive
    root of :math:`B(u) = B`, written without cancellation for small ``B``."""
    b = torch.nn.functional.softplus(-lam)
    return 2 * b / (BETA_MIN + (BETA_MIN**2 + 2 * (BETA_MAX - BETA_MIN) * b).sqrt())


class FlowCoordinates:
    """The SDE's own time and state: the clock is ``t``, :math:`w = x` and ``field`` is
    :math:`dx/dt`. The base, and what any :class:`~scoresde.SDE` that is not linear uses."""

    what = "the probability-flow velocity"
    """How error messages name ``field`` (its times are clock values)."""

    def __init__(self, sde: SDE, score: CountingScore) -> None:
        self.field: nn.Module = FlowField(sde, score)

    def clock(self, t: Tensor) -> Tensor:
        """Clock values at SDE times ``t`` (float64, any shape)."""
        return t

    def scale(self, t: Tensor) -> Tensor:
        """:math:`s_t` with :math:`x = s_t w`, at SDE times ``t`` (float64, any shape)."""
        return torch.ones_like(t)

    def to_state(self, x: Tensor, t: Tensor) -> Tensor:
        """:math:`w = x / s_t` at one time ``t`` (0-d)."""
        return x / self.scale(t).to(x)

    def from_state(self, w: Tensor, t: Tensor) -> Tensor:
        """:math:`x = s_t w`, at one time (0-d ``t``) or at ``(n,)`` times for states ``(n, batch, *event)``."""
        return w * append_dims(self.scale(t), w.ndim).to(w)


class ReferenceVPCoordinates(FlowCoordinates):
    """A linear SDE on the reference VP clock, in the state :math:`w = x/s_t` (module docstring).
    ``t_range`` is the solve's ``(earliest, latest)`` SDE time: the times the field computes from
    the clock are kept inside it, since the round trip ``t -> u -> t`` is exact only to rounding
    (``t_min = 1e-5`` came back as ``1e-5 - 8e-21``)."""

    what = "the probability-flow velocity (time on the reference VP clock)"

    def __init__(self, sde: LinearSDE, score: CountingScore, t_range: tuple[float, float]) -> None:
        self.sde = sde
        self.field = _ReferenceVPField(sde, score, t_range)

    def clock(self, t: Tensor) -> Tensor:
        return clock_of_log_snr(self.sde.log_snr(t))

    def scale(self, t: Tensor) -> Tensor:
        return (self.sde.alpha(t).square() + self.sde.sigma(t).square()).sqrt()


class _ReferenceVPField(nn.Module):
    """torchdiffeq's ``(u, w) -> dw/du``; a module, so the adjoint finds the score's parameters."""

    def __init__(self, sde: LinearSDE, score: CountingScore, t_range: tuple[float, float]) -> None:
        super().__init__()
        self.sde = sde
        self.score = score
        self.t_range = t_range

    def forward(self, u: Tensor, w: Tensor) -> Tensor:
        b = _clock_integral(u)
        t = self.sde.inverse_log_snr(-torch.expm1(b).log()).clamp(*self.t_range)
        scale = (self.sde.alpha(t) * (0.5 * b).exp()).to(w.dtype)  # alpha_t sqrt(1 + e^{-lambda}) = alpha_t e^{B/2}
        half_beta = (0.5 * (BETA_MIN + (BETA_MAX - BETA_MIN) * u)).to(w.dtype)
        return -half_beta * (w + scale * self.score(scale * w, as_time(t, w)))


def flow_coordinates(sde: SDE, score: CountingScore, times: Tensor) -> FlowCoordinates:
    """The reference VP coordinates for a :class:`~scoresde.LinearSDE` with a closed-form
    ``inverse_log_snr``; the SDE's own time and state otherwise (the clock needs :math:`t(\\lambda)`
    at every evaluation, and the generic bisection costs 64 log-SNR evaluations each time).
    ``times`` are the SDE times the solve runs through (float64, monotone)."""
    if isinstance(sde, LinearSDE) and type(sde).inverse_log_snr is not LinearSDE.inverse_log_snr:
        return ReferenceVPCoordinates(sde, score, (times.min().item(), times.max().item()))
    return FlowCoordinates(sde, score)
