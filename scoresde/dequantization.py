r"""Dequantization distributions :math:`q(y \mid x)` for the bound on a discrete likelihood.

Levels :math:`x \in \{0, \dots, K-1\}^D` own the bins :math:`B_x = T([x/K, (x+1)/K))` of model
space (``T`` the affine :class:`~scoresde.DataTransform`, scale :math:`s_i`): centre
:math:`c = T((x + 1/2)/K)`, half-widths :math:`h_i = |s_i|/(2K)`. For any density :math:`q` on
:math:`B_x` and a model density :math:`p`,

.. math:: P(x) = \int_{B_x} p(y)\,dy = E_{q}\Big[\frac{p(y)}{q(y \mid x)}\Big]
          \ge E_{q}\Big[\log\frac{1}{K_s}\sum_{k=1}^{K_s} \frac{p(y_k)}{q(y_k \mid x)}\Big]
          \quad(\text{the log of } P),

the importance-weighted bound with :math:`K_s` draws (Burda et al. 2016; Hoogeboom et al. 2020
for dequantization), which is the plain variational bound at :math:`K_s = 1` and rises to
:math:`\log P(x)` as :math:`K_s \to \infty`. Each dequantizer draws :math:`y` and returns the point
:math:`x_{t}` whose ODE density is asked for at time ``t_end`` and the rest of the log-weight, so
:math:`\log w = \log p_{t_{end}}(x_t) + \text{correction}`:

* :class:`UniformDequantization`: :math:`y = T((x + \nu)/K)`, :math:`\nu \sim U[0, 1)^D`, the model
  density :math:`p_{t_{min}}` of the ODE at ``t_min``; correction
  :math:`\log|\det \partial y/\partial u| - D \log K`.
* :class:`TruncatedNormalDequantization` (i-DODE, Zheng et al. 2023): see its docstring.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scoresde.noise import Noise
from scoresde.sde.base import SDE, LinearSDE

if TYPE_CHECKING:
    from scoresde.discrete_data import DataTransform

__all__ = [
    "DEQUANTIZATIONS",
    "Dequantization",
    "TruncatedNormalDequantization",
    "UniformDequantization",
    "make_dequantization",
    "truncated_normal_log_prob",
    "truncated_normal_sample",
]

DEQUANTIZATIONS = ("uniform", "truncated_normal")
"""The names :func:`~scoresde.bits_per_dim` takes as ``dequantization=``."""


def truncated_normal_sample(u: Tensor, tau: Tensor) -> Tensor:
    r"""The standard normal truncated to :math:`[-\tau, \tau]` by its inverse CDF:
    :math:`e = \Phi^{-1}(\Phi(-\tau) + u\,(\Phi(\tau) - \Phi(-\tau)))` for uniforms ``u`` in
    ``[0, 1)``; ``tau`` broadcasts to ``u``. Computed in float64, returned in ``u``'s dtype."""
    u64, tau64 = u.double(), tau.to(device=u.device, dtype=torch.float64)
    low = torch.special.ndtr(-tau64)
    e = torch.special.ndtri(low + u64 * (1 - 2 * low))
    return torch.maximum(torch.minimum(e, tau64), -tau64).to(u.dtype)


def truncated_normal_log_prob(e: Tensor, tau: Tensor) -> Tensor:
    r"""Elementwise log-density of the standard normal truncated to :math:`[-\tau, \tau]`,
    :math:`-e^2/2 - \tfrac12\log 2\pi - \log Z`, :math:`Z = \operatorname{erf}(\tau/\sqrt2)`
    (``-inf`` outside); shaped like ``e``."""
    tau = tau.to(device=e.device, dtype=e.dtype)
    log_z = torch.special.erf(tau / math.sqrt(2)).log()
    inside = -0.5 * e.square() - 0.5 * math.log(2 * math.pi) - log_z
    return torch.where(e.abs() <= tau, inside, torch.full_like(inside, -math.inf))


