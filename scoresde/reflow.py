r"""Reflow (Liu et al. 2023, *Flow straight and fast*): pair noise with the samples a trained flow
draws from it, retrain on that coupling, and the paths get straighter, so few-step samplers err less.

A flow's ODE maps noise :math:`x_T` to a sample :math:`x_0`; the coupling :math:`(x_0, x_T)` has the
data marginal and (about) the noise marginal, and its straight-line interpolation crosses itself less
than the independent coupling's. Training the flow-matching loss on it (:func:`reflow`) gives a flow
whose trajectories are nearer to straight lines, measured by (Liu et al. 2023, eq. 9)

.. math:: S = \frac{1}{T - t_{end}} \int_{t_{end}}^{T} E\,\big\|v(x_t, t) - \bar v\big\|^2\,dt, \qquad
          \bar v = \frac{x_T - x_{t_{end}}}{T - t_{end}},

the mean squared deviation of the velocity along a trajectory from its chord (0 for straight paths
at constant speed: then one Euler step is exact). :func:`straightness` computes it.

Since a path ends at ``T < 1`` (:mod:`scoresde.sde.paths`), the pair's noise is taken as the point
that puts :math:`x_T` exactly on the path from :math:`x_0`: :math:`\epsilon = (x_T - \alpha_T x_0)/\sigma_T`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scoresde._tensor import append_dims, check_finite, check_float
from scoresde.sample import sample_ode
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.train import FitResult, fit
from scoresde.velocity import FlowVelocity

__all__ = ["Coupling", "Straightness", "draw_coupling", "reflow", "straightness"]


@dataclass(frozen=True)
class Coupling:
    r"""Pairs drawn by a flow: ``data`` :math:`x_0` ``(n, *event)`` and ``noise`` :math:`\epsilon`
    (like ``data``) with :math:`x_T = \alpha_T x_0 + \sigma_T\epsilon` the state the flow started from;
    ``nfe`` the evaluations the draw cost."""

    data: Tensor
    noise: Tensor
    nfe: int

    def __len__(self) -> int:
        return self.data.shape[0]


def draw_coupling(
    model: ScoreFn,
    sde: LinearSDE,
    x_init: Tensor,
    *,
    method: str = "dopri5",
    rtol: float | None = 1e-5,
    atol: float | None = 1e-5,
    **sample_kwargs: Any,
) -> Coupling:
    r"""Run the flow ``model`` (a :class:`~scoresde.FlowVelocity`, or any score function) from
    ``x_init`` ``(n, *event)`` at ``T`` to the data end with :func:`~scoresde.sample_ode` (``method``,
    tolerances and ``sample_kwargs`` as there; the last step is Tweedie's ``denoise``), and return the
    coupling :math:`(x_0, \epsilon)` with :math:`\epsilon = (x_T - \alpha_T x_0)/\sigma_T`."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"draw_coupling needs a LinearSDE (a Gaussian path), got {type(sde).__name__}")
    check_float(x_init, "x_init")
    with torch.no_grad():
        result = sample_ode(model, sde, x_init=x_init, method=method, rtol=rtol, atol=atol, denoise=True,
                            **sample_kwargs)  # fmt: skip
    t_end = torch.tensor(sde.T, dtype=torch.float64)
    alpha, sigma = sde.alpha(t_end).item(), sde.sigma(t_end).item()
    data = result.x
    return Coupling(data=data, noise=(x_init - alpha * data) / sigma, nfe=result.nfe)


def reflow(
    model: FlowVelocity,
    sde: LinearSDE,
    coupling: Coupling,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FitResult:
    r"""Train ``model`` in place on the fixed ``coupling`` (the flow-matching loss with its pairs,
    :func:`~scoresde.fit` with ``objective="flow_matching"``): one rectification step. Liu et al. start
    from the weights of the flow that drew the pairs; pass a copy of it to do the same.

    Raises ``ValueError`` when the coupling holds fewer pairs than one batch (``batch_size``): drawing
    a batch with replacement from so few pairs would fit them, not the flow between the marginals."""
    if not isinstance(model, FlowVelocity):
        raise TypeError(f"reflow trains a FlowVelocity, got {type(model).__name__}")
    if not isinstance(coupling, Coupling):
        raise TypeError(f"coupling must be a Coupling (from draw_coupling), got {type(coupling).__name__}")
    if len(coupling) < batch_size:
        raise ValueError(
            f"reflow needs at least batch_size={batch_size} pairs, got {len(coupling)}: draw more pairs "
            "with draw_coupling (Liu et al. use many times the batch size) or lower batch_size"
        )
    check_finite(coupling.data, "coupling.data")
    return fit(model, sde, (coupling.data, coupling.noise), steps=steps, batch_size=batch_size, lr=lr,
               objective="flow_matching", generator=generator, progress=progress)  # fmt: skip


@dataclass(frozen=True)
class Straightness:
    """Output of :func:`straightness`: ``value`` the mean over samples, ``standard_error`` its standard
    error, ``per_sample`` ``(batch,)``, ``nfe`` the evaluations used."""

    value: float
    standard_error: float
    per_sample: Tensor
    nfe: int


def straightness(model: ScoreFn, sde: LinearSDE, x_init: Tensor, *, num_steps: int = 100) -> Straightness:
    r"""Liu et al.'s straightness :math:`S` (module docstring) of the flow of ``model`` (a
    :class:`~scoresde.FlowVelocity` or any score function; the velocity is the probability-flow one,
    :math:`dx/dt = v` for a flow model) along the trajectories from ``x_init`` ``(batch, *event)`` at
    ``T`` to ``t_min``: Heun on ``num_steps`` uniform steps, then the trapezoidal rule over the
    velocities at the grid points (``3 num_steps`` evaluations: Heun's last step is Euler)."""
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"straightness needs a LinearSDE (a Gaussian path), got {type(sde).__name__}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    with torch.no_grad():
        run = sample_ode(model, sde, x_init=x_init, method="heun", num_steps=num_steps, grid="uniform",
                         save_at="grid")  # fmt: skip
        traj = run.trajectory
        assert traj is not None
        times, states = traj.t, traj.x  # (k,), (k, batch, *event), descending
        flow = sde.probability_flow(model)
        v = torch.stack([flow.velocity(x, t.to(x.dtype)) for x, t in zip(states, times, strict=True)])
    span = (times[0] - times[-1]).to(x_init.dtype)
    chord = (states[0] - states[-1]) / span
    dev = (v - chord).flatten(2).square().sum(-1)  # (k, batch)
    dt = (times[:-1] - times[1:]).to(dev.dtype)
    per_sample = (append_dims(dt, 2) * 0.5 * (dev[1:] + dev[:-1])).sum(0) / span
    n = per_sample.shape[0]
    se = per_sample.std().item() / n**0.5 if n > 1 else float("nan")
    return Straightness(per_sample.mean().item(), se, per_sample, run.nfe + len(times))
