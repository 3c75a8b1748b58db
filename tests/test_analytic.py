import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import scoresde as sd

from .conftest import PlainOU, mixture


@pytest.mark.parametrize("dim", [2, 16])
def test_log_prob_matches_scipy(dim):
    gmm = mixture(dim)
    x = gmm.sample(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    comps = [
        math.log(w) + multivariate_normal(m.numpy(), c.numpy()).logpdf(x.numpy())
        for w, m, c in zip(gmm.weights.tolist(), gmm.means, gmm.covs, strict=True)
    ]
    ref = torch.logsumexp(torch.from_numpy(np.stack(comps)), dim=0)
    torch.testing.assert_close(gmm.log_prob(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 16])
def test_score_is_gradient_of_log_prob_at_every_t(sde, dim):
    """Batched over x and over a different t per sample."""
    gmm = mixture(dim)
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(64, dim, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * sde.T
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob_fn(sde)(xg, t).sum(), xg)
    torch.testing.assert_close(gmm.score_fn(sde)(x, t), grad, rtol=1e-9, atol=1e-9)
    xg = x.clone().requires_grad_(True)
    (grad0,) = torch.autograd.grad(gmm.log_prob(xg).sum(), xg)
    torch.testing.assert_close(gmm.score(x), grad0, rtol=1e-9, atol=1e-9)


def test_marginal_object_agrees_with_batched_functions(sde):
    gmm = mixture(3)
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = 0.37 * sde.T
    p_t = gmm.marginal(sde, t)
    torch.testing.assert_close(p_t.log_prob(x), gmm.log_prob_fn(sde)(x, t))
    torch.testing.assert_close(p_t.score(x), gmm.score_fn(sde)(x, t))


def test_perturbed_sample_moments_match_marginal(sde):
    """x0 ~ p0 perturbed through the SDE's kernel has p_t's mean and covariance (within 5 SE)."""
    gmm = mixture(2)
    g = torch.Generator().manual_seed(3)
    n, t = 100_000, 0.2 * sde.T
    x0 = gmm.sample(n, generator=g, dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    xt = mean + std[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    p_t = gmm.marginal(sde, t)
    cov = p_t.covariance
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((xt.mean(0) - p_t.mean).abs() < 5 * se_mean).all()
    emp_cov = torch.cov(xt.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.square()) / n).sqrt()
    assert ((emp_cov - cov).abs() < 5 * se_cov).all()


@pytest.mark.parametrize("t_frac", [0.0, 0.05, 0.5])
def test_2d_density_integrates_to_one(t_frac):
    sde = sd.VPSDE()
    gmm = mixture(2)
    lim, n = 8.0, 801
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    x = torch.stack([gx.flatten(), gy.flatten()], 1)
    density = gmm.log_prob_fn(sde)(x, t_frac).exp()
    mass = density.sum() * (axis[1] - axis[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=1e-6)


def test_sample_moments_match_mixture():
    gmm = mixture(3)
    n = 200_000
    x = gmm.sample(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cov = gmm.covariance
    assert ((x.mean(0) - gmm.mean).abs() < 5 * (cov.diagonal() / n).sqrt()).all()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.square()) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() < 5 * se_cov).all()


def test_denoiser_is_tweedie_posterior_mean_for_a_gaussian():
    sde = sd.VPSDE()
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    cov = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
    gmm = sd.GaussianMixture(mu, cov)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor(0.3, dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    c_t = a**2 * cov[0] + s**2 * torch.eye(2, dtype=torch.float64)
    ref = mu + (a * cov[0] @ torch.linalg.solve(c_t, (x - a * mu).T)).T
    torch.testing.assert_close(gmm.denoiser_fn(sde)(x, 0.3), ref)


def test_singular_covariance_is_fine_for_t_positive():
    gmm = sd.GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    x = torch.randn(4, 2, dtype=torch.float64)
    lp = gmm.log_prob_fn(sd.VPSDE())(x, 0.1)
    assert torch.isfinite(lp).all()
    s = gmm.sample(10, dtype=torch.float64)
    assert (s[:, 1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("event", [(2,), (16,), (1, 8, 8)])
def test_event_shapes_and_dtypes(event, dtype):
    d = math.prod(event)
    base = mixture(d)
    gmm = sd.GaussianMixture(base.means, base.covs, base.weights, event_shape=event)
    x = gmm.sample(5, dtype=dtype)
    assert x.shape == (5, *event) and x.dtype == dtype
    sde = sd.VESDE()
    s = gmm.score_fn(sde)(x, 0.5)
    assert s.shape == x.shape and s.dtype == dtype
    lp = gmm.log_prob_fn(sde)(x, torch.full((5,), 0.5))
    assert lp.shape == (5,) and lp.dtype == dtype


def test_float32_score_agrees_with_float64():
    gmm, sde = mixture(16), sd.VPSDE()
    x = gmm.marginal(sde, 0.1).sample(100, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref = gmm.score_fn(sde)(x, 0.1)
    got = gmm.score_fn(sde)(x.float(), 0.1)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_reproducible_sampling():
    gmm = mixture(2)
    a = gmm.sample(10, generator=torch.Generator().manual_seed(7))
    b = gmm.sample(10, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(3), torch.ones(3, 1)), r"means must be \(K, d\), got shape \(3,\)"),
        ((torch.zeros(2, 3), torch.ones(2, 2)), r"covs must be \(2, 3, 3\) or \(2, 3\), got shape \(2, 2\)"),
        ((torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])), r"covs must be symmetric"),
        ((torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]])), r"semi-definite, smallest eigenvalue -1"),
        ((torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([1.0, -1.0])), r"non-negative and not all zero"),
        ((torch.zeros(2, 2), torch.ones(2, 2), torch.ones(3)), r"weights must be \(2,\), got shape \(3,\)"),
        ((torch.full((1, 2), float("nan")), torch.ones(1, 2)), r"means must be finite"),
        ((torch.zeros(1, 4), torch.ones(1, 4), None, (3, 3)), r"event_shape \(3, 3\) does not hold d=4 values"),
    ],
)
def test_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(*args)


