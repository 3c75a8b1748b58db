r"""Variational bounds on the negative log-likelihood, in nats and bits/dim: DDPM's discrete-time
bound (Ho et al. 2020, eq. 5) and the continuous-time bound of the same score model (Song et al.
2021, "Maximum likelihood training of score-based diffusion models", Thm. 1, in the form of Kingma
et al. 2021, VDM), beside the probability-flow ODE's :func:`~scoresde.bits_per_dim`.

Both are sums of three terms per data point ``(batch,)``,

.. math:: -\log p(x_0) \le \underbrace{\mathrm{KL}(q(x_T \mid x_0)\,\|\,\pi)}_{\text{prior}}
          + \underbrace{\textstyle\sum_{t=2}^{N}
            \mathrm{KL}(q(x_{t-1} \mid x_t, x_0)\,\|\,p(x_{t-1} \mid x_t))}_{\text{diffusion}}
          + \underbrace{E_q[-\log p(x_0 \mid x_1)]}_{\text{reconstruction}},

the continuous bound's diffusion term being
:math:`\tfrac12\int_{t_{min}}^{T} g(t)^2\,E\|s(x_t, t) - \nabla\log q(x_t \mid x_0)\|^2\,dt` (the
likelihood-weighted DSM loss) and its reconstruction the decoder at :math:`t_{min}`. Data are either
continuous (``num_bins=None``: a Gaussian decoder, a bound on the density) or integer levels on
``num_bins`` levels (a discretised Gaussian decoder over the bins of
:class:`~scoresde.DataTransform`, Ho et al. §3.3: a bound on the probability, in bits/dim).
Monte-Carlo terms are unbiased; :attr:`ElboResult.std_error` is the standard error of their batch mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde._tensor import append_dims, as_time, check_finite, check_float, check_generator
from scoresde.ddpm import DiscreteSchedule, FrameDenoiser, _check_schedule
from scoresde.discrete_data import BpdEvaluation, DataTransform, _check_discrete, dequantize
from scoresde.losses import eps_residual, sample_time
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.solvers import CountingScore

__all__ = [
    "DDPM_TIME_SAMPLINGS",
    "ELBO_BOUNDS",
    "ElboResult",
    "continuous_elbo",
    "ddpm_elbo",
    "evaluate_elbo",
    "discretized_gaussian_log_likelihood",
]

DDPM_TIME_SAMPLINGS = ("importance", "uniform", "exact")


@dataclass(frozen=True)
class ElboResult:
    """A variational bound per data point: ``prior``, ``diffusion`` and ``reconstruction`` terms in
    nats, ``(batch,)``; ``bits_per_dim`` their sum over ``D ln 2``; ``nfe`` the score evaluations."""

    bits_per_dim: Tensor
    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor
    nfe: int

    @property
    def nats(self) -> Tensor:
        """The bound in nats per data point, ``(batch,)``."""
        return self.prior + self.diffusion + self.reconstruction

    @property
    def mean(self) -> float:
        """Mean bits/dim over the batch."""
        return self.bits_per_dim.mean().item()

    @property
    def std_error(self) -> float:
        """Standard error of :attr:`mean` (sample std over the batch / sqrt(batch): data, time and noise draws)."""
        n = self.bits_per_dim.numel()
        return self.bits_per_dim.std().item() / math.sqrt(n) if n > 1 else math.nan


def _log_bin_probability(lo: Tensor, hi: Tensor) -> Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo))` for standardised edges ``lo < hi`` (may be infinite), stable in
    both tails: the interval is reflected to the lower half, where :math:`\log\Phi` keeps its digits."""
    flip = lo + hi > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(
    levels: Tensor, mean: Tensor, std: Tensor, num_bins: int, transform: DataTransform | None = None
) -> Tensor:
    r""":math:`\log P(x) = \sum_i \log\int_{\text{bin}(x_i)} \mathcal N(y; \mu_i, \text{std}^2)\,dy` per sample,
    ``(batch,)``, for integer ``levels`` ``(batch, *event)`` in ``0..num_bins-1``: the bin of level ``k``
    is ``transform([k/K, (k+1)/K])`` in model space, the outer bins extended to :math:`\pm\infty`
    (Ho et al. 2020, eq. 13). ``mean`` like ``levels`` (floating point), ``std`` ``(batch,)`` or a number."""
    transform = DataTransform() if transform is None else transform
    x = levels.to(mean.dtype)
    # the edges at u = k/K and (k+1)/K; the outer ones (u = 0 of level 0, u = 1 of level K-1) go to infinity
    direction = torch.as_tensor(transform.scale, dtype=mean.dtype, device=mean.device).sign()
    a = torch.where(x == 0, -math.inf * direction, transform(x / num_bins))
    b = torch.where(x == num_bins - 1, math.inf * direction, transform((x + 1) / num_bins))
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    std = append_dims(torch.as_tensor(std, dtype=mean.dtype, device=mean.device).expand(mean.shape[0]), mean.ndim)
    return _log_bin_probability((lo - mean) / std, (hi - mean) / std).flatten(1).sum(1)


