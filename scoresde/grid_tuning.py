r"""Time grids tuned on a pilot run for the fixed-step probability-flow ODE samplers.

With 10-20 score evaluations, *where* the steps go matters as much as the solver's order: the
error of a few-step sample is dominated by the noise levels where trajectories commit to a
mode, and no one-parameter family (uniform, power, Karras, uniform log-SNR) puts the steps
there for every model. :func:`tune_time_grid` places them by minimising the sampler's error on
pilot noise against the accurate ODE solution from the same noise (the "optimised time steps"
idea of Xue et al. 2024, and of Sabour et al. 2024's Align Your Steps, with the pilot error as
the objective). Tune once per (model, SDE, sampler, number of steps), then reuse the grid for
fresh noise; ``benchmarks/`` measures how well it transfers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from scoresde.metrics import pathwise_rmse
from scoresde.sample import sample_ode
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.solvers.methods import lookup
from scoresde.timesteps import check_time_grid, time_grid


def _grid_of(sde: LinearSDE, theta: np.ndarray, lam_ends: Tensor, t_end: float) -> Tensor:
    """Descending times whose log-SNR increments are ``(lam_end - lam_start) softmax(theta)``."""
    w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
    lam = lam_ends[0] + (lam_ends[1] - lam_ends[0]) * torch.cat([w.new_zeros(1), w.cumsum(0)])
    grid = sde.inverse_log_snr(lam)
    grid[0], grid[-1] = sde.T, t_end
    return grid


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
) -> Tensor:
    r"""A descending float64 grid of ``num_steps + 1`` times from ``T`` to ``t_end`` that minimises
    the pilot RMSE :math:`\big(\frac1n\sum_i\|\hat x_i - x_i^\star\|^2\big)^{1/2}` of
    ``sample_ode(method=method, timesteps=grid, denoise=denoise)``.

    The grid is parametrised by its log-SNR increments
    :math:`\Delta\lambda_k = (\lambda_{end} - \lambda_{start})\,\mathrm{softmax}(\theta)_k`, so
    every :math:`\theta` is a valid grid with the end points fixed; scipy's Nelder–Mead
    minimises :math:`\log\mathrm{RMSE}(\theta)` from ``init``, one sampler run per evaluation.

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

    Returns:
        ``(num_steps + 1,)`` float64 tensor on the CPU, for ``sample_ode(timesteps=...)``.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"tune_time_grid needs a LinearSDE (it moves steps in log-SNR), got {type(sde).__name__}")
    lookup(method, "tune_time_grid", lambda m: m.integrates == "ode" and m.runner == "scoresde")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not isinstance(x_init, Tensor) or x_init.ndim < 2 or x_init.shape[0] < 2:
        shape = tuple(x_init.shape) if isinstance(x_init, Tensor) else type(x_init).__name__
        raise ValueError(f"x_init must be pilot noise (n >= 2, *event), got {shape}")
    if not 0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T={sde.T}), got {t_end!r}")
    max_evals = 60 * num_steps if max_evals is None else max_evals
    if not isinstance(max_evals, int) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive int, got {max_evals!r}")
    if isinstance(init, str):
        start = time_grid(sde, num_steps, init, t_end=t_end)
    else:
        start = check_time_grid(sde, init).cpu()
        if len(start) != num_steps + 1 or start[0] != sde.T or start[-1] != t_end:
            raise ValueError(
                f"init must run from T={sde.T} to t_end={t_end} in {num_steps} steps, got {len(start) - 1} steps "
                f"from {start[0].item()} to {start[-1].item()}"
            )
    if reference is not None and reference.shape != x_init.shape:
        raise ValueError(f"reference must have x_init's shape {tuple(x_init.shape)}, got {tuple(reference.shape)}")
    if num_steps == 1:
        return start  # nothing to place
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
