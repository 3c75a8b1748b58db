"""Likelihoods on a designed grid (scoresde.likelihood_grid, scoresde.solvers.embedded): the
embedded pair's order, per-sample error control by refinement, independence of batch-mates,
against exact log-densities of Gaussian mixtures."""

import itertools
import math

import pytest
import torch

import scoresde as sd
from scoresde.solvers.embedded import solve_on_grid
from tests.conftest import SDE_FACTORIES, separated_mixture_2d


def _field(u, y, constants):
    (v,) = y
    return (torch.cos(u) * v,)  # y = y0 exp(sin u)


def test_grid_steps_converge_at_order_five_and_the_estimate_at_order_five():
    y0 = (torch.tensor([[1.0], [2.0]], dtype=torch.float64),)
    errors, ratios = [], []
    for steps in (16, 32, 64):
        clock = torch.linspace(0, 3, steps + 1, dtype=torch.float64)
        out = solve_on_grid(_field, y0, clock, rtol=1e-30, atol=1e-12, refine=False)
        exact = y0[0] * math.exp(math.sin(3.0))
        errors.append((out.states[0][-1] - exact).abs().max().item())
        ratios.append(out.step_ratios.max().item())
    for a, b in itertools.pairwise(errors):
        assert 4.7 < math.log2(a / b) < 5.5, errors  # order 5 per halving (measured 5.20, 5.07)
    for a, b in itertools.pairwise(ratios):
        assert 4.8 < math.log2(a / b) < 5.2, ratios  # the local error estimate as h^5 (5.01, 5.02)


def test_refinement_holds_every_sample_to_the_tolerance_on_a_coarse_grid():
    y0 = (torch.linspace(0.5, 3.0, 6, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -1.0]]),)
    clock = torch.tensor([0.0, 3.0], dtype=torch.float64)  # one step over the whole interval
    exact = y0[0] * math.exp(math.sin(3.0))
    tols = {"rtol": 1e-14, "atol": 1e-8}  # an absolute tolerance: the larger |y|, the harder
    coarse = solve_on_grid(_field, y0, clock, refine=False, **tols)
    refined = solve_on_grid(_field, y0, clock, **tols)
    assert coarse.step_ratios.item() > 1  # the one step misses the tolerance ...
    assert (refined.states[0][-1] - exact).abs().max() < 1e-6 < (coarse.states[0][-1] - exact).abs().max()
    # ... and each sample was refined as far as its own error needed (larger |y|: more steps)
    evals = refined.sample_evaluations
    assert (evals > 7).all() and (evals[1:] >= evals[:-1]).all() and evals[-1] > evals[0]
    assert evals.max() == refined.calls < evals.sum()  # the refined samples share their calls


def test_refinement_gives_up_with_a_clear_error():
    def blows_up(u, y, constants):
        return (y[0] / (1.5 - u) ** 2,)  # singular inside the interval

    y0 = (torch.ones(3, 1, dtype=torch.float64),)
    with pytest.raises(sd.solvers.NonFiniteError, match=r"still miss rtol=1e-08.*after 4 halvings"):
        solve_on_grid(blows_up, y0, torch.tensor([0.0, 3.0], dtype=torch.float64), rtol=1e-8, atol=1e-8, max_depth=4)


