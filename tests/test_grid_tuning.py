"""tune_time_grid and search_time_grid: valid grids that lower the few-step error on fresh noise."""

import pytest
import torch

import scoresde as sd
from tests.conftest import separated_mixture_2d

T_END = 1e-3


def prior(sde, n, seed):
    return sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_end(score, sde, x_init):
    return sd.sample_ode(score, sde, x_init=x_init, method="dopri5", rtol=1e-9, atol=1e-9, t_end=T_END, denoise=True).x


def rmse(score, sde, x_init, ref, grid, method):
    x = sd.sample_ode(score, sde, x_init=x_init, method=method, timesteps=grid, denoise=True).x
    return (x - ref).square().sum(1).mean().sqrt().item()


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_tuned_grid_is_valid_and_beats_its_start_on_fresh_noise(name):
    sde = sd.VPSDE() if name == "vp" else sd.VESDE(sigma_min=0.01, sigma_max=20.0)
    score = separated_mixture_2d().score_fn(sde)
    steps, method = 6, "dpmpp_2m"
    start = sd.time_grid(sde, steps, "log_snr", t_end=T_END)
    pilot, fresh = prior(sde, 200, 1), prior(sde, 400, 2)
    fresh_ref = exact_end(score, sde, fresh)
    found = sd.search_time_grid(score, sde, pilot, steps, method=method, search="nelder_mead", t_end=T_END,
                                max_evals=150)  # fmt: skip
    grid = found.grid
    assert grid.dtype == torch.float64 and grid.shape == (steps + 1,)
    assert grid[0] == sde.T and grid[-1] == T_END and (grid.diff() < 0).all()
    # the held-back half of the pilot chose it: no worse there than the start and the standard grids
    assert found.validation_rmse[found.chosen] == min(found.validation_rmse.values())
    assert set(found.validation_rmse) == {"nelder_mead", "init", *sd.timesteps.GRID_KINDS}
    # ... and the grid transfers: on independent noise the error falls by at least a third
    assert rmse(score, sde, fresh, fresh_ref, grid, method) < 0.67 * rmse(score, sde, fresh, fresh_ref, start, method)
    # tune_time_grid is the same search (Nelder-Mead its default)
    same = sd.tune_time_grid(score, sde, pilot, steps, method=method, t_end=T_END, max_evals=150)
    torch.testing.assert_close(same, grid, rtol=0, atol=0)


def test_holdout_zero_searches_on_all_the_pilot_unvalidated():
    sde = sd.VPSDE()
    score = separated_mixture_2d().score_fn(sde)
    pilot = prior(sde, 64, 3)
    start = sd.time_grid(sde, 4, "log_snr", t_end=T_END)
    found = sd.search_time_grid(score, sde, pilot, 4, method="dpmpp_2m", search="nelder_mead", t_end=T_END,
                                max_evals=40, holdout=0)  # fmt: skip
    assert found.chosen == "nelder_mead" and found.validation_rmse == {}
    assert torch.equal(found.grid, found.searched_grid)
    ref = exact_end(score, sde, pilot)  # Nelder-Mead keeps its best vertex, the start among them
    assert rmse(score, sde, pilot, ref, found.grid, "dpmpp_2m") <= rmse(score, sde, pilot, ref, start, "dpmpp_2m")


def test_one_step_has_nothing_to_tune():
    sde = sd.VPSDE()
    score = separated_mixture_2d().score_fn(sde)
    start = sd.time_grid(sde, 1, "uniform", t_end=T_END)
    assert torch.equal(sd.tune_time_grid(score, sde, prior(sde, 16, 0), 1, method="ddim", init="uniform"), start)


def test_bad_arguments():
    sde = sd.VPSDE()
    score = separated_mixture_2d().score_fn(sde)
    x = prior(sde, 8, 0)
    with pytest.raises(ValueError, match="a time-grid search cannot run method='dopri5'"):
        sd.tune_time_grid(score, sde, x, 5, method="dopri5")
    with pytest.raises(ValueError, match="num_steps"):
        sd.tune_time_grid(score, sde, x, 0, method="ddim")
    with pytest.raises(ValueError, match="pilot noise"):
        sd.tune_time_grid(score, sde, x[:1], 5, method="ddim")
    with pytest.raises(ValueError, match="t_end"):
        sd.tune_time_grid(score, sde, x, 5, method="ddim", t_end=0.0)
    with pytest.raises(ValueError, match="init must run"):
        sd.tune_time_grid(score, sde, x, 5, method="ddim", init=sd.time_grid(sde, 4, t_end=T_END))
    with pytest.raises(ValueError, match="reference must have"):
        sd.tune_time_grid(score, sde, x, 5, method="ddim", reference=x[:3])
    with pytest.raises(TypeError, match="LinearSDE"):
        sd.tune_time_grid(score, sde.reverse(score), x, 5, method="ddim")


