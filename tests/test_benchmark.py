"""The public benchmark API against exact answers: a Gaussian's probability flow has a closed
form, so the reference and the error measures can be checked to rounding."""

import dataclasses
import math

import pytest
import torch

import scoresde as sd
from scoresde import benchmark as bm


def gaussian_problem(sde_name="vp", num_samples=64):
    """One 2-D Gaussian, whose probability-flow map is affine: with :math:`\\Sigma_t =
    \\alpha_t^2 C + \\sigma_t^2 I`, :math:`x_t = \\alpha_t m + \\Sigma_t^{1/2}\\Sigma_T^{-1/2}(x_T - \\alpha_T m)`."""
    mean = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    cov = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
    gmm = sd.GaussianMixture(mean, cov, torch.ones(1))
    return bm.Problem(f"gaussian-{sde_name}", gmm, bm.SDES[sde_name](), num_samples)


def exact_flow(problem, x_init, level):
    """The closed-form probability flow from ``T`` to ``T_END``, then the exact denoiser: 1 NFE."""
    m, cov = problem.gmm.means[0], problem.gmm.covs[0]
    eye = torch.eye(2, dtype=torch.float64)

    def sqrt_cov(t):
        alpha, sigma = problem.sde.alpha(torch.tensor(t)), problem.sde.sigma(torch.tensor(t))
        vals, vecs = torch.linalg.eigh(alpha**2 * cov + sigma**2 * eye)
        return alpha, vecs @ torch.diag(vals.sqrt()) @ vecs.T

    alpha_T, root_T = sqrt_cov(problem.sde.T)
    alpha_end, root_end = sqrt_cov(bm.T_END)
    x = alpha_end * m + (x_init - alpha_T * m) @ torch.linalg.inv(root_T).T @ root_end.T
    return problem.denoiser_fn(x, torch.full((len(x),), bm.T_END, dtype=torch.float64)), 1


@pytest.mark.parametrize(("sde_name", "tol"), [("vp", 1e-7), ("subvp", 3e-7), ("ve", 2e-6)])
def test_the_reference_is_the_exact_probability_flow(sde_name, tol):
    # dopri5 at 1e-10 from x_T of size sigma_max = 50 (VE) keeps ~1e-8 of it: far below a sampler's error
    problem = gaussian_problem(sde_name)
    x, _ = exact_flow(problem, problem.x_init, 0)
    torch.testing.assert_close(problem.reference, x, rtol=0, atol=tol)
    (row,) = bm.compare_samplers({"exact": exact_flow}, [problem], [1])
    assert row["rmse"] < tol and row["median_error"] < tol and row["mode_switch_fraction"] == 0
    assert row["nfe"] == 1 and row["deterministic"] and row["problem"] == f"gaussian-{sde_name}"


def test_a_sampler_that_collapses_to_one_mode_switches_the_others():
    problem = bm.standard_problem("2d-vp", 200)
    ref = problem.reference

    def collapse(problem, x_init, level):
        return problem.gmm.means[:1].expand_as(x_init).clone(), 3

    (row,) = bm.compare_samplers({"collapse": collapse}, [problem], [3])
    assert row["mode_switch_fraction"] == pytest.approx((problem.mode(ref) != 0).double().mean().item(), abs=0)
    assert 0.3 < row["mode_switch_fraction"] < 0.7  # components 1 and 2 hold half the mass
    distance = (ref - problem.gmm.means[0]).norm(dim=1)
    assert row["rmse"] == pytest.approx(distance.square().mean().sqrt().item(), rel=1e-12)
    assert row["median_error"] == pytest.approx(distance.median().item(), rel=1e-12)
    assert row["sw"] > 5 * row["sw_floor"] and row["log_p_gap"] > 0  # the mode is denser than the data


def test_shuffled_reference_has_the_right_law_but_wrong_paths():
    problem = bm.standard_problem("2d-ve", 400)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))

    def shuffled(problem, x_init, level):
        return sd.SampleResult(x=problem.reference[perm], nfe=7, trajectory=None)

    (row,) = bm.compare_samplers({"shuffled": shuffled}, [problem], [7])
    modes = problem.mode(problem.reference)
    assert row["mode_switch_fraction"] == pytest.approx((modes[perm] != modes).double().mean().item(), abs=0)
    assert row["rmse"] > 1 and row["nfe"] == 7
    assert row["sw"] < 3 * row["sw_floor"] and abs(row["log_p_gap"]) < 5 * row["log_p_gap_floor"] + 0.05


