r"""Fixed-step solvers for the probability-flow ODE, integrated from ``t`` down to ``s < t``.

Two families, all with ``step(x, t, s, ctx) -> x_s`` and a declared ``order``:

* Runge–Kutta in ``t`` on the velocity :math:`v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)`
  (:class:`Euler`, :class:`Heun`): any :class:`~scoresde.SDE`.
* Exponential integrators in the half log-SNR :math:`\ell = \log(\alpha/\sigma)` on the data
  prediction :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` (:class:`DDIM`, :class:`DPMSolverPP2M`,
  :class:`DPMSolverPP3M`): any :class:`~scoresde.LinearSDE`. The PF ODE is exactly

  .. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t + \sigma_s \int_{\ell_t}^{\ell_s} e^{\ell}\,
            \hat x_0(\ell)\, d\ell,

  so the linear part is solved in closed form and only :math:`\hat x_0(\ell)` is
  approximated, by a polynomial through the last ``order`` predictions (Lu et al. 2022).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from scoresde._tensor import as_time
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import StepContext, coef, predict_x0, require_linear_sde, require_sde


class ODEStepper(ABC):
    """A fixed-step probability-flow ODE solver of global order ``order``; a multistep solver
    uses the evaluations of its last ``history_steps`` steps (kept in ``ctx.history``)."""

    order: int
    history_steps: int = 0

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        self.sde = require_sde(sde)
        self.score_fn = score_fn
        self.flow = self.sde.probability_flow(score_fn)

    @abstractmethod
    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        """Advance ``x`` from time ``t`` to ``s < t`` (0-d time tensors)."""

    def check_grid(self, grid: Tensor) -> None:  # noqa: B027 (a hook: most solvers run any grid)
        """Raise ``ValueError`` if the descending ``grid`` is one this solver cannot run (none here)."""

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        r"""The PF-ODE velocity :math:`dx/dt` at a scalar time ``t`` (one score evaluation)."""
        return self.flow.velocity(x, as_time(t, x))


class Euler(ODEStepper):
    r"""Explicit Euler in ``t``: :math:`x_s = x_t + (s - t)\,v(x_t, t)`. Order 1, 1 NFE per step."""

    order = 1

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        return x + coef(s - t, x) * self.velocity(x, t)


class Heun(ODEStepper):
    r"""Heun's method (the explicit trapezoidal rule) in ``t``, as in EDM (Karras et al. 2022,
    Alg. 1): an Euler predictor :math:`\tilde x = x_t + (s - t) v(x_t, t)`, then

    .. math:: x_s = x_t + \tfrac12 (s - t)\,[v(x_t, t) + v(\tilde x, s)].

    The last step is plain Euler (EDM skips the correction there, where the score at the end
    time is the least accurate). Order 2; 2 NFE per step, 1 on the last."""

    order = 2

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        h = coef(s - t, x)
        v = self.velocity(x, t)
        x_euler = x + h * v
        if ctx.last:
            return x_euler
        return x + 0.5 * h * (v + self.velocity(x_euler, s))


class LogSNRStepper(ODEStepper):
    r"""A stepper working in the half log-SNR :math:`\ell = \log(\alpha/\sigma)` on the data
    prediction: needs a :class:`~scoresde.LinearSDE` and a grid ending at ``t > 0``."""

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        super().__init__(require_linear_sde(sde, type(self).__name__), score_fn)

    def check_grid(self, grid: Tensor) -> None:
        if grid[-1] <= 0:
            raise ValueError(
                f"{type(self).__name__} works in log-SNR, infinite at t=0: end the grid at t_end > 0, "
                f"got {grid[-1].item()!r}"
            )

    def half_log_snr(self, t: Tensor) -> Tensor:
        return 0.5 * self.sde.log_snr(t)


class ExponentialIntegrator(LogSNRStepper):
    r"""Multistep exponential integrator in :math:`\ell = \log(\alpha/\sigma)` on the data
    prediction (DPM-Solver++, Lu et al. 2022). With :math:`h = \ell_s - \ell_t > 0`,

    .. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \Big[\varphi_1 m_0
              + \varphi_2 D_1 + \varphi_3 D_2\Big], \quad
              \varphi_1 = 1 - e^{-h},\ \varphi_2 = 1 - \frac{\varphi_1}{h},\
              \varphi_3 = \frac12 - \frac{\varphi_2}{h},

    the exact integral of :math:`e^{\ell}(m_0 + u D_1/h + u^2 D_2/(2h^2))`, :math:`u = \ell - \ell_t`;
    :math:`m_0 = \hat x_0(x_t, t)` and :math:`D_1 \approx h\,\hat x_0'`,
    :math:`D_2 \approx h^2 \hat x_0''` are backward differences of earlier predictions, kept in
    ``ctx.history``. The first steps of a run use lower orders (too few points yet).
    One NFE per step."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.history_steps = cls.order - 1

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        sde = self.sde
        ell_t, ell_s = self.half_log_snr(t), self.half_log_snr(s)
        h = ell_s - ell_t
        m0 = predict_x0(sde, self.score_fn, x, t)
        previous = ctx.history[-(self.order - 1) :] if self.order > 1 else []
        update = self._data_term(m0, ell_t, h, previous)
        ctx.history.append((ell_t, m0))
        del ctx.history[: -max(self.order - 1, 1)]  # keep only what the next step needs
        sigma_ratio = (sde.sigma(s).log() - sde.sigma(t).log()).exp()
        return coef(sigma_ratio, x) * x + coef(sde.alpha(s), x) * update

    @abstractmethod
    def _data_term(self, m0: Tensor, ell_t: Tensor, h: Tensor, previous: list[tuple[Tensor, Tensor]]) -> Tensor:
        r"""The bracket :math:`[\dots]` above, from ``m0`` and ``previous`` ``(ell, x0_hat)`` pairs
        (oldest first)."""


