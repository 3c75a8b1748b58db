r"""Variance-exploding SDE (Song et al. 2021; the continuous limit of NCSN's noise scales).

.. math:: dx = \sigma_{min} r^t \sqrt{2\log r}\,dw, \quad r = \sigma_{max}/\sigma_{min}, \qquad
          \alpha(t) = 1,\ \sigma(t) = \sigma_{min}\sqrt{r^{2t} - 1}.

This :math:`\sigma(t)` is the exact std of the SDE started at :math:`x_0` (0 at ``t = 0``);
score_sde_pytorch uses :math:`\sigma_{min} r^t` instead, which differs by less than
:math:`\sigma_{min}^2` in variance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.sde.base import LinearSDE, _check_number


class VESDE(LinearSDE):
    r"""Variance-exploding SDE with a geometric noise schedule.

    Args:
        sigma_min, sigma_max: noise scales, ``0 < sigma_min < sigma_max`` (defaults 0.01, 50).
        T: end time (default 1). t_min: smallest time used (default 1e-5).
    """

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5
    ) -> None:
        self.sigma_min = _check_number("sigma_min", sigma_min, positive=True)
        self.sigma_max = _check_number("sigma_max", sigma_max, positive=True)
        if sigma_min >= sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min!r} >= sigma_max={sigma_max!r}")
        self._log_ratio = math.log(sigma_max / sigma_min)
        super().__init__(T=T, t_min=t_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return 0.0 * t  # not zeros_like: stays differentiable in t

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.expm1(2 * self._log_ratio * t).sqrt()

    def log_snr(self, t: Tensor) -> Tensor:
        return -2 * math.log(self.sigma_min) - torch.expm1(2 * self._log_ratio * t).log()

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        t = torch.nn.functional.softplus(-lam - 2 * math.log(self.sigma_min)) / (2 * self._log_ratio)
        return t.clamp(0, self.T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self._log_ratio * t).exp() * math.sqrt(2 * self._log_ratio)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, t_min={self.t_min})"