@pytest.fixture(scope="module", params=["vp", "ve"])
def mixture_problem(request):
    sde = SDE_FACTORIES[request.param]()
    gmm = separated_mixture_2d()
    pilot = gmm.sample(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = gmm.sample(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact_prior = lambda z: gmm.log_prob_fn(sde)(z, sde.T)  # noqa: E731 (no prior mismatch)
    exact = gmm.log_prob_fn(sde)(x, sde.t_min)
    return sde, gmm.score_fn(sde), pilot, x, exact_prior, exact


@pytest.mark.parametrize("tol", [1e-4, 1e-6])
def test_grid_likelihood_matches_the_exact_log_density_per_sample(mixture_problem, tol):
    sde, score, pilot, x, exact_prior, exact = mixture_problem
    grid = sd.likelihood_grid(score, sde, pilot, rtol=tol, atol=tol)
    assert grid.timesteps[0] == sde.t_min and grid.timesteps[-1] == sde.T and (grid.timesteps.diff() > 0).all()
    res = sd.log_likelihood(score, sde, x, grid=grid, prior_log_prob_fn=exact_prior)
    # a global error is at most the sum of the local ones, each held below
    # atol + rtol |delta| per sample on every step; the flow does not amplify them here
    bound = grid.num_steps * tol * (1 + res.delta_log_prob.abs())
    err = (res.log_prob - exact).abs()
    assert (err <= bound).all(), (err / bound).max()
    adaptive = sd.log_likelihood(score, sde, x, method="tsit5", rtol=tol, atol=tol)
    assert res.sample_nfe.double().mean() < adaptive.nfe  # cheaper per sample than one step size for all
    assert (res.sample_nfe >= 6 * grid.num_steps + 1).all() and res.nfe >= res.sample_nfe.max()


def test_grid_designed_on_a_pilot_transfers_to_fresh_data(mixture_problem):
    sde, score, pilot, x, _, _ = mixture_problem
    grid = sd.likelihood_grid(score, sde, pilot, rtol=1e-5, atol=1e-5)
    res = sd.log_likelihood(score, sde, x, grid=grid)
    refined = (res.sample_nfe > 6 * grid.num_steps + 1).double().mean()
    assert refined < 0.05  # the pilot's worst steps were designed to 0.3 of the tolerance
    assert grid.nfe > 0 and grid.step_ratios.max() < 1


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_a_samples_grid_likelihood_does_not_depend_on_its_batch_mates(mixture_problem, divergence):
    # a coarse grid (two equal clock steps), so samples are refined, each as deep as it needs;
    # with per-sample seeds each sample's Hutchinson probe follows it into its refinements
    sde, score, pilot, x, _, _ = mixture_problem
    grid = sd.likelihood_grid(score, sde, pilot[:8], rtol=1e-6, atol=1e-6, num_steps=2, iterations=1)
    kwargs = {"grid": grid, "divergence": divergence, "seed": 5}
    batch = sd.log_likelihood(score, sde, x[:50], sample_indices=range(50), **kwargs)
    assert len(set(batch.sample_nfe.tolist())) > 1 and batch.sample_nfe.min() > 13  # refined, unevenly
    for i in (0, 17, 49):
        alone = sd.log_likelihood(score, sde, x[i : i + 1], sample_indices=[i], **kwargs)
        torch.testing.assert_close(alone.log_prob, batch.log_prob[i : i + 1], rtol=1e-12, atol=1e-12)
        assert alone.nfe == batch.sample_nfe[i]


def test_grid_likelihood_with_hutchinson_probes_is_the_adaptive_estimate(mixture_problem):
    sde, score, pilot, x, _, _ = mixture_problem
    grid = sd.likelihood_grid(score, sde, pilot, rtol=1e-7, atol=1e-7, divergence="hutchinson")
    kwargs = {"divergence": "hutchinson", "generator": torch.Generator().manual_seed(3)}
    on_grid = sd.log_likelihood(score, sde, x[:64], grid=grid, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(3)  # the same probes
    adaptive = sd.log_likelihood(score, sde, x[:64], rtol=1e-9, atol=1e-9, **kwargs)
    torch.testing.assert_close(on_grid.log_prob, adaptive.log_prob, rtol=0, atol=1e-4)


def test_grid_arguments_are_checked(mixture_problem):
    sde, score, pilot, x, _, _ = mixture_problem
    grid = sd.likelihood_grid(score, sde, pilot[:32], rtol=1e-3, atol=1e-3, iterations=1)
    with pytest.raises(ValueError, match=r"drop rtol=1e-05, method='dopri5'"):
        sd.log_likelihood(score, sde, x, grid=grid, rtol=1e-5, method="dopri5")
    with pytest.raises(ValueError, match="drop grad=True"):
        sd.log_likelihood(score, sde, x, grid=grid, grad=True)
    with pytest.raises(ValueError, match="the grid starts at t_end"):
        sd.log_likelihood(score, sde, x, grid=grid, t_end=0.01)
    with pytest.raises(ValueError, match=r"not at this SDE's T=2\.0"):
        sd.log_likelihood(score, sd.VPSDE(T=2.0), x, grid=grid)
    with pytest.raises(TypeError, match="grid must be a LikelihoodGrid"):
        sd.log_likelihood(score, sde, x, grid=grid.timesteps)
    with pytest.raises(ValueError, match=r"target must be a number in \(0, 1\), got 1.5"):
        sd.likelihood_grid(score, sde, pilot, target=1.5)
    with pytest.raises(ValueError, match="num_steps must be a positive int, got 0"):
        sd.likelihood_grid(score, sde, pilot, num_steps=0)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        sd.likelihood_grid(score, sde, pilot, rtol=0.0)
