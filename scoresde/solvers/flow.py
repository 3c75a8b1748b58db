r"""The one probability-flow solve: ``sample_ode`` (torchdiffeq methods), ``log_likelihood``,
``encode`` and ``decode`` all integrate :math:`\dot x = v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)`
through :func:`solve_flow`, which picks the coordinates, runs :func:`scoresde.solvers.odeint.odeint`
and returns states in the SDE's own coordinates (plus, on request, the log-density change).

Coordinates. In :math:`y = x/\alpha_t` and :math:`\bar\sigma = \sigma_t/\alpha_t` every linear SDE has
the same probability-flow ODE (Karras et al. 2022); SDEs differ only in how time and state are
parametrised, and an adaptive solver's cost depends on that. VE's own time is :math:`\log\bar\sigma`
up to scale, so its state grows like :math:`\sigma_t` and the error control has to follow the
exponential; in VP's time and unit-variance state the same flow is cheaper (a VE likelihood takes
20-45 % fewer evaluations for the same accuracy on the benchmark and notebook mixtures).

So a :class:`~scoresde.LinearSDE` is integrated in the coordinates of the reference VP SDE
(:math:`\beta \in [0.1, 20]`, Song et al. 2021), whatever SDE it is: the clock :math:`u` with
:math:`\lambda(u) = -\log\operatorname{expm1}(B(u))`, :math:`B(u) = 0.1\,u + 9.95\,u^2` (the
reference VP SDE's own time) and :math:`t = \lambda_{sde}^{-1}(\lambda(u))`, and the state
:math:`w = x / s_t`, :math:`s_t^2 = \alpha_t^2 + \sigma_t^2` (the marginal standard deviation of
unit-variance data; 1 for VP). Then

.. math:: \frac{dw}{du} = -\tfrac12\,\beta(u)\,\big(w + s_t\, s_\theta(s_t w,\, t)\big),
          \qquad \beta(u) = B'(u), \qquad \log p_w(w) = \log p_x(x) + D\log s_t,

and :math:`dw/du = 0` for :math:`\mathcal N(0, I)` data. For the reference VP SDE this is the
identity: same ODE, same steps. Any other :class:`~scoresde.SDE`, and a linear SDE without a
closed-form ``inverse_log_snr``, is integrated as :math:`dx/dt` in its own time.

Log-density. With a divergence the state is :math:`[w, \delta]`, :math:`d\delta/du = \nabla_w\cdot
(dw/du)`, the instantaneous change of variables (Chen et al. 2018), and
:math:`\log p_{t_0}(x_0) = \log p_{t_1}(x_1) + \delta + D(\log s_{t_1} - \log s_{t_0})`; the
coordinates add their own log-determinant (:meth:`FlowCoordinates.log_det`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde._tensor import append_dims, as_time
from scoresde.sde.base import SDE, LinearSDE
from scoresde.sde.vp import LinearBeta
from scoresde.solvers._common import CountingScore
from scoresde.solvers.embedded import GridSolution, solve_on_grid
from scoresde.solvers.methods import Method, is_flow_solver, lookup, names
from scoresde.solvers.odeint import check_tolerances, odeint

REFERENCE_SCHEDULE = LinearBeta(beta_min=0.1, beta_max=20.0)
"""The reference VP schedule whose time is the clock."""

Divergence = Callable[[Tensor, Tensor, bool], Tensor]
"""``(v, x, create_graph) -> (batch,)``: the divergence of ``v`` (computed from the leaf ``x``)."""
ProbedDivergence = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``(v, x, probes) -> (batch,)``: the same without a graph, given the rows' Hutchinson probes
``(K, batch, *event)`` (``None``: exact)."""


def log_snr_of_clock(u: Tensor) -> Tensor:
    r""":math:`\lambda(u) = -\log(e^{B(u)} - 1)`."""
    return -torch.expm1(REFERENCE_SCHEDULE.integral(u)).log()


def clock_of_log_snr(lam: Tensor) -> Tensor:
    r"""The clock at log-SNR ``lam``: the reference schedule's time where
    :math:`B = \log(1 + e^{-\lambda})`."""
    return REFERENCE_SCHEDULE.inverse_integral(torch.nn.functional.softplus(-lam))


