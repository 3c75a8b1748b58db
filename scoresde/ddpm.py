r"""Discrete time: DDPM's chain, its posterior, ancestral and DDIM-:math:`\eta` sampling, and NCSN's
annealed Langevin dynamics — the discrete twins of :mod:`scoresde.sde.vp` and :mod:`scoresde.sde.ve`.

DDPM (Ho et al. 2020) fixes :math:`\beta_1, \dots, \beta_N \in (0, 1)` and the chain
:math:`q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)`, :math:`\alpha_t = 1 - \beta_t`, whose
marginal is closed form with :math:`\bar\alpha_t = \prod_{s \le t}\alpha_s`,

.. math:: q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0,\ (1 - \bar\alpha_t) I),

and whose posterior is Gaussian (Bayes' rule on the two Gaussians),

.. math:: q(x_{t-1} \mid x_t, x_0) = \mathcal N(c_1 x_0 + c_2 x_t,\ \tilde\beta_t I),\quad
          c_1 = \frac{\beta_t\sqrt{\bar\alpha_{t-1}}}{1 - \bar\alpha_t},\
          c_2 = \frac{\sqrt{\alpha_t}(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t},\
          \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\beta_t .

Step ``t`` is the continuous time of the schedule's :class:`~scoresde.LinearSDE` with the same
log-SNR, :math:`\lambda = \log(\bar\alpha_t / (1 - \bar\alpha_t))`; a score model
``score_fn(x, t)`` of that SDE (any parameterisation, :mod:`scoresde.score`) is evaluated there, its
state rescaled from the chain's variance-preserving frame :math:`x = \sqrt{\bar\alpha}x_0 + \sqrt{1-\bar\alpha}\epsilon`
to the SDE's :math:`\alpha(t) x_0 + \sigma(t)\epsilon` (a factor :math:`\alpha(t)/\sqrt{\bar\alpha_t}`, 1 for a VP SDE).
NCSN's noise levels :math:`x = x_0 + \sigma\epsilon` map the same way (factor :math:`\alpha(t)`).

Steps are 1-based as in the paper (``1..N``); step 0 is the data. Tables are kept in float64 on the
CPU and moved to the state's device and dtype once per call: no host sync inside a loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scoresde._tensor import (
    append_dims,
    check_device,
    check_finite,
    check_float,
    check_float_dtype,
    check_generator,
    time_dtype,
)
from scoresde.noise import Noise
from scoresde.sample import SampleResult, _noise, _run_grid
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.sde.vp import VPSDE, CosineBeta
from scoresde.solvers import CountingScore
from scoresde.timesteps import time_grid

__all__ = [
    "DISCRETE_SAMPLERS",
    "VARIANCES",
    "DiscreteSchedule",
    "ncsn_sigmas",
    "sample_annealed_langevin",
    "sample_ddim",
    "sample_ddpm",
    "sample_discrete",
]

VARIANCES = ("beta_tilde", "beta")
"""The reverse-step variances :math:`\\sigma_t^2` of DDPM: the posterior's :math:`\\tilde\\beta_t` (exact
for a point mass) or :math:`\\beta_t` (exact for unit-variance Gaussian data), Ho et al. 2020, §3.2."""


def _check_int(name: str, value: object, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class DiscreteSchedule:
    r"""DDPM's schedule :math:`\beta_1, \dots, \beta_N` and everything derived from it.

    Args:
        betas: ``(N,)`` values in ``(0, 1)`` (float64 is kept), giving a strictly decreasing
            :math:`\bar\alpha_t`.
        sde: the :class:`~scoresde.LinearSDE` whose score model the samplers evaluate (default: the
            VP SDE with the same :math:`\bar\alpha_N` at its ``T``, linear in :math:`\beta`).
        times: ``(N,)`` increasing continuous times of steps ``1..N`` (default: the times of
            ``sde`` with the steps' log-SNR, clamped to ``[0, T]``).

    Build one with :meth:`linear` (Ho et al.), :meth:`cosine` (Nichol & Dhariwal) or :meth:`from_sde`.
    Attributes (``(N,)`` float64 tensors, index ``t - 1`` for step ``t``): ``betas``, ``alphas``,
    ``alpha_bar``, ``alpha_bar_prev`` (:math:`\bar\alpha_{t-1}`, 1 at ``t = 1``), ``log_snr``,
    ``posterior_variance`` (:math:`\tilde\beta_t`, 0 at ``t = 1``), ``posterior_log_variance_clipped``
    (its log with :math:`\tilde\beta_1` replaced by :math:`\tilde\beta_2`, as in Ho et al.'s code),
    ``posterior_mean_coef1``/``posterior_mean_coef2`` (:math:`c_1`, :math:`c_2`), ``times``.
    """

    def __init__(self, betas: Tensor | Sequence[float], *, sde: LinearSDE | None = None,
                 times: Tensor | Sequence[float] | None = None) -> None:  # fmt: skip
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        bad = ~(torch.isfinite(betas) & (betas > 0) & (betas < 1))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"betas must lie in (0, 1), got beta_{i + 1} = {betas[i].item()!r}")
        log_alpha_bar = torch.cumsum(torch.log1p(-betas), 0)
        stalled = log_alpha_bar[1:] >= log_alpha_bar[:-1]
        if stalled.any() or not torch.isfinite(log_alpha_bar).all():
            where = stalled if stalled.any() else ~torch.isfinite(log_alpha_bar[1:])
            i = int(where.nonzero()[0, 0]) + 2
            raise ValueError(f"betas must give a strictly decreasing alpha-bar: it stops decreasing at step {i} "
                             f"(beta_{i} = {betas[i - 1].item()!r})")  # fmt: skip
        n = betas.numel()
        self.num_steps = n
        self.betas = betas
        self.alphas = 1 - betas
        self.log_alpha_bar = log_alpha_bar
        self.alpha_bar = log_alpha_bar.exp()
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.one_minus_alpha_bar = -torch.expm1(log_alpha_bar)
        one_minus_prev = torch.cat([torch.zeros(1, dtype=torch.float64), self.one_minus_alpha_bar[:-1]])
        self.log_snr = log_alpha_bar - self.one_minus_alpha_bar.log()
        self.posterior_variance = betas * one_minus_prev / self.one_minus_alpha_bar
        first = self.posterior_variance[1:2] if n > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * self.alpha_bar_prev.sqrt() / self.one_minus_alpha_bar
        self.posterior_mean_coef2 = self.alphas.sqrt() * one_minus_prev / self.one_minus_alpha_bar
        if sde is None:
            sde = VPSDE(n * betas[0].item(), n * betas[-1].item(), T=1.0)
            sde = VPSDE(sde.schedule.beta_min, sde.schedule.beta_max, T=self._end_time(sde))
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE (alpha, sigma), got {type(sde).__name__}")
        self.sde = sde
        if times is None:
            times = sde.inverse_log_snr(self.log_snr).clamp(0, sde.T)
        times = torch.as_tensor(times, dtype=torch.float64).cpu()
        if times.shape != (n,) or not torch.isfinite(times).all() or (times < 0).any() or (times > sde.T).any():
            raise ValueError(f"times must be ({n},) finite values in [0, T={sde.T}], got {times.tolist()[:8]}...")
        if n > 1 and not (times[1:] > times[:-1]).all():
            raise ValueError("times must be strictly increasing with the step")
        self.times = times

    def _end_time(self, sde: VPSDE) -> float:
        """The time at which ``sde``'s marginal matches step ``N``: :math:`B(T) = -\\log\\bar\\alpha_N`."""
        return sde.schedule.inverse_integral(-self.log_alpha_bar[-1]).item()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
               sde: LinearSDE | None = None) -> DiscreteSchedule:  # fmt: skip
        r"""Ho et al.'s linear schedule, :math:`\beta_t` evenly spaced from ``beta_start`` to ``beta_end``
        (1e-4 to 0.02 with N = 1000). With ``beta_start = b_min/N``, ``beta_end = b_max/N`` it is the
        VP SDE with :math:`\beta(t) = b_{min} + t(b_{max} - b_{min})` at :math:`t = i/N`, up to :math:`O(1/N)`."""
        _check_int("num_steps", num_steps)
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64), sde=sde)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999, *,
               sde: LinearSDE | None = None) -> DiscreteSchedule:  # fmt: skip
        r"""Nichol & Dhariwal's cosine schedule: :math:`\bar\alpha_t = f(t)/f(0)`,
        :math:`f(t) = \cos^2\big(\frac{t/N + s}{1 + s}\frac\pi2\big)`,
        :math:`\beta_t = \min(1 - \bar\alpha_t/\bar\alpha_{t-1}, \text{max\_beta})`. The default SDE is the
        cosine VP SDE (:class:`~scoresde.sde.vp.CosineBeta`) up to the time of step ``N``."""
        _check_int("num_steps", num_steps)
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        schedule = CosineBeta(s)
        u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        log_alpha_bar = -schedule.integral(u)  # log f(u)/f(0), free of cancellation at small u
        betas = (-torch.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1])).clamp(max=max_beta)
        if sde is None:  # the cosine VP SDE (its own s = 0.008) up to the log-SNR of step N
            end = CosineBeta().inverse_integral(-torch.log1p(-betas).sum()).item()
            sde = VPSDE(schedule="cosine", T=min(end, 1 - 1e-9))
        return cls(betas, sde=sde)

    @classmethod
    def from_sde(
        cls, sde: LinearSDE, num_steps: int = 1000, *, grid: str = "uniform", t_first: float | None = None
    ) -> DiscreteSchedule:
        r"""The chain whose marginals are exactly those of ``sde`` at the times :math:`t_1 < \dots < t_N = T`,
        in the variance-preserving frame: :math:`\bar\alpha_i = \text{sigmoid}(\lambda(t_i))`,
        :math:`\beta_i = 1 - \bar\alpha_i/\bar\alpha_{i-1}` (:math:`\bar\alpha_i = \alpha(t_i)^2` for a VP SDE).

        Args:
            grid: ``"uniform"`` (default :math:`t_i = iT/N`, DDPM's own) or any kind of
                :func:`~scoresde.time_grid`, e.g. ``"log_snr"`` (default from ``t_first = sde.t_min``),
                whose equal steps in log-SNR make the variational bound converge like :math:`O(1/N)`
                (:func:`~scoresde.elbo.ddpm_elbo`).
            t_first: the time of step 1 (default :math:`T/N` for ``"uniform"``, else ``sde.t_min``).
        """
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"from_sde needs a LinearSDE (alpha, sigma), got {type(sde).__name__}")
        _check_int("num_steps", num_steps)
        if t_first is None:
            t_first = sde.T / num_steps if grid == "uniform" else sde.t_min
        if num_steps == 1:
            times = torch.tensor([sde.T], dtype=torch.float64)
        else:
            times = time_grid(sde, num_steps - 1, grid, t_end=t_first).flip(0)
        log_alpha_bar = torch.nn.functional.logsigmoid(sde.log_snr(times))
        log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha_bar])
        betas = -torch.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1])
        return cls(betas, sde=sde, times=times)

    # ------------------------------------------------------------------ step <-> time

    def check_steps(self, steps: Tensor | Sequence[int] | int, name: str = "steps") -> Tensor:
        """``steps`` as an int64 tensor (on its own device), checked to hold integers in ``[1, N]``
        (one host sync: a boundary check)."""
        steps = torch.as_tensor(steps)
        if steps.is_floating_point() or steps.is_complex() or steps.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer step indices, got dtype {steps.dtype}")
        steps = steps.long()
        if steps.numel() and (steps.min() < 1 or steps.max() > self.num_steps):
            raise ValueError(f"{name} must lie in [1, N={self.num_steps}], got values in "
                             f"[{steps.min().item()}, {steps.max().item()}]")  # fmt: skip
        return steps

    def time(self, steps: Tensor | Sequence[int] | int) -> Tensor:
        """Continuous times (float64) of the steps ``1..N`` in ``steps``, shaped like ``steps``."""
        steps = self.check_steps(steps)
        return self.times.to(steps.device)[steps - 1]

    def step_index(self, t: Tensor | float) -> Tensor:
        """The step (``1..N``, int64) whose log-SNR is nearest that of ``sde`` at time ``t``."""
        self.sde.check_time(t)
        t = torch.as_tensor(t, dtype=torch.float64)
        lam = self.sde.log_snr(t.cpu())
        return ((lam[..., None] - self.log_snr).abs().argmin(-1) + 1).to(t.device)

    def subsequence(self, num_steps: int) -> Tensor:
        """``num_steps`` strictly decreasing steps from ``N`` to 1, evenly spaced (DDIM's sub-sequence)."""
        _check_int("num_steps", num_steps)
        if num_steps > self.num_steps:
            raise ValueError(f"num_steps={num_steps} exceeds the schedule's N={self.num_steps}")
        if num_steps == 1:
            return torch.tensor([self.num_steps])
        return torch.linspace(self.num_steps, 1, num_steps, dtype=torch.float64).round().long()

    # ------------------------------------------------------------------ the forward chain and its posterior

    def _at(self, table: Tensor, steps: Tensor, like: Tensor) -> Tensor:
        """``table[steps - 1]`` broadcast against ``like`` ``(batch, *event)``, in its dtype."""
        return append_dims(table.to(device=like.device, dtype=like.dtype)[steps.to(like.device) - 1], like.ndim)

    def _batch_steps(self, steps: Tensor | int, x: Tensor) -> Tensor:
        steps = self.check_steps(steps)
        if steps.ndim == 0:
            return steps.expand(x.shape[0])
        if steps.shape != (x.shape[0],):
            raise ValueError(f"steps must be an int or a (batch,) tensor with batch={x.shape[0]}, "
                             f"got shape {tuple(steps.shape)}")  # fmt: skip
        return steps

    def marginal(self, x0: Tensor, steps: Tensor | int) -> tuple[Tensor, Tensor]:
        r"""Mean (like ``x0``) and std ``(batch,)`` of :math:`q(x_t \mid x_0) =
        \mathcal N(\sqrt{\bar\alpha_t}x_0, (1-\bar\alpha_t)I)`; ``steps`` an int or ``(batch,)``."""
        check_float(x0, "x0")
        steps = self._batch_steps(steps, x0)
        return (self._at(self.alpha_bar.sqrt(), steps, x0) * x0,
                self._at(self.one_minus_alpha_bar.sqrt(), steps, x0).flatten())  # fmt: skip

    def q_sample(self, x0: Tensor, steps: Tensor | int, noise: Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        r""":math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon`, shaped like ``x0``."""
        check_generator(generator)
        mean, std = self.marginal(x0, steps)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        return mean + append_dims(std, x0.ndim) * noise

    def posterior(self, x_t: Tensor, x0: Tensor, steps: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        r"""Mean :math:`c_1 x_0 + c_2 x_t` (like ``x0``), variance :math:`\tilde\beta_t` and its clipped
        log, both ``(batch,)``, of :math:`q(x_{t-1} \mid x_t, x_0)`."""
        check_float(x_t, "x_t")
        check_float(x0, "x0")
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} differs from x0 shape {tuple(x0.shape)}")
        steps = self._batch_steps(steps, x0)
        mean = (
            self._at(self.posterior_mean_coef1, steps, x0) * x0 + self._at(self.posterior_mean_coef2, steps, x0) * x_t
        )
        return (mean, self._at(self.posterior_variance, steps, x0).flatten(),
                self._at(self.posterior_log_variance_clipped, steps, x0).flatten())  # fmt: skip

    def reverse_variance(self, variance: str) -> Tensor:
        r""":math:`\sigma_t^2` ``(N,)`` of the reverse step: ``"beta_tilde"`` (:math:`\tilde\beta_t`) or
        ``"beta"`` (:math:`\beta_t`)."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        return self.posterior_variance if variance == "beta_tilde" else self.betas

    def __repr__(self) -> str:
        return (f"DiscreteSchedule(N={self.num_steps}, beta_1={self.betas[0].item():.3g}, "
                f"beta_N={self.betas[-1].item():.3g}, sde={self.sde!r})")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the score in a discrete frame


class FrameDenoiser:
    r"""The data prediction :math:`\hat x_0` in a scaled frame :math:`x = a x_0 + b\epsilon` from a
    score model of ``sde``: at the time with log-SNR :math:`\log(a^2/b^2)` the SDE's state is
    :math:`k x` with :math:`k = \alpha(t)/a`, so :math:`\nabla\log p_{frame}(x) = k\,s(kx, t)` and
    :math:`\hat x_0 = (x + b^2 k\,s(kx, t))/a` (Tweedie). One score evaluation per call.

    ``a``, ``b``, ``times`` are ``(K,)`` float64 tables, moved once to ``like``'s device and dtype;
    :meth:`__call__` takes an index into them, so a loop never syncs."""

    def __init__(self, score: CountingScore, sde: LinearSDE, a: Tensor, b: Tensor, times: Tensor, like: Tensor) -> None:
        self.score = score
        k = sde.alpha(times) / a
        self.times = times.to(device=like.device, dtype=time_dtype(like.dtype))
        tables = (k, b.square() * k / a, a.reciprocal())
        self.k, self.b2_over_a, self.inv_a = (v.to(device=like.device, dtype=like.dtype) for v in tables)

    def __call__(self, x: Tensor, i: int | Tensor) -> Tensor:
        r""":math:`\hat x_0` of ``x`` at table index ``i``: a python int, or a ``(batch,)`` int64 tensor on
        ``x``'s device (one index per sample)."""
        k, b2_over_a, inv_a = self.k[i], self.b2_over_a[i], self.inv_a[i]
        if k.ndim:
            k, b2_over_a, inv_a = (append_dims(v, x.ndim) for v in (k, b2_over_a, inv_a))
        s = self.score(k * x, self.times[i].expand(x.shape[0]))
        return inv_a * x + b2_over_a * s


def _check_x0_options(
    clip_x0: tuple[float, float] | None, dynamic_threshold: float | None
) -> tuple[float, float] | None:
    if clip_x0 is not None and (
        not isinstance(clip_x0, (tuple, list))
        or len(clip_x0) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in clip_x0)
        or not clip_x0[0] < clip_x0[1]
    ):
        raise ValueError(f"clip_x0 must be a data range (low, high) with low < high, got {clip_x0!r}")
    if dynamic_threshold is not None:
        if not isinstance(dynamic_threshold, (int, float)) or not 0 < dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold must be a quantile in (0, 1], got {dynamic_threshold!r}")
        clip_x0 = (-1.0, 1.0) if clip_x0 is None else clip_x0
    return None if clip_x0 is None else (float(clip_x0[0]), float(clip_x0[1]))


