r"""The one adapter onto torchdiffeq (Chen et al. 2018), used by the probability-flow solve
(:mod:`scoresde.solvers.flow`).

torchdiffeq calls ``func(t, y)`` with a 0-d time. Time runs in float64 while the state keeps
its dtype. Four of torchdiffeq's habits are corrected here:

* adaptive steps overshoot the last time and interpolate back, evaluating the score outside
  ``[t_min, T]`` (NaN below ``t = 0`` for VP): the last step is made to land on it;
* the initial step-size guess (Hairer et al., *Solving ODEs I*, II.4) tries a step of
  :math:`0.01\,\|y_0\| / \|f(y_0)\|`, which runs far past the end of the interval where the
  velocity is nearly zero (one sample or a small batch near :math:`\mathcal N(0, I)`; the score
  was seen at ``t = 5.25``, ``269`` and NaN): the same guess is made here with the trial step
  capped at the interval's length (:func:`initial_step`), so no evaluation leaves it;
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

from scoresde.solvers import tsit5
from scoresde.solvers._common import FirstNonFinite, NonFiniteError
from scoresde.solvers.methods import Method

State = Tensor | tuple[Tensor, ...]


def check_tolerances(rtol: float, atol: float) -> None:
    """Raise ``ValueError`` for a tolerance that is not a finite number > 0."""
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0 or not math.isfinite(tol):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")


def per_sample_norm(state: State) -> Tensor:
    """Step-size control norm: the worst sample's RMS of the scaled error, each tensor of the
    state taken separately."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.stack([p.reshape(p.shape[0], -1).square().mean(1).sqrt().amax() for p in parts]).amax()


def _parts(state: State) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


@torch.no_grad()
def initial_step(
    func: nn.Module, t0: Tensor, t1: Tensor, y0: State, f0: State, *, order: int, rtol: float, atol: float,
) -> Tensor:
    r"""The first step of an adaptive solve of order ``order`` from ``t0`` towards ``t1``
    (float64 0-d times): Hairer, Nørsett & Wanner (*Solving ODEs I*, II.4), as torchdiffeq makes
    it, except that the trial step :math:`h_0 = 0.01\,\|y_0\|/\|f_0\|` is capped at
    :math:`|t_1 - t_0|`, so the one trial evaluation :math:`f_1 = f(t_0 \pm h_0, y_0 \pm h_0 f_0)`
    stays inside the interval. With :math:`d_2 = \|f_1 - f_0\|/h_0` it returns
    :math:`\min(100 h_0, (0.01/\max(d_1, d_2))^{1/\text{order}})`, a positive 0-d float64
    tensor; the norms are :func:`per_sample_norm` of the state over
    :math:`\text{atol} + \text{rtol}\,|y_0|`, in the state's dtype as torchdiffeq takes them."""
    y0s, f0s = _parts(y0), _parts(f0)
    scales = [atol + y.abs() * rtol for y in y0s]
    d0 = per_sample_norm(tuple(y / s for y, s in zip(y0s, scales, strict=True)))
    d1 = per_sample_norm(tuple(f / s for f, s in zip(f0s, scales, strict=True)))
    h0 = torch.full_like(d0, 1e-6) if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    span = (t1 - t0).abs()
    h0_time = torch.minimum(h0.abs().to(span.dtype), span)  # the cap, in float64 so t0 + h0 <= t1 exactly
    h0 = h0_time.to(h0.dtype)
    direction = 1.0 if t1 > t0 else -1.0
    y1 = tuple(y + direction * h0 * f for y, f in zip(y0s, f0s, strict=True))
    f1s = _parts(func(t0 + direction * h0_time, y1 if isinstance(y0, tuple) else y1[0]))
    d2 = per_sample_norm(tuple((a - b) / s for a, b, s in zip(f1s, f0s, scales, strict=True))) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3)
    else:
        h1 = (0.01 / torch.maximum(d1, d2)) ** (1.0 / order)
    return torch.minimum(100 * h0, h1.abs()).to(span.dtype)


class _Recorded(nn.Module):
    """Wraps ``func`` and records the first evaluation whose output is not finite. ``replay``
    gives an output to return, without evaluating, on the next call (torchdiffeq's first
    evaluation, ``f(t_0, y_0)``, when it was already made for :func:`initial_step`)."""

    def __init__(self, func: nn.Module, first_bad: FirstNonFinite) -> None:
        super().__init__()
        self.func = func
        self.first_bad = first_bad
        self.calls = 0
        self.replay: State | None = None

    def forward(self, t: Tensor, y: State) -> State:
        if self.replay is not None:
            out, self.replay = self.replay, None
            return out
        out = self.func(t, y)
        self.calls += 1
        self.first_bad.record(out[0] if isinstance(out, tuple) else out, self.calls, t)
        return out


def odeint(
    func: nn.Module,
    y0: State,
    times: Tensor,
    *,
    method: Method,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None = None,
    adjoint: bool = False,
    adjoint_params: tuple[Tensor, ...] | None = None,
    what: str = "the probability-flow velocity",
) -> State:
    """Solve ``dy/dt = func(t, y)`` with the torchdiffeq ``method`` of
    :data:`~scoresde.solvers.methods.METHODS` through the monotone ``times`` (kept in float64)
    and return the states at ``times``, ``(len(times), *y.shape)`` per tensor of the state. Raises
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
    what = f"{what} ({method.name})"
    try:
        if method.adaptive:
            options.setdefault("norm", per_sample_norm)
            options.setdefault("step_t", times[-1:])
            adjoint_options.setdefault("step_t", times[:1])  # the adjoint runs back to the start
            if "first_step" not in options:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not adjoint):
                    f0 = recorded(times[0], y0)
                first_bad.raise_if_any(what, unit="evaluation")
                step = initial_step(recorded, times[0], times[-1], y0, f0, order=method.order, rtol=rtol, atol=atol)
                recorded.replay = f0
                options["first_step"] = step
                # the adjoint's backward solve starts from a step of the same size, not from a guess
                # made on the augmented state (which has the same overshoot)
                adjoint_options.setdefault("first_step", step)
        kwargs: dict[str, Any] = {"rtol": rtol, "atol": atol, "method": method.target, "options": options}
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
            f"(torchdiffeq {method.name}: {err}): too stiff for rtol={rtol}, atol={atol}; try a larger t_min "
            "or looser tolerances"
        ) from err
    first_bad.raise_if_any(what, unit="evaluation")
    return states
