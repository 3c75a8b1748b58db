"""The likelihood benchmark: NFE and wall time to reach a given accuracy, ours against the peers.

Every method integrates the same probability-flow ODE with the same exact score on the same
points (``x`` drawn from the data, float64):

* ``scoresde``: :func:`~scoresde.log_likelihood` (the per-sample error norm, the reference VP
  coordinates) with dopri5 (the default) and with Tsitouras' 5(4) pair (``method="tsit5"``,
  our tableau in torchdiffeq's solver); the exact divergence (one batched VJP over the
  dimensions) or Hutchinson's (one VJP); and ``tsit5_grid``: on a grid from
  :func:`~scoresde.likelihood_grid` designed at the same tolerance on as many pilot points
  (another draw of the data), each sample's steps halved where its error estimate misses the
  tolerance. Its ``nfe`` counts every call, a refined sub-batch's included; ``sample_nfe_mean``
  the evaluations per sample; ``design_nfe`` the design's cost on the pilot, spent once per grid;
* ``k-diffusion``: ``sampling.log_likelihood`` (dopri5 in sigma, one Rademacher probe) through
  :class:`~benchmarks.peers.KarrasDenoiser`, converted to ``x_t`` by the Jacobian
  :math:`-D\\log\\alpha_{t_{min}}`;
* ``flow_matching``: ``ODESolver.compute_likelihood`` (dopri5, exact divergence by a loop of
  VJPs, or Hutchinson) on :class:`~benchmarks.peers.FlowMatchingVelocity`;
* ``scipy``: ``solve_ivp(method="RK45")`` on the flattened batch in the SDE's own time, as the
  original score_sde code integrates it (it uses one Rademacher probe; the exact divergence is run
  too). Its probe is ours (same generator and seed), so the two Hutchinson runs solve one ODE.

The error of a run is measured against the *same method* converged (rtol = atol = 1e-9, same
probe): the integration error, per point and per dimension, which does not mix in the
Hutchinson noise or the prior each library uses. The error against the exact
:math:`\\log p_{t_{min}}(x)` is reported too (it does include them). The runs and errors are
:func:`scoresde.benchmark.compare_likelihoods`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.peers import (
    FlowMatchingVelocity,
    KarrasDenoiser,
    karras_sigma,
    load_flow_matching_solver,
    load_k_diffusion_sampling,
)
from scoresde import LikelihoodGrid, LikelihoodResult, likelihood_grid, log_likelihood
from scoresde import divergence as sd_divergence
from scoresde.benchmark import Problem, compare_likelihoods
from scoresde.solvers import CountingScore

CONVERGED_TOL = 1e-9
LlFn = Callable[[Problem, Tensor, float], tuple[Tensor, int]]


@dataclass(frozen=True)
class LikelihoodMethod:
    """One likelihood method of the comparison and its library."""

    name: str
    library: str
    run: LlFn


def _probe_generator() -> torch.Generator:
    """The Rademacher probe's seed, shared by our Hutchinson runs and scipy's."""
    return torch.Generator().manual_seed(0)


def _ours(method: str, divergence: str) -> LlFn:
    def run(problem: Problem, x: Tensor, tol: float) -> tuple[Tensor, int]:
        res = log_likelihood(
            problem.score_fn, problem.sde, x, divergence=divergence, method=method, rtol=tol, atol=tol,
            generator=_probe_generator(),
        )  # fmt: skip
        return res.log_prob, res.nfe

    return run


PILOT_COPY = 99
"""The data copy the designed grids' pilots come from (the evaluated point sets are copies 2, 3, ...)."""
DESIGNS: dict[tuple[str, float, str], LikelihoodGrid] = {}
"""Grids designed so far, by problem, tolerance and divergence: each is designed once, outside the
runs that are timed after the first (their median time is the solve's)."""


def _ours_on_grid(divergence: str) -> LlFn:
    """``log_likelihood(grid=...)`` on a grid from :func:`~scoresde.likelihood_grid` on pilot data
    disjoint from the evaluated points (as many), designed at the run's tolerance."""

    def run(problem: Problem, x: Tensor, tol: float) -> LikelihoodResult:
        key = (problem.name, tol, divergence)
        if key not in DESIGNS:
            DESIGNS[key] = likelihood_grid(
                problem.score_fn, problem.sde, problem.data(PILOT_COPY), rtol=tol, atol=tol, divergence=divergence,
                generator=_probe_generator(),
            )  # fmt: skip
        return log_likelihood(
            problem.score_fn, problem.sde, x, grid=DESIGNS[key], divergence=divergence, generator=_probe_generator()
        )

    return run


