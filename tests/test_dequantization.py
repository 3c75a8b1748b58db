"""Dequantization bounds (scoresde.dequantization, bits_per_dim(dequantization=, importance_samples=))
against exact bin probabilities of a Gaussian-mixture oracle: the probability of a bin under a
diagonal-covariance mixture marginal is a sum of products of normal CDF differences."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.dequantization import TruncatedNormalDequantization, truncated_normal_log_prob, truncated_normal_sample
from scoresde.noise import BatchNoise

Z_CRIT = 4.0
NUM_BINS = 4  # coarse bins on [-1, 1]: the density varies within a bin, so the bounds have a gap


def mixture() -> sd.GaussianMixture:
    means = torch.tensor([[-0.3, 0.2], [0.4, -0.5]], dtype=torch.float64)
    return sd.GaussianMixture(means, torch.tensor([[0.02, 0.05], [0.04, 0.01]], dtype=torch.float64))


def exact_log_prob(gmm: sd.GaussianMixture, sde: sd.LinearSDE, t: float, levels: torch.Tensor, scale: float = 1.0):
    r"""log of the mass of ``scale * B_x`` under :math:`p_t`, i.e. :math:`\log P(x)` of the model
    density :math:`y \mapsto \text{scale}^D p_t(\text{scale}\,y)`, for diagonal covariances."""
    marginal = gmm.marginal(sde, t)
    std = marginal.covs.diagonal(dim1=1, dim2=2).sqrt()  # (components, d)
    low = scale * (2 * levels.double() / NUM_BINS - 1)
    high = scale * (2 * (levels.double() + 1) / NUM_BINS - 1)

    def cdf(v):
        return torch.special.ndtr((v[:, None, :] - marginal.means) / std)

    mass = (cdf(high) - cdf(low)).prod(-1)  # (batch, components)
    return (mass * marginal.weights).sum(1).log()


def bounds(gmm, sde, levels, dequantization, num_draws, importance_samples, seed):
    """``(num_draws, batch)`` K-sample bounds in nats (exact divergence, the exact p_T as prior)."""
    log_p = gmm.log_prob_fn(sde)
    res = sd.bits_per_dim(
        gmm.score_fn(sde), sde, levels, num_bins=NUM_BINS, dequantization=dequantization,
        num_dequant_samples=num_draws, importance_samples=importance_samples, dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed), rtol=1e-7, atol=1e-7,
        prior_log_prob_fn=lambda z: log_p(z, sde.T),
    )  # fmt: skip
    w = res.log_weight.reshape(num_draws, importance_samples, -1)
    nats = -(w.logsumexp(1) - math.log(importance_samples))
    torch.testing.assert_close(res.bits_per_dim, nats.mean(0) / (levels.shape[1] * math.log(2)))
    return nats


def test_truncated_normal_density_integrates_to_one_and_the_sampler_inverts_its_cdf():
    for tau in (0.5, 3.0, 8.0):
        grid = torch.linspace(-tau, tau, 40001, dtype=torch.float64)
        density = truncated_normal_log_prob(grid, torch.tensor(tau)).exp()
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-8)
        u = torch.cat([torch.zeros(1), torch.rand(1000, generator=torch.Generator().manual_seed(0))]).double()
        e = truncated_normal_sample(u, torch.tensor(tau))
        z = math.erf(tau / math.sqrt(2))
        cdf = (torch.special.ndtr(e) - torch.special.ndtr(torch.tensor(-tau, dtype=torch.float64))) / z
        assert e.abs().max() <= tau and (cdf - u).abs().max() < 1e-12
    outside = truncated_normal_log_prob(torch.tensor([3.5]), torch.tensor(3.0))
    assert outside.item() == -math.inf


@pytest.mark.parametrize("dequantization", ["uniform", "truncated_normal"])
def test_importance_weighted_bound_falls_with_k_towards_the_exact_bin_probability(dequantization):
    """K = 1 and K = 16 bounds (from the same number of ODE solves' worth of draws) are >= the exact
    -log P(x) within their standard errors, and K = 16 closes most of the K = 1 gap."""
    sde, gmm = sd.VPSDE(), mixture()
    levels = torch.tensor([[1, 2], [2, 1], [1, 1]])
    if dequantization == "uniform":
        exact = -exact_log_prob(gmm, sde, sde.t_min, levels)
    else:
        deq = TruncatedNormalDequantization(NUM_BINS, sd.DataTransform(), sde, levels.double())
        exact = -exact_log_prob(gmm, sde, deq.t_end, levels, scale=deq.alpha.item())
    one = bounds(gmm, sde, levels, dequantization, 1024, 1, seed=1)
    many = bounds(gmm, sde, levels, dequantization, 64, 16, seed=2)
    se_one, se_many = one.std(0) / math.sqrt(len(one)), many.std(0) / math.sqrt(len(many))
    gap_one, gap_many = one.mean(0) - exact, many.mean(0) - exact
    assert (gap_one >= -Z_CRIT * se_one).all() and (gap_many >= -Z_CRIT * se_many).all(), (gap_one, gap_many)
    assert (gap_one > Z_CRIT * se_one).all(), gap_one  # a real gap for K = 1 on these coarse bins
    assert (gap_many < 0.25 * gap_one + Z_CRIT * se_many).all(), (gap_one, gap_many)


def test_truncated_normal_bound_is_tight_on_bin_centre_data():
    r"""Data on bin centres c with weights pi: the model p_eps is the kernel mixture, q is its posterior
    in the bin, so every draw's weight is pi(c) * prod_i erf(tau/sqrt 2) (the kernel's mass inside
    the bin): the bound is -log pi(c) - D log erf(tau/sqrt 2), with no Monte-Carlo spread."""
    sde = sd.VPSDE()
    levels = torch.tensor([[0, 0], [3, 3], [0, 3]])  # every pair three bins apart in some coordinate
    centres = 2 * (levels.double() + 0.5) / NUM_BINS - 1
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    gmm = sd.GaussianMixture(centres, torch.full((3, 2), 1e-10, dtype=torch.float64), weights)
    log_p = gmm.log_prob_fn(sde)
    for tau in (2.0, 3.0):
        res = sd.bits_per_dim(
            gmm.score_fn(sde), sde, levels, num_bins=NUM_BINS, dequantization="truncated_normal", truncation=tau,
            num_dequant_samples=8, importance_samples=2, dtype=torch.float64,
            generator=torch.Generator().manual_seed(3), rtol=1e-8, atol=1e-8,
            prior_log_prob_fn=lambda z: log_p(z, sde.T),
        )  # fmt: skip
        expected = -weights.log() - 2 * math.log(math.erf(tau / math.sqrt(2)))
        assert (-res.log_weight - expected).abs().max() < 1e-4
        torch.testing.assert_close(res.bits_per_dim, expected / (2 * math.log(2)), rtol=0, atol=1e-4)


def test_dequantization_time_keeps_the_draws_in_the_bin_and_follows_the_transform():
    sde = sd.VPSDE()
    levels = torch.randint(0, 17, (64, 1, 8, 8), generator=torch.Generator().manual_seed(4)).double()
    transform = sd.DataTransform(scale=torch.linspace(1.0, 3.0, 8).expand(1, 8, 8).clone(), shift=-1.0)
    deq = TruncatedNormalDequantization(17, transform, sde, levels, truncation=3.0)
    alpha, sigma = sde.alpha(torch.tensor(deq.t_end)), sde.sigma(torch.tensor(deq.t_end))
    assert (sigma / alpha).item() * 3.0 == pytest.approx(1.0 / 34, rel=1e-6)  # the narrowest bin: half-width 1/(2 K)
    assert deq.tau.min().item() == pytest.approx(3.0, rel=1e-6) and deq.tau.max().item() == pytest.approx(9.0)
    x_eps, correction = deq.draw(levels, BatchNoise(torch.Generator().manual_seed(5)))
    y = x_eps / deq.alpha
    assert torch.equal(sd.to_levels(y, 17, transform).double(), levels) and correction.shape == (64,)


def test_per_sample_seeds_make_a_point_independent_of_its_batch():
    """On a fixed grid a point's truncated-normal K = 4 bound depends on (seed, index) only."""
    sde, gmm = sd.VPSDE(), mixture()
    levels = torch.randint(0, NUM_BINS, (12, 2), generator=torch.Generator().manual_seed(6))
    kw = {"num_bins": NUM_BINS, "seed": 7, "dtype": torch.float64, "method": "rk4", "num_steps": 12,
          "dequantization": "truncated_normal", "importance_samples": 4, "num_dequant_samples": 2}  # fmt: skip
    whole = sd.bits_per_dim(gmm.score_fn(sde), sde, levels, **kw).bits_per_dim
    part = sd.bits_per_dim(gmm.score_fn(sde), sde, levels[[3, 9]], sample_indices=[3, 9], **kw).bits_per_dim
    torch.testing.assert_close(part, whole[[3, 9]], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dequantization": "gauss"}, ValueError, r"dequantization must be one of \('uniform', 'truncated_normal'\)"),
        ({"importance_samples": 0}, ValueError, "importance_samples must be a positive int, got 0"),
        ({"importance_samples": 2.0}, ValueError, "importance_samples must be a positive int, got 2.0"),
        ({"dequantization": "truncated_normal", "truncation": 0.0}, ValueError, "truncation must be a positive"),
        ({"dequantization": "truncated_normal", "truncation": 1e-9}, ValueError, "dequantization time at"),
        ({"dequantization": "truncated_normal", "t_end": 0.01}, ValueError, "sets t_end itself"),
    ],
)
def test_dequantization_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        sd.bits_per_dim(lambda y, t: -y, sd.VPSDE(), torch.tensor([[0, 1]]), num_bins=4, **kwargs)


def test_truncated_normal_needs_a_linear_sde():
    class Brownian(sd.SDE):
        def drift(self, x, t):
            return torch.zeros_like(x)

        def diffusion(self, t):
            return torch.ones_like(torch.as_tensor(t))

    with pytest.raises(TypeError, match="needs a LinearSDE, got Brownian"):
        sd.bits_per_dim(lambda y, t: -y, Brownian(), torch.tensor([[0, 1]]), num_bins=4,
                        dequantization="truncated_normal")  # fmt: skip
