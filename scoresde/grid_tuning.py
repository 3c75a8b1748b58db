r"""Time grids tuned on a pilot run for the fixed-step probability-flow ODE samplers.

With 10-20 score evaluations, *where* the steps go matters as much as the solver's order: the
error of a few-step sample is dominated by the noise levels where trajectories commit to a
mode, and no one-parameter family (uniform, power, Karras, uniform log-SNR) puts the steps
there for every model. :func:`tune_time_grid` places them by minimising the sampler's error on
pilot noise against the accurate ODE solution from the same noise (the "optimised time steps"
idea of Xue et al. 2024, and of Sabour et al. 2024's Align Your Steps, with the pilot error as
the objective). Tune once per (model, SDE, sampler, number of steps), then reuse the grid for
fresh noise; ``benchmarks/`` measures how well it transfers.

Two searches (:func:`search_time_grid`): scipy's Nelder–Mead over the log-SNR increments (the
default of :func:`tune_time_grid`), and GITS's dynamic programme over a fine teacher trajectory
(Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"), about ten
times cheaper in NFE. Both search on part of the pilot noise and validate on the rest: the
result is never worse there than the standard grids and the starting grid.
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
    sde: LinearSDE, x_init: Tensor, num_steps: int, method: str, t_end: float, reference: Tensor | None
) -> Method:
    """Validate the arguments both searches share; return the solver's table entry."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"a time-grid search needs a LinearSDE (it moves steps in log-SNR), got {type(sde).__name__}")
    solver = lookup(method, "a time-grid search", lambda m: m.integrates == "ode" and m.runner == "scoresde")
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
    r"""A descending float64 grid of ``num_steps + 1`` times from ``T`` to ``t_end`` for
    ``sample_ode(method=method, timesteps=grid, denoise=denoise)``: the grid
    :func:`search_time_grid` finds (``.grid``), never worse on held-back pilot noise than ``init``
    and the standard grids. See there for the arguments.

    Returns:
        ``(num_steps + 1,)`` float64 tensor on the CPU, for ``sample_ode(timesteps=...)``.
    """
    return search_time_grid(
        score_fn, sde, x_init, num_steps, method=method, search=search, init=init, t_end=t_end, denoise=denoise,
        reference=reference, reference_tol=reference_tol, max_evals=max_evals, teacher_steps=teacher_steps,
        holdout=holdout,
    ).grid  # fmt: skip


def _nelder_mead_grid(
    score_fn: ScoreFn, sde: LinearSDE, x_init: Tensor, reference: Tensor, method: str, start: Tensor,
    denoise: bool, max_evals: int,
) -> Tensor:  # fmt: skip
    r"""The grid minimising :math:`\log\mathrm{RMSE}(\theta)` on ``x_init`` against ``reference``
    by scipy's Nelder–Mead over the log-SNR increments
    :math:`\Delta\lambda_k = (\lambda_{end} - \lambda_{start})\,\mathrm{softmax}(\theta)_k` (every
    :math:`\theta` a valid grid with the end points fixed), from ``start``: one sampler run per
    evaluation, ``max_evals`` of them."""
    from scipy.optimize import minimize

    t_end = start[-1].item()
    lam_ends = sde.log_snr(start[[0, -1]])

    def log_rmse(theta: np.ndarray) -> float:
        grid = _grid_of(sde, theta, lam_ends, t_end)
        x = sample_ode(score_fn, sde, x_init=x_init, method=method, timesteps=grid, denoise=denoise).x
        rmse = pathwise_rmse(x, reference).item()
        return math.log(max(rmse, 1e-300)) if math.isfinite(rmse) else 1e3  # a diverged run: worst

    theta0 = sde.log_snr(start).diff().div(lam_ends[1] - lam_ends[0]).log().numpy()
    # the initial simplex holds theta0 and the result is its best vertex: never worse than ``start``
    best = minimize(log_rmse, theta0, method="Nelder-Mead", options={"maxfev": max_evals, "xatol": 1e-3, "fatol": 1e-4})
    return _grid_of(sde, best.x, lam_ends, t_end)


