"""Variational bounds against closed forms on Gaussian data, and bits/dim three ways."""

import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.ddpm import DiscreteSchedule
from scoresde.elbo import continuous_elbo, ddpm_elbo, discretized_gaussian_log_likelihood

D64 = torch.float64
MEAN, VAR = torch.tensor([0.3, -0.2, 0.5], dtype=D64), 0.5
GAUSS = sd.GaussianMixture(MEAN[None], torch.full((1, 3), VAR))


def closed_form_terms(s: DiscreteSchedule, d=3):
    """E over data and noise of L_T, sum L_{t-1}, L_0 for x0 ~ N(MEAN, VAR I) and the exact x0_hat:
    E||x0 - x0_hat(x_t)||^2 = d Var(x0 | x_t) = d VAR (1 - ab) / (ab VAR + 1 - ab)."""
    ab, om = s.alpha_bar, s.one_minus_alpha_bar
    post = VAR * om / (ab * VAR + om)
    var = s.posterior_variance
    diffusion = (0.5 * s.posterior_mean_coef1[1:] ** 2 / var[1:] * d * post[1:]).sum().item()
    ab_n, second = ab[-1].item(), MEAN.square().sum().item() + d * VAR
    prior = 0.5 * (ab_n * second - d * ab_n - d * math.log1p(-ab_n))
    s1 = (om[0] / ab[0]).item()  # the decoder variance
    recon = 0.5 * d * math.log(2 * math.pi * s1) + d * post[0].item() / (2 * s1)
    return prior, diffusion, recon


ENTROPY = 0.5 * 3 * math.log(2 * math.pi * math.e * VAR)  # E[-log p(x0)]


