r"""Time grids tuned on a pilot run for the fixed-step probability-flow ODE samplers.

With 10-20 score evaluations, *where* the steps go matters as much as the solver's order: the
error of a few-step sample is dominated by the noise levels where trajectories commit to a
mode, and no one-parameter family (uniform, power, Karras, uniform log-SNR) puts the steps
there for every model. :func:`tune_time_grid` places them by minimising the sampler's error on
pilot noise against the accurate ODE solution from the same noise (the "optimised time steps"
idea of Xue et al. 2024, and of Sabour et al. 2024's Align Your Steps, with the pilot error as
the objective). Tune once per (model, SDE, sampler, number of steps), then reuse the grid for
fresh noise; ``benchmarks/`` measures how well it transfers.

Two searches, chosen by ``tune_time_grid(search=...)``:

* ``"nelder_mead"`` (the default): scipy's Nelder–Mead over the log-SNR increments, one
  sampler run per evaluation (up to ``60 * num_steps`` runs of ``steps + 1`` NFE on the pilot
  batch: 5799 NFE and 2.0 s for 9 steps of DPM-Solver++(2M) on 256 points of the 2-D VP
  benchmark mixture here, ~90 s on 512 points of a 12-component mixture).
* ``"dp"`` (:func:`search_time_grid`): GITS (Chen et al. 2024, "On the Trajectory Regularity of
  ODE-based Diffusion Sampling"): a dynamic programme over a fine teacher trajectory. Its cost is
  one accurate solve saved on the fine grid (~300-400 NFE), one score evaluation per fine grid
  point for the step costs (``teacher_steps``), and five validation runs: 522 NFE and 0.63 s for
  the same 9 steps, with the same error on fresh noise (0.2195 against Nelder–Mead's 0.2197);
  ``GridSearch.nfe`` and ``.seconds`` report it per call, ``tests/test_grid_tuning.py`` measures
  both. The seconds beyond the NFE are the ``O(M^2)`` one-step costs (python steps on the pilot
  batch), negligible beside a network's evaluations.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scoresde.metrics import pathwise_rmse
from scoresde.sample import sample_ode
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.solvers._common import CountingScore, StepContext
from scoresde.solvers.methods import Method, lookup
from scoresde.timesteps import GRID_KINDS, check_time_grid, time_grid

SEARCHES = ("nelder_mead", "dp")


def _grid_of(sde: LinearSDE, theta: np.ndarray, lam_ends: Tensor, t_end: float) -> Tensor:
    """Descending times whose log-SNR increments are ``(lam_end - lam_start) softmax(theta)``."""
    w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
    lam = lam_ends[0] + (lam_ends[1] - lam_ends[0]) * torch.cat([w.new_zeros(1), w.cumsum(0)])
    grid = sde.inverse_log_snr(lam)
    grid[0], grid[-1] = sde.T, t_end
    return grid


def _check_search(
    sde: LinearSDE, x_init: Tensor, num_steps: int, method: str, t_end: float, reference: Tensor | None, who: str
) -> Method:
    """Validate the arguments both searches share; return the solver's table entry."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"{who} needs a LinearSDE (it moves steps in log-SNR), got {type(sde).__name__}")
    solver = lookup(method, who, lambda m: m.integrates == "ode" and m.runner == "scoresde")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not isinstance(x_init, Tensor) or x_init.ndim < 2 or x_init.shape[0] < 2:
        shape = tuple(x_init.shape) if isinstance(x_init, Tensor) else type(x_init).__name__
        raise ValueError(f"x_init must be pilot noise (n >= 2, *event), got {shape}")
    if not 0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T={sde.T}), got {t_end!r}")
    if reference is not None and reference.shape != x_init.shape:
        raise ValueError(f"reference must have x_init's shape {tuple(x_init.shape)}, got {tuple(reference.shape)}")
    return solver


def _start_grid(sde: LinearSDE, init: str | Tensor, num_steps: int, t_end: float) -> Tensor:
    if isinstance(init, str):
        return time_grid(sde, num_steps, init, t_end=t_end)
    start = check_time_grid(sde, init).cpu()
    if len(start) != num_steps + 1 or start[0] != sde.T or start[-1] != t_end:
        raise ValueError(
            f"init must run from T={sde.T} to t_end={t_end} in {num_steps} steps, got {len(start) - 1} steps "
            f"from {start[0].item()} to {start[-1].item()}"
        )
    return start


