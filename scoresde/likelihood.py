r"""Exact likelihoods and latent codes through the probability-flow ODE (bits/dim of discrete
data: :mod:`scoresde.discrete_data`).

The probability-flow ODE :math:`\dot x = v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)` carries
:math:`p_t` to :math:`p_{t'}` (Song et al. 2021). Along one of its paths the log-density obeys
the instantaneous change of variables (Chen et al. 2018),
:math:`\frac{d}{dt}\log p_t(x_t) = -\nabla\cdot v(x_t, t)`, so integrating from the data end
``t_end`` (default ``t_min``) to ``T``

.. math:: \log p_{t_{end}}(x) = \log p_T(z) + \int_{t_{end}}^{T} \nabla\cdot v(x_t, t)\,dt,
          \qquad z = x_T,

with :math:`p_T` replaced by the SDE's prior. The state ``[x, delta]`` is solved in one
torchdiffeq call by :func:`scoresde.solvers.flow.solve_flow`, the solve ``sample_ode`` uses,
for a linear SDE in the reference VP coordinates (the same ODE, 20-45 % fewer evaluations for VE). The
divergence is exact (one vector-Jacobian product per dimension, batched with
``is_grads_batched``) or Hutchinson's estimate :math:`E[\epsilon^\top J \epsilon]` with
Rademacher or Gaussian probes (one VJP per probe), the probes drawn once and held fixed along
the path (Grathwohl et al. 2019), which keeps the estimate of the integral unbiased.

Every function counts ``nfe``, the number of ``score_fn`` evaluations (torchdiffeq's
initial step-size selection included). One adaptive step size is shared by the whole batch;
the error control takes the worst sample rather than the batch RMS, so ``rtol``/``atol`` hold
per sample and a sample's result depends on its batch-mates only within that tolerance.
On a grid designed once on a pilot batch (:func:`likelihood_grid`, ``log_likelihood(grid=...)``)
every sample takes the grid's steps and halves only its own where its error estimate misses the
tolerance: no step-size search per batch, and results independent of the batch-mates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scoresde._tensor import check_finite, check_generator
from scoresde.noise import BatchNoise, Noise, SampleNoise, noise_source
from scoresde.sde.base import SDE, ScoreFn
from scoresde.solvers._common import NonFiniteError
from scoresde.solvers.flow import (
    Divergence,
    FlowSolution,
    check_flow_args,
    flow_clock,
    solve_flow,
    solve_flow_on_grid,
)
from scoresde.solvers.methods import Method
from scoresde.solvers.odeint import check_tolerances
from scoresde.timesteps import default_grid_kind, time_grid

__all__ = [
    "EXACT_DIVERGENCE_MAX_DIM",
    "DecodeResult",
    "EncodeResult",
    "LikelihoodGrid",
    "LikelihoodResult",
    "decode",
    "divergence",
    "encode",
    "likelihood_grid",
    "log_likelihood",
]

EXACT_DIVERGENCE_MAX_DIM = 64
"""``divergence="auto"`` is exact up to this event size (8x8 digits), Hutchinson above it:
the exact divergence costs one VJP per dimension and NFE, Hutchinson one per probe."""

_PROBES = ("rademacher", "gaussian")


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LikelihoodResult:
    r"""Output of :func:`log_likelihood`; tensors are ``(batch,)`` unless noted.

    Attributes:
        log_prob: :math:`\log p_{t_{end}}(x)` = ``prior_log_prob + delta_log_prob`` (nats).
        prior_log_prob: :math:`\log p_T(z)` under the prior.
        delta_log_prob: :math:`\int_{t_{end}}^T \nabla\cdot v\,dt`.
        z: the end point :math:`x_T`, shaped like ``x``.
        nfe: number of ``score_fn`` evaluations in the forward solve (on a
            :class:`LikelihoodGrid`, a refined sub-batch's evaluations count one each).
        sample_nfe: on a :class:`LikelihoodGrid`, ``(batch,)`` the evaluations each sample took
            part in (its grid's, plus its refinements); ``None`` otherwise, where it is ``nfe``.
    """

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    z: Tensor
    nfe: int
    sample_nfe: Tensor | None = None


@dataclass(frozen=True)
class LikelihoodGrid:
    r"""A step grid for :func:`log_likelihood` designed on a pilot batch by :func:`likelihood_grid`.

    Attributes:
        timesteps: ``(steps + 1,)`` float64 SDE times from ``t_end`` up to ``T``.
        rtol, atol: the tolerances it was designed for, and that its solves hold per sample.
        nfe: score evaluations the design spent (on the pilot batch).
        step_ratios: the pilot's worst error ratio on each step of this grid (the design aims
            at ``target`` on every step).
    """

    timesteps: Tensor
    rtol: float
    atol: float
    nfe: int
    step_ratios: Tensor

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1


@dataclass(frozen=True)
class EncodeResult:
    """Output of :func:`encode`: the latent ``z`` (like ``x``) and the NFE spent."""

    z: Tensor
    nfe: int


@dataclass(frozen=True)
class DecodeResult:
    """Output of :func:`decode`: the data ``x`` (like ``z``) and the NFE spent."""

    x: Tensor
    nfe: int


# ----------------------------------------------------------------------------- divergence


def _vjps(out: Tensor, x: Tensor, vectors: Tensor, create_graph: bool) -> Tensor:
    r"""Rows :math:`u_k^\top \partial\,\text{out}/\partial x` for each ``vectors[k]`` (shaped like
    ``out``), batched with vmap: ``(K, batch, *event)``. A single vector skips vmap, whose
    overhead made one VJP about 1.5x slower on the analytic mixtures."""
    if vectors.shape[0] == 1:
        (row,) = torch.autograd.grad(out, x, vectors[0], create_graph=create_graph)
        return row.unsqueeze(0)
    (rows,) = torch.autograd.grad(out, x, vectors, create_graph=create_graph, is_grads_batched=True)
    return rows


def _exact_divergence(out: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """Trace of the per-sample Jacobian ``d out / d x``, ``(batch,)``: one VJP per dimension."""
    batch, dim = x.shape[0], x[0].numel()
    basis = torch.eye(dim, dtype=out.dtype, device=out.device)
    basis = basis.reshape(dim, 1, *x.shape[1:]).expand(dim, batch, *x.shape[1:])
    rows = _vjps(out, x, basis, create_graph).reshape(dim, batch, dim)  # rows[i, b, j] = J_b[i, j]
    return rows.diagonal(dim1=0, dim2=2).sum(-1)


def _hutchinson_divergence(out: Tensor, x: Tensor, probes: Tensor, create_graph: bool) -> Tensor:
    r""":math:`\frac1K\sum_k \epsilon_k^\top J \epsilon_k` for ``probes`` ``(K, batch, *event)``."""
    rows = _vjps(out, x, probes, create_graph)
    return (rows * probes).flatten(2).sum(-1).mean(0)


def _draw_probes(kind: str, num_probes: int, like: Tensor, noise: Noise) -> Tensor:
    """``(num_probes, *like.shape)`` probes; with per-sample seeds, probe ``k`` of a sample is its
    ``k``-th draw (a Rademacher probe the sign of a normal one)."""
    if isinstance(noise, SampleNoise):
        normals = torch.stack([noise.randn_like(like) for _ in range(num_probes)])
        return normals if kind == "gaussian" else normals.sign()
    shape = (num_probes, *like.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=noise.generator, dtype=like.dtype, device=like.device)
    # Rademacher: +-1 with probability 1/2 each; lower variance than Gaussian (no diagonal term)
    bits = torch.randint(0, 2, shape, generator=noise.generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    divergence: str = "exact",
    probe: str = "rademacher",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    estimator: str | None = None,
) -> Tensor:
    r"""Per-sample divergence :math:`\nabla\cdot \text{fn}(x) = \operatorname{tr}\,\partial\text{fn}/\partial x`.

    ``fn`` maps ``(batch, *event)`` to the same shape, sample by sample. ``divergence="exact"``
    takes one VJP per dimension; ``"hutchinson"`` returns
    :math:`\frac1K\sum_k \epsilon_k^\top J\epsilon_k` with ``K = num_probes`` fresh probes,
    unbiased for Rademacher and Gaussian probes; its variance per probe is
    :math:`2\|J_s\|_F^2` (Gaussian) and :math:`2(\|J_s\|_F^2 - \sum_i J_{ii}^2)` (Rademacher),
    :math:`J_s = (J + J^\top)/2`. Returns ``(batch,)``; ``x`` is not modified. (``estimator``:
    the old name of ``divergence``, deprecated.)
    """
    if estimator is not None:
        warnings.warn("estimator= is now divergence= (as in log_likelihood)", DeprecationWarning, stacklevel=2)
        divergence = estimator
    _check_state(x, "x")
    _check_divergence_args(divergence, probe, num_probes, allow_auto=False)
    check_generator(generator)
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        out = fn(x_in)
        if out.shape != x.shape:
            raise ValueError(f"fn returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}")
        if divergence == "exact":
            return _exact_divergence(out, x_in, create_graph=False)
        probes = _draw_probes(probe, num_probes, x, BatchNoise(generator))
        return _hutchinson_divergence(out, x_in, probes, create_graph=False)


# ----------------------------------------------------------------------------- validation


def _check_state(x: Any, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty (batch, *event) tensor, got shape {tuple(x.shape)}")
    check_finite(x, name)


def _check_divergence_args(kind: str, probe: str, num_probes: int, *, allow_auto: bool) -> None:
    choices = ("auto", "exact", "hutchinson") if allow_auto else ("exact", "hutchinson")
    if kind not in choices:
        raise ValueError(f"divergence must be one of {choices}, got {kind!r}")
    if probe not in _PROBES:
        raise ValueError(f"probe must be one of {_PROBES}, got {probe!r}")
    if not isinstance(num_probes, int) or isinstance(num_probes, bool) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive int, got {num_probes!r}")


def _flow_setup(
    function: str, score_fn: Any, sde: Any, method: str, rtol: float | None, atol: float | None,
    options: dict[str, Any] | None, num_steps: int | None, t_end: float | None, t_min: float | None, forward: bool,
) -> tuple[Tensor, Method, float, float]:
    """Validate the arguments shared by every solve; return its float64 SDE times, from the data
    end ``t_end`` to ``T`` (``forward``) or back, the method and the tolerances."""
    _check_model(score_fn, sde)
    if t_min is not None:
        warnings.warn("t_min= is now t_end= (the data end of the path, as in the samplers)", DeprecationWarning, 3)
        if t_end is not None:
            raise ValueError("give t_end, not both t_end and its old name t_min")
        t_end = t_min
    solver, rtol, atol = check_flow_args(method, rtol, atol, options, num_steps, function)
    t_end = _checked_t_end(sde, t_end)
    if num_steps is None:
        times = torch.tensor([sde.T, float(t_end)], dtype=torch.float64)
    else:
        times = time_grid(sde, num_steps, default_grid_kind(sde), t_end=float(t_end))
    return (times.flip(0) if forward else times), solver, rtol, atol


def _check_model(score_fn: Any, sde: Any) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an scoresde.SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(score_fn).__name__}")


def _checked_t_end(sde: SDE, t_end: Any) -> float:
    """``t_end``, ``sde.t_min`` if ``None``, checked to lie in ``[0, T)``."""
    t_end = sde.t_min if t_end is None else t_end
    if not isinstance(t_end, (int, float)) or isinstance(t_end, bool) or not 0 <= t_end < sde.T:
        raise ValueError(f"t_end must be a number in [0, T={sde.T}), got {t_end!r}")
    return float(t_end)


def _resolved_divergence(kind: str, x: Tensor) -> str:
    """``kind``, with ``"auto"`` made exact up to :data:`EXACT_DIVERGENCE_MAX_DIM` values per sample."""
    if kind != "auto":
        return kind
    return "exact" if x[0].numel() <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"


def _divergence_fn(kind: str, probes: Tensor | None) -> Divergence:
    if kind == "exact":
        return _exact_divergence
    return lambda out, x, create_graph: _hutchinson_divergence(out, x, probes, create_graph)


def _probed_divergence(out: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """The divergence of a grid solve (:func:`~scoresde.solvers.flow.solve_flow_on_grid`)."""
    return _exact_divergence(out, x, False) if probes is None else _hutchinson_divergence(out, x, probes, False)


# ----------------------------------------------------------------------------- public API


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    divergence: str = "auto",
    probe: str = "rademacher",
    num_probes: int = 1,
    method: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    num_steps: int | None = None,
    options: dict[str, Any] | None = None,
    t_end: float | None = None,
    prior_log_prob_fn: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    grad: bool = False,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
    t_min: float | None = None,
    grid: LikelihoodGrid | None = None,
) -> LikelihoodResult:
    r"""Log-density of ``x`` under the probability-flow ODE of ``sde`` and ``score_fn``:

    .. math:: \log p_{t_{end}}(x) = \log \pi(z) + \int_{t_{end}}^{T} \nabla\cdot v(x_t, t)\,dt,
              \qquad v = f - \tfrac12 g^2 s,\quad z = x_T,

    :math:`\pi` the prior (``sde.prior_log_prob``, or ``prior_log_prob_fn``).

    Args:
        score_fn: ``(x, t) -> score``, shaped like ``x``; ``t`` is ``(batch,)``.
        sde: the forward SDE. x: ``(batch, *event)`` floating-point data (not modified).
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact if the event has at most
            :data:`EXACT_DIVERGENCE_MAX_DIM` values).
        probe, num_probes: Hutchinson probe distribution (``"rademacher"``, ``"gaussian"``)
            and count; drawn once with ``generator`` and held fixed along the path.
        seed, sample_indices: per-sample probes instead (:class:`~scoresde.noise.SampleNoise`):
            sample ``sample_indices[b]``'s probes depend on ``(seed, index)`` only. The adaptive
            path still depends on the batch-mates within the tolerance (one step size per batch).
        method, rtol, atol, num_steps, options: the integrator (default ``"dopri5"``), as in
            :func:`~scoresde.sample_ode`'s torchdiffeq methods (:func:`scoresde.solvers.flow.solve_flow`).
            ``"tsit5"`` (Tsitouras' pair, :mod:`scoresde.solvers.tsit5`) reaches a given accuracy in
            fewer evaluations than the default ``"dopri5"``, but its error estimate is more cautious:
            at the same tolerance it spends 15-40 % more evaluations for a 7-20x smaller error, so
            give it a tolerance about ten times looser. ``rtol``/``atol`` default to ``1e-5``.
            Fixed-grid methods (``"rk4"``, ``"torchdiffeq_euler"``, ...) take ``num_steps`` steps on
            the grid ``sample_ode`` uses (log-SNR for a linear SDE) and refuse tolerances.
        t_end: the data end of the path (default ``sde.t_min``); the result is :math:`\log p_{t_{end}}`.
            (``t_min``: its old name, deprecated.)
        prior_log_prob_fn: ``z -> (batch,)`` log-density at ``T`` (default the prior); e.g. the
            exact :math:`\log p_T` to remove the prior-mismatch error in a test.
        grad: build the autograd graph through the solve, so ``log_prob`` is differentiable
            w.r.t. ``score_fn``'s parameters (and ``x`` if it requires grad). Default off: the
            solve runs under ``no_grad`` and returns detached tensors.
        adjoint: differentiate with torchdiffeq's adjoint method (memory constant in the number
            of steps; implies ``grad``). Parameters are found on ``score_fn`` if it is an
            ``nn.Module``, else pass ``adjoint_params``.
        grid: a :class:`LikelihoodGrid` from :func:`likelihood_grid`: one step of Tsitouras' pair
            per interval of its grid, each sample's error estimate held to the grid's tolerances
            by halving that sample's steps where it misses them
            (:mod:`scoresde.solvers.embedded`), so a sample's result does not depend on its
            batch-mates. It sets the steps, tolerances and ``t_end`` (refuses ``rtol``, ``atol``,
            ``num_steps``, ``options``, ``grad``, ``adjoint`` and another ``t_end``).

    Returns:
        :class:`LikelihoodResult` with ``(batch,)`` tensors in ``x``'s dtype. ``nfe`` counts
        the forward solve only (the adjoint's backward pass evaluates the score again).
    """
    if grid is None:
        times, solver, rtol, atol = _flow_setup(
            "log_likelihood", score_fn, sde, method or "dopri5", rtol, atol, options, num_steps, t_end, t_min,
            forward=True,
        )  # fmt: skip
    else:
        times = _check_grid(grid, score_fn, sde, method, rtol, atol, options, num_steps, t_end, t_min, grad, adjoint)
    _check_state(x, "x")
    _check_divergence_args(divergence, probe, num_probes, allow_auto=True)
    check_generator(generator)
    if adjoint and adjoint_params is None and not isinstance(score_fn, nn.Module):
        raise TypeError(
            "adjoint=True cannot find the parameters of a score_fn that is not an nn.Module; "
            "pass adjoint_params=[...] (or () if there are none)"
        )
    divergence = _resolved_divergence(divergence, x)
    noise = noise_source(generator, seed, sample_indices)
    probes = _draw_probes(probe, num_probes, x, noise) if divergence == "hutchinson" else None
    sample_nfe = None
    with torch.set_grad_enabled(grad or adjoint):
        if grid is None:
            flow = solve_flow(
                score_fn, sde, x, times, method=solver, rtol=rtol, atol=atol, options=options,
                divergence=_divergence_fn(divergence, probes), build_graph=grad, adjoint=adjoint,
                adjoint_params=adjoint_params,
            )  # fmt: skip
        else:
            flow, solved = solve_flow_on_grid(
                score_fn, sde, x, times, rtol=grid.rtol, atol=grid.atol, divergence=_probed_divergence, probes=probes
            )
            sample_nfe = solved.sample_evaluations
        z, delta = flow.x[-1], flow.delta_log_prob
        check_finite(delta.detach(), "the log-density change")
        prior = (sde.prior_log_prob if prior_log_prob_fn is None else prior_log_prob_fn)(z)
        if prior.shape != delta.shape:
            raise ValueError(f"prior_log_prob_fn returned shape {tuple(prior.shape)}, expected {tuple(delta.shape)}")
        prior = prior.to(x.dtype)
    return LikelihoodResult(
        log_prob=prior + delta, prior_log_prob=prior, delta_log_prob=delta, z=z, nfe=flow.nfe, sample_nfe=sample_nfe
    )


def _check_grid(
    grid: Any, score_fn: Any, sde: Any, method: str | None, rtol: float | None, atol: float | None,
    options: dict[str, Any] | None, num_steps: int | None, t_end: float | None, t_min: float | None, grad: bool,
    adjoint: bool,
) -> Tensor:
    """Validate ``log_likelihood(grid=...)`` against the arguments the grid replaces; its times."""
    if not isinstance(grid, LikelihoodGrid):
        raise TypeError(f"grid must be a LikelihoodGrid (from likelihood_grid), got {type(grid).__name__}")
    _check_model(score_fn, sde)
    given = {"rtol": rtol, "atol": atol, "options": options, "num_steps": num_steps}
    clashing = [f"{k}={v!r}" for k, v in given.items() if v is not None]
    clashing += [f"{k}=True" for k, v in (("grad", grad), ("adjoint", adjoint)) if v]
    if method not in (None, "tsit5"):
        clashing.append(f"method={method!r}")
    if clashing:
        raise ValueError(
            f"grid= sets the steps and the tolerances (rtol={grid.rtol}, atol={grid.atol}) and solves "
            f"without the autograd graph: drop {', '.join(clashing)}"
        )
    times = grid.timesteps
    start = t_end if t_end is not None else t_min
    if start is not None and start != times[0].item():
        raise ValueError(f"the grid starts at t_end={times[0].item():.6g}, got t_end={start!r}")
    if abs(times[-1].item() - sde.T) > 1e-12 * max(1.0, sde.T):
        raise ValueError(f"the grid ends at {times[-1].item():.6g}, not at this SDE's T={sde.T}: design one for it")
    return times


def _transport(
    score_fn: ScoreFn, sde: SDE, x: Tensor, name: str, forward: bool, *, method: str, rtol: float | None,
    atol: float | None, num_steps: int | None, options: dict[str, Any] | None, t_end: float | None,
    t_min: float | None, grad: bool,
) -> FlowSolution:
    """The probability-flow ODE from ``t_end`` to ``T`` (``forward``, :func:`encode`) or back."""
    function = "encode" if forward else "decode"
    times, solver, rtol, atol = _flow_setup(
        function, score_fn, sde, method, rtol, atol, options, num_steps, t_end, t_min, forward
    )
    _check_state(x, name)
    with torch.set_grad_enabled(grad):
        return solve_flow(score_fn, sde, x, times, method=solver, rtol=rtol, atol=atol, options=options)


def encode(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    method: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    num_steps: int | None = None,
    options: dict[str, Any] | None = None,
    t_end: float | None = None,
    grad: bool = False,
    t_min: float | None = None,
) -> EncodeResult:
    r"""Latent code :math:`z = x_T` of data ``x`` (at ``t_end``, default ``sde.t_min``) by the
    probability-flow ODE, ``(batch, *event) -> (batch, *event)``; the map is invertible
    (:func:`decode`) and deterministic. Solver arguments as in :func:`log_likelihood`; ``grad``
    keeps the autograd graph (direct backprop through the solver)."""
    flow = _transport(
        score_fn, sde, x, "x", True, method=method, rtol=rtol, atol=atol, num_steps=num_steps, options=options,
        t_end=t_end, t_min=t_min, grad=grad,
    )  # fmt: skip
    return EncodeResult(z=flow.x[-1], nfe=flow.nfe)


def decode(
    score_fn: ScoreFn,
    sde: SDE,
    z: Tensor,
    *,
    method: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    num_steps: int | None = None,
    options: dict[str, Any] | None = None,
    t_end: float | None = None,
    grad: bool = False,
    t_min: float | None = None,
) -> DecodeResult:
    r"""Data :math:`x_{t_{end}}` from a latent ``z`` at ``T``: the probability-flow ODE run from
    ``T`` down to ``t_end``, the inverse of :func:`encode` up to the solver tolerance (the same
    solve as ``sample_ode(..., x_init=z)`` with a torchdiffeq method)."""
    flow = _transport(
        score_fn, sde, z, "z", False, method=method, rtol=rtol, atol=atol, num_steps=num_steps, options=options,
        t_end=t_end, t_min=t_min, grad=grad,
    )  # fmt: skip
    return DecodeResult(x=flow.x[-1], nfe=flow.nfe)


def likelihood_grid(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    target: float = 0.3,
    num_steps: int = 8,
    iterations: int = 4,
    t_end: float | None = None,
    divergence: str = "auto",
    probe: str = "rademacher",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
) -> LikelihoodGrid:
    r"""A step grid for ``log_likelihood(..., grid=...)``, designed on the pilot batch ``x`` so
    that every step's worst local error estimate is about ``target`` times the tolerance.

    Equidistribution, in the clock of :func:`~scoresde.solvers.flow.solve_flow`: the pilot is solved
    on the current grid, one step of Tsitouras' pair per interval, and each interval's worst error
    ratio :math:`r_i` read off. A local error of order :math:`h^5` means the interval wants
    :math:`n_i = (r_i/\text{target})^{1/5}` steps of its own length; the next grid has
    :math:`\lceil\sum_i n_i\rceil` steps spaced by that density (piecewise constant). It starts from
    ``num_steps`` equal clock steps; ``iterations`` solves of the pilot in all, the last on the
    grid returned (``nfe`` in the result; about ``iterations * 6 * steps``).

    A dataset is then evaluated batch by batch on the one grid: no step-size search, no rejected
    steps for the whole batch, and a sample harder than the pilot's worst has only its own steps
    halved. The pilot should be data like the batches (a few hundred points, not those evaluated).

    Args:
        score_fn, sde, t_end, divergence, probe, num_probes, generator: as in :func:`log_likelihood`.
        x: the pilot batch ``(n, *event)``.
        rtol, atol: the tolerances every later solve holds per sample.
        target: the error ratio each step is designed to, in ``(0, 1)``: lower means more steps
            and fewer refinements.
        num_steps, iterations: the first grid's steps, and the pilot solves of the design.

    Returns:
        a :class:`LikelihoodGrid`.
    """
    _check_model(score_fn, sde)
    check_tolerances(rtol, atol)
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < 1:
        raise ValueError(f"target must be a number in (0, 1), got {target!r}")
    for name, value in (("num_steps", num_steps), ("iterations", iterations)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    t_end = _checked_t_end(sde, t_end)
    _check_state(x, "x")
    _check_divergence_args(divergence, probe, num_probes, allow_auto=True)
    check_generator(generator)
    divergence = _resolved_divergence(divergence, x)
    probes = _draw_probes(probe, num_probes, x, BatchNoise(generator)) if divergence == "hutchinson" else None
    ends = torch.tensor([t_end, sde.T], dtype=torch.float64)
    clock_ends, time_of_clock = flow_clock(sde, ends)
    clock = torch.linspace(clock_ends[0].item(), clock_ends[1].item(), num_steps + 1, dtype=torch.float64)
    nfe, ratios = 0, None
    for _ in range(iterations):
        if ratios is not None:
            clock = _equidistributed(clock, ratios, target)
        times = _times_of(clock, time_of_clock, ends)
        with torch.no_grad():
            flow, solved = solve_flow_on_grid(
                score_fn, sde, x, times, rtol=rtol, atol=atol, divergence=_probed_divergence, probes=probes,
                refine=False,
            )  # fmt: skip
        nfe += flow.nfe
        ratios = solved.step_ratios.to(torch.float64).cpu()
        if not torch.isfinite(ratios).all():
            raise NonFiniteError(f"the pilot solve was not finite on the grid {times.tolist()}")
    return LikelihoodGrid(times, rtol, atol, nfe, ratios)


def _times_of(clock: Tensor, time_of_clock: Callable[[Tensor], Tensor], ends: Tensor) -> Tensor:
    """SDE times at the ``clock`` nodes, the two ends exactly ``ends``."""
    times = time_of_clock(clock)
    times[0], times[-1] = ends[0], ends[-1]
    return times


def _equidistributed(clock: Tensor, ratios: Tensor, target: float) -> Tensor:
    """The clock grid with :math:`\\lceil\\sum_i n_i\\rceil` steps, :math:`n_i = (r_i/target)^{1/5}`
    spread evenly over interval ``i`` of ``clock``."""
    wanted = torch.cat([clock.new_zeros(1), (ratios.clamp_min(1e-12) / target).pow(0.2).cumsum(0)])
    steps = max(1, math.ceil(wanted[-1].item()))
    levels = torch.linspace(0.0, wanted[-1].item(), steps + 1, dtype=torch.float64)
    i = torch.searchsorted(wanted, levels).clamp(1, len(ratios))
    frac = (levels - wanted[i - 1]) / (wanted[i] - wanted[i - 1])
    out = clock[i - 1] + frac * (clock[i] - clock[i - 1])
    out[0], out[-1] = clock[0], clock[-1]
    return out