def _limit_x0(x0: Tensor, clip_x0: tuple[float, float] | None, dynamic_threshold: float | None) -> Tensor:
    r"""Clip :math:`\hat x_0` to the data range, or threshold it dynamically (Saharia et al. 2022):
    in the range's units :math:`u = (\hat x_0 - c)/w` (centre ``c``, half-width ``w``), take the
    per-sample ``dynamic_threshold`` quantile :math:`q` of :math:`|u|`, :math:`q \leftarrow \max(q, 1)`,
    and set :math:`u \leftarrow \text{clip}(u, -q, q)/q`."""
    if clip_x0 is None:
        return x0
    low, high = clip_x0
    if dynamic_threshold is None:
        return x0.clamp(low, high)
    centre, half = 0.5 * (low + high), 0.5 * (high - low)
    u = (x0 - centre) / half
    q = torch.quantile(u.abs().flatten(1), dynamic_threshold, dim=1).clamp_min(1)
    q = append_dims(q, x0.ndim)
    return centre + half * torch.maximum(torch.minimum(u, q), -q) / q


# ---------------------------------------------------------------------------------------------
# samplers


def _initial_noise(shape: tuple[int, ...] | None, x_init: Tensor | None, scale: float, noise: Noise,
                   device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:  # fmt: skip
    """The start of a discrete chain: ``x_init`` (checked, not modified), or ``scale`` times a standard
    normal draw of ``shape`` from ``noise`` (the run's generator or per-sample seeds)."""
    check_float_dtype(dtype)
    device = check_device(device)
    if x_init is not None:
        check_float(x_init, "x_init")
        if x_init.ndim < 2 or (shape is not None and tuple(shape) != tuple(x_init.shape)):
            raise ValueError(f"x_init must be (batch, *event) matching shape={shape}, got {tuple(x_init.shape)}")
        check_finite(x_init, "x_init")
        return x_init.to(device=device or x_init.device, dtype=dtype or x_init.dtype)
    if shape is None or len(shape) < 2 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"shape must be (batch, *event) of positive ints (or give x_init), got {shape!r}")
    return scale * noise.randn(tuple(shape), dtype=dtype or torch.get_default_dtype(), device=device)


