r"""Fixed steps with an error estimate, refined per sample: Tsitouras' 5(4) pair
(:mod:`scoresde.solvers.tsit5`) stepped along a given clock grid. It runs the likelihood on a grid
designed from a pilot batch (:func:`scoresde.likelihood_grid`).

torchdiffeq's adaptive solvers give the whole batch one step size, which its worst sample sets at
every step, and its fixed-grid solvers have no error estimate; neither keeps a grid and checks
each sample against it. Here each interval of the grid is one step for the whole batch, with the
embedded error estimate :math:`e = h\sum_i (b_i - \hat b_i) k_i` judged per sample by

.. math:: r_b = \max_{\text{parts}} \operatorname{RMS}_b\Big(\frac{e}{\text{atol} + \text{rtol}
          \max(|y_0|, |y_1|)}\Big)

(the norm of :func:`~scoresde.solvers.odeint.per_sample_norm`, sample by sample). The samples with
:math:`r_b > 1` (or not finite) take that interval again in two halves, recursively, at most
``max_depth`` times; the others keep the step. So every sample meets the tolerance on every step it
took, as in an adaptive solve, and a sample's result does not depend on its batch-mates. A
refined sample's extra evaluations run on the sub-batch of refined samples. Deciding which samples
to refine costs one host sync per step, as an adaptive solver's accept/reject does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scoresde.solvers._common import NonFiniteError
from scoresde.solvers.tsit5 import B_HAT, A, B, C

State = tuple[Tensor, ...]
Field = Callable[[Tensor, State, State], State]
"""``(u, y, constants) -> dy/du``: ``constants`` are per-sample tensors (batch first) that ride
along with the samples being stepped, as Hutchinson probes must."""
ERROR_WEIGHTS = tuple(b - b_hat for b, b_hat in zip(B, B_HAT, strict=True))
""":math:`b - \\hat b`, the weights of the error estimate."""
EVALS_PER_STEP = len(C)
"""Evaluations per step: six, the seventh stage being the next step's first (FSAL)."""


@dataclass(frozen=True)
class GridSolution:
    """Output of :func:`solve_on_grid`.

    Attributes:
        states: the state at each node of the clock grid, ``(len(clock), batch, ...)`` per part.
        calls: evaluations of the field, on the batch or a refined sub-batch.
        sample_evaluations: ``(batch,)`` evaluations each sample took part in.
        step_ratios: ``(len(clock) - 1,)`` the worst sample's error ratio on each interval, taken
            whole (before any refinement).
    """

    states: State
    calls: int
    sample_evaluations: Tensor
    step_ratios: Tensor


def sample_error_ratio(error: State, y0: State, y1: State, rtol: float, atol: float) -> Tensor:
    """``(batch,)``: each sample's RMS of ``error`` over ``atol + rtol * max(|y0|, |y1|)``, the
    largest over the parts of the state."""
    ratios = [
        (e / (atol + rtol * torch.maximum(a.abs(), b.abs()))).reshape(e.shape[0], -1).square().mean(1).sqrt()
        for e, a, b in zip(error, y0, y1, strict=True)
    ]
    return torch.stack(ratios).amax(0)


def tsit5_step(
    func: Field, y: State, k0: State, u0: Tensor, h: Tensor, constants: State = ()
) -> tuple[State, State, State]:
    """One step of Tsitouras' pair from ``(u0, y)`` with ``k0 = func(u0, y, constants)``: the
    fifth-order solution, the field there (for the next step) and the error estimate."""
    stages = [k0]
    for row, c in zip(A, C, strict=True):
        stage_y = tuple(
            part + h.to(part.dtype) * sum(a * k[p] for a, k in zip(row, stages, strict=False))
            for p, part in enumerate(y)
        )
        stages.append(func(u0 + c * h, stage_y, constants))
    error = tuple(
        h.to(part.dtype) * sum(w * k[p] for w, k in zip(ERROR_WEIGHTS, stages, strict=True))
        for p, part in enumerate(y)
    )
    return stage_y, stages[-1], error  # the last stage's point is the solution (first same as last)


def solve_on_grid(
    func: Field, y0: State, clock: Tensor, *, rtol: float, atol: float, constants: State = (), refine: bool = True,
    max_depth: int = 12, what: str = "the ODE",
) -> GridSolution:
    """Integrate ``dy/du = func(u, y, constants)`` (``y`` and ``constants`` tuples of
    ``(batch, ...)`` tensors) through the monotone float64 ``clock`` grid, one step per interval,
    refining per sample (module docstring; ``refine=False`` takes every interval whole and only
    measures). Raises :class:`~scoresde.solvers.NonFiniteError` naming the interval if a sample
    still misses the tolerance after ``max_depth`` halvings (``what`` names the field)."""
    batch = y0[0].shape[0]
    counts = torch.zeros(batch, dtype=torch.long, device=y0[0].device)
    calls = 1
    ratios: list[Tensor] = []

    def advance(
        y: State, k0: State, c: State, u0: Tensor, u1: Tensor, rows: Tensor, depth: int
    ) -> tuple[State, State]:
        nonlocal calls
        y1, k1, error = tsit5_step(func, y, k0, u0, u1 - u0, c)
        calls += EVALS_PER_STEP
        counts.index_add_(0, rows, torch.full_like(rows, EVALS_PER_STEP))
        ratio = sample_error_ratio(error, y, y1, rtol, atol)
        if depth == 0:
            ratios.append(torch.where(ratio.isnan(), torch.inf, ratio).amax())
        if not refine:
            return y1, k1
        bad = (~(ratio <= 1)).nonzero().squeeze(1)  # the one host sync of the step
        if bad.numel() == 0:
            return y1, k1
        if depth == max_depth:
            raise NonFiniteError(
                f"{what}: {bad.numel()} sample(s) still miss rtol={rtol}, atol={atol} (or are not finite) "
                f"after {max_depth} halvings of the clock interval [{u0.item():.6g}, {u1.item():.6g}]: "
                "design the grid again (likelihood_grid) or loosen the tolerances"
            )
        half = 0.5 * (u0 + u1)
        sub_y, sub_k, sub_c = (tuple(p[bad] for p in parts) for parts in (y, k0, c))
        mid_y, mid_k = advance(sub_y, sub_k, sub_c, u0, half, rows[bad], depth + 1)
        end_y, end_k = advance(mid_y, mid_k, sub_c, half, u1, rows[bad], depth + 1)
        y1 = tuple(p.index_copy(0, bad, q) for p, q in zip(y1, end_y, strict=True))
        k1 = tuple(p.index_copy(0, bad, q) for p, q in zip(k1, end_k, strict=True))
        return y1, k1

    rows = torch.arange(batch, device=counts.device)
    counts += 1
    y, k = y0, func(clock[0], y0, constants)
    states = [y0]
    for u0, u1 in itertools.pairwise(clock):
        y, k = advance(y, k, constants, u0, u1, rows, 0)
        states.append(y)
    stacked = tuple(torch.stack([s[p] for s in states]) for p in range(len(y0)))
    return GridSolution(stacked, calls, counts, torch.stack(ratios) if ratios else clock.new_zeros(0))