class FlowField(nn.Module):
    """torchdiffeq's ``(t, x) -> v(x, t)`` for the probability-flow ODE of ``sde`` and a counted
    score (a module, so the adjoint finds the score's parameters)."""

    def __init__(self, sde: SDE, score: CountingScore) -> None:
        super().__init__()
        self.score = score
        self.ode = sde.probability_flow(score)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.ode.velocity(x, as_time(t, x))


class FlowCoordinates:
    """The SDE's own time and state: the clock is ``t``, :math:`w = x` and ``field`` is
    :math:`dx/dt`. The base, and what any :class:`~scoresde.SDE` that is not linear uses."""

    what = "the probability-flow velocity"
    """How error messages name ``field`` (its times are clock values)."""

    def __init__(self, sde: SDE, score: CountingScore) -> None:
        self.field: nn.Module = FlowField(sde, score)

    def clock(self, t: Tensor) -> Tensor:
        """Clock values at SDE times ``t`` (float64, any shape)."""
        return t

    def time(self, u: Tensor) -> Tensor:
        """SDE times at clock values ``u`` (float64, any shape): the inverse of :meth:`clock`."""
        return u

    def scale(self, t: Tensor) -> Tensor:
        """:math:`s_t` with :math:`x = s_t w`, at SDE times ``t`` (float64, any shape)."""
        return torch.ones_like(t)

    def to_state(self, x: Tensor, t: Tensor) -> Tensor:
        """:math:`w = x / s_t` at one time ``t`` (0-d)."""
        return x / self.scale(t).to(x)

    def from_state(self, w: Tensor, t: Tensor) -> Tensor:
        """:math:`x = s_t w`, at one time (0-d ``t``) or at ``(n,)`` times for states ``(n, batch, *event)``."""
        return w * append_dims(self.scale(t), w.ndim).to(w)

    def log_det(self, t0: Tensor, t1: Tensor, num_dims: int) -> Tensor:
        r""":math:`D(\log s_{t_1} - \log s_{t_0})` (0-d float64, ``D = num_dims``): added to the change
        of :math:`\log p_w` along a path from ``t0`` to ``t1`` it gives that of :math:`\log p_x`, since
        :math:`\log p_w = \log p_x + D\log s_t`."""
        return num_dims * (self.scale(t1).log() - self.scale(t0).log())


class ReferenceVPCoordinates(FlowCoordinates):
    """A linear SDE on the reference VP clock, in the state :math:`w = x/s_t` (module docstring).
    ``t_range`` is the solve's ``(earliest, latest)`` SDE time: the times the field computes from
    the clock are kept inside it, since the round trip ``t -> u -> t`` is exact only to rounding
    (``t_min = 1e-5`` came back as ``1e-5 - 8e-21``)."""

    what = "the probability-flow velocity (time on the reference VP clock)"

    def __init__(self, sde: LinearSDE, score: CountingScore, t_range: tuple[float, float]) -> None:
        self.sde = sde
        self.field = _ReferenceVPField(sde, score, t_range)

    def clock(self, t: Tensor) -> Tensor:
        return clock_of_log_snr(self.sde.log_snr(t))

    def time(self, u: Tensor) -> Tensor:
        return self.sde.inverse_log_snr(log_snr_of_clock(u))

    def scale(self, t: Tensor) -> Tensor:
        return (self.sde.alpha(t).square() + self.sde.sigma(t).square()).sqrt()


class _ReferenceVPField(nn.Module):
    """torchdiffeq's ``(u, w) -> dw/du``; a module, so the adjoint finds the score's parameters."""

    def __init__(self, sde: LinearSDE, score: CountingScore, t_range: tuple[float, float]) -> None:
        super().__init__()
        self.sde = sde
        self.score = score
        self.t_range = t_range

    def forward(self, u: Tensor, w: Tensor) -> Tensor:
        b = REFERENCE_SCHEDULE.integral(u)
        t = self.sde.inverse_log_snr(-torch.expm1(b).log()).clamp(*self.t_range)
        scale = (self.sde.alpha(t) * (0.5 * b).exp()).to(w.dtype)  # alpha_t sqrt(1 + e^{-lambda}) = alpha_t e^{B/2}
        half_beta = (0.5 * REFERENCE_SCHEDULE.beta(u)).to(w.dtype)
        return -half_beta * (w + scale * self.score(scale * w, as_time(t, w)))