def test_rows_per_level_and_stochastic_samplers_have_no_pathwise_errors():
    problem = bm.standard_problem("2d-subvp", 32)

    def ode(problem, x_init, nfe):
        return sd.sample_ode(problem.score_fn, problem.sde, x_init=x_init, method="dpmpp_2m",
                             num_steps=int(nfe) - 1, t_end=bm.T_END, denoise=True)  # fmt: skip

    def noisy(problem, x_init, nfe):
        g = torch.Generator().manual_seed(0)
        return sd.sample_sde(problem.score_fn, problem.sde, x_init=x_init, num_steps=int(nfe) - 1, generator=g,
                             t_end=bm.T_END, denoise=True)  # fmt: skip

    rows = bm.compare_samplers(
        {"ode": ode, "noisy": noisy}, [problem], {"ode": [5, 10], "noisy": [10]}, stochastic=["noisy"], repeats=2
    )
    assert [(r["sampler"], r["level"], r["nfe"]) for r in rows] == [("ode", 5, 5), ("ode", 10, 10), ("noisy", 10, 10)]
    assert "rmse" not in rows[2] and not rows[2]["deterministic"] and "sw" in rows[2]
    assert rows[1]["rmse"] < rows[0]["rmse"] and all(r["seconds"] > 0 for r in rows)
    assert bm.best_within(rows, 9) is rows[0] and bm.best_within(rows, 4) is None


def test_problem_seeds_and_data_copies():
    problem = bm.standard_problem("16d-vp", 16)
    assert problem.dim == 16 and problem.x_init.shape == (16, 16) and problem.x_init.dtype == torch.float64
    again = bm.standard_problem("16d-vp", 16)
    torch.testing.assert_close(problem.x_init, again.x_init, rtol=0, atol=0)
    pilot = dataclasses.replace(problem, seed=10)
    assert not torch.equal(pilot.x_init, problem.x_init) and pilot.num_samples == 16
    assert not torch.equal(problem.data(0), problem.data(1))
    torch.testing.assert_close(problem.log_prob(problem.data(0)), problem.gmm.log_prob(problem.data(0)))
    mixtures = ("2d", "16d", "2dthin", "8dmany", "32d")
    assert set(bm.STANDARD_PROBLEMS) == {f"{m}-{s}" for m in mixtures for s in ("vp", "subvp", "ve")}


