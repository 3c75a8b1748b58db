r"""Variance-preserving SDE (Song et al. 2021; the continuous limit of DDPM).

.. math:: dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw, \qquad
          \alpha(t) = e^{-B(t)/2},\ \sigma(t) = \sqrt{1 - e^{-B(t)}},\ B(t) = \int_0^t \beta,

with the linear schedule :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})` or the
cosine schedule of Nichol & Dhariwal (2021), :math:`\alpha(t)^2 = \cos^2\phi(t)/\cos^2\phi(0)`,
:math:`\phi(t) = \frac{t + s}{1 + s}\frac{\pi}{2}`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.sde.base import LinearSDE, _check_number


class LinearBeta:
    r""":math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = _check_number("beta_min", beta_min, positive=True)
        self.beta_max = _check_number("beta_max", beta_max, positive=True)
        if beta_min > beta_max:
            raise ValueError(f"need beta_min <= beta_max, got beta_min={beta_min!r} > beta_max={beta_max!r}")

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def inverse_integral(self, b: Tensor) -> Tensor:
        # root of the quadratic in a form without cancellation (and valid for beta_min == beta_max)
        return 2 * b / (self.beta_min + (self.beta_min**2 + 2 * (self.beta_max - self.beta_min) * b).sqrt())

    def __repr__(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}"


class CosineBeta:
    r"""Nichol & Dhariwal's cosine schedule: :math:`B(t) = -2\log\frac{\cos\phi(t)}{\cos\phi(0)}`."""

    def __init__(self, s: float = 0.008) -> None:
        self.s = _check_number("s", s, positive=True)
        self._log_cos0 = math.log(math.cos(self._phi(0.0)))
        self._tan0 = math.tan(self._phi(0.0))

    def _phi(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t: Tensor) -> Tensor:
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def integral(self, t: Tensor) -> Tensor:
        # cos(phi0 + d)/cos(phi0) - 1 = -2 sin^2(d/2) - tan(phi0) sin(d), free of cancellation at small t
        d = t / (1 + self.s) * (math.pi / 2)
        return -2 * torch.log1p(-2 * torch.sin(d / 2).square() - self._tan0 * torch.sin(d))

    def inverse_integral(self, b: Tensor) -> Tensor:
        phi = torch.arccos((self._log_cos0 - 0.5 * b).exp())
        return phi * (2 / math.pi) * (1 + self.s) - self.s

    def __repr__(self) -> str:
        return f"schedule='cosine', s={self.s}"


def beta_schedule(
    schedule: str, beta_min: float | None, beta_max: float | None, T: float | None
) -> tuple[LinearBeta | CosineBeta, float]:
    """The beta schedule named ``schedule`` and its end time (default 1; for cosine, where
    :math:`B(T) = 10`, so that :math:`\\alpha(T)^2 = e^{-10}` as in the linear schedule)."""
    if schedule == "linear":
        sched = LinearBeta(0.1 if beta_min is None else beta_min, 20.0 if beta_max is None else beta_max)
        return sched, 1.0 if T is None else T
    if schedule == "cosine":
        if beta_min is not None or beta_max is not None:
            raise ValueError("the cosine schedule takes no beta_min/beta_max")
        sched = CosineBeta()
        if T is None:
            T = sched.inverse_integral(torch.tensor(10.0, dtype=torch.float64)).item()
        elif T >= 1:
            raise ValueError(f"the cosine schedule needs T < 1 (beta is infinite at t = 1), got T={T!r}")
        return sched, T
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")


class BetaScheduleSDE(LinearSDE):
    r"""Shared part of the VP and sub-VP SDEs: drift :math:`-\frac12\beta(t)x`, mean coefficient
    :math:`\alpha(t) = e^{-B(t)/2}`; subclasses give the noise (``sigma``, ``diffusion``, ...).

    Args:
        beta_min, beta_max: the linear schedule's end points (defaults 0.1 and 20).
        schedule: ``"linear"`` or ``"cosine"``.
        T: end time (default 1; for cosine where :math:`\alpha(T)^2 = e^{-10}`).
        t_min: smallest time used (default 1e-5).
    """

    def __init__(
        self,
        beta_min: float | None = None,
        beta_max: float | None = None,
        schedule: str = "linear",
        T: float | None = None,
        t_min: float = 1e-5,
    ) -> None:
        self.schedule, T = beta_schedule(schedule, beta_min, beta_max, T)
        super().__init__(T=T, t_min=t_min)

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`\beta(t)`."""
        return self.schedule.beta(t)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule.integral(t)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r}, T={self.T}, t_min={self.t_min})"


class VPSDE(BetaScheduleSDE):
    r"""Variance-preserving SDE, :math:`dx = -\frac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw`;
    arguments as :class:`BetaScheduleSDE`."""

    def sigma(self, t: Tensor) -> Tensor:
        return (-torch.expm1(-self.schedule.integral(t))).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.expm1(self.schedule.integral(t)).log()

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        t = self.schedule.inverse_integral(torch.nn.functional.softplus(-lam))
        return t.clamp(0, self.T)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()