# ---------------------------------------------------------------------------------------------
# the GITS-style dynamic programme (search="dp")


def _fresh_rmse(problem, grid, method):
    x = sd.sample_ode(problem.score_fn, problem.sde, x_init=problem.x_init, method=method, timesteps=grid, denoise=True)
    return sd.pathwise_rmse(x.x, problem.reference).item()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "method", "steps", "expect"),
    [("2d-ve", "ipndm", 4, "dp"), ("2d-vp", "dpmpp_2m", 9, "fallback")],
)
def test_dp_grid_is_never_worse_than_the_best_standard_grid_on_fresh_noise(name, method, steps, expect):
    from scoresde import benchmark as bm

    problem = bm.standard_problem(name, 400)  # fresh noise: problem.x_init, never seen by the search
    sde = problem.sde
    pilot = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    found = sd.search_time_grid(problem.score_fn, sde, pilot, steps, method=method, t_end=bm.T_END)
    grid = found.grid
    assert grid.dtype == torch.float64 and grid.shape == (steps + 1,)
    assert grid[0] == sde.T and grid[-1] == bm.T_END and (grid.diff() < 0).all()
    standard = {k: v for k, v in found.validation_rmse.items() if k != "dp"}
    best_standard = min(standard, key=standard.__getitem__)
    # the grid it returns is the held-back winner, the DP's only if it won there
    assert found.validation_rmse[found.chosen] == min(found.validation_rmse.values())
    assert (found.chosen == "dp") == (expect == "dp"), found.validation_rmse
    fresh = _fresh_rmse(problem, grid, method)
    compared = _fresh_rmse(problem, sd.time_grid(sde, steps, best_standard, t_end=bm.T_END), method)
    assert fresh <= compared, (fresh, compared, found.validation_rmse)
    # tune_time_grid(search="dp") is the same search
    same = sd.tune_time_grid(problem.score_fn, sde, pilot, steps, method=method, t_end=bm.T_END, search="dp")
    torch.testing.assert_close(same, grid, rtol=0, atol=0)


@pytest.mark.timeout(600)
def test_dp_search_costs_far_less_than_nelder_mead():
    import time

    from scoresde import benchmark as bm

    problem = bm.standard_problem("2d-vp", 400)
    sde, steps, method = problem.sde, 9, "dpmpp_2m"
    pilot = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    costs = {}
    for search in ("dp", "nelder_mead"):
        counted = sd.solvers.CountingScore(problem.score_fn)
        start = time.perf_counter()
        grid = sd.tune_time_grid(counted, sde, pilot, steps, method=method, t_end=bm.T_END, search=search)
        costs[search] = (counted.calls, time.perf_counter() - start, _fresh_rmse(problem, grid, method))
    print("grid search cost (NFE, seconds, fresh RMSE):", costs)
    (dp_nfe, dp_s, dp_err), (nm_nfe, nm_s, nm_err) = costs["dp"], costs["nelder_mead"]
    assert dp_nfe < nm_nfe / 5 and dp_s < nm_s / 2
    assert dp_err < 1.5 * nm_err  # and not far behind in quality on fresh noise


def test_dp_bad_arguments():
    sde = sd.VPSDE()
    score = separated_mixture_2d().score_fn(sde)
    x = prior(sde, 8, 0)
    with pytest.raises(ValueError, match="search must be one of"):
        sd.tune_time_grid(score, sde, x, 5, method="ddim", search="grid")
    with pytest.raises(ValueError, match="holdout must lie in"):
        sd.search_time_grid(score, sde, x, 5, method="ddim", holdout=1.0)
    with pytest.raises(ValueError, match="max_evals must be"):
        sd.search_time_grid(score, sde, x, 5, method="ddim", search="nelder_mead", max_evals=0)
    with pytest.raises(ValueError, match="pilot points to search"):
        sd.search_time_grid(score, sde, x[:3], 2, method="ddim")
    with pytest.raises(ValueError, match="teacher_steps must be"):
        sd.search_time_grid(score, sde, x, 5, method="ddim", teacher_steps=3)
