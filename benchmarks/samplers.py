"""Every sampler of the comparison behind one signature, with one NFE convention.

``run(problem, x_init, level, grid, seed) -> (x0, nfe)``: ``level`` is an NFE budget for
fixed-step samplers (the sampler spends at most that many evaluations) or a tolerance for
adaptive ones; ``grid`` names a candidate of :mod:`benchmarks.grids`, or is a grid tensor
(a grid tuned by :func:`~scoresde.tune_time_grid`). Every sampler ends
with the data estimate :math:`E[x_0 \\mid x_{t_{end}}]`: ours by ``denoise=True`` (Tweedie's
step at ``t_end``, one NFE), k-diffusion's by its last step to :math:`\\sigma = 0`, which is the
same denoiser call. NFE counts every score or denoiser evaluation, that one included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.grids import make_grid
from benchmarks.peers import (
    DIFFUSERS_GRIDS,
    KarrasDenoiser,
    diffusers_scheduler,
    karras_sigma,
    load_diffusers_schedulers,
    load_k_diffusion_sampling,
    run_diffusers,
    seeded_noise_sampler,
)
from scoresde import sample_ode, sample_pc, sample_sde
from scoresde.benchmark import T_END, Problem

RunFn = Callable[[Problem, Tensor, float, str | Tensor, int], tuple[Tensor, int]]
ADAPTIVE_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
TUNED = (("unipc_2", "nelder_mead"), ("unipc_3", "nelder_mead"), ("ipndm", "nelder_mead"), ("unipc_3", "dp"),
         ("ipndm", "dp"))  # fmt: skip
AFS = ("ipndm", "unipc_3")
"""Also run with the analytical first step (``scoresde:<method>_afs``: one NFE saved, one step more)."""
TUNED_MAX_NFE = 20
"""Solvers also run on a grid searched on the pilot noise (:func:`~scoresde.search_time_grid`, by
Nelder-Mead: ``+tuned``, or by the dynamic programme: ``+dp``), at budgets up to
``TUNED_MAX_NFE`` (the few-step regime; the search's cost grows with the steps)."""


@dataclass(frozen=True)
class Sampler:
    """One sampler of the comparison: its ``run``, and how the harness treats it."""

    name: str
    library: str
    run: RunFn
    deterministic: bool = True
    takes_grid: bool = True
    adaptive: bool = False
    tuned_method: str | None = None  # set: run on a grid searched for this sample_ode method ...
    tuned_search: str = "nelder_mead"  # ... by this search of search_time_grid
    grids: tuple[str, ...] | None = None  # its own candidate grids (default: benchmarks.grids')


def steps_within(budget: float, evals_per_step: int = 1) -> int:
    """Steps of a fixed-step sampler within ``budget`` NFE (the final denoising step costs one)."""
    return max(int(budget - 1) // evals_per_step, 1)


def _ours_ode(method: str, evals_per_step: int = 1, afs: bool = False) -> RunFn:
    """``method`` within the budget; with ``afs`` (the analytical first step) one step more."""

    def run(problem: Problem, x_init: Tensor, budget: float, grid: str | Tensor, seed: int) -> tuple[Tensor, int]:
        steps = steps_within(budget, evals_per_step) + afs
        times = grid if isinstance(grid, Tensor) else make_grid(problem.sde, steps, grid, T_END)
        res = sample_ode(
            problem.score_fn, problem.sde, x_init=x_init, method=method, timesteps=times, denoise=True, afs=afs
        )
        return res.x, res.nfe

    return run


def _ours_adaptive(method: str) -> RunFn:
    def run(problem: Problem, x_init: Tensor, tol: float, grid: str, seed: int) -> tuple[Tensor, int]:
        res = sample_ode(
            problem.score_fn, problem.sde, x_init=x_init, method=method, rtol=tol, atol=tol, t_end=T_END, denoise=True
        )
        return res.x, res.nfe

    return run


def _ours_stochastic(kind: str) -> RunFn:
    def run(problem: Problem, x_init: Tensor, budget: float, grid: str, seed: int) -> tuple[Tensor, int]:
        evals_per_step = 2 if kind == "langevin" else 1
        times = make_grid(problem.sde, steps_within(budget, evals_per_step), grid, T_END)
        g = torch.Generator().manual_seed(seed)
        if kind == "langevin":  # Song et al.'s reverse diffusion + one Langevin step (library defaults)
            res = sample_pc(
                problem.score_fn, problem.sde, x_init=x_init, timesteps=times, num_steps=None, denoise=True, generator=g
            )
        elif kind == "euler_maruyama":
            res = sample_sde(
                problem.score_fn, problem.sde, x_init=x_init, timesteps=times, num_steps=None, denoise=True, generator=g
            )
        else:
            res = sample_pc(
                problem.score_fn, problem.sde, x_init=x_init, timesteps=times, predictor="ancestral", corrector=None,
                denoise=True, generator=g, num_steps=None,
            )  # fmt: skip
        return res.x, res.nfe

    return run


def _k_sigmas(problem: Problem, intervals: int, grid: str) -> Tensor:
    """k-diffusion's sigmas: ``intervals - 1`` steps of our grid down to ``t_end``, then 0."""
    times = make_grid(problem.sde, max(intervals - 1, 1), grid, T_END)
    return torch.cat([karras_sigma(problem.sde, times), times.new_zeros(1)])


def _k_start(problem: Problem, x_init: Tensor) -> Tensor:
    return x_init / problem.sde.alpha(torch.tensor(problem.sde.T, dtype=torch.float64)).item()


def _k_fixed(name: str, evals_per_step: int = 1, stochastic: bool = False) -> RunFn:
    def run(problem: Problem, x_init: Tensor, budget: float, grid: str, seed: int) -> tuple[Tensor, int]:
        k = load_k_diffusion_sampling()
        # 2nd-order samplers: 2 NFE per step, 1 on the last (an Euler step to sigma = 0)
        intervals = (int(budget) + 1) // 2 if evals_per_step == 2 else int(budget)
        model = KarrasDenoiser(problem.sde, problem.denoiser_fn)
        x = _k_start(problem, x_init)
        extra = {"noise_sampler": seeded_noise_sampler(x, seed)} if stochastic else {}
        x0 = getattr(k, f"sample_{name}")(model, x, _k_sigmas(problem, intervals, grid), disable=True, **extra)
        return x0, model.calls

    return run


def _k_dpm_solver(adaptive: bool) -> RunFn:
    """DPM-Solver-fast (``n`` evaluations) or -adaptive, from sigma_max to sigma(t_end), then the
    denoiser call that every other sampler also makes at ``t_end``."""

    def run(problem: Problem, x_init: Tensor, level: float, grid: str, seed: int) -> tuple[Tensor, int]:
        k = load_k_diffusion_sampling()
        model = KarrasDenoiser(problem.sde, problem.denoiser_fn)
        ends = karras_sigma(problem.sde, torch.tensor([T_END, problem.sde.T], dtype=torch.float64)).tolist()
        x = _k_start(problem, x_init)
        if adaptive:
            x = k.sample_dpm_adaptive(model, x, ends[0], ends[1], rtol=level, atol=level, disable=True)
        else:
            x = k.sample_dpm_fast(model, x, ends[0], ends[1], max(int(level) - 1, 1), disable=True)
        return model(x, x.new_full((x.shape[0],), ends[0])), model.calls

    return run


def _diffusers(kind: str, dtype: torch.dtype = torch.float64, **config: object) -> RunFn:
    r"""diffusers' scheduler ``kind`` with ``config``, on its grid ``grid`` (:data:`DIFFUSERS_GRIDS`),
    the state in ``dtype``. A scheduler that ends at :math:`\sigma = 0` spends the whole budget on
    steps; one that ends at its smallest noise level (DEIS) gets our final denoising step there."""

    def run(problem: Problem, x_init: Tensor, budget: float, grid: str, seed: int) -> tuple[Tensor, int]:
        scheduler = diffusers_scheduler(kind, problem.sde, T_END, grid, **config)
        to_zero = getattr(scheduler.config, "final_sigmas_type", None) == "zero"
        steps = int(budget) if to_zero else steps_within(budget)
        x, sigma_end = run_diffusers(scheduler, problem.sde, problem.denoiser_fn, x_init, steps, dtype)
        if to_zero:
            return x, steps
        t = problem.sde.inverse_log_snr(-2 * sigma_end.log()).reshape(1)
        return problem.denoiser_fn(problem.sde.alpha(t) * x, t.expand(x.shape[0])), steps + 1

    return run


def diffusers_samplers() -> list[Sampler]:
    """diffusers' multistep schedulers, each on its own grids: UniPC (bh1, bh2; orders 2, 3; in
    float32, as its float64 path fails in diffusers 0.42), DPM-Solver++ (2M, 3M) and DEIS (orders
    2, 3)."""
    own = tuple(DIFFUSERS_GRIDS)
    # bh1 on its default last step to sigma = 0 returns NaN (its B(h) = h with h = inf): it ends at
    # its smallest sigma instead, where our denoising step follows
    unipc = [
        Sampler(f"diffusers:unipc_{kind}_{order}", "diffusers", grids=own,
                run=_diffusers("UniPCMultistepScheduler", torch.float32, solver_type=kind, solver_order=order,
                               **({"final_sigmas_type": "sigma_min"} if kind == "bh1" else {})))
        for kind in ("bh1", "bh2") for order in (2, 3)
    ]  # fmt: skip
    dpm = [
        Sampler(f"diffusers:dpmpp_{order}m", "diffusers", grids=own,
                run=_diffusers("DPMSolverMultistepScheduler", solver_order=order))
        for order in (2, 3)
    ]  # fmt: skip
    deis = [
        Sampler(f"diffusers:deis_{order}", "diffusers", _diffusers("DEISMultistepScheduler", solver_order=order),
                grids=own)
        for order in (2, 3)
    ]  # fmt: skip
    return unipc + dpm + deis


def levels(sampler: Sampler, budgets: list[int]) -> list[float]:
    """The levels ``sampler`` runs at: the tolerances if adaptive, else the NFE budgets (a
    ``+tuned`` sampler's up to :data:`TUNED_MAX_NFE`)."""
    if sampler.adaptive:
        return list(ADAPTIVE_TOLERANCES)
    return [float(b) for b in budgets if sampler.tuned_method is None or b <= TUNED_MAX_NFE]


def all_samplers(with_k_diffusion: bool, with_diffusers: bool = False) -> list[Sampler]:
    """Ours, and the peers' that are installed and asked for."""
    multistep = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3", "ipndm", "deis_3")
    ours = [Sampler(f"scoresde:{m}", "scoresde", _ours_ode(m)) for m in multistep]
    ours += [Sampler(f"scoresde:{m}_afs", "scoresde", _ours_ode(m, afs=True)) for m in AFS]
    ours += [
        Sampler(f"scoresde:{m}+{'tuned' if search == 'nelder_mead' else search}", "scoresde", _ours_ode(m),
                tuned_method=m, tuned_search=search)
        for m, search in TUNED
    ]  # fmt: skip
    ours += [
        Sampler("scoresde:euler", "scoresde", _ours_ode("euler")),
        Sampler("scoresde:heun", "scoresde", _ours_ode("heun", 2)),
        Sampler("scoresde:dopri5", "scoresde", _ours_adaptive("dopri5"), takes_grid=False, adaptive=True),
        Sampler("scoresde:sde_euler", "scoresde", _ours_stochastic("euler_maruyama"), deterministic=False),
        Sampler("scoresde:pc_ancestral", "scoresde", _ours_stochastic("ancestral"), deterministic=False),
        Sampler("scoresde:pc_langevin", "scoresde", _ours_stochastic("langevin"), deterministic=False),
    ]
    if with_diffusers and load_diffusers_schedulers() is not None:
        ours += diffusers_samplers()
    if not with_k_diffusion:
        return ours
    peers = [Sampler(f"k-diffusion:{m}", "k-diffusion", _k_fixed(m)) for m in ("euler", "lms", "dpmpp_2m")]
    peers += [Sampler(f"k-diffusion:{m}", "k-diffusion", _k_fixed(m, 2)) for m in ("heun", "dpm_2")]
    peers += [
        Sampler("k-diffusion:dpm_fast", "k-diffusion", _k_dpm_solver(False), takes_grid=False),
        Sampler("k-diffusion:dpm_adaptive", "k-diffusion", _k_dpm_solver(True), takes_grid=False, adaptive=True),
    ]
    peers += [
        Sampler(f"k-diffusion:{m}", "k-diffusion", _k_fixed(m, stochastic=True), deterministic=False)
        for m in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde")
    ]
    return ours + peers