class Dequantization(ABC):
    """A dequantization distribution of one data set's bins (levels ``0..num_bins-1``, ``transform``)."""

    def __init__(self, num_bins: int, transform: DataTransform) -> None:
        self.num_bins, self.transform = num_bins, transform

    @property
    @abstractmethod
    def t_end(self) -> float | None:
        """The time of the ODE density :math:`p_{t_{end}}` (``None``: the SDE's ``t_min``)."""

    @abstractmethod
    def draw(self, levels: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        r"""For float levels ``(batch, *event)``: the point :math:`x_t` ``(batch, *event)`` and the
        correction ``(batch,)`` with :math:`\log w = \log p_{t_{end}}(x_t) + \text{correction}`
        (nats), one uniform draw per value from ``noise``."""


class UniformDequantization(Dequantization):
    r""":math:`y = T((x + \nu)/K)`, :math:`\nu \sim U[0, 1)^D`, whose log-density in model space is
    :math:`D\log K - \log|\det\partial y/\partial u|`; the model density is the ODE's at ``t_min``."""

    t_end = None

    def draw(self, levels: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        y = self.transform((levels + noise.rand_like(levels)) / self.num_bins)
        correction = self.transform.log_abs_det(levels) - levels[0].numel() * math.log(self.num_bins)
        return y, correction.expand(levels.shape[0])


class TruncatedNormalDequantization(Dequantization):
    r"""i-DODE's training-free truncated-normal dequantization (Zheng et al. 2023, sec. 4), for a
    model trained on the bin centres.

    A model trained on the centres :math:`c` learns :math:`p_t(x_t) \approx \sum_c \pi(c)\,
    \mathcal N(x_t; \alpha_t c, \sigma_t^2 I)`, whose posterior near :math:`c` at a small time
    :math:`\epsilon` is the forward kernel. So draw :math:`e \sim \mathcal N(0, I)` truncated to
    :math:`|e_i| \le \tau_i` and set :math:`x_\epsilon = \alpha_\epsilon c + \sigma_\epsilon e`, i.e.
    :math:`y = x_\epsilon/\alpha_\epsilon = c + r e`, :math:`r = \sigma_\epsilon/\alpha_\epsilon`,
    with :math:`r\tau_i = h_i` so :math:`y` stays in the bin. The model density of ``y`` is the
    ODE marginal rescaled, :math:`p(y) = \alpha_\epsilon^D p_\epsilon(\alpha_\epsilon y)`, and
    :math:`q(y \mid x) = \prod_i \mathrm{TN}(e_i; \tau_i)/r`, so

    .. math:: \log w = \log p_\epsilon(x_\epsilon) + D\log\sigma_\epsilon
              + \sum_i \Big[\frac{e_i^2}{2} + \frac12\log 2\pi + \log\operatorname{erf}\frac{\tau_i}{\sqrt2}\Big],

    and :math:`-\log_2 P(x)/D \le -E[\log w]/(D\ln 2)`. On the exact mixture of centres with
    well separated kernels :math:`q` is the posterior and every draw has
    :math:`\log w = \log\pi(c) + \sum_i \log\operatorname{erf}(\tau_i/\sqrt2)`: the bound is tight,
    and its excess over :math:`-\log\pi(c)` is the kernel's mass outside the bin,
    :math:`-\log\operatorname{erf}(3/\sqrt2) \approx 0.0027` nats/dim at i-DODE's :math:`\tau = 3`.

    ``truncation`` is :math:`\tau` of the narrowest bin (a per-pixel transform gives wider bins a
    larger :math:`\tau_i = h_i/r`); :math:`\epsilon` solves :math:`\lambda(\epsilon) = -2\log r`
    (``sde.inverse_log_snr``), e.g. :math:`\epsilon \approx 3.8\cdot10^{-3}` for 17 levels on
    ``[-1, 1]`` under the default VP SDE.
    """

    def __init__(
        self, num_bins: int, transform: DataTransform, sde: SDE, like: Tensor, truncation: float = 3.0
    ) -> None:
        super().__init__(num_bins, transform)
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"dequantization='truncated_normal' needs a LinearSDE, got {type(sde).__name__}")
        if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not 0 < truncation < math.inf:
            raise ValueError(f"truncation must be a positive finite number, got {truncation!r}")
        scale = torch.as_tensor(transform.scale, dtype=torch.float64, device=like.device)
        half = scale.abs().expand(like.shape[1:]) / (2 * num_bins)
        ratio = half.min() / truncation
        self._t_end = sde.inverse_log_snr(-2 * ratio.log()).item()
        if not 0 < self._t_end < sde.T:
            raise ValueError(f"truncation={truncation!r} puts the dequantization time at {self._t_end!r}, "
                             f"outside (0, T={sde.T})")  # fmt: skip
        t = torch.tensor(self._t_end, dtype=torch.float64)
        self.alpha, self.sigma = sde.alpha(t), sde.sigma(t)
        self.tau = half * self.alpha / self.sigma  # h_i / r, ``(*event)``

    @property
    def t_end(self) -> float:
        return self._t_end

    def draw(self, levels: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        centre = self.transform((levels + 0.5) / self.num_bins)
        e = truncated_normal_sample(noise.rand_like(levels), self.tau)
        alpha, sigma = (v.to(levels.dtype) for v in (self.alpha, self.sigma))
        log_q = truncated_normal_log_prob(e, self.tau).flatten(1).sum(1)
        correction = levels[0].numel() * sigma.log() - log_q
        return alpha * centre + sigma * e, correction


def make_dequantization(
    name: str, num_bins: int, transform: DataTransform, sde: SDE, like: Tensor, truncation: float = 3.0
) -> Dequantization:
    """The dequantizer called ``name`` (one of :data:`DEQUANTIZATIONS`) for data shaped like ``like``."""
    if name == "uniform":
        return UniformDequantization(num_bins, transform)
    if name == "truncated_normal":
        return TruncatedNormalDequantization(num_bins, transform, sde, like, truncation)
    raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {name!r}")