def flow_coordinates(sde: SDE, score: CountingScore, times: Tensor) -> FlowCoordinates:
    """The reference VP coordinates for a :class:`~scoresde.LinearSDE` with a closed-form
    ``inverse_log_snr``; the SDE's own time and state otherwise (the clock needs :math:`t(\\lambda)`
    at every evaluation, and the generic bisection costs 64 log-SNR evaluations each time).
    ``times`` are the SDE times the solve runs through (float64, monotone)."""
    if isinstance(sde, LinearSDE) and type(sde).inverse_log_snr is not LinearSDE.inverse_log_snr:
        return ReferenceVPCoordinates(sde, score, (times.min().item(), times.max().item()))
    return FlowCoordinates(sde, score)


class _WithDivergence(nn.Module):
    """``(t, (w, delta)) -> (dw/dt, div dw/dt)`` for a flow ``field``.

    With ``build_graph`` and grad mode on (direct backprop, or the adjoint's backward pass) the
    divergence is built with ``create_graph`` so it can be differentiated again; otherwise the
    outputs are detached so no graph outlives one evaluation."""

    def __init__(self, field: nn.Module, divergence: Divergence, build_graph: bool) -> None:
        super().__init__()
        self.field = field
        self.divergence = divergence
        self.build_graph = build_graph

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        w, delta = state
        create_graph = self.build_graph and torch.is_grad_enabled()
        with torch.enable_grad():
            # a fresh leaf unless w is already in the graph we must differentiate through
            w_in = w if create_graph and w.requires_grad else w.detach().requires_grad_(True)
            v = self.field(t, w_in)
            div = self.divergence(v, w_in, create_graph)
        if not create_graph:
            v, div = v.detach(), div.detach()
        return v, div.to(delta.dtype)


def check_flow_args(
    name: str, rtol: float | None, atol: float | None, options: dict[str, Any] | None, num_steps: int | None,
    function: str,
) -> tuple[Method, float, float]:
    """The one contract of every flow solve, checked at the public boundary (``function`` names it
    in messages): a torchdiffeq method of :data:`~scoresde.solvers.methods.METHODS`, and steps chosen
    one way only. An adaptive method chooses its own from ``rtol``/``atol`` (finite numbers > 0,
    default ``1e-5``) and refuses ``num_steps``; a fixed-grid one takes ``num_steps`` steps (or
    torchdiffeq's ``options={"step_size": ...}``, on the clock, which then sets the steps while the
    grid only gives the reported times), refuses to run without them, where
    torchdiffeq would silently take one step over the whole interval, and refuses tolerances it
    would ignore. Returns the method and the tolerances to use."""
    method = lookup(name, function, is_flow_solver)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of torchdiffeq options, got {type(options).__name__}")
    grid_in_options = bool(options) and ("step_size" in options or "grid_constructor" in options)
    if method.adaptive:
        if num_steps is not None:
            raise ValueError(f"method={name!r} chooses its own steps: set rtol/atol, not num_steps={num_steps}")
        rtol, atol = (1e-5 if rtol is None else rtol), (1e-5 if atol is None else atol)
        check_tolerances(rtol, atol)
        return method, rtol, atol
    refuse_tolerances(name, rtol, atol)
    if num_steps is None and not grid_in_options:
        raise ValueError(f"fixed-grid method {name!r} needs num_steps (or options={{'step_size': ...}})")
    return method, 0.0, 0.0  # torchdiffeq's fixed-grid solvers take but never read tolerances


def refuse_tolerances(name: str, rtol: float | None, atol: float | None) -> None:
    """Raise ``ValueError`` if a fixed-step method ``name`` is given a tolerance it would ignore."""
    ignored = [f"{key}={value!r}" for key, value in (("rtol", rtol), ("atol", atol)) if value is not None]
    if ignored:
        raise ValueError(
            f"method={name!r} takes fixed steps and uses no tolerance: drop {', '.join(ignored)} "
            f"or pick an adaptive method {names(lambda m: m.adaptive)}"
        )


@dataclass(frozen=True)
class FlowSolution:
    """Output of :func:`solve_flow`: ``x`` ``(len(times), batch, *event)``, the states at
    ``times``; ``delta_log_prob`` ``(batch,)``, :math:`\\log p_{t_0}(x_0) - \\log p_{t_1}(x_1)`
    between the first and last time (``None`` without a divergence); ``nfe`` score evaluations."""

    x: Tensor
    delta_log_prob: Tensor | None
    nfe: int