def _check_schedule(schedule: object) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    return schedule


def _chain_denoiser(score: CountingScore, schedule: DiscreteSchedule, steps: Tensor, like: Tensor) -> FrameDenoiser:
    """The data prediction at each of ``steps`` in the chain's frame (a, b) = (sqrt(ab), sqrt(1 - ab))."""
    idx = steps - 1
    return FrameDenoiser(score, schedule.sde, schedule.alpha_bar[idx].sqrt(),
                         schedule.one_minus_alpha_bar[idx].sqrt(), schedule.times[idx], like)  # fmt: skip


def _run_chain(
    score_fn: ScoreFn,
    schedule: DiscreteSchedule,
    steps: Tensor,
    x: Tensor,
    update: Callable[[Tensor, Tensor, Tensor, int], Tensor],
    limits: tuple[tuple[float, float] | None, float | None],
    noise: Noise,
    progress: bool,
    desc: str,
) -> SampleResult:
    r"""The chain from ``x`` at ``steps[0]`` down ``steps`` and on to step 0: at the ``i``-th, predict
    :math:`\hat x_0` (clipped or thresholded per ``limits``), draw ``z`` and set ``x <- update(x, x0, z, i)``."""
    score = CountingScore(score_fn)
    denoiser = _chain_denoiser(score, schedule, steps, x)

    def step(x: Tensor, i: int, t: Tensor, s: Tensor) -> Tensor:
        x0 = _limit_x0(denoiser(x, i), *limits)
        z = noise.randn_like(x)
        return update(x, x0, z, i)

    grid = torch.cat([schedule.times[steps - 1], torch.zeros(1, dtype=torch.float64)])
    x, _ = _run_grid(step, x, grid, torch.zeros(len(grid), dtype=torch.bool), progress=progress, desc=desc)
    return SampleResult(x=x, nfe=score.calls)


