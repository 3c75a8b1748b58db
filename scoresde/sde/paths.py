r"""Gaussian probability paths for flow matching (Lipman et al. 2023; Liu et al. 2023):

.. math:: x_t = \alpha_t\,x_0 + \sigma_t\,\epsilon, \qquad \epsilon \sim \mathcal N(0, I),
          \qquad \alpha_0 = 1,\ \sigma_0 = 0,\quad \alpha_1 = 0,\ \sigma_1 = 1,

data at ``t = 0`` and noise at ``t = 1`` (the SDE convention; Meta's ``flow_matching`` and Liu et al.
run time the other way). Its conditional velocity is :math:`u_t = \dot\alpha_t x_0 + \dot\sigma_t
\epsilon`, the target of the flow-matching loss (:func:`~scoresde.flow_matching_loss`).

A path is a :class:`~scoresde.LinearSDE`: the SDE :math:`dx = f x\,dt + g\,dw` with
:math:`f = \dot\alpha/\alpha` and :math:`g^2 = 2\sigma(\dot\sigma\alpha - \sigma\dot\alpha)/\alpha` has
the same marginals, and its probability-flow ODE is the marginal velocity field the flow learns. So
every sampler, likelihood and grid of the library runs on a path unchanged; conversely every
``LinearSDE`` (VP, sub-VP, VE, a user's) *is* a Gaussian path, with ``alpha``, ``sigma``, ``d_alpha``,
``d_sigma``, and works wherever a path does (flow-matching loss, velocity models).

The singular end. At ``t = 1`` the linear and cosine paths have :math:`\alpha = 0`: the log-SNR is
:math:`-\infty`, the drift :math:`f = \dot\alpha/\alpha` and :math:`g^2` are infinite, and the
conversion from a velocity to a data prediction divides by :math:`\alpha`. A path therefore ends at
``T < 1`` (default ``1 - 1e-3``) and starts at ``t_min`` (default ``1e-3``): the log-SNR then spans
:math:`\pm 13.8` for the linear path (the reference VP SDE spans :math:`[-10.05, 13.8]` on
``[1e-5, 1]``), no solver evaluates anything at ``alpha = 0`` or ``sigma = 0``, and the prior is the
marginal at ``T`` of unit-variance data, :math:`\mathcal N(0, (\alpha_T^2 + \sigma_T^2) I)`, whose
mismatch with :math:`p_T` is :math:`O(\alpha_T) = O(10^{-3})`. The closed-form ``inverse_log_snr``
puts the adaptive solves on the reference VP clock (:mod:`scoresde.solvers.flow`) at no extra cost.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor

from scoresde.sde.base import LinearSDE, _time_derivative

DEFAULT_T = 1.0 - 1e-3
"""A path's default end time: 1e-3 before its singular end."""

DEFAULT_T_MIN = 1e-3
"""A path's default first time (``sigma(t_min) = 1e-3`` for the linear path, as for VP at 1e-5)."""

_CHECK_POINTS = 1001
_END_TOL = 1e-6