def solve_flow(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    times: Tensor,
    *,
    method: Method,
    rtol: float,
    atol: float,
    options: dict[str, Any] | None = None,
    divergence: Divergence | None = None,
    build_graph: bool = False,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
) -> FlowSolution:
    """Integrate the probability-flow ODE of ``sde`` and ``score_fn`` from ``x`` at ``times[0]``
    through the monotone float64 SDE ``times`` (either direction) with the torchdiffeq ``method``
    (from :func:`check_flow_args`).

    Adaptive methods choose their own steps and report the states at ``times``; fixed-grid
    methods take one step per interval of ``times`` (unless ``options`` give a ``step_size`` or
    ``grid_constructor``, on the clock). ``divergence`` adds the log-density change (module
    docstring). The solve runs in the current grad mode; ``build_graph`` keeps the divergence
    differentiable (``adjoint`` implies it). Arguments are trusted: callers validate them.
    """
    score = CountingScore(score_fn)
    coords = flow_coordinates(sde, score, times)
    clock = coords.clock(times)
    w0 = coords.to_state(x, times[0])
    kwargs: dict[str, Any] = {"method": method, "rtol": rtol, "atol": atol, "options": options, "what": coords.what}
    if divergence is None:
        ws = odeint(coords.field, w0, clock, **kwargs)
        return FlowSolution(x=coords.from_state(ws, times), delta_log_prob=None, nfe=score.calls)
    func = _WithDivergence(coords.field, divergence, build_graph=build_graph or adjoint)
    ws, deltas = odeint(
        func, (w0, x.new_zeros(x.shape[0])), clock, adjoint=adjoint, adjoint_params=adjoint_params, **kwargs
    )
    return _solution(coords, x, times, ws, deltas, score.calls)


def _solution(coords: FlowCoordinates, x: Tensor, times: Tensor, ws: Tensor, deltas: Tensor, nfe: int) -> FlowSolution:
    # d delta/du integrates div_w forward in the clock; from log p_w back to log p_x
    delta = deltas[-1] + coords.log_det(times[0], times[-1], x[0].numel()).to(x.dtype)
    return FlowSolution(x=coords.from_state(ws, times), delta_log_prob=delta, nfe=nfe)


def flow_clock(sde: SDE, times: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The clock values of :func:`solve_flow`'s coordinates at the SDE ``times`` (float64), and
    the map back from clock values to SDE times."""
    coords = flow_coordinates(sde, CountingScore(lambda x, t: x), times)
    return coords.clock(times), coords.time


def solve_flow_on_grid(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    times: Tensor,
    *,
    rtol: float,
    atol: float,
    divergence: ProbedDivergence,
    probes: Tensor | None = None,
    refine: bool = True,
) -> tuple[FlowSolution, GridSolution]:
    """:func:`solve_flow` with a divergence, one step of Tsitouras' pair per interval of the
    float64 SDE ``times`` in the same coordinates, refined per sample where its error estimate
    misses ``rtol``/``atol`` unless ``refine`` is off (:func:`scoresde.solvers.embedded.solve_on_grid`,
    whose statistics come back beside the solution). ``probes`` ``(K, batch, *event)`` (Hutchinson's)
    go to ``divergence`` with the samples being stepped. Without the autograd graph."""
    score = CountingScore(score_fn)
    coords = flow_coordinates(sde, score, times)

    def func(u: Tensor, state: tuple[Tensor, ...], constants: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        rows = constants[0].transpose(0, 1) if constants else None  # back to (K, rows, *event)
        with_div = _WithDivergence(coords.field, lambda v, w, _: divergence(v, w, rows), build_graph=False)
        return with_div(u, state)

    grid = solve_on_grid(
        func, (coords.to_state(x, times[0]), x.new_zeros(x.shape[0])), coords.clock(times).to(x.device),
        rtol=rtol, atol=atol,
        constants=() if probes is None else (probes.transpose(0, 1),), refine=refine, what=coords.what,
    )  # fmt: skip
    ws, deltas = grid.states
    return _solution(coords, x, times, ws, deltas, score.calls), grid