def sample_ddpm(
    score_fn: ScoreFn,
    schedule: DiscreteSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    variance: str = "beta_tilde",
    clip_x0: tuple[float, float] | None = None,
    dynamic_threshold: float | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2): from :math:`x_N \sim \mathcal N(0, I)`, for
    :math:`t = N, \dots, 1`,

    .. math:: x_{t-1} = c_1(t)\,\hat x_0(x_t) + c_2(t)\,x_t + \sigma_t z,\qquad z \sim \mathcal N(0, I),

    the posterior mean at the predicted :math:`\hat x_0` (equivalently
    :math:`\frac{1}{\sqrt{\alpha_t}}(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\epsilon)`), with
    :math:`\sigma_t^2` = :math:`\tilde\beta_t` or :math:`\beta_t` (``variance``) and no noise at
    :math:`t = 1` (a draw is still taken, so runs with either variance see the same noise).

    Args:
        score_fn: ``(x, t) -> score`` of ``schedule.sde`` (evaluated at ``schedule.times``).
        schedule: the :class:`DiscreteSchedule`. shape: ``(batch, *event)`` (or give ``x_init``).
        clip_x0: clip :math:`\hat x_0` to this data range, e.g. ``(-1, 1)``.
        dynamic_threshold: Saharia et al.'s quantile (e.g. 0.995) instead of a plain clip, in
            ``clip_x0``'s range (default ``(-1, 1)``).
        generator: the noise of the whole batch; or ``seed`` and ``sample_indices`` (``(batch,)``,
            default ``0..batch-1``): per-sample seeds (:class:`~scoresde.noise.SampleNoise`), so the
            start and every draw of sample ``sample_indices[b]`` depend on ``(seed, index)`` only and
            the sample is the same bits whatever the batch size (as in :func:`~scoresde.sample_pc`).

    Returns:
        :class:`~scoresde.SampleResult`: ``x`` (batch, *event), ``nfe`` = N.
    """
    schedule = _check_schedule(schedule)
    variances = schedule.reverse_variance(variance)
    clip_x0 = _check_x0_options(clip_x0, dynamic_threshold)
    noise = _noise(generator, seed, sample_indices)
    x = _initial_noise(shape, x_init, 1.0, noise, device, dtype)
    steps = torch.arange(schedule.num_steps, 0, -1)
    idx = steps - 1
    std = variances[idx].sqrt()
    std[-1] = 0.0  # Ho et al.: z = 0 at t = 1
    tables = (schedule.posterior_mean_coef1[idx], schedule.posterior_mean_coef2[idx], std)
    c1, c2, std = (v.to(device=x.device, dtype=x.dtype) for v in tables)

    def update(x: Tensor, x0: Tensor, z: Tensor, i: int) -> Tensor:
        return c1[i] * x0 + c2[i] * x + std[i] * z

    limits = (clip_x0, dynamic_threshold)
    return _run_chain(score_fn, schedule, steps, x, update, limits, noise, progress, f"sample_ddpm({variance})")


def sample_ddim(
    score_fn: ScoreFn,
    schedule: DiscreteSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    num_steps: int | None = None,
    steps: Tensor | Sequence[int] | None = None,
    eta: float = 0.0,
    clip_x0: tuple[float, float] | None = None,
    dynamic_threshold: float | None = None,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""DDIM with :math:`\eta` (Song, Meng & Ermon 2021, eq. 12 and 16) on a strictly decreasing
    sub-sequence :math:`\tau_K > \dots > \tau_1` of ``1..N``, then to step 0 (the data). With
    :math:`\bar\alpha = \bar\alpha_{\tau_i}`, :math:`\bar\alpha' = \bar\alpha_{\tau_{i-1}}` (1 after :math:`\tau_1`),
    :math:`\hat\epsilon = (x - \sqrt{\bar\alpha}\hat x_0)/\sqrt{1-\bar\alpha}`,

    .. math:: x' = \sqrt{\bar\alpha'}\,\hat x_0 + \sqrt{1 - \bar\alpha' - \sigma^2}\,\hat\epsilon + \sigma z,\qquad
              \sigma = \eta\sqrt{\frac{1-\bar\alpha'}{1-\bar\alpha}}\sqrt{1 - \frac{\bar\alpha}{\bar\alpha'}} .

    :math:`\eta = 0` is the deterministic DDIM (the probability-flow ODE's first-order exponential
    integrator, ``sample_ode(method="ddim")`` with a final denoising step); :math:`\eta = 1` on the
    full sequence is DDPM with :math:`\sigma_t^2 = \tilde\beta_t`. :math:`\hat\epsilon` is recomputed from
    the clipped :math:`\hat x_0`, so clipping keeps that identity.

    Args:
        num_steps: ``K`` evenly spaced steps (:meth:`DiscreteSchedule.subsequence`; default 50 or N).
        steps: the sub-sequence itself, strictly decreasing in ``[1, N]`` (instead of ``num_steps``).
        eta: :math:`\eta \ge 0`. Other arguments as :func:`sample_ddpm`.

    Returns:
        :class:`~scoresde.SampleResult` with ``nfe`` = K.
    """
    schedule = _check_schedule(schedule)
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    clip_x0 = _check_x0_options(clip_x0, dynamic_threshold)
    if steps is not None:
        if num_steps is not None:
            raise ValueError("give num_steps or steps, not both")
        steps = schedule.check_steps(steps).cpu()
        if steps.ndim != 1 or steps.numel() == 0 or not (steps[1:] < steps[:-1]).all():
            raise ValueError(f"steps must be a strictly decreasing 1-D sub-sequence of [1, N], got {steps.tolist()}")
    else:
        steps = schedule.subsequence(min(50, schedule.num_steps) if num_steps is None else num_steps)
    noise = _noise(generator, seed, sample_indices)
    x = _initial_noise(shape, x_init, 1.0, noise, device, dtype)
    ab = schedule.alpha_bar[steps - 1]
    ab_prev = torch.cat([ab[1:], torch.ones(1, dtype=torch.float64)])
    one_minus = schedule.one_minus_alpha_bar[steps - 1]
    one_minus_prev = torch.cat([one_minus[1:], torch.zeros(1, dtype=torch.float64)])
    # sigma^2 = eta^2 (1 - ab') / (1 - ab) * (1 - ab/ab'), with 1 - ab/ab' = -expm1(log ab - log ab')
    ratio = -torch.expm1(ab.log() - ab_prev.log())
    sigma = eta * (one_minus_prev / one_minus * ratio).sqrt()
    coefs = [ab_prev.sqrt(), (one_minus_prev - sigma.square()).clamp_min(0).sqrt(), sigma, ab.sqrt(), one_minus.rsqrt()]
    c_x0, c_eps, c_noise, sqrt_ab, inv_std = (v.to(device=x.device, dtype=x.dtype) for v in coefs)

    def update(x: Tensor, x0: Tensor, z: Tensor, i: int) -> Tensor:
        eps = (x - sqrt_ab[i] * x0) * inv_std[i]  # from the clipped x0_hat
        return c_x0[i] * x0 + c_eps[i] * eps + c_noise[i] * z

    limits = (clip_x0, dynamic_threshold)
    return _run_chain(score_fn, schedule, steps, x, update, limits, noise, progress, f"sample_ddim(eta={eta:g})")


