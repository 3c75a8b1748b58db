r"""The SDE interface.

:class:`SDE` is a forward Itô SDE :math:`dx = f(x, t)\,dt + g(t)\,dw` on :math:`[0, T]`, with a
Gaussian prior standing in for :math:`p_T`. Subclass it with your own ``drift`` and
``diffusion`` and it works with every solver that needs only those.

:class:`LinearSDE` is the family with a Gaussian transition kernel,
:math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`. A subclass gives ``log_alpha(t)`` and
``sigma(t)``; drift, diffusion, marginals, transitions between any two times and the exact
one-step discretisation all follow. Exponential-integrator and ancestral samplers need it.

Conventions: ``x`` is ``(batch, *event)``; ``t`` is a number or a ``(batch,)`` tensor; the
schedule functions (``log_alpha``, ``sigma``, ``log_snr``, ``drift_coef``, ``diffusion``) take
a time tensor (or a number, taken as a float64 0-d tensor) and return a tensor of the same
shape.

Times are checked without a host sync wherever a solver may call every step: a number must lie
in ``[0, T]`` (checked always, for free), a tensor must be real (metadata only) and its values
are trusted. The methods a user calls once, ``marginal`` and ``transition``, also check a
tensor's values (one sync). ``x`` must be a real floating-point tensor everywhere.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scoresde._tensor import (
    TimeLike,
    append_dims,
    as_time,
    check_device,
    check_float,
    check_float_dtype,
    check_generator,
    check_time,
)

if TYPE_CHECKING:
    from scoresde.sde.reverse import ProbabilityFlowODE, ReverseSDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _check_number(name: str, value: float, *, positive: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


# The schedule functions of the time alone, which also take a number (checked against [0, T]).
_TIME_FUNCTIONS = frozenset(
    {"diffusion", "log_alpha", "sigma", "alpha", "log_snr", "drift_coef", "beta", "d_alpha", "d_sigma"}
)


def _taking_numbers(fn: Callable[[SDE, Tensor], Tensor]) -> Callable[[SDE, TimeLike], Tensor]:
    """``fn(self, t)`` that also takes a number ``t`` in ``[0, T]``, as a float64 0-d tensor."""

    @functools.wraps(fn)
    def wrapper(self: SDE, t: TimeLike) -> Tensor:
        if not isinstance(t, Tensor):
            check_time(t, self.T)
            t = torch.tensor(float(t), dtype=torch.float64)
        return fn(self, t)

    wrapper._takes_numbers = True  # type: ignore[attr-defined]
    return wrapper


class SDE(ABC):
    r"""A forward SDE :math:`dx = f(x, t)\,dt + g(t)\,dw` on :math:`[0, T]`.

    Args:
        T: end time.
        t_min: smallest time used for training, sampling and likelihoods (the score is
            singular at ``t = 0``); ``0 <= t_min < T``.
        prior_std: the prior is :math:`\mathcal N(0, \text{prior\_std}^2 I)`.
    """

    def __init__(self, T: float = 1.0, t_min: float = 1e-5, prior_std: float = 1.0) -> None:
        self.T = _check_number("T", T, positive=True)
        self.t_min = _check_number("t_min", t_min)
        if not 0 <= self.t_min < self.T:
            raise ValueError(f"need 0 <= t_min < T, got t_min={t_min!r}, T={T!r}")
        self._prior_std = _check_number("prior_std", prior_std, positive=True)

    def __init_subclass__(cls, **kwargs: object) -> None:
        # every subclass's schedule functions (a user's too) take numbers as well as tensors
        super().__init_subclass__(**kwargs)
        for name in _TIME_FUNCTIONS & cls.__dict__.keys():
            fn = cls.__dict__[name]
            if callable(fn) and not getattr(fn, "_takes_numbers", False):
                setattr(cls, name, _taking_numbers(fn))

    @abstractmethod
    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """:math:`f(x, t)`, shaped like ``x``."""

    @abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """:math:`g(t)`, shaped like ``t``."""

    @property
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior."""
        return self._prior_std

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``shape = (batch, *event)`` from the prior."""
        if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 2:
            raise ValueError(f"shape must be (batch, *event), got {shape!r}")
        check_float_dtype(dtype)
        check_generator(generator)
        device = check_device(device)
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\log \mathcal N(z; 0, \text{prior\_std}^2 I)` per sample, shape ``(batch,)``."""
        check_float(z, "z")
        if z.ndim < 2:
            raise ValueError(f"z must be (batch, *event), got shape {tuple(z.shape)}")
        d = z[0].numel()
        sq = z.flatten(1).square().sum(1)
        return -0.5 * sq / self.prior_std**2 - d * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    def discretize(self, x: Tensor, t: TimeLike, dt: TimeLike) -> tuple[Tensor, Tensor]:
        r"""One step over ``[t, t + dt]`` as :math:`x + f_i + G_i z`: returns ``(f_i, G_i)`` with
        ``f_i`` like ``x`` and ``G_i`` of shape ``(batch,)``. Euler–Maruyama here;
        :class:`LinearSDE` uses its exact Gaussian kernel."""
        t = self.step_time(t, x)
        dt = as_time(dt, x)
        return self.drift(x, t) * append_dims(dt, x.ndim).to(x.dtype), (
            self.diffusion(t) * dt.sqrt()
        ).to(x.dtype)

    def check_time(self, t: TimeLike, name: str = "t") -> None:
        """Raise ``TypeError`` unless ``t`` is a real number or tensor and ``ValueError`` unless
        every value lies in ``[0, T]`` (a host sync for a tensor: call it once at a boundary, not
        every step)."""
        check_time(t, self.T, name)

    def step_time(self, t: TimeLike, x: Tensor, name: str = "t") -> Tensor:
        """``t`` as a ``(batch,)`` time tensor for the state ``x``, checked as the per-step methods
        check it (no host sync): ``x`` real floating-point, a number in ``[0, T]``, a tensor
        real (its values trusted)."""
        check_float(x, "x")
        check_time(t, self.T, name, values=False)
        return as_time(t, x)

    def reverse(self, score_fn: ScoreFn) -> ReverseSDE:
        """The reverse-time SDE driven by ``score_fn`` (Anderson 1982)."""
        from scoresde.sde.reverse import ReverseSDE

        return ReverseSDE(self, score_fn)

    def probability_flow(self, score_fn: ScoreFn) -> ProbabilityFlowODE:
        """The probability-flow ODE that shares this SDE's marginals (Song et al. 2021)."""
        from scoresde.sde.reverse import ProbabilityFlowODE

        return ProbabilityFlowODE(self, score_fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, t_min={self.t_min})"


