"""DDPM's schedule, posterior and samplers, DDIM-eta and annealed Langevin against exact answers."""

import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.ddpm import (
    DiscreteSchedule,
    ncsn_sigmas,
    sample_annealed_langevin,
    sample_ddim,
    sample_ddpm,
)
from tests.conftest import overlapping_mixture_2d

D64 = torch.float64


def test_linear_and_cosine_tables():
    s = DiscreteSchedule.linear()
    assert (
        s.num_steps == 1000 and s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    )
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0), rtol=1e-12, atol=0)
    c = DiscreteSchedule.cosine()
    u = torch.arange(1001, dtype=D64) / 1000
    f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    unclipped = c.betas < 0.999
    assert torch.allclose(c.alpha_bar[unclipped], (f[1:] / f[0])[unclipped], rtol=1e-9, atol=1e-15)
    assert c.betas.max().item() == pytest.approx(0.999) and unclipped.sum() >= 990


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) against the product of q(x_{t-1} | x_0) and q(x_t | x_{t-1}), every t."""
    s = DiscreteSchedule.cosine(200)
    g = torch.Generator().manual_seed(0)
    steps = torch.arange(2, 201)
    x_t, x0 = torch.randn(len(steps), 3, generator=g, dtype=D64), torch.randn(len(steps), 3, generator=g, dtype=D64)
    i = steps - 1
    ab_prev, alpha, beta = s.alpha_bar[i - 1], s.alphas[i], s.betas[i]
    precision = 1 / (1 - ab_prev) + alpha / beta
    mean = ab_prev.sqrt()[:, None] * x0 / (1 - ab_prev)[:, None] + alpha.sqrt()[:, None] * x_t / beta[:, None]
    mean = mean / precision[:, None]
    got_mean, got_var, got_logvar = s.posterior(x_t, x0, steps)
    assert torch.allclose(got_mean, mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_var, 1 / precision, rtol=1e-10, atol=0)
    assert torch.allclose(got_logvar, (1 / precision).log(), rtol=1e-10)
    # t = 1: the posterior is the point mass at x0; its clipped log-variance is step 2's
    mean1, var1, logvar1 = s.posterior(x_t[:1], x0[:1], 1)
    assert torch.allclose(mean1, x0[:1], atol=1e-14) and var1.item() == 0
    assert logvar1.item() == pytest.approx(s.posterior_variance[1].log().item())


def test_closed_form_marginal_matches_the_simulated_chain():
    s = DiscreteSchedule.linear(100, 0.1 / 100, 20 / 100)
    g = torch.Generator().manual_seed(1)
    n = 20000
    x = 0.7 + 0.5 * torch.randn(n, 1, generator=g, dtype=D64)
    x0 = x.clone()
    for t in range(1, 101):
        x = s.alphas[t - 1].sqrt() * x + s.betas[t - 1].sqrt() * torch.randn(n, 1, generator=g, dtype=D64)
        if t in (10, 50, 100):
            mean, std = s.marginal(x0, t)
            want_mean, want_var = mean.mean().item(), (0.25 * s.alpha_bar[t - 1] + std[0] ** 2).item()
            assert abs(x.mean().item() - want_mean) < 4 * math.sqrt(want_var / n)
            assert abs(x.var().item() - want_var) < 4 * want_var * math.sqrt(2 / n)


def test_chain_marginal_error_is_first_order_in_n():
    """alpha-bar of the linear chain with beta_i = beta(t_i)/N vs the VP SDE's alpha(t)^2 at t = 1/2."""
    vp = sd.VPSDE()
    sizes = np.array([50, 100, 200, 400, 800, 1600])
    errors = []
    for n in sizes:
        s = DiscreteSchedule.linear(int(n), 0.1 / n, 20 / n)
        errors.append(abs(s.log_alpha_bar[n // 2 - 1].item() - 2 * vp.log_alpha(0.5).item()))
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.05), (slope, errors)


@pytest.mark.parametrize("make", [DiscreteSchedule.linear, DiscreteSchedule.cosine,
                                  lambda: DiscreteSchedule.from_sde(sd.VESDE(0.01, 20.0), 300)])  # fmt: skip
def test_step_time_round_trip_and_matching_snr(make):
    s = make()
    steps = torch.arange(1, s.num_steps + 1)
    assert torch.equal(s.step_index(s.time(steps)), steps)
    inside = s.times < s.sde.T  # times clamped at T match only up to the clamp
    lam = s.sde.log_snr(s.times[inside])
    assert torch.allclose(lam, s.log_snr[inside], rtol=1e-7, atol=1e-7)


def test_from_sde_is_the_vp_sde_at_its_times():
    vp = sd.VPSDE()
    s = DiscreteSchedule.from_sde(vp, 250)
    assert torch.allclose(s.times, torch.arange(1, 251, dtype=D64) / 250, rtol=0, atol=1e-14)
    assert torch.allclose(s.alpha_bar, vp.alpha(s.times) ** 2, rtol=1e-12)


def test_ddpm_step_is_the_vp_ancestral_step():
    """sample_ddpm on from_sde(VP) = sample_sde(method="ancestral") on the same times, same noise."""
    vp, gmm = sd.VPSDE(), overlapping_mixture_2d()
    s = DiscreteSchedule.from_sde(vp, 40)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=D64)
    ours = sample_ddpm(gmm.score_fn(vp), s, x_init=z, generator=torch.Generator().manual_seed(4))
    grid = torch.cat([s.times.flip(0), torch.zeros(1, dtype=D64)])
    lib = sd.sample_sde(gmm.score_fn(vp), vp, x_init=z, method="ancestral", timesteps=grid, num_steps=None,
                        generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert ours.nfe == lib.nfe == 40
    assert torch.allclose(ours.x, lib.x, rtol=0, atol=1e-10)


def test_ddim_eta0_is_the_library_ddim_solver():
    gmm = overlapping_mixture_2d()
    s = DiscreteSchedule.linear()
    steps = s.subsequence(25)
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(5), dtype=D64)
    ours = sample_ddim(gmm.score_fn(s.sde), s, x_init=z, steps=steps, eta=0.0)
    lib = sd.sample_ode(gmm.score_fn(s.sde), s.sde, x_init=z, method="ddim", timesteps=s.time(steps), denoise=True)
    assert ours.nfe == lib.nfe == 25
    assert torch.allclose(ours.x, lib.x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("limits", [{}, {"clip_x0": (-1.5, 1.5)}, {"dynamic_threshold": 0.9, "clip_x0": (-2, 2)}])
def test_ddim_eta1_full_sequence_is_ddpm_with_beta_tilde(limits):
    gmm = overlapping_mixture_2d()
    s = DiscreteSchedule.linear(100, 0.1 / 100, 20 / 100)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(6), dtype=D64)
    ddim = sample_ddim(gmm.score_fn(s.sde), s, x_init=z, num_steps=100, eta=1.0,
                       generator=torch.Generator().manual_seed(7), **limits)  # fmt: skip
    ddpm = sample_ddpm(gmm.score_fn(s.sde), s, x_init=z, variance="beta_tilde",
                       generator=torch.Generator().manual_seed(7), **limits)  # fmt: skip
    assert torch.allclose(ddim.x, ddpm.x, rtol=0, atol=1e-9)


def test_clipping_and_dynamic_thresholding_bound_the_prediction():
    from scoresde.ddpm import _limit_x0

    x0 = torch.tensor([[3.0, -0.5, 0.2, 0.1], [0.5, 0.2, -0.1, 0.0]], dtype=D64)
    assert torch.equal(_limit_x0(x0, (-1.0, 1.0), None), x0.clamp(-1, 1))
    out = _limit_x0(x0, (-1.0, 1.0), 0.5)
    q = torch.quantile(x0[0].abs(), 0.5)  # 0.35 < 1: the second row is untouched, the first only clipped
    assert torch.allclose(out, x0.clamp(-1, 1)) and q < 1
    out = _limit_x0(x0, (-1.0, 1.0), 1.0)  # quantile 1 = max |x0| = 3: rescale row 0 by 1/3
    assert torch.allclose(out[0], x0[0] / 3) and torch.allclose(out[1], x0[1])


def _errors_in_se(x, gmm):
    """Errors of the mean, covariance and mode weights of samples ``x`` against the mixture's, each in
    units of its Monte-Carlo standard error: ``(mean, cov, weight)`` maxima."""
    n = x.shape[0]
    mean, cov = gmm.mean.to(x.dtype), gmm.covariance.to(x.dtype)
    centred = x - mean
    z_mean = centred.mean(0) / (centred.var(0) / n).sqrt()
    prods = centred[:, :, None] * centred[:, None, :]
    z_cov = (prods.mean(0) - cov) / (prods.var(0) / n).sqrt()
    # the fraction nearest component 0 (not its weight: the components overlap), from 10^6 exact draws
    p = (gmm.component(gmm.sample(10**6, generator=torch.Generator().manual_seed(0))) == 0).double().mean().item()
    z_weight = ((gmm.component(x) == 0).double().mean().item() - p) / math.sqrt(p * (1 - p) / n)
    return z_mean.abs().max().item(), z_cov.abs().max().item(), abs(z_weight)


N_SAMPLES = 4000  # mean SE ~ 0.017, covariance SE ~ 0.02-0.03 on this mixture


def test_exact_score_ddpm_reproduces_the_mixture():
    gmm = overlapping_mixture_2d()
    s = DiscreteSchedule.linear()
    for variance in ("beta_tilde", "beta"):
        x = sample_ddpm(gmm.score_fn(s.sde), s, (N_SAMPLES, 2), variance=variance,
                        generator=torch.Generator().manual_seed(8)).x  # fmt: skip
        assert max(_errors_in_se(x, gmm)) < 4, variance


def test_exact_score_ddim_reproduces_the_mixture():
    """250 steps: within Monte-Carlo error for every eta. 50 steps: mean and mode weights within it, the
    covariance low by up to 11 % of the scale for eta 0 and 0.5, 17 % for eta 1 (measured with 16000
    samples: 6-9 SE for eta 0 and 0.5, 13-15 SE for eta 1; a quadratic sub-sequence does no better);
    5 steps: far off (over 10 SE)."""
    gmm = overlapping_mixture_2d()
    s = DiscreteSchedule.linear()

    def run(num_steps, eta):
        return sample_ddim(gmm.score_fn(s.sde), s, (N_SAMPLES, 2), num_steps=num_steps, eta=eta,
                           generator=torch.Generator().manual_seed(9)).x  # fmt: skip

    cov = gmm.covariance.float()
    for eta in (0.0, 0.5, 1.0):
        assert max(_errors_in_se(run(250, eta), gmm)) < 4, eta
        x = run(50, eta)
        z_mean, _, z_weight = _errors_in_se(x, gmm)
        relative = ((torch.cov(x.T) - cov).abs() / cov.diag().sqrt().outer(cov.diag().sqrt())).max().item()
        assert z_mean < 4 and z_weight < 4 and relative < (0.13 if eta < 1 else 0.2), (eta, z_mean, z_weight, relative)
    assert _errors_in_se(run(5, 1.0), gmm)[1] > 10


def test_annealed_langevin_reproduces_the_mixture():
    """Song & Ermon's sigma_L = 0.01 and T = 100 steps a level; eps = 5e-5 (their 2e-5 leaves the
    variance ~3 % high here: the small steps at low noise do not mix away the higher levels' excess)."""
    gmm = overlapping_mixture_2d()
    ve = sd.VESDE(0.01, 50.0)
    x = sample_annealed_langevin(gmm.score_fn(ve), ve, (N_SAMPLES, 2), sigmas=ncsn_sigmas(20.0, 0.01, 10),
                                 steps_per_level=100, step_size=5e-5, denoise=True,
                                 generator=torch.Generator().manual_seed(10))  # fmt: skip
    assert x.nfe == 10 * 100 + 1
    assert max(_errors_in_se(x.x, gmm)) < 4


def test_annealed_langevin_under_vp_is_the_same_chain():
    """The NCSN frame makes the sampler SDE-free: VP's score at the matching times gives VE's run."""
    gmm = overlapping_mixture_2d()
    ve, vp = sd.VESDE(0.01, 50.0), sd.VPSDE()
    kw = {"sigmas": ncsn_sigmas(5.0, 0.05, 4), "steps_per_level": 5, "x_init": torch.ones(8, 2, dtype=D64)}
    a = sample_annealed_langevin(gmm.score_fn(ve), ve, generator=torch.Generator().manual_seed(0), **kw)
    b = sample_annealed_langevin(gmm.score_fn(vp), vp, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.allclose(a.x, b.x, atol=1e-8)


SCHEDULE = DiscreteSchedule.linear(30, 0.005, 0.3)
VE = sd.VESDE(0.01, 50.0)


def _ddpm(gmm, **kw):
    return sample_ddpm(gmm.score_fn(SCHEDULE.sde), SCHEDULE, dynamic_threshold=0.9, clip_x0=(-3, 3), **kw)


def _ddim(gmm, **kw):
    return sample_ddim(gmm.score_fn(SCHEDULE.sde), SCHEDULE, num_steps=7, eta=0.5, **kw)


def _ncsn(gmm, **kw):
    sigmas = ncsn_sigmas(5.0, 0.05, 4)
    return sample_annealed_langevin(gmm.score_fn(VE), VE, sigmas=sigmas, steps_per_level=5, denoise=True, **kw)


DISCRETE_RUNS = {"ddpm": _ddpm, "ddim_eta0.5": _ddim, "ncsn": _ncsn}


@pytest.mark.parametrize("sampler", list(DISCRETE_RUNS))
def test_sample_i_is_the_same_for_batch_sizes_1_7_and_64(sampler):
    """Per-sample seeds: sample i of a batch of 64 is bit for bit sample i of a batch [i] or of 7 others
    (the start, every draw, per-sample dynamic thresholding); another seed gives other samples."""
    gmm, run = overlapping_mixture_2d(), DISCRETE_RUNS[sampler]
    whole = run(gmm, shape=(64, 2), seed=11).x
    for indices in ([33], list(range(20, 27))):
        part = run(gmm, shape=(len(indices), 2), seed=11, sample_indices=indices).x
        assert torch.equal(part, whole[indices])
    assert not torch.equal(run(gmm, shape=(64, 2), seed=12).x, whole)
    assert torch.equal(run(gmm, shape=(64, 2), seed=11).x, whole)


def test_generator_runs_are_unchanged_by_the_noise_source():
    """With a generator the draws are torch's, as before per-sample seeds: the start is randn(shape)."""
    gmm = overlapping_mixture_2d()
    a = _ddim(gmm, shape=(16, 2), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z = torch.randn((16, 2), generator=g)  # the start's draw, then the same generator for the steps
    assert torch.equal(_ddim(gmm, x_init=z, generator=g).x, a.x)


def test_samplers_keep_dtype_and_event_shape():
    gmm = sd.GaussianMixture(torch.zeros(1, 6), torch.ones(1, 6), event_shape=(1, 2, 3))
    s = DiscreteSchedule.linear(20, 0.005, 0.5)
    for dtype in (torch.float32, D64):
        for fn in (sample_ddpm, sample_ddim):
            r = fn(gmm.score_fn(s.sde), s, (5, 1, 2, 3), dtype=dtype, generator=torch.Generator().manual_seed(0))
            assert r.x.shape == (5, 1, 2, 3) and r.x.dtype == dtype and torch.isfinite(r.x).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: DiscreteSchedule([0.1, 1.0]), r"betas must lie in \(0, 1\), got beta_2 = 1.0"),
        (lambda: DiscreteSchedule([0.1, -0.2]), r"beta_2 = -0.2"),
        (lambda: DiscreteSchedule([0.1, 1e-300]), r"strictly decreasing alpha-bar: it stops decreasing at step 2"),
        (lambda: sample_ddim(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), eta=-0.1), "eta must be .* -0.1"),
        (
            lambda: sample_ddim(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), steps=[5, 7]),
            r"strictly decreasing .* got \[5, 7\]",
        ),
        (
            lambda: sample_ddim(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), steps=[11, 3]),
            r"\[1, N=10\], got values in \[3, 11\]",
        ),
        (lambda: sample_ddim(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), steps=[3, 0]), r"\[0, 3\]"),
        (
            lambda: sample_ddpm(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), variance="large"),
            "variance must be one of .* 'large'",
        ),
        (
            lambda: sample_ddpm(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), clip_x0=(1, -1)),
            r"clip_x0 .*\(1, -1\)",
        ),
        (lambda: sample_ddpm(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), dynamic_threshold=1.5), "1.5"),
        (lambda: ncsn_sigmas(0.01, 1.0, 5), "sigma_min < sigma_max"),
        (
            lambda: sample_annealed_langevin(lambda x, t: x, sd.VESDE(0.01, 5.0), (2, 2), sigmas=[50.0, 1.0]),
            "sigmas\\[0\\]=50.0 exceeds",
        ),
        (
            lambda: sample_annealed_langevin(lambda x, t: x, sd.VESDE(), (2, 2), sigmas=[1.0, 2.0]),
            "strictly decreasing",
        ),
        (
            lambda: sample_ddpm(lambda x, t: x, SCHEDULE, (2, 2), seed=1, generator=torch.Generator()),
            "give generator or seed",
        ),
        (
            lambda: sample_ddim(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), sample_indices=[0, 1]),
            "need a seed",
        ),
        (
            lambda: sample_annealed_langevin(lambda x, t: x, sd.VESDE(), (2, 2), seed=1, sample_indices=[0, 1, 2]),
            "3 sample indices for a batch of 2",
        ),
        (lambda: sample_ddpm(lambda x, t: x, DiscreteSchedule.linear(10), (2, 2), seed=-1), r"seed must be an int"),
    ],
)
def test_errors_name_the_value(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