class GaussianPath(LinearSDE):
    r"""A Gaussian path from data at ``t = 0`` to :math:`\mathcal N(0, I)` at ``t = 1``, used on
    ``[t_min, T]`` with ``T < 1`` (module docstring).

    A subclass gives ``alpha(t)`` and ``sigma(t)`` (tensors in, tensors out), and closed forms of
    ``d_alpha``, ``d_sigma`` (autodiff otherwise), ``log_snr`` and ``inverse_log_snr`` where it can.
    Construction checks on a float64 grid of ``[0, 1]`` that :math:`\alpha_0 = 1, \sigma_0 = 0,
    \alpha_1 = 0, \sigma_1 = 1` (within 1e-6), that :math:`\alpha` never increases, :math:`\sigma`
    never decreases and :math:`\alpha/\sigma` strictly decreases, and that ``d_alpha``, ``d_sigma``
    match the derivatives of ``alpha``, ``sigma``; a failure is a ``ValueError`` naming the value.

    Args:
        T: end time, ``t_min < T < 1`` (default ``1 - 1e-3``).
        t_min: first time (default ``1e-3``).
    """

    def __init__(self, T: float = DEFAULT_T, t_min: float = DEFAULT_T_MIN) -> None:
        if isinstance(T, (int, float)) and not isinstance(T, bool) and T >= 1:
            raise ValueError(
                f"a Gaussian path needs T < 1 (alpha(1) = 0: the log-SNR is -inf and the drift infinite), got T={T!r}"
            )
        super().__init__(T=T, t_min=t_min)
        self._check_path()

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        r""":math:`\alpha(t)`, the data coefficient (1 at ``t = 0``, 0 at ``t = 1``)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma(t)`, the noise coefficient (0 at ``t = 0``, 1 at ``t = 1``)."""

    def log_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t).log()

    def d_alpha(self, t: Tensor) -> Tensor:
        return _time_derivative(self.alpha, t)

    def drift_coef(self, t: Tensor) -> Tensor:
        return self.d_alpha(t) / self.alpha(t)

    def diffusion(self, t: Tensor) -> Tensor:
        r""":math:`g = \sqrt{2\sigma(\dot\sigma\alpha - \sigma\dot\alpha)/\alpha}`."""
        a, s = self.alpha(t), self.sigma(t)
        return (2 * s * (self.d_sigma(t) * a - s * self.d_alpha(t)) / a).clamp_min(0).sqrt()

    def _check_path(self) -> None:
        t = torch.linspace(0, 1, _CHECK_POINTS, dtype=torch.float64)
        a, s = self.alpha(t), self.sigma(t)
        name = type(self).__name__
        for what, v in (("alpha", a), ("sigma", s)):
            if v.shape != t.shape or not torch.isfinite(v).all():
                raise ValueError(f"{name}.{what}(t) must be finite and shaped like t on [0, 1]")
        ends = (("alpha", a, 0, 1.0), ("sigma", s, 0, 0.0), ("alpha", a, -1, 0.0), ("sigma", s, -1, 1.0))
        for what, v, i, want in ends:
            if abs(v[i].item() - want) > _END_TOL:
                raise ValueError(
                    f"{name} must run from data (alpha=1, sigma=0 at t=0) to noise (alpha=0, sigma=1 at t=1), "
                    f"got {what}({t[i].item():g})={v[i].item():.6g}"
                )
        for what, v, sign, verb in (("alpha", a, 1, "increases"), ("sigma", s, -1, "decreases")):
            bad = torch.nonzero(sign * v.diff() > 1e-12)
            if len(bad):
                i = bad[0].item()
                raise ValueError(
                    f"{name}.{what} {verb} between t={t[i].item():.4g} and t={t[i + 1].item():.4g} "
                    f"({v[i].item():.6g} -> {v[i + 1].item():.6g}): a path's alpha may not increase, sigma not decrease"
                )
        inner = t[1:-1]
        ratio = a[1:-1] / s[1:-1]
        bad = torch.nonzero(ratio.diff() >= 0)
        if len(bad):
            i = bad[0].item()
            raise ValueError(
                f"{name}'s alpha/sigma must strictly decrease (the log-SNR), but it is {ratio[i].item():.6g} at "
                f"t={inner[i].item():.4g} and {ratio[i + 1].item():.6g} at t={inner[i + 1].item():.4g}"
            )
        probe = torch.tensor([0.1, 0.37, 0.8], dtype=torch.float64) * self.T
        for what, fn, derivative in (("alpha", self.alpha, self.d_alpha), ("sigma", self.sigma, self.d_sigma)):
            expected, got = _time_derivative(fn, probe), derivative(probe)
            if not torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
                raise ValueError(
                    f"{name}.d_{what} disagrees with the derivative of {what}: {got.tolist()} vs {expected.tolist()} "
                    f"at t={probe.tolist()}"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, t_min={self.t_min})"


class LinearPath(GaussianPath):
    r"""The linear path of rectified flow and optimal-transport flow matching (Liu et al. 2023; Lipman
    et al. 2023 with :math:`\sigma_{min} = 0`): :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t`, so the
    conditional velocity is :math:`\epsilon - x_0`, a straight line at constant speed.

    .. math:: \lambda(t) = 2\log\frac{1 - t}{t}, \quad t(\lambda) = \operatorname{sigmoid}(-\lambda/2),
              \quad f = -\frac{1}{1 - t}, \quad g^2 = \frac{2t}{1 - t}.

    Arguments as :class:`GaussianPath`.
    """

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t + 0.0  # a new tensor, like the other schedule functions

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log1p(-t)

    def log_snr(self, t: Tensor) -> Tensor:
        return 2 * (torch.log1p(-t) - t.log())

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * lam).clamp(0, self.T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -1 / (1 - t)

    def diffusion(self, t: Tensor) -> Tensor:
        return (2 * t / (1 - t)).sqrt()


class CosinePath(GaussianPath):
    r"""The cosine path :math:`\alpha_t = \cos(\pi t/2)`, :math:`\sigma_t = \sin(\pi t/2)` (variance
    preserving: it is the VP SDE of Nichol & Dhariwal's cosine schedule with offset ``s = 0``):

    .. math:: \lambda(t) = -2\log\tan\frac{\pi t}{2}, \quad t(\lambda) = \frac2\pi\arctan e^{-\lambda/2},
              \quad f = -\frac\pi2\tan\frac{\pi t}{2}, \quad g^2 = \pi\tan\frac{\pi t}{2}.

    Arguments as :class:`GaussianPath`.
    """

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2 * torch.tan(0.5 * math.pi * t).log()

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        return (torch.atan((-0.5 * lam).exp()) * (2 / math.pi)).clamp(0, self.T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.tan(0.5 * math.pi * t)

    def diffusion(self, t: Tensor) -> Tensor:
        return (math.pi * torch.tan(0.5 * math.pi * t)).sqrt()