def _time_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Elementwise d fn / dt by forward-mode autodiff (``fn`` acts elementwise on ``t``)."""
    return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]


class LinearSDE(SDE):
    r"""An SDE with linear drift, :math:`dx = f(t)\,x\,dt + g(t)\,dw`, hence the Gaussian kernel
    :math:`p_t(x \mid x_0) = \mathcal N(\alpha(t)\,x_0, \sigma(t)^2 I)`.

    A subclass gives :meth:`log_alpha` and :meth:`sigma`. The rest follows from the moment
    ODEs :math:`f = \frac{d}{dt}\log\alpha` and :math:`g^2 = \frac{d\sigma^2}{dt} - 2 f \sigma^2`
    (computed by autodiff unless a subclass gives closed forms), and the log signal-to-noise
    ratio :math:`\lambda(t) = \log(\alpha^2 / \sigma^2)`, which must decrease in ``t``.

    The prior is :math:`\mathcal N(0, (\alpha(T)^2 + \sigma(T)^2) I)`: the marginal at ``T``
    of unit-variance data (exactly ``N(0, I)`` for VP, about ``N(0, sigma_max^2 I)`` for VE).
    """

    def __init__(self, T: float = 1.0, t_min: float = 1e-5) -> None:
        super().__init__(T=T, t_min=t_min)
        t_end = torch.tensor(self.T, dtype=torch.float64)
        var = self.alpha(t_end).square() + self.sigma(t_end).square()
        if not torch.isfinite(var) or var <= 0:
            raise ValueError(f"the marginal variance at T={self.T} is {var.item()}, not finite and > 0")
        self._prior_std = var.sqrt().item()

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        r""":math:`\log \alpha(t)`, the log mean coefficient."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma(t)`, the marginal standard deviation (0 at ``t = 0``)."""

    def alpha(self, t: Tensor) -> Tensor:
        r""":math:`\alpha(t)`, the mean coefficient."""
        return self.log_alpha(t).exp()

    def log_snr(self, t: Tensor) -> Tensor:
        r""":math:`\lambda(t) = 2\log\alpha(t) - 2\log\sigma(t)` (``+inf`` at ``t = 0``)."""
        return 2 * (self.log_alpha(t) - self.sigma(t).log())

    def inverse_log_snr(self, lam: Tensor) -> Tensor:
        r"""The time ``t`` with :math:`\lambda(t) = \text{lam}`, clamped to ``[0, T]``.

        Bisection (64 halvings, no host sync); subclasses give closed forms, and with one the
        adaptive probability-flow solvers run on the reference VP clock
        (:mod:`scoresde.solvers.flow`)."""
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # lambda decreases: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def d_alpha(self, t: Tensor) -> Tensor:
        r""":math:`\dot\alpha(t) = f(t)\,\alpha(t)`, the time derivative of the mean coefficient (a
        Gaussian path's velocity is :math:`\dot\alpha x_0 + \dot\sigma\epsilon`)."""
        return self.drift_coef(t) * self.alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        r""":math:`\dot\sigma(t)`, the time derivative of the noise level (by autodiff unless a subclass
        gives a closed form)."""
        return _time_derivative(self.sigma, t)

    def drift_coef(self, t: Tensor) -> Tensor:
        r""":math:`f(t) = \frac{d}{dt}\log\alpha(t)`; the drift is :math:`f(t)\,x`."""
        return _time_derivative(self.log_alpha, t)

    def diffusion(self, t: Tensor) -> Tensor:
        r""":math:`g(t) = \sqrt{\frac{d\sigma^2}{dt} - 2 f(t)\sigma^2(t)}`."""
        dvar = _time_derivative(lambda s: self.sigma(s).square(), t)
        return (dvar - 2 * self.drift_coef(t) * self.sigma(t).square()).clamp_min(0).sqrt()

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        return append_dims(self.drift_coef(self.step_time(t, x)), x.ndim).to(x.dtype) * x

    def marginal(self, x0: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        r"""Mean and std of :math:`p_t(x \mid x_0)`: ``(alpha(t) x0, sigma(t))``, the mean shaped like
        ``x0`` and the std ``(batch,)``."""
        check_float(x0, "x0")
        self.check_time(t)
        t = as_time(t, x0)
        return append_dims(self.alpha(t), x0.ndim).to(x0.dtype) * x0, self.sigma(t).to(x0.dtype)

    def transition_coefs(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Scale and std of the kernel :math:`p(x_t \mid x_s) = \mathcal N(a\,x_s, v^2 I)`, ``s <= t``:

        .. math:: a = \alpha(t)/\alpha(s), \qquad
                  v = \sigma(t)\sqrt{-\mathrm{expm1}(\lambda(t) - \lambda(s))},

        the second a cancellation-free form of :math:`\sigma_t^2 - a^2\sigma_s^2`. No checks."""
        scale = (self.log_alpha(t) - self.log_alpha(s)).exp()
        std = self.sigma(t) * (-torch.expm1(self.log_snr(t) - self.log_snr(s))).clamp_min(0).sqrt()
        return scale, std

    def transition(self, x_s: Tensor, s: TimeLike, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Mean (like ``x_s``) and std ``(batch,)`` of :math:`p(x_t \\mid x_s)` for ``0 <= s <= t <= T``."""
        check_float(x_s, "x_s")
        self.check_time(s, "s")
        self.check_time(t, "t")
        s, t = as_time(s, x_s), as_time(t, x_s)
        if (s > t).any():
            raise ValueError("transition needs s <= t (it runs forward in time)")
        scale, std = self.transition_coefs(s, t)
        return append_dims(scale, x_s.ndim).to(x_s.dtype) * x_s, std.to(x_s.dtype)

    def discretize(self, x: Tensor, t: TimeLike, dt: TimeLike) -> tuple[Tensor, Tensor]:
        """The exact Gaussian step over ``[t, t + dt]``: ``f_i = (a - 1) x``, ``G_i = v`` with
        ``(a, v)`` from :meth:`transition_coefs`."""
        t = self.step_time(t, x)
        scale, std = self.transition_coefs(t, t + as_time(dt, x))
        return append_dims(scale - 1, x.ndim).to(x.dtype) * x, std.to(x.dtype)
