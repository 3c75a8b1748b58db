r"""Quadrature weights for exponential integrators in the half log-SNR :math:`\ell = \log(\alpha/\sigma)`.

Over a step :math:`\ell_t \to \ell_s = \ell_t + h` the probability-flow ODE is exactly

.. math:: x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s\, h \int_0^1 e^{-(1-u)h}\,
          \hat x_0(\ell_t + u h)\, du

(Lu et al. 2022, DPM-Solver++). Replacing :math:`\hat x_0` by the polynomial through data
predictions :math:`m_k` at nodes :math:`u_k = (\ell_k - \ell_t)/h` gives
:math:`x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \sum_k w_k m_k` with
:math:`w = V^{-\top}\mu`, :math:`V_{kj} = u_k^j` and the moments

.. math:: \mu_j(h) = h \int_0^1 e^{-(1-u)h} u^j\, du = h\, j!\, \varphi_{j+1}(-h),

the exponential Adams quadrature (Hochbruck & Ostermann 2010, "Exponential multistep methods").
Nodes :math:`u \le 0` give an explicit (Adams–Bashforth-like) predictor, a node at
:math:`u = 1` an implicit (Adams–Moulton-like) corrector. With ``n`` nodes the local error is
:math:`O(h^{n+1})`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_SERIES_BELOW = 2.0
_SERIES_TERMS = 30


def exponential_moments(h: Tensor, count: int) -> Tensor:
    r""":math:`\mu_j(h)` for ``j = 0..count-1`` at a 0-d ``h > 0``, shape ``(count,)``.

    A Taylor series, :math:`\int_0^1 e^{-(1-u)h}u^j du = \sum_n (-h)^n j!/(n+j+1)!`, for small
    ``h`` (the recursion below loses digits as :math:`h^{-j}` there); for larger ``h`` the stable
    recursion :math:`I_j = (1 - j I_{j-1})/h`, :math:`I_0 = -\mathrm{expm1}(-h)/h`. No host sync."""
    h_small = h.clamp(max=_SERIES_BELOW)
    n = torch.arange(_SERIES_TERMS, dtype=h.dtype, device=h.device)
    powers = (-h_small) ** n
    series = []
    for j in range(count):
        # j!/(n+j+1)! built on the device (a table from python would be a host copy per step)
        inv_fact = torch.exp(math.lgamma(j + 1) - torch.lgamma(n + j + 2))
        series.append((powers * inv_fact).sum())
    h_large = h.clamp(min=_SERIES_BELOW)
    recursion = [-torch.expm1(-h_large) / h_large]
    for j in range(1, count):
        recursion.append((1 - j * recursion[-1]) / h_large)
    integrals = torch.where(h < _SERIES_BELOW, torch.stack(series), torch.stack(recursion))
    return h * integrals


def exponential_weights(h: Tensor, nodes: Tensor) -> Tensor:
    r"""Weights :math:`w_k` of the data predictions at ``nodes`` :math:`u_k` ``(n,)`` (distinct),
    for a step of length ``h`` in :math:`\ell`; ``(n,)``. One node gives
    :math:`w = 1 - e^{-h}` (DDIM)."""
    n = nodes.shape[0]
    vandermonde = nodes[:, None] ** torch.arange(n, dtype=nodes.dtype, device=nodes.device)
    return torch.linalg.solve(vandermonde.T, exponential_moments(h, n))