@dataclass(frozen=True)
class GridSearch:
    """What :func:`search_time_grid` found and what it cost.

    Attributes:
        grid: the returned ``(num_steps + 1,)`` float64 grid (CPU).
        chosen: the search's name (``"dp"``, ``"nelder_mead"``) if its grid won on the
            held-back noise (or nothing was held back), else the name of the grid it fell back to
            (``"init"`` or a :func:`~scoresde.time_grid` kind).
        searched_grid: the search's grid, whether chosen or not.
        validation_rmse: held-back pilot RMSE of the searched grid and of every candidate
            (empty without ``holdout``).
        nfe: score evaluations spent (batched calls): reference solve, search, validation.
        seconds: wall time of the whole search.
    """

    grid: Tensor
    chosen: str
    searched_grid: Tensor
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
    search: str = "dp",
    init: str | Tensor = "log_snr",
    t_end: float = 1e-3,
    denoise: bool = True,
    reference: Tensor | None = None,
    reference_tol: float = 1e-8,
    max_evals: int | None = None,
    teacher_steps: int = 64,
    holdout: float = 0.5,
) -> GridSearch:
    r"""A time grid for the fixed-step sampler ``method`` with ``num_steps`` steps, searched on
    one part of the pilot noise and validated on the other against the standard grids.

    The objective is the pilot RMSE :math:`\big(\frac1n\sum_i\|\hat x_i - x_i^\star\|^2\big)^{1/2}`
    of ``sample_ode(method=method, timesteps=grid, denoise=denoise)`` against the accurate ODE
    solution :math:`x^\star` from the same noise. Two searches run on the first ``1 - holdout`` of
    ``x_init``:

    * ``"nelder_mead"``: scipy's Nelder–Mead over the log-SNR increments from ``init``, one
      sampler run per evaluation (``max_evals``, default ``60 * num_steps``).
    * ``"dp"``: GITS (Chen et al. 2024), a dynamic programme over a fine teacher trajectory:

      1. **Teacher.** ``x_init`` is solved accurately (dopri5 at ``reference_tol``), saved on a
         fine grid :math:`\tau_0 = T > \dots > \tau_M = t_{end}` (``teacher_steps`` points, half
         uniform in log-SNR, half in ``t``).
      2. **Costs.** :math:`c_{ij} = \mathrm{RMSE}\big(\Phi(x^\star_{\tau_i}, \tau_i \to \tau_j),
         x^\star_{\tau_j}\big)` for :math:`i < j`: one step of ``method`` from the teacher state
         (a multistep solver's history filled by its own steady steps, see
         :func:`_step_costs`), against the teacher there. The score at each teacher state is
         evaluated once for all :math:`j`.
      3. **Programme.** :math:`\min_{0 = k_0 < \dots < k_K = M} \sum_i c_{k_i k_{i+1}}` with
         exactly :math:`K` = ``num_steps`` steps: :math:`D_n(j) = \min_i D_{n-1}(i) + c_{ij}`,
         :math:`O(K M^2)` additions, no NFE. A multistep solver's steps may change length in
         log-SNR by at most a factor 3 from one to the next (over edges, :math:`O(K M^3)`).

    **Validation.** ``method`` runs on the held-back part with the searched grid, with ``init``
    and with each standard grid (:data:`~scoresde.timesteps.GRID_KINDS`: uniform, quadratic,
    log-SNR, Karras rho = 7); the searched grid is returned only if its held-back RMSE is no
    worse than theirs, else the best of them (``chosen`` says which). A grid fitted to one batch
    of noise can be worse than a standard grid on fresh noise (mode switches dominate a few-step
    RMSE); this is what keeps the result from being worse than the best of them, up to the
    held-back batch's sampling error.

    Cost (``nfe``, ``seconds`` in the result) for 9 steps of DPM-Solver++(2M) on 256 points of the
    2-D VP benchmark mixture here: ``"dp"`` 522 NFE and 0.63 s (the teacher solve ~300-400 NFE,
    ``M`` evaluations for the costs, ``num_steps + denoise`` per validated grid; the seconds beyond
    the NFE are the ``O(M^2)`` one-step costs, python steps on the pilot batch); ``"nelder_mead"``
    5799 NFE and 2.0 s (~90 s on 512 points of a 12-component mixture), for about the same
    error on fresh noise. The DP's local-error proxy misses the mode switches that dominate the
    RMSE, so on the 2-D benchmark mixtures it beats the best standard grid only sometimes.

    Args:
        score_fn: the score model the grid is for.
        sde: a :class:`~scoresde.LinearSDE`.
        x_init: pilot noise ``(n, *event)`` at ``T`` (not the noise you will sample from: a few
            hundred prior draws; ``n >= 4`` with a held-back part).
        num_steps: the sampler's steps (its NFE is ``num_steps``, plus one with ``denoise``).
        method: a fixed-step solver of :func:`~scoresde.sample_ode` (``"unipc_3"``, ...).
        search: ``"dp"`` or ``"nelder_mead"``.
        init: Nelder–Mead's starting grid, and a grid the result must beat: a
            :func:`~scoresde.time_grid` kind or a descending tensor from ``T`` to ``t_end``.
        t_end: where the sampler stops (default ``1e-3``, Song et al.'s sampling end time, then
            the ``denoise`` step; the SDE's ``t_min`` is meant for likelihoods).
        reference: the accurate end states from ``x_init`` (default: dopri5 at ``reference_tol``,
            with the same final denoising step).
        max_evals: sampler runs allowed to Nelder–Mead (default ``60 * num_steps``).
        teacher_steps: points of the DP's fine grid (more: finer placement, ``O(M^2)`` step costs).
        holdout: fraction of ``x_init`` kept back for validation, in ``[0, 1)``; 0 searches on all
            of it and returns the searched grid unvalidated.

    Returns:
        a :class:`GridSearch`.
    """
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    solver = _check_search(sde, x_init, num_steps, method, t_end, reference)
    max_evals = 60 * num_steps if max_evals is None else max_evals
    if not isinstance(max_evals, int) or isinstance(max_evals, bool) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive int, got {max_evals!r}")
    bad_teacher = not isinstance(teacher_steps, int) or isinstance(teacher_steps, bool) or teacher_steps < num_steps
    if search == "dp" and bad_teacher:
        raise ValueError(f"teacher_steps must be an int >= num_steps={num_steps}, got {teacher_steps!r}")
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 <= holdout < 1:
        raise ValueError(f"holdout must lie in [0, 1), got {holdout!r}")
    start = _start_grid(sde, init, num_steps, t_end)
    n = x_init.shape[0]
    n_search = n if holdout == 0 else round(n * (1 - holdout))
    if holdout and not 2 <= n_search <= n - 2:
        raise ValueError(f"holdout={holdout} leaves {n_search} of {n} pilot points to search: need >= 2 each")
    started = time.perf_counter()
    counted = CountingScore(score_fn)
    if num_steps == 1:  # nothing to place
        return GridSearch(start, "init", start, {}, 0, time.perf_counter() - started)
    if search == "dp":
        fine = _fine_grid(sde, teacher_steps, t_end)
        teacher = sample_ode(
            counted, sde, x_init=x_init, method="dopri5", rtol=reference_tol, atol=reference_tol, t_end=t_end,
            denoise=denoise, save_at=fine,
        )  # fmt: skip
        ends = teacher.x if reference is None else reference
        stepper = solver.target(sde, counted)
        cost = _step_costs(stepper, teacher.trajectory.x[:, :n_search], fine, sde)
        searched = fine[_shortest_path(cost, num_steps, sde.log_snr(fine) if stepper.history_steps else None)]
    else:
        ends = reference
        if ends is None:
            ends = sample_ode(
                counted, sde, x_init=x_init, method="dopri5", rtol=reference_tol, atol=reference_tol, t_end=t_end,
                denoise=denoise,
            ).x  # fmt: skip
        searched = _nelder_mead_grid(
            counted, sde, x_init[:n_search], ends[:n_search], method, start, denoise, max_evals
        )
    if not holdout:
        return GridSearch(searched, search, searched, {}, counted.calls, time.perf_counter() - started)

    held, held_ref = x_init[n_search:], ends[n_search:]
    grids = {search: searched, "init": start}
    grids |= {kind: time_grid(sde, num_steps, kind, t_end=t_end) for kind in GRID_KINDS}
    rmse = {}
    for name, grid in grids.items():
        x = sample_ode(counted, sde, x_init=held, method=method, timesteps=grid, denoise=denoise).x
        value = pathwise_rmse(x, held_ref).item()
        rmse[name] = value if math.isfinite(value) else math.inf
    chosen = min(rmse, key=lambda name: (rmse[name], name != search))  # a tie keeps the searched grid
    return GridSearch(grids[chosen], chosen, searched, rmse, counted.calls, time.perf_counter() - started)
