"""Quality measures that need no downloads."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def relative_score_error(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    reference_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
) -> Tensor:
    r""":math:`\mathbb E\|s - s^*\|^2 / \mathbb E\|s^*\|^2` over the batch ``x`` at times ``t`` ``(batch,)``:
    the relative squared L2 error of ``score_fn`` against ``reference_fn`` (a scalar tensor)."""
    with torch.no_grad():
        ref = reference_fn(x, t)
        err = (score_fn(x, t) - ref).flatten(1).square().sum(1)
        return err.mean() / ref.flatten(1).square().sum(1).mean()


def pathwise_rmse(x: Tensor, reference: Tensor) -> Tensor:
    r""":math:`\big(\frac1n\sum_i \|x_i - x^\star_i\|^2\big)^{1/2}` between samples ``x`` and the
    ``reference`` reached from the same noise, both ``(n, *event)``: a 0-d tensor."""
    if x.ndim < 2 or x.shape != reference.shape:
        raise ValueError(
            f"x and reference must be (n, *event) of the same shape, got {tuple(x.shape)} and {tuple(reference.shape)}"
        )
    return (x - reference).flatten(1).square().sum(1).mean().sqrt()


def sliced_wasserstein(
    x: Tensor, y: Tensor, num_projections: int = 128, generator: torch.Generator | None = None
) -> Tensor:
    r"""Sliced 2-Wasserstein distance between two equal-size samples ``(n, *event)``:

    .. math:: SW_2(x, y) = \Big(\mathbb E_{\theta \sim U(S^{d-1})}\,
              W_2^2(\theta^\top x, \theta^\top y)\Big)^{1/2},

    each 1-D :math:`W_2^2` from sorted projections, the expectation over ``num_projections``
    random directions drawn from ``generator``. Returns a 0-d tensor in ``x``'s dtype. Even
    for two samples of the same law it is positive (about :math:`n^{-1/2}`): compare it with
    that two-sample noise floor, not with 0."""
    if x.ndim < 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be (n, *event) of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a positive int, got {num_projections!r}")
    x, y = x.flatten(1), y.flatten(1).to(x.dtype)
    directions = torch.randn(x.shape[1], num_projections, generator=generator, dtype=x.dtype)
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(x.device)
    x_proj, _ = (x @ directions).sort(dim=0)
    y_proj, _ = (y @ directions).sort(dim=0)
    return (x_proj - y_proj).square().mean().sqrt()