def _gaussian_log_density(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """:math:`\\log\\mathcal N(x; \\text{mean}, \\text{std}^2 I)` per sample; ``std`` ``(batch,)``."""
    d = x[0].numel()
    return -0.5 * ((x - mean) / append_dims(std, x.ndim)).square().flatten(1).sum(1) - d * (
        std.log() + 0.5 * math.log(2 * math.pi)
    )


def _data(x: Tensor, num_bins: int | None, transform: DataTransform | None, dtype: torch.dtype | None) -> Tensor:
    """The data point in model space: ``x`` itself (continuous data), or the centre of each level's bin."""
    if num_bins is None:
        check_float(x, "x")
        if x.ndim < 2 or x.numel() == 0:
            raise ValueError(f"x must be a non-empty (batch, *event) tensor, got shape {tuple(x.shape)}")
        check_finite(x, "x")
        if transform is not None:
            raise ValueError("transform is for discrete data: give num_bins with it")
        return x if dtype is None else x.to(dtype)
    _check_discrete(x, num_bins)
    transform = DataTransform() if transform is None else transform
    dtype = dtype or (x.dtype if x.is_floating_point() else torch.get_default_dtype())
    transform.check(x.to(dtype))
    return dequantize(x, num_bins, transform, dtype=dtype, centre=True)


def _decoder_term(
    x: Tensor, x0: Tensor, mean: Tensor, std: Tensor, num_bins: int | None, transform: DataTransform | None
) -> Tensor:
    """:math:`-\\log p(x_0 \\mid x_1)` per sample: discretised on the bins of ``x`` or a Gaussian density."""
    if num_bins is None:
        return -_gaussian_log_density(x0, mean, std)
    return -discretized_gaussian_log_likelihood(x, mean, std, num_bins, transform)


def _result(x0: Tensor, prior: Tensor, diffusion: Tensor, reconstruction: Tensor, nfe: int) -> ElboResult:
    total = prior + diffusion + reconstruction
    return ElboResult(total / (x0[0].numel() * math.log(2)), prior, diffusion, reconstruction, nfe)


def _check_time_samples(num_time_samples: int) -> None:
    if not isinstance(num_time_samples, int) or isinstance(num_time_samples, bool) or num_time_samples < 1:
        raise ValueError(f"num_time_samples must be a positive int, got {num_time_samples!r}")


def ddpm_elbo(
    score_fn: ScoreFn,
    schedule: DiscreteSchedule,
    x: Tensor,
    *,
    num_bins: int | None = None,
    transform: DataTransform | None = None,
    variance: str = "beta_tilde",
    time_sampling: str = "importance",
    num_time_samples: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> ElboResult:
    r"""DDPM's variational bound :math:`L_T + \sum_{t=2}^N L_{t-1} + L_0` (Ho et al. 2020, eq. 5) of a
    score model of ``schedule.sde``, the reverse steps :math:`p(x_{t-1} \mid x_t) =
    \mathcal N(c_1\hat x_0 + c_2 x_t, \sigma_t^2 I)` of :func:`~scoresde.ddpm.sample_ddpm`:

    * :math:`L_T = \mathrm{KL}(\mathcal N(\sqrt{\bar\alpha_N}x_0, (1-\bar\alpha_N)I) \| \mathcal N(0, I))`, closed form;
    * :math:`L_{t-1} = \frac D2\big(r_t - 1 - \log r_t\big) + \frac{c_1(t)^2}{2\sigma_t^2}\|x_0 - \hat x_0(x_t)\|^2`,
      :math:`r_t = \tilde\beta_t/\sigma_t^2`, at one draw :math:`x_t \sim q(x_t \mid x_0)`;
    * :math:`L_0 = -\log p(x_0 \mid x_1)`, the decoder :math:`\mathcal N(\hat x_0(x_1), (1-\bar\alpha_1)/\bar\alpha_1)`
      (the noise level of :math:`x_1` in data units, as the continuous bound's decoder; Ho et al.'s clipped
      :math:`\tilde\beta_2` is far too small when step 1 is a jump from the data, as on a log-SNR grid),
      discretised on the bins when ``num_bins`` is given.

    The sum over t is exact (``time_sampling="exact"``: N - 1 score evaluations per batch) or a
    Monte-Carlo estimate from ``num_time_samples`` steps per data point, drawn uniformly from
    ``2..N`` or with probability :math:`\propto c_1^2(1-\bar\alpha_t)/\sigma_t^2` (``"importance"``: the
    term's size for unit-variance data), weighted by the inverse probability (unbiased).

    Args:
        x: ``(batch, *event)`` data: continuous (model space) or, with ``num_bins``, integer levels.
        transform: levels -> model space (:class:`~scoresde.DataTransform`, default [0, 1] -> [-1, 1]).
        variance: :math:`\sigma_t^2`, ``"beta_tilde"`` or ``"beta"``.
        dtype: the float type for integer levels (default torch's).
        generator: for the steps and the noise.

    Returns:
        :class:`ElboResult`.
    """
    schedule = _check_schedule(schedule)
    variances = schedule.reverse_variance(variance)
    if time_sampling not in DDPM_TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {DDPM_TIME_SAMPLINGS}, got {time_sampling!r}")
    _check_time_samples(num_time_samples)
    check_generator(generator)
    x0 = _data(x, num_bins, transform, dtype)
    score = CountingScore(score_fn)
    n, d, batch = schedule.num_steps, x0[0].numel(), x0.shape[0]
    denoise = FrameDenoiser(score, schedule.sde, schedule.alpha_bar.sqrt(), schedule.one_minus_alpha_bar.sqrt(),
                            schedule.times, x0)  # fmt: skip

    sqrt_ab, sqrt_one_minus = (v.to(device=x0.device, dtype=x0.dtype) for v in
                               (schedule.alpha_bar.sqrt(), schedule.one_minus_alpha_bar.sqrt()))  # fmt: skip

    def squared_error(i: Tensor) -> Tensor:
        r""":math:`\|x_0 - \hat x_0(x_t)\|^2` ``(batch,)`` at one draw of :math:`x_t`, table index ``i = t - 1``."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        scale = (lambda v: append_dims(v, x0.ndim)) if i.ndim else (lambda v: v)
        x_t = scale(sqrt_ab[i]) * x0 + scale(sqrt_one_minus[i]) * noise
        return (x0 - denoise(x_t, i)).square().flatten(1).sum(1)

    # L_T
    ab_n = schedule.alpha_bar[-1].item()
    prior = 0.5 * (ab_n * x0.flatten(1).square().sum(1) - d * ab_n - d * math.log1p(-ab_n))
    # sum_t L_{t-1}, t = 2..N
    diffusion = x0.new_zeros(batch)
    if n > 1:
        ratio = schedule.posterior_variance[1:] / variances[1:]
        const = 0.5 * d * (ratio - 1 - ratio.log())
        weight = schedule.posterior_mean_coef1[1:].square() / (2 * variances[1:])
        weight_x = weight.to(device=x0.device, dtype=x0.dtype)
        if time_sampling == "exact":
            for i in range(n - 1):
                diffusion = diffusion + weight_x[i] * squared_error(torch.tensor(i + 1, device=x0.device))
        else:
            size = weight * schedule.one_minus_alpha_bar[1:] if time_sampling == "importance" else torch.ones(n - 1)
            prob = (size / size.sum()).to(x0.device)
            for _ in range(num_time_samples):
                idx = torch.multinomial(prob.expand(batch, -1), 1, generator=generator).squeeze(1)
                ratio_w = weight_x[idx] / prob[idx].to(x0.dtype)
                diffusion = diffusion + ratio_w * squared_error(idx + 1) / num_time_samples
        diffusion = diffusion + const.sum().item()
    # L_0: the decoder at step 1 (mean c1 x0_hat + c2 x_1 = x0_hat, since alpha-bar_0 = 1)
    x_1 = sqrt_ab[0] * x0 + sqrt_one_minus[0] * torch.randn(x0.shape, generator=generator, device=x0.device,
                                                             dtype=x0.dtype)  # fmt: skip
    mean = schedule.posterior_mean_coef1[0].item() * denoise(x_1, 0) + schedule.posterior_mean_coef2[0].item() * x_1
    std = x0.new_full((batch,), (schedule.one_minus_alpha_bar[0] / schedule.alpha_bar[0]).sqrt().item())
    reconstruction = _decoder_term(x, x0, mean, std, num_bins, transform)
    return _result(x0, prior, diffusion, reconstruction, score.calls)


def continuous_elbo(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x: Tensor,
    *,
    num_bins: int | None = None,
    transform: DataTransform | None = None,
    time_sampling: str = "importance",
    num_time_samples: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> ElboResult:
    r"""The continuous-time bound (Song et al. 2021b, Thm. 1; Kingma et al. 2021) of the reverse SDE
    of ``score_fn`` from the prior at ``T`` to ``t_min``, with a decoder there:

    .. math:: -\log p(x_0) \le \mathrm{KL}(\mathcal N(\alpha_T x_0, \sigma_T^2 I)\,\|\,\pi)
              + \frac12\int_{t_{min}}^{T} g^2\,E\big\|s(x_t, t) + \epsilon/\sigma_t\big\|^2 dt
              + E[-\log p(x_0 \mid x_{t_{min}})].

    The integral is the likelihood-weighted DSM loss; since :math:`g^2/\sigma^2 = -d\lambda/dt` it is
    :math:`\frac12(\lambda(t_{min}) - \lambda(T))\,E_{\lambda \sim U}\|\hat\epsilon - \epsilon\|^2` with
    ``time_sampling="importance"`` (uniform in log-SNR, :func:`~scoresde.losses.sample_time`) or
    :math:`\frac12(T - t_{min})E_{t \sim U}[g^2/\sigma^2\|\hat\epsilon - \epsilon\|^2]` (``"uniform"``),
    averaged over ``num_time_samples`` draws per data point. The decoder is
    :math:`\mathcal N(\hat x_0(x_{t_{min}}), \sigma^2/\alpha^2)` at :math:`t_{min}` (Tweedie's mean),
    discretised on the bins with ``num_bins``. Arguments as :func:`ddpm_elbo`; NFE = ``num_time_samples`` + 1.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"continuous_elbo needs a LinearSDE (a Gaussian kernel), got {type(sde).__name__}")
    if time_sampling not in ("importance", "uniform"):
        raise ValueError(f"time_sampling must be 'importance' or 'uniform', got {time_sampling!r}")
    _check_time_samples(num_time_samples)
    check_generator(generator)
    x0 = _data(x, num_bins, transform, dtype)
    score = CountingScore(score_fn)
    d, batch = x0[0].numel(), x0.shape[0]
    ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    (a_min, a_T), (s_min, s_T), lam = sde.alpha(ends).tolist(), sde.sigma(ends).tolist(), sde.log_snr(ends)
    p2 = sde.prior_std**2
    prior = 0.5 * ((a_T**2 * x0.flatten(1).square().sum(1) + d * s_T**2) / p2 - d - d * math.log(s_T**2 / p2))
    diffusion = x0.new_zeros(batch)
    time_dtype = as_time(0.0, x0).dtype
    for _ in range(num_time_samples):
        t = sample_time(sde, batch, importance=time_sampling == "importance", generator=generator,
                        device=x0.device, dtype=time_dtype)  # fmt: skip
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        err = eps_residual(score, sde, x0, t, noise, "sum")
        if time_sampling == "importance":
            weight = torch.full_like(t, (lam[0] - lam[1]).item())
        else:
            weight = (sde.T - sde.t_min) * sde.diffusion(t).square() / sde.sigma(t).square()
        diffusion = diffusion + 0.5 * weight.to(x0.dtype) * err / num_time_samples
    t_min = torch.tensor(sde.t_min, dtype=torch.float64)
    decode = FrameDenoiser(score, sde, t_min.new_ones(1), (sde.sigma(t_min) / sde.alpha(t_min)).reshape(1),
                           t_min.reshape(1), x0)  # fmt: skip
    x_min = a_min * x0 + s_min * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean = decode(x_min / a_min, 0)
    reconstruction = _decoder_term(x, x0, mean, x0.new_full((batch,), s_min / a_min), num_bins, transform)
    return _result(x0, prior, diffusion, reconstruction, score.calls)


ELBO_BOUNDS = ("elbo", "ddpm")
"""The bounds of :func:`evaluate_elbo`: the continuous-time ELBO and DDPM's discrete one."""


def evaluate_elbo(
    score_fn: ScoreFn,
    sde: LinearSDE,
    levels: Tensor,
    *,
    num_bins: int,
    bound: str = "elbo",
    transform: DataTransform | None = None,
    num_steps: int = 1000,
    num_time_samples: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> BpdEvaluation:
    """Mean bits/dim of a data set of integer ``levels`` ``(n, *event)`` by a variational bound, and its
    standard error: ``bound="elbo"`` (:func:`continuous_elbo`) or ``"ddpm"`` (:func:`ddpm_elbo` on
    ``DiscreteSchedule.from_sde(sde, num_steps, grid="log_snr")``), batch by batch."""
    if bound not in ELBO_BOUNDS:
        raise ValueError(f"bound must be one of {ELBO_BOUNDS}, got {bound!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    kwargs = {"num_bins": num_bins, "transform": transform, "num_time_samples": num_time_samples,
              "generator": generator}  # fmt: skip
    if bound == "ddpm":
        schedule = DiscreteSchedule.from_sde(sde, num_steps, grid="log_snr")
    values, nfe = [], 0
    with torch.no_grad():
        for batch in levels.split(batch_size):
            if bound == "ddpm":
                result = ddpm_elbo(score_fn, schedule, batch, **kwargs)
            else:
                result = continuous_elbo(score_fn, sde, batch, **kwargs)
            values.append(result.bits_per_dim.to(torch.float64))
            nfe += result.nfe
    bpd = torch.cat(values)
    n = bpd.numel()
    return BpdEvaluation(bpd.mean().item(), bpd.std().item() / math.sqrt(n) if n > 1 else math.nan, n, nfe)
