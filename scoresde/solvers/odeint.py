r"""The one adapter onto torchdiffeq (Chen et al. 2018), used by ``sample_ode`` and by the
likelihood, encode and decode.

torchdiffeq calls ``func(t, y)`` with a 0-d time; :class:`FlowField` gives it the
probability-flow velocity :math:`v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)`, which needs
only ``drift`` and ``diffusion``, so any :class:`~scoresde.SDE` works. Time runs in float64
while the state keeps its dtype. Three of
torchdiffeq's habits are corrected here:

* adaptive steps overshoot the last time and interpolate back, evaluating the score outside
  ``[t_min, T]`` (NaN below ``t = 0`` for VP): the last step is made to land on it;
* the default error norm is the RMS over the whole batch, which divides one sample's error by
  about ``sqrt(batch)`` (the worst of 200 mixture points came out 20-30x less accurate than
  asked): the worst sample's RMS is used instead, so ``rtol``/``atol`` hold per sample at about
  20% more NFE (``benchmarks/likelihood.py``);
* NaN, overflow and stiffness all surface as a bare "underflow in dt" ``AssertionError``: the
  first non-finite evaluation is recorded on the device and reported by index and time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from scoresde._tensor import as_time
from scoresde.sde.base import SDE
from scoresde.solvers import tsit5
from scoresde.solvers._common import CountingScore, FirstNonFinite, NonFiniteError

ADAPTIVE_ODEINT_METHODS = ("tsit5", "dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
"""torchdiffeq's adaptive methods, and Tsitouras' pair run by its solver (:mod:`scoresde.solvers.tsit5`)."""
FIXED_GRID_ODEINT_METHODS = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams",
)  # fmt: skip
ODEINT_METHODS = ADAPTIVE_ODEINT_METHODS + FIXED_GRID_ODEINT_METHODS

State = Tensor | tuple[Tensor, ...]


def check_odeint_args(method: str, rtol: float, atol: float) -> None:
    """Raise ``ValueError`` for an unknown torchdiffeq method or a tolerance that is not a
    finite number > 0."""
    if method not in ODEINT_METHODS:
        raise ValueError(f"method must be one of {ODEINT_METHODS}, got {method!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0 or not math.isfinite(tol):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")


def per_sample_norm(state: State) -> Tensor:
    """Step-size control norm: the worst sample's RMS of the scaled error, each tensor of the
    state taken separately."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.stack([p.reshape(p.shape[0], -1).square().mean(1).sqrt().amax() for p in parts]).amax()


class FlowField(nn.Module):
    """torchdiffeq's ``(t, x) -> v(x, t)`` for the probability-flow ODE of ``sde`` and a counted
    score (a module, so the adjoint finds the score's parameters)."""

    def __init__(self, sde: SDE, score: CountingScore) -> None:
        super().__init__()
        self.score = score
        self.ode = sde.probability_flow(score)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.ode.velocity(x, as_time(t, x))


class _Recorded(nn.Module):
    """Wraps ``func`` and records the first evaluation whose output is not finite."""

    def __init__(self, func: nn.Module, first_bad: FirstNonFinite) -> None:
        super().__init__()
        self.func = func
        self.first_bad = first_bad
        self.calls = 0

    def forward(self, t: Tensor, y: State) -> State:
        out = self.func(t, y)
        self.calls += 1
        self.first_bad.record(out[0] if isinstance(out, tuple) else out, self.calls, t)
        return out


def odeint(
    func: nn.Module,
    y0: State,
    times: Tensor,
    *,
    method: str,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None = None,
    adjoint: bool = False,
    adjoint_params: tuple[Tensor, ...] | None = None,
    what: str = "the probability-flow velocity",
) -> State:
    """Solve ``dy/dt = func(t, y)`` through the monotone ``times`` (kept in float64) and return
    the states at ``times``, ``(len(times), *y.shape)`` per tensor of the state. Raises
    :class:`~scoresde.solvers.NonFiniteError` naming the first evaluation of ``func`` whose
    (first) output was not finite (as ``what``), or when the step size underflows."""
    import torchdiffeq

    tsit5.register()
    like = y0[0] if isinstance(y0, tuple) else y0
    times = times.to(device=like.device, dtype=torch.float64)
    first_bad = FirstNonFinite()
    recorded = _Recorded(func, first_bad)
    options = dict(options or {})
    adjoint_options = dict(options)
    if method in ADAPTIVE_ODEINT_METHODS:
        options.setdefault("norm", per_sample_norm)
        options.setdefault("step_t", times[-1:])
        adjoint_options.setdefault("step_t", times[:1])  # the adjoint runs back to the start
    kwargs: dict[str, Any] = {"rtol": rtol, "atol": atol, "method": method, "options": options}
    what = f"{what} ({method})"
    try:
        if adjoint:
            params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
            states = torchdiffeq.odeint_adjoint(
                recorded, y0, times, adjoint_params=params, adjoint_options=adjoint_options, **kwargs
            )
        else:
            states = torchdiffeq.odeint(recorded, y0, times, **kwargs)
    except AssertionError as err:  # torchdiffeq's only report, for NaN and stiffness alike
        first_bad.raise_if_any(what, unit="evaluation")
        raise NonFiniteError(
            f"the ODE step size underflowed between t={times[0].item():.6g} and t={times[-1].item():.6g} "
            f"(torchdiffeq {method}: {err}): too stiff for rtol={rtol}, atol={atol}; try a larger t_min "
            "or looser tolerances"
        ) from err
    first_bad.raise_if_any(what, unit="evaluation")
    return states