def ncsn_sigmas(sigma_max: float = 1.0, sigma_min: float = 0.01, num_levels: int = 10) -> Tensor:
    r"""NCSN's geometric noise levels (Song & Ermon 2019): :math:`\sigma_i = \sigma_{max}
    (\sigma_{min}/\sigma_{max})^{(i-1)/(L-1)}`, ``(L,)`` float64, decreasing."""
    _check_int("num_levels", num_levels)
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if sigma_min >= sigma_max and num_levels > 1:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    if num_levels == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), num_levels, dtype=torch.float64)


def sample_annealed_langevin(
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...] | None = None,
    *,
    sigmas: Tensor | Sequence[float] | None = None,
    steps_per_level: int = 100,
    step_size: float = 2e-5,
    denoise: bool = False,
    x_init: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) in NCSN's frame :math:`x = x_0 + \sigma\epsilon`:
    from :math:`x \sim \mathcal N(0, \sigma_1^2 I)`, for each level :math:`\sigma_i` take
    ``steps_per_level`` (T) updates

    .. math:: x \leftarrow x + \tfrac{\alpha_i}{2}\,\nabla\log p_{\sigma_i}(x) + \sqrt{\alpha_i}\,z,\qquad
              \alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2 ,

    with :math:`\epsilon` = ``step_size``. The score is ``score_fn`` of ``sde`` at the time with
    :math:`\sigma(t)/\alpha(t) = \sigma_i`, rescaled to this frame (:class:`FrameDenoiser`).

    Args:
        sigmas: decreasing levels (default :func:`ncsn_sigmas`\ ``()``: 1 to 0.01, ten levels), each
            within ``sde``'s range of :math:`\sigma/\alpha` on ``[0, T]``.
        denoise: finish with Tweedie's :math:`x + \sigma_L^2\nabla\log p_{\sigma_L}(x)` (one more NFE;
            Song & Ermon 2020, "Improved techniques").
        generator, seed, sample_indices: the noise, as :func:`sample_ddpm`.

    On a :class:`~scoresde.VESDE` this is the shared loop's corrector-only run from the same ``x_init``:
    ``sample_pc(predictor=None, corrector="annealed_langevin", snr=sqrt(step_size) / (2 sigma_L),
    corrector_steps=T, timesteps=<the levels' times>, denoise=False)`` (its step
    :math:`\epsilon = 2 (r\sigma_i)^2` is :math:`\alpha_i/2`).

    Returns:
        :class:`~scoresde.SampleResult` with ``nfe`` = L T (+1 with ``denoise``).
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sample_annealed_langevin needs a LinearSDE (alpha, sigma), got {type(sde).__name__}")
    sigmas = ncsn_sigmas() if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if sigmas.ndim != 1 or sigmas.numel() == 0 or not torch.isfinite(sigmas).all() or (sigmas <= 0).any():
        raise ValueError(f"sigmas must be a 1-D sequence of positive noise levels, got {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    top = math.exp(-0.5 * sde.log_snr(torch.tensor(sde.T, dtype=torch.float64)).item())
    if sigmas[0] > top * (1 + 1e-3):
        raise ValueError(f"sigmas[0]={sigmas[0].item()!r} exceeds the largest noise level of {sde!r}, "
                         f"sigma(T)/alpha(T) = {top:.6g}")  # fmt: skip
    _check_int("steps_per_level", steps_per_level)
    if not isinstance(step_size, (int, float)) or not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be True or False, got {denoise!r}")
    score = CountingScore(score_fn)
    noise = _noise(generator, seed, sample_indices)
    x = _initial_noise(shape, x_init, sigmas[0].item(), noise, device, dtype)
    times = sde.inverse_log_snr(-2 * sigmas.log()).clamp(0, sde.T)
    ones = torch.ones_like(sigmas)
    denoiser = FrameDenoiser(score, sde, ones, sigmas, times, x)
    alphas = (step_size * sigmas.square() / sigmas[-1].square()).to(device=x.device, dtype=x.dtype)
    inv_var = sigmas.square().reciprocal().to(device=x.device, dtype=x.dtype)

    def step(x: Tensor, i: int, t: Tensor, s: Tensor) -> Tensor:
        level = i // steps_per_level
        frame_score = (denoiser(x, level) - x) * inv_var[level]  # (x0_hat - x)/sigma^2
        z = noise.randn_like(x)
        return x + 0.5 * alphas[level] * frame_score + alphas[level].sqrt() * z

    grid = torch.cat([times[:1], times.repeat_interleave(steps_per_level)])
    x, _ = _run_grid(step, x, grid, torch.zeros(len(grid), dtype=torch.bool), progress=progress,
                     desc="sample_annealed_langevin")  # fmt: skip
    if denoise:
        x = denoiser(x, len(sigmas) - 1)
        check_finite(x, "the denoised sample (Tweedie step at sigma_L)")
    return SampleResult(x=x, nfe=score.calls)


DISCRETE_SAMPLERS = ("ddpm", "ddim", "ncsn")
"""The samplers of :func:`sample_discrete` (and of ``scoresde sample --sampler``)."""


def sample_discrete(
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    sampler: str,
    num_steps: int | None = None,
    eta: float = 0.0,
    clip_x0: tuple[float, float] | None = (-1.0, 1.0),
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> SampleResult:
    """A discrete-time sampler of a continuous-time score model of ``sde``, with the command line's
    defaults: ``"ddpm"`` runs :func:`sample_ddpm` on ``DiscreteSchedule.from_sde(sde, num_steps or 1000)``;
    ``"ddim"`` runs :func:`sample_ddim` with ``eta`` on ``num_steps`` (default 50) of the 1000-step chain;
    ``"ncsn"`` runs :func:`sample_annealed_langevin` on ``num_steps`` (default 10) geometric levels from
    :math:`\\sigma/\\alpha` at ``T`` to its value at ``t = 1e-3``, 100 steps a level, ``step_size`` 2e-5,
    with the final denoising step. ``clip_x0``: the data range for DDPM/DDIM's :math:`\\hat x_0`;
    ``generator`` or per-sample ``seed``/``sample_indices`` as in :func:`sample_ddpm`."""
    if sampler not in DISCRETE_SAMPLERS:
        raise ValueError(f"sampler must be one of {DISCRETE_SAMPLERS}, got {sampler!r}")
    common = {"generator": generator, "seed": seed, "sample_indices": sample_indices, "device": device}
    if sampler == "ddpm":
        return sample_ddpm(
            score_fn, DiscreteSchedule.from_sde(sde, num_steps or 1000), shape, clip_x0=clip_x0, **common
        )
    if sampler == "ddim":
        schedule = DiscreteSchedule.from_sde(sde, 1000)
        return sample_ddim(score_fn, schedule, shape, num_steps=num_steps or 50, eta=eta, clip_x0=clip_x0, **common)
    ends = torch.tensor([sde.T, 1e-3], dtype=torch.float64)
    top, bottom = (-0.5 * sde.log_snr(ends)).exp().tolist()
    sigmas = ncsn_sigmas(top, bottom, num_steps or 10)
    return sample_annealed_langevin(score_fn, sde, shape, sigmas=sigmas, denoise=True, **common)