def test_bad_inputs():
    gmm = mixture(2)
    with pytest.raises(ValueError, match=r"x must be \(batch, 2\), got shape \(5, 3\)"):
        gmm.log_prob(torch.zeros(5, 3))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got torch.int64"):
        gmm.log_prob(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"n must be a positive int, got 0"):
        gmm.sample(0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\], got 2.0"):
        gmm.marginal(sd.VPSDE(), 2.0)
    with pytest.raises(TypeError, match=r"t must be a number or a tensor, got str '0.5'"):
        gmm.marginal(sd.VPSDE(), "0.5")


def test_per_sample_times_match_one_marginal_per_sample(sde):
    """log_prob_fn and score_fn with a (batch,) t: sample i sees p_{t_i}, the mixture that
    marginal(sde, t_i) builds (anisotropic covariances, so mixing up the times shows)."""
    gmm = mixture(3)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.05, 0.3, 0.5, 0.6, 1.0], dtype=torch.float64) * sde.T
    log_p, score = gmm.log_prob_fn(sde)(x, t), gmm.score_fn(sde)(x, t)
    for i in range(5):
        p_i = gmm.marginal(sde, t[i])
        torch.testing.assert_close(log_p[i : i + 1], p_i.log_prob(x[i : i + 1]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(score[i : i + 1], p_i.score(x[i : i + 1]), rtol=1e-10, atol=1e-12)


def test_marginal_takes_a_0d_tensor_time():
    gmm, sde = mixture(2), sd.VPSDE()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gmm.marginal(sde, torch.tensor(0.5)).log_prob(x), gmm.marginal(sde, 0.5).log_prob(x))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda g: g.marginal(sd.VPSDE(), torch.tensor([0.5, 0.6])), ValueError,
         r"marginal takes one time \(a number or a 0-d tensor\), got a tensor of shape \(2,\): "
         r"for per-sample times use log_prob_fn\(sde\)\(x, t\) or score_fn"),
        (lambda g: g.marginal(sd.VPSDE(), torch.tensor([0.5, 0.6, 0.7])), ValueError,
         r"marginal takes one time .* shape \(3,\)"),
        (lambda g: g.marginal(sd.VPSDE(), torch.tensor(2.0)), ValueError,
         r"t must lie in \[0, T=1.0\], got values in \[2.0, 2.0\]"),
        (lambda g: g.score_fn(sd.VPSDE())(torch.zeros(4, 2), 2.0), ValueError, r"t must lie in \[0, T=1.0\], got 2.0"),
        (lambda g: g.log_prob_fn(sd.VPSDE())(torch.zeros(4, 2), float("nan")), ValueError,
         r"t must lie in \[0, T=1.0\], got nan"),
        (lambda g: g.denoiser_fn(sd.VESDE())(torch.zeros(4, 2), -1.0), ValueError,
         r"t must lie in \[0, T=1.0\], got -1.0"),
        (lambda g: g.score_fn(sd.VPSDE())(torch.zeros(4, 2), "1"), TypeError,
         r"t must be a number or a tensor, got str '1'"),
        (lambda g: g.score_fn(sd.VPSDE())(torch.zeros(4, 2, dtype=torch.complex64), 0.5), TypeError,
         r"x must be a floating-point tensor, got torch.complex64"),
        (lambda g: g.score_fn(PlainOU()), TypeError, r"the perturbed mixture needs a LinearSDE .* got PlainOU"),
        (lambda g: g.marginal(PlainOU(), 0.5), TypeError, r"needs a LinearSDE .* got PlainOU"),
        (lambda g: g.sample(4, generator=42), TypeError, r"generator must be a torch.Generator .* got int 42"),
        (lambda g: g.sample(4, dtype=torch.long), TypeError,
         r"dtype must be a real floating-point torch.dtype .* got torch.int64"),
        (lambda g: g.sample(4, device="gpu"), ValueError, r"device must name a torch device .* got 'gpu'"),
    ],
)  # fmt: skip
def test_bad_times_and_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(mixture(2))