@pytest.mark.parametrize(("name", "dim", "components"), [("2dthin", 2, 5), ("8dmany", 8, 12), ("32d", 32, 6)])
def test_held_out_mixtures_have_the_geometry_they_claim(name, dim, components):
    gmm = bm.MIXTURES[name]()
    assert gmm.dim == dim and len(gmm.weights) == components
    torch.testing.assert_close(gmm.weights.sum(), torch.tensor(1.0, dtype=gmm.weights.dtype))
    eig = torch.linalg.eigvalsh(gmm.covs)  # ascending, per component
    if name == "8dmany":  # uneven weights: the largest over 40 times the smallest
        assert gmm.weights.max() > 40 * gmm.weights.min() and eig.min() >= 0.02 - 1e-12
    else:  # thin: every component's variance along its long axis over 10 times that across it
        assert (eig[:, -1] > 10 * eig[:, -2]).all()
    # every component is reached by sampling and the exact density is finite there
    x = gmm.sample(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(gmm.log_prob(x)).all() and gmm.component(x).bincount(minlength=components).min() > 0


def test_likelihood_errors_at_equal_nfe():
    problem = bm.standard_problem("2d-vp", 48)

    def exact(problem, x, level):
        return problem.log_prob_fn(x, problem.sde.t_min), 0

    def ours(problem, x, tol):
        return sd.log_likelihood(problem.score_fn, problem.sde, x, divergence="exact", rtol=tol, atol=tol)

    rows = bm.compare_likelihoods({"exact": exact, "ours": ours}, [problem], [1e-3, 1e-5], converged_level=1e-9)
    assert [(r["method"], r["level"]) for r in rows] == [("exact", 1e-3), ("ours", 1e-3), ("exact", 1e-5),
                                                         ("ours", 1e-5)]  # fmt: skip
    assert rows[0]["max_err_per_dim"] == rows[0]["mean_err_vs_truth_per_dim"] == 0
    tight = rows[3]
    assert tight["max_err_per_dim"] < min(1e-3, rows[1]["max_err_per_dim"])
    assert tight["mean_err_vs_truth_per_dim"] < 1e-2  # the prior's mismatch with p_T included
    assert tight["points"] == 48 and tight["dim"] == 2 and tight["nfe"] > rows[1]["nfe"]
    ours_rows = [r for r in rows if r["method"] == "ours"]
    assert bm.fewest_nfe_within(ours_rows, tight["max_err_per_dim"]) is tight


def test_fewest_and_fitted_nfe_within_a_target():
    # error = 1e-3 (nfe / 100)^-5 exactly: the fit returns 100 whatever NFE the runs hit
    rows = [{"nfe": n, "max_err_per_dim": 1e-3 * (n / 100) ** -5} for n in (70, 80, 90, 120, 130, 400)]
    assert bm.fitted_nfe_within(rows, 1e-3) == pytest.approx(100, rel=1e-9)
    assert bm.fewest_nfe_within(rows, 1e-3)["nfe"] == 120
    assert math.isnan(bm.fitted_nfe_within(rows[:2], 1e-3))  # too few runs near the target
    flat = [{"nfe": n, "max_err_per_dim": 2e-3} for n in (70, 80, 90)]
    assert math.isnan(bm.fitted_nfe_within(flat, 1e-3)) and bm.fewest_nfe_within(flat, 1e-3) is None
    with_nan = [{"nfe": 5, "rmse": math.nan}, {"nfe": 8, "rmse": 0.2}, {"nfe": 9, "rmse": 0.1}]
    assert bm.best_within(with_nan, 8)["nfe"] == 8


def test_measures_on_tensors():
    ref = torch.zeros(4, 3)
    x = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(bm.per_sample_error(x, ref), torch.tensor([5.0, 1.0, 2.0, 0.0]))
    errors = bm.pathwise_errors(x, ref, component=lambda y: (y.norm(dim=1) > 1.5).long())
    assert errors == {"rmse": pytest.approx(math.sqrt(30 / 4)), "median_error": 1.0, "mode_switch_fraction": 0.5}
    assert set(bm.pathwise_errors(x, ref)) == {"rmse", "median_error"}
    ll = bm.likelihood_errors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), 2)
    assert ll == {"max_err_per_dim": 0.5, "mean_err_per_dim": 0.25, "mean_err_vs_truth_per_dim": 0.75}
    table = bm.markdown_table([{"a": 0.123456, "b": None}, {"a": math.nan, "b": "x"}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 0.123 |  |", "|  | x |"]


def test_errors_name_the_bad_value():
    problem = bm.standard_problem("2d-vp", 8)
    with pytest.raises(ValueError, match="unknown problem '3d-vp'"):
        bm.standard_problem("3d-vp", 8)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        bm.standard_problem("2d-vp", 0)
    with pytest.raises(TypeError, match=r"sde must be a scoresde\.LinearSDE"):
        bm.Problem("p", problem.gmm, object(), 8)
    with pytest.raises(ValueError, match="copy must be an int >= 0"):
        problem.data(-1)
    with pytest.raises(ValueError, match="x and reference must be"):
        bm.per_sample_error(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="samplers must be a non-empty mapping"):
        bm.compare_samplers({}, [problem], [1])
    with pytest.raises(TypeError, match="problems must be a non-empty sequence"):
        bm.compare_samplers({"a": exact_flow}, problem, [1])
    with pytest.raises(ValueError, match=r"levels has no entry for \['b'\]"):
        bm.compare_samplers({"a": exact_flow, "b": exact_flow}, [problem], {"a": [1]})
    with pytest.raises(ValueError, match=r"stochastic names samplers that are not given: \['c'\]"):
        bm.compare_samplers({"a": exact_flow}, [problem], [1], stochastic=["c"])
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        bm.compare_samplers({"a": exact_flow}, [problem], [1], repeats=0)
    with pytest.raises(TypeError, match=r"sampler 'bare' returned Tensor; .*CountingScore"):
        bm.compare_samplers({"bare": lambda p, x, lv: x}, [problem], [1])
    with pytest.raises(ValueError, match=r"sampler 'flat' returned shape \(8,\)"):
        bm.compare_samplers({"flat": lambda p, x, lv: (x[:, 0], 1)}, [problem], [1])
    with pytest.raises(ValueError, match=r"method 'm' returned shape \(8, 2\), expected \(8,\)"):
        bm.compare_likelihoods({"m": lambda p, x, lv: (x, 1)}, [problem], [1e-3])
    with pytest.raises(ValueError, match="point_sets must be an int >= 1"):
        bm.compare_likelihoods({"m": lambda p, x, lv: (x[:, 0], 1)}, [problem], [1e-3], point_sets=0)
