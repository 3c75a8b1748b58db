r"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow) on a Gaussian path.

On the path :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` (:mod:`scoresde.sde.paths`, or any
:class:`~scoresde.LinearSDE`) the conditional velocity is :math:`u_t = \dot\alpha_t x_0 + \dot\sigma_t\epsilon`
and the loss is

.. math:: \mathcal L(\theta) = \mathbb E_{t \sim U[t_{min}, T]}\,\mathbb E_{(x_0, \epsilon)}
          \big\|v_\theta(x_t, t) - \dot\alpha_t x_0 - \dot\sigma_t\epsilon\big\|^2 .

Since :math:`E[\|v - u\|^2] = E\|v - E[u \mid x_t]\|^2 + E\operatorname{tr}\operatorname{Cov}[u \mid x_t]`,
its minimiser is the marginal velocity :math:`v^*(x, t) = E[u_t \mid x_t = x]` whatever the coupling of
:math:`x_0` and :math:`\epsilon` (the path's marginals are what the coupling makes them), and its
minimum is the second term (:meth:`~scoresde.GaussianMixture.velocity_variance_fn` for a mixture).
On the linear path :math:`u_t = \epsilon - x_0`, rectified flow's target.

Couplings: ``"independent"`` draws :math:`\epsilon \sim \mathcal N(0, I)` apart from :math:`x_0` (or takes
the given ``noise`` as paired, e.g. the pairs of :func:`scoresde.reflow.draw_coupling`); ``"ot"`` re-pairs
the batch's noise with its data by the exact optimal assignment for the squared distance (minibatch
OT, Tong et al. 2023; Pooladian et al. 2023), which straightens the learned paths. The assignment is
solved on the host by ``scipy.optimize.linear_sum_assignment``: one transfer per batch, at the loss's
boundary (never inside a solver).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from scoresde._tensor import append_dims, as_time, check_float
from scoresde.losses import _check_model_sde, check_loss_inputs, sample_time
from scoresde.score import ScoreModel
from scoresde.sde.base import LinearSDE
from scoresde.velocity import FlowVelocity

__all__ = ["COUPLINGS", "flow_matching_loss", "ot_coupling"]

COUPLINGS = ("independent", "ot")


def ot_coupling(x0: Tensor, noise: Tensor) -> Tensor:
    r"""``noise`` re-ordered so that pairing row ``i`` with ``x0[i]`` is the optimal assignment for
    :math:`\sum_i \|x_0^{(i)} - \epsilon^{(\pi(i))}\|^2` (exact OT between the two empirical measures of
    equal size). ``x0``, ``noise``: ``(batch, *event)``; returns a permutation of ``noise``'s rows."""
    from scipy.optimize import linear_sum_assignment

    check_float(x0, "x0")
    check_float(noise, "noise")
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    cost = torch.cdist(x0.detach().flatten(1).double(), noise.detach().flatten(1).double()).square()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.as_tensor(cols[rows.argsort()], device=noise.device)
    return noise[perm]


def _velocity_of(model: Callable[..., Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> v`` of a :class:`~scoresde.FlowVelocity` (also inside ``DistributedDataParallel``,
    whose forward must be the one called) or of a plain velocity function; a score adapter is refused."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(inner, FlowVelocity):
        return lambda x, t: model(x, t, output="velocity")
    if isinstance(inner, ScoreModel):
        raise TypeError(
            f"flow_matching_loss trains a velocity: wrap the network in FlowVelocity, not {type(inner).__name__} "
            "(a score model; train it with dsm_loss)"
        )
    if not callable(model):
        raise TypeError(f"model must be a FlowVelocity or a callable (x, t) -> velocity, got {type(model).__name__}")
    return model


def flow_matching_loss(
    model: Callable[..., Tensor],
    sde: LinearSDE,
    x0: Tensor,
    *,
    coupling: str = "independent",
    reduction: str = "mean",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The conditional flow-matching loss of a velocity model on the path ``sde``, averaged over the batch
    (module docstring).

    Args:
        model: a :class:`~scoresde.FlowVelocity` (its raw velocity is trained), or any ``(x, t) -> v``.
        sde: the path, a :class:`~scoresde.LinearSDE` (e.g. :class:`~scoresde.LinearPath`).
        x0: data ``(batch, *event)``.
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport).
        reduction: ``"mean"`` or ``"sum"`` of the squared error over the event dims.
        t: fixed times ``(batch,)`` instead of uniform draws on ``[t_min, T]``.
        noise: the :math:`\epsilon` paired with ``x0`` (like ``x0``) instead of a fresh draw.
        generator: for the draws of t and noise.

    Returns:
        A scalar tensor.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"flow_matching_loss needs a LinearSDE (a Gaussian path), got {type(sde).__name__}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    check_loss_inputs(x0, noise, reduction, generator)
    velocity = _velocity_of(model)
    _check_model_sde(model, sde)

    if t is None:
        t = sample_time(sde, x0.shape[0], generator=generator, device=x0.device, dtype=as_time(0.0, x0).dtype)
    else:
        sde.check_time(t)
        t = as_time(t, x0)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if coupling == "ot":
        noise = ot_coupling(x0, noise)

    a, s, da, ds = (append_dims(fn(t), x0.ndim).to(x0.dtype) for fn in (sde.alpha, sde.sigma, sde.d_alpha, sde.d_sigma))
    x_t = a * x0 + s * noise
    v = velocity(x_t, t)
    if not isinstance(v, Tensor) or v.shape != x_t.shape:
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"the model returned {got} for x of shape {tuple(x_t.shape)}; a velocity is shaped like x")
    err = (v - (da * x0 + ds * noise)).square().flatten(1)
    return (err.mean(1) if reduction == "mean" else err.sum(1)).mean()
