r"""Predictors: one step of the reverse-time SDE from ``t`` down to ``s < t``.

All share ``step(x, t, s, ctx) -> x_s`` with ``t, s`` 0-d time tensors and one score
evaluation per step. Each adds fresh Gaussian noise drawn from ``ctx.noise`` (the last step
too: the result is a sample of :math:`p_s`, not its mean; use ``denoise=True`` in the samplers
for the Tweedie estimate of :math:`x_0`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from scoresde._tensor import append_dims, as_time
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import StepContext, coef, predict_x0, require_linear_sde, require_sde


class Predictor(ABC):
    """A one-step reverse-SDE update. ``weak_order`` is the declared order in distribution."""

    weak_order: float = 1.0

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        self.sde = require_sde(sde)
        self.score_fn = score_fn
        self.reverse = self.sde.reverse(score_fn)

    @abstractmethod
    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        """Move ``x`` (a sample of :math:`p_t`) to a sample of :math:`p_s`, ``s < t``."""


class EulerMaruyama(Predictor):
    r"""Euler–Maruyama on the reverse SDE (Maruyama 1955; Song et al. 2021), with
    :math:`h = t - s > 0`:

    .. math:: x_s = x_t - [f(x_t, t) - g(t)^2 s(x_t, t)]\,h + g(t)\sqrt{h}\,z.

    Weak order 1; strong order 1 as well, because the noise is additive. Needs only
    ``drift`` and ``diffusion``: works with any :class:`~scoresde.SDE`."""

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        tb = as_time(t, x)
        h = t - s
        g = append_dims(self.sde.diffusion(tb), x.ndim).to(x.dtype)  # (batch,): a user SDE may expect it
        return x - self.reverse.drift(x, tb) * coef(h, x) + g * coef(h.sqrt(), x) * ctx.noise.randn_like(x)


class ReverseDiffusion(Predictor):
    r"""Song et al.'s reverse-diffusion predictor (2021, eq. 46): reverse the forward
    discretisation :math:`x_t = x_s + f_i + G_i z` of ``sde.discretize`` over ``[s, t]``,

    .. math:: x_s = x_t - f_i + G_i^2\,s(x_t, t) + G_i z.

    With a :class:`~scoresde.LinearSDE`, ``(f_i, G_i)`` is the exact Gaussian kernel; with a
    plain SDE, its Euler–Maruyama step. Weak order 1."""

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        drift_term, g = self.reverse.discretize(x, t, t - s)
        return x + drift_term + append_dims(g, x.ndim) * ctx.noise.randn_like(x)


class AncestralSampling(Predictor):
    r"""Ancestral sampling (Ho et al. 2020; Song et al. 2021, eq. 47) through the exact
    Gaussian posterior of a linear SDE. With :math:`\hat x_0 = (x_t + \sigma_t^2 s)/\alpha_t` and
    the kernel :math:`x_t \mid x_s \sim \mathcal N(a x_s, v^2 I)` (``transition_coefs(s, t)``),

    .. math:: x_s \sim \mathcal N\Big(\frac{a\sigma_s^2 x_t + v^2\alpha_s \hat x_0}{\sigma_t^2},\
              \frac{\sigma_s^2 v^2}{\sigma_t^2} I\Big)
              = q(x_s \mid x_t, x_0 = \hat x_0),

    where :math:`\sigma_t^2 = a^2\sigma_s^2 + v^2`. This is DDPM's sampler for VP and NCSN's
    ancestral sampler for VE, from one formula. Weak order 1. Needs a
    :class:`~scoresde.LinearSDE`."""

    def __init__(self, sde: SDE, score_fn: ScoreFn) -> None:
        super().__init__(require_linear_sde(sde, "AncestralSampling"), score_fn)

    def step(self, x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        sde = self.sde
        x0 = predict_x0(sde, self.score_fn, x, t)
        scale, kernel_std = sde.transition_coefs(s, t)
        # v^2 / sigma_t^2 = -expm1(lambda_t - lambda_s): the noise fraction added over [s, t]
        noise_frac = kernel_std.square() / sde.sigma(t).square()
        sigma_s = sde.sigma(s)
        mean = coef(scale * sigma_s.square() / sde.sigma(t).square(), x) * x + coef(noise_frac * sde.alpha(s), x) * x0
        std = sigma_s * noise_frac.sqrt()
        return mean + coef(std, x) * ctx.noise.randn_like(x)