def _k_diffusion(problem: Problem, x: Tensor, tol: float) -> tuple[Tensor, int]:
    k = load_k_diffusion_sampling()
    sde = problem.sde
    t_min = torch.tensor(sde.t_min, dtype=torch.float64)
    sigma_min, sigma_max = karras_sigma(sde, torch.stack([t_min, t_min.new_tensor(sde.T)])).tolist()
    alpha_min = sde.alpha(t_min).item()
    torch.manual_seed(0)  # its Rademacher probe comes from the global generator
    model = KarrasDenoiser(sde, problem.denoiser_fn)
    ll, info = k.log_likelihood(model, x / alpha_min, sigma_min, sigma_max, atol=tol, rtol=tol)
    return ll - x[0].numel() * math.log(alpha_min), info["fevals"]


def _flow_matching(exact: bool) -> LlFn:
    def run(problem: Problem, x: Tensor, tol: float) -> tuple[Tensor, int]:
        velocity = FlowMatchingVelocity(problem.sde, problem.score_fn, problem.sde.t_min)
        solver = load_flow_matching_solver()(velocity)
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(x.dtype)  # its Hutchinson probe is built in the default dtype
        try:
            _, ll = solver.compute_likelihood(
                x_1=x, log_p0=problem.sde.prior_log_prob, step_size=None, method="dopri5", atol=tol, rtol=tol,
                exact_divergence=exact, time_grid=torch.tensor([1.0, 0.0], dtype=torch.float64),
            )  # fmt: skip
        finally:
            torch.set_default_dtype(default)
        return ll, velocity.calls

    return run


def _scipy_rk45(divergence: str) -> LlFn:
    def run(problem: Problem, x: Tensor, tol: float) -> tuple[Tensor, int]:
        import numpy as np
        from scipy.integrate import solve_ivp

        sde, batch = problem.sde, x.shape[0]
        score = CountingScore(problem.score_fn)
        velocity = sde.probability_flow(score).velocity  # in t, as score_sde did

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            state = torch.from_numpy(y[:-batch]).reshape(x.shape)
            time = torch.full((batch,), t, dtype=torch.float64)
            v = []  # the one velocity evaluation the divergence makes, kept
            # the same probe at every call: a fresh generator with the shared seed
            div = sd_divergence(lambda y: v.append(velocity(y, time)) or v[0], state, divergence=divergence,
                                generator=_probe_generator())  # fmt: skip
            return np.concatenate([v[0].detach().reshape(-1).numpy(), div.numpy()])

        y0 = np.concatenate([x.reshape(-1).numpy(), np.zeros(batch)])
        sol = solve_ivp(rhs, (sde.t_min, sde.T), y0, method="RK45", rtol=tol, atol=tol)
        y = torch.from_numpy(sol.y[:, -1])
        z, delta = y[:-batch].reshape(x.shape), y[-batch:]
        return sde.prior_log_prob(z) + delta, score.calls

    return run


def all_methods(with_peers: bool) -> list[LikelihoodMethod]:
    methods = [
        *(LikelihoodMethod(f"scoresde:{method}/{divergence}", "scoresde", _ours(method, divergence))
          for method in ("dopri5", "tsit5") for divergence in ("exact", "hutchinson")),
        *(LikelihoodMethod(f"scoresde:tsit5_grid/{divergence}", "scoresde", _ours_on_grid(divergence))
          for divergence in ("exact", "hutchinson")),
        LikelihoodMethod("scipy:RK45/exact", "scipy", _scipy_rk45("exact")),
        LikelihoodMethod("scipy:RK45/hutchinson", "scipy", _scipy_rk45("hutchinson")),
    ]
    if with_peers and load_k_diffusion_sampling() is not None:
        methods.append(LikelihoodMethod("k-diffusion:log_likelihood", "k-diffusion", _k_diffusion))
    if with_peers and load_flow_matching_solver() is not None:
        methods += [
            LikelihoodMethod("flow_matching:dopri5/exact", "flow_matching", _flow_matching(True)),
            LikelihoodMethod("flow_matching:dopri5/hutchinson", "flow_matching", _flow_matching(False)),
        ]
    return methods


def run_likelihood(
    problems: list[Problem],
    methods: list[LikelihoodMethod],
    tolerances: list[float],
    *,
    repeats: int,
    point_sets: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per problem, point set, method and tolerance (``tol``), from
    :func:`~scoresde.benchmark.compare_likelihoods` with every method converged at
    :data:`CONVERGED_TOL`."""
    library = {m.name: m.library for m in methods}
    rows = compare_likelihoods(
        {m.name: m.run for m in methods}, problems, tolerances, converged_level=CONVERGED_TOL,
        point_sets=point_sets, repeats=repeats, log=log,
    )  # fmt: skip
    out = []
    for row in rows:
        mixture, sde = row["problem"].split("-")
        tol = row.pop("level")
        design = DESIGNS.get((row["problem"], tol, row["method"].rpartition("/")[2]))
        if "_grid/" in row["method"] and design is not None:  # the grid's design, on its pilot
            row |= {"design_nfe": design.nfe, "grid_steps": design.num_steps}
        out.append(row | {"mixture": mixture, "sde": sde, "library": library[row["method"]], "tol": tol})
    return out
