"""The sampling benchmark: every sampler at every NFE budget on every problem, in one run.

For each problem and budget: each grid-taking deterministic sampler gets its grid chosen on a
pilot run (:func:`~scoresde.bench.grids.select_grid`, different noise); the ``+tuned`` samplers
then move the steps of that grid by :func:`~scoresde.tune_time_grid` on the same pilot noise;
stochastic samplers use their library's recommended grid. Then all samplers run round-robin
``repeats`` times on the evaluation noise (median wall time) and are scored against the exact
answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from scoresde.bench.grids import CANDIDATES, RECOMMENDED, make_grid, select_grid
from scoresde.bench.measure import distribution_errors, interleaved_times, pathwise_errors
from scoresde.bench.problems import T_END, Problem
from scoresde.bench.samplers import ADAPTIVE_TOLERANCES, TUNED_MAX_NFE, Sampler, steps_within
from scoresde.grid_tuning import tune_time_grid
from scoresde.metrics import pathwise_rmse

PILOT_SEED = 10
NOISE_SEED = 3


def _pilot_grid(
    sampler: Sampler, pilot: Problem, level: float, grids: tuple[str, ...], selected: dict[tuple[str, float], str]
) -> tuple[str, str | Tensor]:
    """The grid's label for the table and the grid (a name, or a tuned tensor). ``selected``
    holds the candidate each sampler chose at each level, so a ``+tuned`` sampler starts from
    its untuned twin's choice (the same solver on the same pilot) instead of selecting again."""
    if not (sampler.takes_grid and sampler.deterministic):
        return RECOMMENDED[sampler.library], RECOMMENDED[sampler.library]

    def pilot_rmse(grid: str) -> float:
        try:
            x, _ = sampler.run(pilot, pilot.x_init, level, grid, NOISE_SEED)
        except (ValueError, FloatingPointError):
            return math.inf
        return pathwise_rmse(x, pilot.reference).nan_to_num(math.inf).item()

    key = (sampler.name.removesuffix("+tuned"), level)
    if key not in selected:
        selected[key] = select_grid(pilot_rmse, grids)
    best = selected[key]
    if sampler.tuned_method is None:
        return best, best
    steps = steps_within(level)
    tuned = tune_time_grid(
        pilot.score_fn, pilot.sde, pilot.x_init, steps, method=sampler.tuned_method, t_end=T_END,
        init=make_grid(pilot.sde, steps, best, T_END), reference=pilot.reference,
    )  # fmt: skip
    return f"tuned({best})", tuned


def _row(problem: Problem, sampler: Sampler, level: float, grid: str, seconds: float, out) -> dict:
    x, nfe = out
    row = {
        "problem": problem.name, "mixture": problem.mixture_name, "sde": problem.sde_name,
        "sampler": sampler.name, "library": sampler.library, "deterministic": sampler.deterministic,
        "level": level, "grid": grid if sampler.takes_grid else "own", "nfe": nfe, "seconds": seconds,
    }  # fmt: skip
    if sampler.deterministic:
        row |= pathwise_errors(problem, x)
    return row | distribution_errors(problem, x)


def run_sampling(
    problems: list[Problem],
    samplers: list[Sampler],
    budgets: list[int],
    *,
    pilot_size: int,
    repeats: int,
    grids: tuple[str, ...] = CANDIDATES,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """All rows (one per problem, sampler and budget or tolerance) as plain dicts."""
    rows = []
    for problem in problems:
        pilot = Problem(problem.mixture_name, problem.sde_name, pilot_size, seed=PILOT_SEED)
        log(f"# {problem.name}: {problem.num_samples} samples, reference ready ({problem.reference.shape[0]})")
        fixed = [s for s in samplers if not s.adaptive]
        adaptive = [s for s in samplers if s.adaptive]
        jobs = [(s, float(b)) for b in budgets for s in fixed if s.tuned_method is None or b <= TUNED_MAX_NFE]
        jobs += [(s, tol) for tol in ADAPTIVE_TOLERANCES for s in adaptive]
        selected: dict[tuple[str, float], str] = {}
        for level in dict.fromkeys(level for _, level in jobs):
            batch = [(s, lv, *_pilot_grid(s, pilot, lv, grids, selected)) for s, lv in jobs if lv == level]
            calls = [
                (lambda s=s, lv=lv, g=g, p=problem: s.run(p, p.x_init, lv, g, NOISE_SEED)) for s, lv, _, g in batch
            ]
            seconds, outs = interleaved_times(calls, repeats)
            for (s, lv, label, _), sec, out in zip(batch, seconds, outs, strict=True):
                rows.append(_row(problem, s, lv, label, sec, out))
            log(f"  level {level:g}: {len(batch)} samplers")
    return rows
