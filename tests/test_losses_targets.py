"""DDPM's eps / x0 / v losses as targets of dsm_loss: the prediction errors they name, their weights
relative to L_simple, and their shared minimiser (the exact score) on a mixture."""

import math

import pytest
import torch

import scoresde as sd
from scoresde.losses import eps_residual, target_weight
from tests.conftest import overlapping_mixture_2d

D64 = torch.float64


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(0.01, 20.0), sd.SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_targets_are_the_prediction_errors(sde):
    gmm = overlapping_mixture_2d()
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(256, generator=g, dtype=D64)
    t = 0.05 + 0.9 * torch.rand(256, generator=g, dtype=D64)
    noise = torch.randn(x0.shape, generator=g, dtype=D64)
    score = gmm.score_fn(sd.VPSDE(beta_min=0.3, beta_max=9.0))  # any model: not the minimiser
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x_t = a * x0 + s * noise
    sc = score(x_t, t)
    eps_hat, x0_hat = -s * sc, (x_t + s**2 * sc) / a
    v_hat, v = a * eps_hat - s * x0_hat, a * noise - s * x0
    want = {
        "eps": (eps_hat - noise).square().mean(1),
        "x0": (x0_hat - x0).square().mean(1),
        "v": (v_hat - v).square().mean(1),
    }
    for target, per_sample in want.items():
        got = sd.dsm_loss(score, sde, x0, target=target, t=t, noise=noise)
        assert got.item() == pytest.approx(per_sample.mean().item(), rel=1e-10), target
    assert sd.dsm_loss(score, sde, x0, t=t, noise=noise).item() == pytest.approx(want["eps"].mean().item(), rel=1e-12)


def test_weights_relative_to_l_simple():
    vp = sd.VPSDE()
    t = torch.linspace(0.01, 1.0, 50, dtype=D64)
    lam = vp.log_snr(t)
    assert torch.allclose(target_weight(vp, t, "x0"), (-lam).exp(), rtol=1e-10)
    assert torch.allclose(target_weight(vp, t, "v"), 1 + (-lam).exp(), rtol=1e-10)  # VP: alpha^2 + sigma^2 = 1


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_every_target_is_stationary_at_the_exact_score(target):
    """L(s + delta h) is quadratic in delta; its slope at delta = 0, 2 E[w r . sigma h], is zero exactly
    when s is the minimiser. At the exact score the paired estimate of the slope is within 4 standard
    errors of 0 for each target; at a wrong score it is far from 0."""
    vp, gmm = sd.VPSDE(), overlapping_mixture_2d()
    n = 40000
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(n, generator=g, dtype=D64)
    t = 0.02 + 0.5 * torch.rand(n, generator=g, dtype=D64)  # where x0 and v weights stay moderate (< 10)
    noise = torch.randn(x0.shape, generator=g, dtype=D64)
    x_t = vp.alpha(t)[:, None] * x0 + vp.sigma(t)[:, None] * noise
    direction = torch.tanh(x_t.flip(1))  # a perturbation h(x_t) the minimiser must be stationary to
    weight = target_weight(vp, t, target)

    def slope(score_fn):
        r = vp.sigma(t)[:, None] * score_fn(x_t, t) + noise
        per_sample = 2 * weight * (r * vp.sigma(t)[:, None] * direction).sum(1)
        return per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)

    mean, se = slope(gmm.score_fn(vp))
    assert abs(mean) < 4 * se, (mean, se)
    wrong = sd.GaussianMixture(gmm.means + 0.5, gmm.covs, gmm.weights)
    mean, se = slope(wrong.score_fn(vp))
    assert abs(mean) > 10 * se, (mean, se)
    # and the loss itself agrees with the per-sample residuals it is built from
    err = eps_residual(gmm.score_fn(vp), vp, x0, t, noise, "mean")
    loss = sd.dsm_loss(gmm.score_fn(vp), vp, x0, target=target, t=t, noise=noise)
    assert loss.item() == pytest.approx((weight * err).mean().item(), rel=1e-10)


def test_target_errors():
    vp = sd.VPSDE()
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"target must be one of .* got 'score'"):
        sd.dsm_loss(lambda x, t: x, vp, x0, target="score")
    with pytest.raises(ValueError, match=r"give weighting or target, not both .* weighting='likelihood'"):
        sd.dsm_loss(lambda x, t: x, vp, x0, target="x0", weighting="likelihood")