@pytest.mark.parametrize("time_sampling", ["importance", "uniform", "exact"])
def test_ddpm_terms_match_their_closed_forms(time_sampling):
    s = DiscreteSchedule.from_sde(sd.VPSDE(), 100, grid="log_snr")
    n = 4000 if time_sampling != "exact" else 500
    x0 = GAUSS.sample(n, generator=torch.Generator().manual_seed(0), dtype=D64)
    r = ddpm_elbo(GAUSS.score_fn(s.sde), s, x0, time_sampling=time_sampling, num_time_samples=2,
                  generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert r.nfe == (99 if time_sampling == "exact" else 2) + 1
    for got, want in zip((r.prior, r.diffusion, r.reconstruction), closed_form_terms(s), strict=True):
        se = got.std().item() / math.sqrt(n)
        assert abs(got.mean().item() - want) < 4 * se + 1e-9, (got.mean().item(), want, se)


def test_ddpm_bound_converges_to_the_nll_like_one_over_n():
    """On a log-SNR grid the exact bound's gap above E[-log p] falls like 1/N (closed form), and
    the library's bound is that closed form (previous test)."""
    sizes = np.array([100, 300, 1000, 3000])
    gaps = [sum(closed_form_terms(DiscreteSchedule.from_sde(sd.VPSDE(), int(n), grid="log_snr"))) - ENTROPY
            for n in sizes]  # fmt: skip
    assert all(g > 0 for g in gaps)
    slope = np.polyfit(np.log(sizes), np.log(gaps), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1), (slope, gaps)
    assert gaps[-1] < 0.1


def test_continuous_bound_is_above_the_nll_and_close():
    vp = sd.VPSDE()
    n = 4000
    x0 = GAUSS.sample(n, generator=torch.Generator().manual_seed(2), dtype=D64)
    r = continuous_elbo(GAUSS.score_fn(vp), vp, x0, num_time_samples=8, generator=torch.Generator().manual_seed(3))
    gap = r.nats + GAUSS.log_prob(x0)
    mean, se = gap.mean().item(), gap.std().item() / math.sqrt(n)
    assert mean > -4 * se and mean < 4 * se + 0.05, (mean, se)
    # the prior term alone: KL(N(alpha_T x0, sigma_T^2) || N(0, 1)) is tiny for VP
    assert r.prior.abs().max() < 1e-3 and r.nfe == 9


def test_discretised_decoder_is_a_distribution_over_levels():
    g = torch.Generator().manual_seed(4)
    num_bins = 17
    mean = 3 * torch.randn(5, 1, generator=g, dtype=D64)
    std = torch.tensor([1e-3, 0.05, 0.3, 1.0, 20.0], dtype=D64)
    levels = torch.arange(num_bins, dtype=D64)
    logp = torch.stack([discretized_gaussian_log_likelihood(levels[k].expand(5, 1), mean, std, num_bins)
                        for k in range(num_bins)])  # fmt: skip
    assert torch.isfinite(logp).all()
    assert torch.allclose(logp.exp().sum(0), torch.ones(5, dtype=D64), atol=1e-12)
    # the far tail keeps its digits: log Phi(-40) ~ -804.6
    far = discretized_gaussian_log_likelihood(torch.zeros(1, 1), torch.tensor([[41.0]], dtype=D64), 1.0, 2)
    assert far.item() == pytest.approx(torch.special.log_ndtr(torch.tensor(-41.0, dtype=D64)).item(), rel=1e-12)


def test_bits_per_dim_three_ways_bound_the_exact_probability():
    """Levels of independent Gaussians: P(x) is a product of normal-CDF differences. The ELBOs bound
    -log2 P(x)/D for the exact model of the discrete data (point masses at the bin centres, weighted by
    P), the probability-flow ODE for the exact model of the continuous data it was binned from (with
    uniform dequantization, whose gap is measured here: ~0.19 bits/dim)."""
    num_bins, n = 16, 1000
    mean, var = torch.tensor([0.1, -0.3], dtype=D64), torch.tensor([0.2, 0.35], dtype=D64)
    gauss = sd.GaussianMixture(mean[None], var[None])
    normal = torch.distributions.Normal(mean, var.sqrt())

    def log_probability(levels):  # per coordinate
        lo, hi = -1 + 2 * levels.double() / num_bins, -1 + 2 * (levels.double() + 1) / num_bins
        lo, hi = torch.where(levels == 0, -math.inf, lo), torch.where(levels == num_bins - 1, math.inf, hi)
        return (normal.cdf(hi) - normal.cdf(lo)).log()

    levels = sd.to_levels(gauss.sample(n, generator=torch.Generator().manual_seed(5), dtype=D64), num_bins)
    exact = -log_probability(levels).sum(1) / (2 * math.log(2))
    every = torch.cartesian_prod(torch.arange(num_bins), torch.arange(num_bins))
    centres = sd.dequantize(every, num_bins, centre=True, dtype=D64)
    discrete = sd.GaussianMixture(centres, torch.zeros(len(every), 2, dtype=D64), log_probability(every).sum(1).exp())
    vp = sd.VPSDE()
    schedule = DiscreteSchedule.from_sde(vp, 1000, grid="log_snr")
    ways = {
        "discrete ELBO": ddpm_elbo(discrete.score_fn(vp), schedule, levels, num_bins=num_bins, num_time_samples=4,
                                   dtype=D64, generator=torch.Generator().manual_seed(6)).bits_per_dim,
        "continuous ELBO": continuous_elbo(discrete.score_fn(vp), vp, levels, num_bins=num_bins, num_time_samples=4,
                                           dtype=D64, generator=torch.Generator().manual_seed(7)).bits_per_dim,
        "ode": sd.bits_per_dim(gauss.score_fn(vp), vp, levels, num_bins=num_bins, dtype=D64, rtol=1e-6, atol=1e-6,
                               generator=torch.Generator().manual_seed(8)).bits_per_dim,
    }  # fmt: skip
    for name, bpd in ways.items():
        gap = bpd - exact
        m, se = gap.mean().item(), gap.std().item() / math.sqrt(n)
        assert -4 * se < m < 4 * se + 0.25, (name, m, se)
    gap = ways["ode"] - exact
    assert gap.mean() > 10 * gap.std() / math.sqrt(n)  # the dequantization gap is real


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, x: ddpm_elbo(lambda x, t: x, s, x.long() + 20, num_bins=16), r"\[0, 15\], got values in \[20, 20\]"),
        (lambda s, x: ddpm_elbo(lambda x, t: x, s, x, time_sampling="stratified"), "'stratified'"),
        (lambda s, x: ddpm_elbo(lambda x, t: x, s, x, num_time_samples=0), "num_time_samples .* 0"),
        (lambda s, x: ddpm_elbo(lambda x, t: x, s, x, transform=sd.DataTransform()), "give num_bins"),
        (lambda s, x: continuous_elbo(lambda x, t: x, s.sde, x, time_sampling="exact"), "'exact'"),
        (lambda s, x: ddpm_elbo(lambda x, t: x, s, x, variance="learned"), "'learned'"),
    ],
)
def test_elbo_errors_name_the_value(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(DiscreteSchedule.linear(10), torch.zeros(4, 2))