def _phi1(h: Tensor) -> Tensor:
    return -torch.expm1(-h)


class DDIM(ExponentialIntegrator):
    r"""DDIM (Song, Meng & Ermon 2021) = the first-order exponential integrator on the data
    prediction (Lu et al. 2022, DPM-Solver++ 1):
    :math:`x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s (1 - e^{-h})\,\hat x_0(x_t, t)`.
    Exact when :math:`\hat x_0` does not depend on :math:`\ell` along the path (data that is a
    point mass); for a Gaussian of non-zero variance :math:`\hat x_0` moves along the path and
    the error is first order (see the tests). Order 1."""

    order = 1

    def _data_term(self, m0, ell_t, h, previous):
        return coef(_phi1(h), m0) * m0


class DPMSolverPP2M(ExponentialIntegrator):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): with :math:`r = h_{prev}/h`,

    .. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s (1 - e^{-h})
              \Big[\big(1 + \tfrac1{2r}\big) m_0 - \tfrac1{2r} m_{-1}\Big].

    The first step is DDIM. Order 2."""

    order = 2

    def _data_term(self, m0, ell_t, h, previous):
        if not previous:
            return coef(_phi1(h), m0) * m0
        ell_1, m1 = previous[-1]
        half_inv_r = coef(h / (2 * (ell_t - ell_1)), m0)
        return coef(_phi1(h), m0) * (m0 + half_inv_r * (m0 - m1))


class DPMSolverPP3M(DPMSolverPP2M):
    r"""DPM-Solver++(3M) (Lu et al. 2022): the Taylor form above with the quadratic through the
    last three data predictions at :math:`\ell_t, \ell_t - r_0 h, \ell_t - (r_0 + r_1) h`:

    .. math:: d_0 = \frac{m_0 - m_{-1}}{r_0},\ d_1 = \frac{m_{-1} - m_{-2}}{r_1},\
              c = \frac{d_0 - d_1}{r_0 + r_1},\ D_1 = d_0 + r_0 c,\ D_2 = 2c.

    The first step is DDIM, the second DPM-Solver++(2M). Order 3 (the two start-up steps
    contribute :math:`O(h^2)` each, negligible at high noise where they run)."""

    order = 3

    def _data_term(self, m0, ell_t, h, previous):
        if len(previous) < 2:
            return super()._data_term(m0, ell_t, h, previous)
        (ell_2, m2), (ell_1, m1) = previous
        r0, r1 = (ell_t - ell_1) / h, (ell_1 - ell_2) / h
        d0 = (m0 - m1) / coef(r0, m0)
        d1 = (m1 - m2) / coef(r1, m0)
        c = (d0 - d1) / coef(r0 + r1, m0)
        phi1 = _phi1(h)
        phi2 = 1 - phi1 / h
        phi3 = 0.5 - phi2 / h
        return coef(phi1, m0) * m0 + coef(phi2, m0) * (d0 + coef(r0, m0) * c) + coef(2 * phi3, m0) * c
