r"""Sub-variance-preserving SDE (Song et al. 2021, eq. 29).

.. math:: dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)\,(1 - e^{-2B(t)})}\,dw, \qquad
          \alpha(t) = e^{-B(t)/2},\ \sigma(t) = 1 - e^{-B(t)},

whose variance stays below the VP SDE's at every t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scoresde.sde.vp import BetaScheduleSDE


class SubVPSDE(BetaScheduleSDE):
    r"""Sub-VP SDE; same arguments as :class:`~scoresde.VPSDE`."""

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

    def diffusion(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.schedule.integral(t))).sqrt()
