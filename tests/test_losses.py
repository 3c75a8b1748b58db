import math

import pytest
import torch
from scipy.integrate import quad

import scoresde as sd

from .conftest import mixture
from .test_sde import OrnsteinUhlenbeck


def gaussian():
    mu = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    cov = torch.tensor([[[0.6, 0.2], [0.2, 0.4]]], dtype=torch.float64)
    return sd.GaussianMixture(mu, cov)


def irreducible(sde, gmm, t):
    r"""E ||sigma s* + eps||^2 at time t for Gaussian data: d - sigma^2 tr(C_t^{-1})
    (the Fisher information of N(., C_t) is tr C_t^{-1})."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = sde.alpha(tt), sde.sigma(tt)
    c = a**2 * gmm.covs[0] + s**2 * torch.eye(2, dtype=torch.float64)
    return (2 - s**2 * torch.linalg.inv(c).trace()).item()


def chunked(loss_fn, chunks):
    values = torch.tensor([loss_fn(i).item() for i in range(chunks)])
    return values.mean().item(), (values.std() / math.sqrt(chunks)).item()


@pytest.mark.parametrize("t", [0.01, 0.2, 0.7])
def test_exact_score_attains_the_irreducible_loss(sde, t):
    gmm = gaussian()
    exact = gmm.score_fn(sde)
    t = t * sde.T
    g = torch.Generator().manual_seed(0)
    n = 4000

    def loss(_):
        x0 = gmm.sample(n, generator=g, dtype=torch.float64)
        return sd.dsm_loss(exact, sde, x0, t=torch.full((n,), t, dtype=torch.float64), reduction="sum", generator=g)

    mean, se = chunked(loss, 20)
    assert abs(mean - irreducible(sde, gmm, t)) < 4 * se


def test_perturbing_the_exact_score_raises_the_loss():
    sde, gmm = sd.VPSDE(), mixture(2)
    exact = gmm.score_fn(sde)
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(20_000, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(len(x0), generator=g, dtype=torch.float64)
    base = sd.dsm_loss(exact, sde, x0, t=t, noise=noise)
    direction = torch.tensor([1.0, -0.5], dtype=torch.float64)
    for delta in (0.2, -0.2):
        perturbed = sd.dsm_loss(lambda x, tt, d=delta: exact(x, tt) + d * direction, sde, x0, t=t, noise=noise)
        # the increase is delta^2 E[sigma^2 |h|^2]/d plus a cross term of mean zero
        expected = delta**2 * (sde.sigma(t).square().mean() * direction.square().sum() / 2).item()
        assert perturbed > base
        assert (perturbed - base).item() == pytest.approx(expected, rel=0.2)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(sigma_max=10.0)], ids=["vp", "subvp", "ve"])
def test_importance_sampled_likelihood_weighting_is_unbiased(sde):
    """At the exact score, E_t[g^2 E||s* + eps/sigma||^2] with t ~ U[t_min, T] (by quadrature)
    equals the importance-sampled estimate (within 4 standard errors)."""
    gmm = gaussian()
    exact = gmm.score_fn(sde)

    def integrand(log_t):
        t = math.exp(log_t)
        tt = torch.tensor(t, dtype=torch.float64)
        ratio = (sde.diffusion(tt) / sde.sigma(tt)).square().item()
        return ratio * irreducible(sde, gmm, t) * t  # dt = t dlog t

    ref = quad(integrand, math.log(sde.t_min), math.log(sde.T), limit=200)[0] / (sde.T - sde.t_min)
    g = torch.Generator().manual_seed(2)

    def loss(_):
        x0 = gmm.sample(4000, generator=g, dtype=torch.float64)
        return sd.dsm_loss(exact, sde, x0, weighting="likelihood", time_sampling="importance", reduction="sum",
                           generator=g)

    mean, se = chunked(loss, 20)
    assert abs(mean - ref) < 4 * se
    assert se < 0.05 * ref  # importance sampling makes this cheap to estimate


def test_weightings_relate_by_their_factors():
    sde, gmm = sd.SubVPSDE(), mixture(2)
    g = torch.Generator().manual_seed(3)
    x0 = gmm.sample(1, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3], dtype=torch.float64)
    model = gmm.score_fn(sd.VPSDE())  # any score function
    base = sd.dsm_loss(model, sde, x0, t=t, noise=noise)
    s, g2 = sde.sigma(t), sde.diffusion(t).square()
    torch.testing.assert_close(sd.dsm_loss(model, sde, x0, t=t, noise=noise, weighting="none"), base / s[0] ** 2)
    torch.testing.assert_close(
        sd.dsm_loss(model, sde, x0, t=t, noise=noise, weighting="likelihood"), base * g2[0] / s[0] ** 2
    )
    torch.testing.assert_close(sd.dsm_loss(model, sde, x0, t=t, noise=noise, reduction="sum"), 2 * base)


def test_sampled_times_lie_in_range(sde):
    from scoresde.losses import sample_time

    for importance in (False, True):
        t = sample_time(sde, 10_000, importance=importance, generator=torch.Generator().manual_seed(0))
        assert t.min() >= sde.t_min and t.max() <= sde.T


def test_loss_is_differentiable_and_float64():
    net = sd.nn.MLP(dim=2).double()
    model = sd.EpsilonScore(net, sd.VPSDE())
    loss = sd.dsm_loss(model, sd.VPSDE(), torch.randn(8, 2, dtype=torch.float64))
    assert loss.dtype == torch.float64 and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"weighting": "l2"}, ValueError, r"weighting must be one of .* got 'l2'"),
        ({"time_sampling": "sobol"}, ValueError, r"time_sampling must be one of .* got 'sobol'"),
        ({"time_sampling": "importance"}, ValueError, r"is for weighting='likelihood', got weighting='sigma2'"),
        ({"reduction": "max"}, ValueError, r"reduction must be 'mean' or 'sum', got 'max'"),
        ({"noise": torch.zeros(4, 3)}, ValueError, r"noise shape \(4, 3\) differs from x0 shape \(4, 2\)"),
        ({"t": torch.full((4,), 2.0)}, ValueError, r"t must lie in \[0, T=1.0\]"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4, 2), **kwargs)


def test_bad_sde_and_data():
    with pytest.raises(TypeError, match=r"dsm_loss needs a LinearSDE .* got OrnsteinUhlenbeck"):
        sd.dsm_loss(lambda x, t: x, OrnsteinUhlenbeck(), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x0 must be \(batch, \*event\), got shape \(4,\)"):
        sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4))


class Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sd.dsm_loss(sd.EpsilonScore(Zero(), sd.VPSDE()), sd.VESDE(), torch.zeros(4, 2)), ValueError,
         r"the model converts its output with VPSDE\(.*\) but dsm_loss got sde=VESDE\(sigma_min=0.01, "
         r"sigma_max=50.0.*\): train a score model against the SDE it was built with"),
        (lambda: sd.dsm_loss(sd.EpsilonScore(Zero(), sd.VPSDE()), sd.VPSDE(beta_max=10.0), torch.zeros(4, 2)),
         ValueError, r"with VPSDE\(beta_min=0.1, beta_max=20.0.* got sde=VPSDE\(beta_min=0.1, beta_max=10.0"),
        (lambda: sd.dsm_loss(sd.DataScore(Zero(), sd.VPSDE()), sd.SubVPSDE(), torch.zeros(4, 2)), ValueError,
         r"got sde=SubVPSDE"),
        (lambda: sd.dsm_loss(lambda x, t: x[:, :1], sd.VPSDE(), torch.zeros(4, 2)), ValueError,
         r"the model returned \(4, 1\) for x of shape \(4, 2\); it must match x"),
        (lambda: sd.dsm_loss(lambda x, t: x.sum(), sd.VPSDE(), torch.zeros(4, 2)), ValueError,
         r"the model returned \(\) for x of shape \(4, 2\)"),
        (lambda: sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4, 2, dtype=torch.long)), TypeError,
         r"x0 must be a floating-point tensor, got dtype torch.int64"),
        (lambda: sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4, 2, dtype=torch.complex64)), TypeError,
         r"x0 must be a floating-point tensor, got dtype torch.complex64"),
        (lambda: sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4, 2), noise=torch.zeros(4, 2, dtype=torch.long)),
         TypeError, r"noise must be a floating-point tensor, got dtype torch.int64"),
        (lambda: sd.dsm_loss(lambda x, t: x, sd.VPSDE(), torch.zeros(4, 2), generator=42), TypeError,
         r"generator must be a torch.Generator .* got int 42"),
    ],
)  # fmt: skip
def test_mismatched_models_and_inputs_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_model_passes_with_an_equal_sde_rebuilt_elsewhere():
    """The same kernel from another object (e.g. rebuilt from a checkpoint's config) is accepted,
    with the same loss as the model's own SDE."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    t = torch.rand(8, generator=g) * 0.9 + 0.05
    own = sd.VPSDE(schedule="cosine")
    model = sd.EpsilonScore(Zero(), own)
    same = sd.dsm_loss(model, own, x0, t=t, noise=noise)
    torch.testing.assert_close(sd.dsm_loss(model, sd.VPSDE(schedule="cosine"), x0, t=t, noise=noise), same)
