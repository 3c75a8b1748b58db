r"""Adapter onto torchdiffeq's ``odeint`` for the probability-flow ODE (Chen et al. 2018).

torchdiffeq calls ``func(t, y)`` with a 0-d time; here the velocity is
:math:`v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)`, which needs only ``drift`` and
``diffusion``, so any :class:`~scoresde.SDE` works. Time is passed in float64 while the state
keeps its own dtype; rtol/atol are always passed (torchdiffeq's defaults are very tight).
Adaptive methods (dopri5, dopri8, bosh3, ...) choose their own steps and one step size for
the whole batch; fixed-grid methods (rk4, midpoint, ...) take one step per interval of the
given time grid.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from scoresde._tensor import as_time
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import FirstNonFinite, NonFiniteError

ODEINT_METHODS = (
    "dopri8",
    "dopri5",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
)
FIXED_GRID_ODEINT_METHODS = ODEINT_METHODS[5:]  # one step per interval of the given time grid


def odeint_pf_ode(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    times: Tensor,
    *,
    method: str,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """Integrate the PF ODE from ``times[0]`` through the monotone float64 ``times`` and return
    the states ``(len(times), *x.shape)``. Raises
    :class:`~scoresde.solvers.NonFiniteError` naming the first score evaluation (its index
    and time) that gave a non-finite velocity."""
    from torchdiffeq import odeint

    if method not in ODEINT_METHODS:
        raise ValueError(f"method must be one of torchdiffeq's {ODEINT_METHODS}, got {method!r}")
    flow = sde.probability_flow(score_fn)
    evaluations = 0
    first_bad = FirstNonFinite(x.device)

    def func(t: Tensor, y: Tensor) -> Tensor:
        nonlocal evaluations
        evaluations += 1
        v = flow.velocity(y, as_time(t, y))
        first_bad.record(v, evaluations, t)
        return v

    if method not in FIXED_GRID_ODEINT_METHODS:
        # adaptive RK steps may overshoot the last time and interpolate back, evaluating the
        # score past t_end (at t < 0 for VP: NaN); make the steps land on it instead
        options = {"step_t": times[-1:], **(options or {})}
    what = f"the probability-flow velocity ({method})"
    try:
        states = odeint(func, x, times, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as err:  # torchdiffeq reports NaN and stiffness alike as "underflow in dt"
        first_bad.raise_if_any(what, unit="score evaluation")
        raise NonFiniteError(f"torchdiffeq ({method}) failed: {err} (too stiff for rtol/atol?)") from err
    first_bad.raise_if_any(what, unit="score evaluation")
    return states
