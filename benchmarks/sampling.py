"""The sampling benchmark: every sampler at every NFE budget on every problem, in one run.

For each problem and budget: each grid-taking deterministic sampler gets its grid chosen on a
pilot run (:func:`~benchmarks.grids.select_grid`, different noise); the ``+tuned`` samplers
then search a grid from there by :func:`~scoresde.search_time_grid` on the same pilot noise
(half of it to search, half to validate against the standard grids);
stochastic samplers use their library's recommended grid. Then
:func:`scoresde.benchmark.compare_samplers` runs all samplers round-robin ``repeats`` times on
the evaluation noise (median wall time) and scores them against the exact answers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from torch import Tensor

from benchmarks.grids import CANDIDATES, RECOMMENDED, make_grid, select_grid
from benchmarks.samplers import Sampler, levels, steps_within
from scoresde import pathwise_rmse, search_time_grid
from scoresde.benchmark import T_END, Problem, SamplerFn, compare_samplers

PILOT_SEED = 10
NOISE_SEED = 3
Grid = tuple[str, str | Tensor, dict]
"""A grid's label for the table, the grid (a candidate's name, or a searched tensor), and what
the search cost (``grid_search_nfe``, ``grid_search_seconds``; empty for a candidate)."""


def _pilot_grid(
    sampler: Sampler, pilot: Problem, level: float, grids: tuple[str, ...], selected: dict[tuple[str, float], str]
) -> Grid:
    """``sampler``'s grid at ``level``. ``selected`` holds the candidate each sampler chose at
    each level, so a ``+tuned`` sampler starts from its untuned twin's choice (the same solver
    on the same pilot) instead of selecting again."""
    if not (sampler.takes_grid and sampler.deterministic):
        return RECOMMENDED[sampler.library], RECOMMENDED[sampler.library], {}

    def pilot_rmse(grid: str) -> float:
        try:
            x, _ = sampler.run(pilot, pilot.x_init, level, grid, NOISE_SEED)
        except (ValueError, FloatingPointError):
            return math.inf
        return pathwise_rmse(x, pilot.reference).nan_to_num(math.inf).item()

    key = (sampler.name.split("+")[0], level)
    if key not in selected:
        selected[key] = select_grid(pilot_rmse, sampler.grids or grids)
    best = selected[key]
    if sampler.tuned_method is None:
        return best, best, {}
    steps = steps_within(level)
    init = make_grid(pilot.sde, steps, best, T_END)  # the search keeps its end (the reference stays at T_END)
    found = search_time_grid(
        pilot.score_fn, pilot.sde, pilot.x_init, steps, method=sampler.tuned_method, search=sampler.tuned_search,
        t_end=init[-1].item(), init=init, reference=pilot.reference,
    )  # fmt: skip
    label = f"{sampler.tuned_search}({best})" if found.chosen == sampler.tuned_search else f"fallback:{found.chosen}"
    return label, found.grid, {"grid_search_nfe": found.nfe, "grid_search_seconds": found.seconds}


def _on_grids(sampler: Sampler, grids: dict[float, Grid]) -> SamplerFn:
    """``sampler`` as a :data:`~scoresde.benchmark.SamplerFn`, on its grid of each level."""
    return lambda problem, x_init, level: sampler.run(problem, x_init, level, grids[level][1], NOISE_SEED)


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
    runs = {s.name: (s, levels(s, budgets)) for s in samplers}
    runs = {name: run for name, run in runs.items() if run[1]}
    level_order = dict.fromkeys(lv for _, lvs in runs.values() for lv in lvs)
    rows = []
    for problem in problems:
        pilot = dataclasses.replace(problem, num_samples=pilot_size, seed=PILOT_SEED)
        selected: dict[tuple[str, float], str] = {}
        chosen: dict[str, dict[float, Grid]] = {name: {} for name in runs}
        for level in level_order:  # level by level, so a +tuned sampler finds its twin's choice
            for name, (sampler, lvs) in runs.items():
                if level in lvs:
                    chosen[name][level] = _pilot_grid(sampler, pilot, level, grids, selected)
        measured = compare_samplers(
            {name: _on_grids(sampler, chosen[name]) for name, (sampler, _) in runs.items()}, [problem],
            {name: lvs for name, (_, lvs) in runs.items()}, repeats=repeats, log=log,
            stochastic=[name for name, (sampler, _) in runs.items() if not sampler.deterministic],
        )  # fmt: skip
        for row in measured:
            sampler = runs[row["sampler"]][0]
            mixture, sde = problem.name.split("-")
            label, _, cost = chosen[sampler.name][row["level"]] if sampler.takes_grid else ("own", None, {})
            rows.append({"problem": problem.name, "mixture": mixture, "sde": sde, "library": sampler.library,
                         "grid": label} | cost | row)  # fmt: skip
    return rows
