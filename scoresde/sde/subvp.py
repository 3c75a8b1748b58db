r"""Sub-variance-preserving SDE (Song et al. 2021, eq. 29).

.. math:: dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)\,(1 - e^{-2B(t)})}\,dw, \qquad
          \alpha(t) = e^{-B(t)/2},\ \sigma(t) = 1 - e^{-B(t)},

whose variance stays below the VP SDE's at every t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.sde.base import LinearSDE
from scoresde.sde.vp import beta_schedule


class SubVPSDE(LinearSDE):
    r"""Sub-VP SDE; same arguments as :class:`~scoresde.VPSDE`."""

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

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.schedule.integral(t))

    def log_snr(self, t: Tensor) -> Tensor:
        b = self.schedule.integral(t)
        return -b - 2 * (-torch.expm1(-b)).log()

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        # u = e^{-B} solves e^lam (1 - u)^2 = u; take the root in (0, 1), in a form that neither
        # overflows nor cancels on either side of lam = 0.
        p = lam.clamp(max=0).exp()
        q = (-lam).clamp(max=0).exp()
        b_low = -torch.log(2 * p / (2 * p + 1 + (4 * p + 1).sqrt()))  # lam < 0
        root = (4 * q + q * q).sqrt()
        b_high = -torch.log1p(-(q + root) / (2 + q + root))  # lam >= 0
        b = torch.where(lam < 0, b_low, b_high)
        return self.schedule.inverse_integral(b).clamp(0, self.T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.schedule.integral(t))).sqrt()

    def __repr__(self) -> str:
        return f"SubVPSDE({self.schedule!r}, T={self.T}, t_min={self.t_min})"