def tune_time_grid(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_init: Tensor,
    num_steps: int,
    *,
    method: str,
    init: str | Tensor = "log_snr",
    t_end: float = 1e-3,
    denoise: bool = True,
    reference: Tensor | None = None,
    reference_tol: float = 1e-8,
    max_evals: int | None = None,
    search: str = "nelder_mead",
    teacher_steps: int = 64,
    holdout: float = 0.5,
) -> Tensor:
    r"""A descending float64 grid of ``num_steps + 1`` times from ``T`` to ``t_end`` that minimises
    the pilot RMSE :math:`\big(\frac1n\sum_i\|\hat x_i - x_i^\star\|^2\big)^{1/2}` of
    ``sample_ode(method=method, timesteps=grid, denoise=denoise)``.

    The grid is parametrised by its log-SNR increments
    :math:`\Delta\lambda_k = (\lambda_{end} - \lambda_{start})\,\mathrm{softmax}(\theta)_k`, so
    every :math:`\theta` is a valid grid with the end points fixed; scipy's Nelder–Mead
    minimises :math:`\log\mathrm{RMSE}(\theta)` from ``init``, one sampler run per evaluation.
    With ``search="dp"`` the grid comes from :func:`search_time_grid` instead (GITS's dynamic
    programme, validated on held-back pilot noise; ``init`` is one of the grids it must beat
    there), at a small fraction of the cost (see the module docstring).

    Args:
        score_fn: the score model the grid is for.
        sde: a :class:`~scoresde.LinearSDE`.
        x_init: pilot noise ``(n, *event)`` at ``T`` (not the noise you will sample from: a few
            hundred prior draws).
        num_steps: the sampler's steps (its NFE is ``num_steps``, plus one with ``denoise``).
        method: a fixed-step solver of :func:`~scoresde.sample_ode` (``"unipc_3"``, ...).
        init: the starting grid: a :func:`~scoresde.time_grid` kind or a descending tensor
            from ``T`` to ``t_end``.
        t_end: where the sampler stops (default ``1e-3``, Song et al.'s sampling end time, then
            the ``denoise`` step; the SDE's ``t_min`` is meant for likelihoods).
        reference: the accurate end states from ``x_init`` (default: dopri5 at
            ``reference_tol``, with the same final denoising step).
        max_evals: sampler runs allowed to the optimiser (default ``60 * num_steps``).
        search: ``"nelder_mead"`` or ``"dp"`` (:func:`search_time_grid`).
        teacher_steps, holdout: for ``search="dp"``: see :func:`search_time_grid`.

    Returns:
        ``(num_steps + 1,)`` float64 tensor on the CPU, for ``sample_ode(timesteps=...)``.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    _check_search(sde, x_init, num_steps, method, t_end, reference, "tune_time_grid")
    max_evals = 60 * num_steps if max_evals is None else max_evals
    if not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive int, got {max_evals!r}")
    start = _start_grid(sde, init, num_steps, t_end)
    if num_steps == 1:
        return start  # nothing to place
    if search == "dp":
        return search_time_grid(
            score_fn, sde, x_init, num_steps, method=method, t_end=t_end, denoise=denoise, reference=reference,
            reference_tol=reference_tol, teacher_steps=teacher_steps, holdout=holdout, candidates={"init": start},
        ).grid  # fmt: skip
    if reference is None:
        reference = sample_ode(
            score_fn, sde, x_init=x_init, method="dopri5", rtol=reference_tol, atol=reference_tol, t_end=t_end,
            denoise=denoise,
        ).x  # fmt: skip

    lam_ends = sde.log_snr(start[[0, -1]])

    def log_rmse(theta: np.ndarray) -> float:
        grid = _grid_of(sde, theta, lam_ends, t_end)
        x = sample_ode(score_fn, sde, x_init=x_init, method=method, timesteps=grid, denoise=denoise).x
        rmse = pathwise_rmse(x, reference).item()
        return math.log(max(rmse, 1e-300)) if math.isfinite(rmse) else 1e3  # a diverged run: worst

    from scipy.optimize import minimize

    theta0 = sde.log_snr(start).diff().div(lam_ends[1] - lam_ends[0]).log().numpy()
    # the initial simplex holds theta0 and the result is its best vertex: never worse than ``init``
    best = minimize(log_rmse, theta0, method="Nelder-Mead", options={"maxfev": max_evals, "xatol": 1e-3, "fatol": 1e-4})
    return _grid_of(sde, best.x, lam_ends, t_end)


@dataclass(frozen=True)
class GridSearch:
    """What :func:`search_time_grid` found and what it cost.

    Attributes:
        grid: the returned ``(num_steps + 1,)`` float64 grid (CPU).
        chosen: ``"dp"`` if the searched grid won on the held-back noise, else the name of the
            candidate it fell back to (a :func:`~scoresde.time_grid` kind, or a given one).
        dp_grid: the dynamic programme's grid, whether chosen or not.
        validation_rmse: held-back pilot RMSE of ``"dp"`` and of every candidate.
        nfe: score evaluations spent (batched calls): teacher solve, step costs, validation.
        seconds: wall time of the whole search.
    """

    grid: Tensor
    chosen: str
    dp_grid: Tensor
    validation_rmse: dict[str, float]
    nfe: int
    seconds: float


class _TeacherScores:
    """``score_fn`` that evaluates each teacher state once: the solver steps of the cost matrix
    start from (and take their history at) teacher states, each always asked at its own time,
    so the costs need one score evaluation per fine grid point."""

    def __init__(self, score_fn: ScoreFn, states: list[Tensor]) -> None:
        self.score_fn = score_fn
        self._index = {id(x): k for k, x in enumerate(states)}
        self._states = states
        self._scores: dict[int, Tensor] = {}

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        k = self._index.get(id(x))
        if k is None or self._states[k] is not x:
            return self.score_fn(x, t)  # a stage away from the teacher (Heun's corrector)
        if k not in self._scores:
            self._scores[k] = self.score_fn(x, t)
        return self._scores[k]


def _fine_grid(sde: LinearSDE, teacher_steps: int, t_end: float) -> Tensor:
    """The teacher's grid: half the points uniform in log-SNR, half uniform in ``t``, so the
    programme can place steps near any of the standard grids."""
    parts = [time_grid(sde, max(teacher_steps // 2, 1), kind, t_end=t_end) for kind in ("log_snr", "uniform")]
    return torch.cat(parts).unique().flip(0)


def _warm_up_nodes(ell: Tensor, i: int, j: int, count: int) -> list[int]:
    """Up to ``count`` fine indices before ``i`` where a grid of steady log-SNR steps
    ``ell[j] - ell[i]`` would have had its previous points (nearest fine point, newest first);
    fewer when they would lie before ``T``."""
    h, nodes = ell[j] - ell[i], []
    for k in range(1, count + 1):
        target = ell[i] - k * h
        earlier = ell[: nodes[-1] if nodes else i]
        if len(earlier) == 0 or target < ell[0] - 0.5 * h:
            break
        nodes.append(int((earlier - target).abs().argmin()))
    return nodes


def _step_costs(stepper, states: Tensor, fine: Tensor, sde: LinearSDE) -> Tensor:
    r"""``cost[i, j]`` (``j > i``): the error of one solver step from the teacher state at
    ``fine[i]`` to ``fine[j]`` against the teacher state there, ``inf`` elsewhere. A multistep
    solver's history is first filled by its own steps between teacher states at the points a
    grid of steady log-SNR steps would have had (:func:`_warm_up_nodes`). The RMSE is scaled
    by :math:`s_{end}/s_j`, the spread of the teacher states at the end over that at
    ``fine[j]``: how an error there carries to the sample (the flow contracts VE's noise scale
    50 to the data's ~1), so that the sum of costs tracks the final error. ``states`` is
    ``(len(fine), n, *event)``."""
    m = len(fine)
    xs = list(states.unbind(0))
    spread = torch.stack([(x - x.mean(0)).square().mean().sqrt() for x in xs]).cpu().to(torch.float64)
    stepper.score_fn = _TeacherScores(stepper.score_fn, xs)
    stepper.flow = sde.probability_flow(stepper.score_fn)
    times = fine.to(states.device)
    ell = sde.log_snr(fine)
    cost = torch.full((m, m), math.inf, dtype=torch.float64)
    for i in range(m - 1):
        rows = []
        for j in range(i + 1, m):
            ctx = StepContext()
            path = [*reversed(_warm_up_nodes(ell, i, j, stepper.history_steps)), i]
            for a, b in itertools.pairwise(path):
                stepper.step(xs[a], times[a], times[b], ctx)
            ctx.last = j == m - 1
            rows.append(pathwise_rmse(stepper.step(xs[i], times[i], times[j], ctx), xs[j]))
        cost[i, i + 1 :] = torch.stack(rows).to(torch.float64).cpu() * spread[-1] / spread[i + 1 :]
    return cost.nan_to_num(math.inf)


def _shortest_path(cost: Tensor, num_steps: int, ell: Tensor | None = None, max_ratio: float = 3.0) -> list[int]:
    """Indices ``0 = k_0 < ... < k_K = m - 1`` minimising ``sum cost[k_i, k_{i+1}]`` with exactly
    ``K = num_steps`` edges: Bellman's recursion over nodes, ``O(K m^2)``. Given the log-SNRs
    ``ell`` of the nodes (for a multistep solver), over edges instead, ``O(K m^3)``: consecutive
    steps may differ in log-SNR length by at most ``max_ratio``, so the steady-step history the
    costs were measured with (:func:`_warm_up_nodes`) is the one the solver will have."""
    m = cost.shape[0]
    if ell is None:
        best = torch.full((m,), math.inf, dtype=torch.float64)
        best[0] = 0.0
        parents = []
        for _ in range(num_steps):
            best, parent = (best[:, None] + cost).min(0)  # arrive at j from i
            parents.append(parent)
        path = [m - 1]
        for parent in reversed(parents):
            path.append(int(parent[path[-1]]))
        return path[::-1]
    h = (ell[None, :] - ell[:, None]).clamp(min=1e-300)  # h[i, j], the step i -> j
    ratio = h[:, :, None] / h[None, :, :]  # [i, j, l]: step i->j over step j->l
    allowed = (ratio <= max_ratio) & (ratio >= 1 / max_ratio)
    best = torch.full((m, m), math.inf, dtype=torch.float64)  # [i, j]: best path ending with i -> j
    best[0] = cost[0]
    parents = []
    for _ in range(num_steps - 1):
        total = torch.where(allowed, best[:, :, None] + cost[None, :, :], math.inf)  # [i, j, l]
        best, parent = total.min(0)  # [j, l]
        parents.append(parent)
    if not torch.isfinite(best[:, m - 1]).any():
        return _shortest_path(cost, num_steps)  # no grid keeps the ratio: drop the constraint
    edge = (int(best[:, m - 1].argmin()), m - 1)
    path = [edge[1], edge[0]]
    for parent in reversed(parents):
        previous = int(parent[path[-1], path[-2]])
        path.append(previous)
    return path[::-1]


def search_time_grid(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_init: Tensor,
    num_steps: int,
    *,
    method: str,
    t_end: float = 1e-3,
    denoise: bool = True,
    reference: Tensor | None = None,
    reference_tol: float = 1e-8,
    teacher_steps: int = 64,
    holdout: float = 0.5,
    candidates: dict[str, Tensor] | None = None,
) -> GridSearch:
    r"""GITS-style time-step search (Chen et al. 2024): a dynamic programme over a fine teacher
    trajectory, checked on held-back pilot noise against the standard grids.

    1. **Teacher.** The first ``1 - holdout`` of ``x_init`` (the search part) is solved
       accurately (dopri5 at ``reference_tol``), saved on a fine grid :math:`\tau_0 = T > \dots
       > \tau_M = t_{end}` (``teacher_steps`` points, half uniform in log-SNR, half in ``t``).
    2. **Costs.** :math:`c_{ij} = \mathrm{RMSE}\big(\Phi(x^\star_{\tau_i}, \tau_i \to \tau_j),
       x^\star_{\tau_j}\big)` for :math:`i < j`: one step of ``method`` from the teacher state,
       started afresh (for a multistep solver its start-up step, e.g. DDIM for the exponential
       integrators), against the teacher there. The score at :math:`x^\star_{\tau_i}` is
       evaluated once for all :math:`j` (methods with one evaluation per step).
    3. **Programme.** :math:`\min_{0 = k_0 < \dots < k_K = M} \sum_i c_{k_i k_{i+1}}` with
       exactly :math:`K` = ``num_steps`` steps: :math:`D_n(j) = \min_i D_{n-1}(i) + c_{ij}`,
       :math:`O(K M^2)` additions, no NFE.
    4. **Validation.** ``method`` runs on the held-back part of ``x_init`` with the searched grid
       and with each standard grid (:data:`~scoresde.timesteps.GRID_KINDS`: uniform, quadratic,
       log-SNR, Karras rho = 7) and any ``candidates``; the searched grid is returned only if
       its held-back RMSE is no worse than theirs, else the best of them (``chosen`` says which).

    A multistep solver's steps may change length in log-SNR by at most a factor 3 from one to
    the next (the programme then runs over edges, :math:`O(K M^3)` additions), so the history
    its costs were measured with is the one it will have.

    Cost (``nfe``, ``seconds`` in the result): the teacher solve (~300-400 NFE for a mixture),
    ``M`` evaluations for the costs, ``num_steps + denoise`` per validated grid: 522 NFE (batched
    calls) and 0.63 s for 9 steps on 256 points of a 2-D mixture, against 5799 NFE and 2.0 s for
    Nelder–Mead (:func:`tune_time_grid`). On the 2-D benchmark mixtures the searched grid beats
    the best standard grid on held-back noise only sometimes (iPNDM at 4 steps; UniPC-3 at 9 on
    VP); the local-error proxy misses the mode switches that dominate their RMSE, and the
    fallback then returns the standard grid.

    Args:
        score_fn, sde, num_steps, method, t_end, denoise, reference_tol: as in
            :func:`tune_time_grid`.
        x_init: pilot noise ``(n, *event)``, ``n >= 4`` with a held-back part.
        reference: accurate end states from ``x_init`` (default: from the teacher solve), used
            for validation.
        teacher_steps: points of the fine grid (more: finer placement, ``O(M^2)`` step costs).
        holdout: fraction of ``x_init`` kept back for validation, in ``(0, 1)``.
        candidates: more grids ``{name: (num_steps + 1,) tensor}`` the result must beat.

    Returns:
        a :class:`GridSearch`.
    """
    solver = _check_search(sde, x_init, num_steps, method, t_end, reference, "search_time_grid")
    if not isinstance(teacher_steps, int) or isinstance(teacher_steps, bool) or teacher_steps < num_steps:
        raise ValueError(f"teacher_steps must be an int >= num_steps={num_steps}, got {teacher_steps!r}")
    if not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise ValueError(f"holdout must lie in (0, 1), got {holdout!r}")
    n_search = round(x_init.shape[0] * (1 - holdout))
    if not 2 <= n_search <= x_init.shape[0] - 2:
        raise ValueError(
            f"holdout={holdout} leaves {n_search} of {x_init.shape[0]} pilot points to search: need >= 2 each"
        )
    started = time.perf_counter()
    counted = CountingScore(score_fn)
    fine = _fine_grid(sde, teacher_steps, t_end)
    teacher = sample_ode(
        counted, sde, x_init=x_init, method="dopri5", rtol=reference_tol, atol=reference_tol, t_end=t_end,
        denoise=denoise, save_at=fine,
    )  # fmt: skip
    states = teacher.trajectory.x
    ends = teacher.x if reference is None else reference
    stepper = solver.target(sde, counted)
    cost = _step_costs(stepper, states[:, :n_search], fine, sde)
    dp_grid = fine[_shortest_path(cost, num_steps, sde.log_snr(fine) if stepper.history_steps else None)]

    held, held_ref = x_init[n_search:], ends[n_search:]
    grids = {"dp": dp_grid} | {kind: time_grid(sde, num_steps, kind, t_end=t_end) for kind in GRID_KINDS}
    grids |= {name: check_time_grid(sde, grid).cpu() for name, grid in (candidates or {}).items()}
    rmse = {}
    for name, grid in grids.items():
        x = sample_ode(counted, sde, x_init=held, method=method, timesteps=grid, denoise=denoise).x
        value = pathwise_rmse(x, held_ref).item()
        rmse[name] = value if math.isfinite(value) else math.inf
    chosen = min(rmse, key=lambda name: (rmse[name], name != "dp"))  # a tie keeps the searched grid
    return GridSearch(grids[chosen], chosen, dp_grid, rmse, counted.calls, time.perf_counter() - started)
