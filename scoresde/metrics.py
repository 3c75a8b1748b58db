"""Quality measures that need no downloads: distances between two samples ``(n, *event)``."""

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


def _check_samples(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Both samples flattened to ``(n, d)``, ``(m, d)`` in ``x``'s dtype and device."""
    if x.ndim < 2 or y.ndim < 2 or x.shape[1:] != y.shape[1:] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"x and y must be (n, *event) with one event shape and n >= 2, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x.flatten(1), y.flatten(1).to(x)


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``(n, m)``, computed directly (the matrix-product shortcut
    loses the small distances to cancellation)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _off_diagonal_mean(k: Tensor) -> Tensor:
    """Mean of a square matrix without its diagonal: the U-statistic of a within-sample term."""
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Unbiased energy distance (Székely & Rizzo 2013) between samples ``x`` ``(n, *event)`` and
    ``y`` ``(m, *event)``:

    .. math:: \mathcal E(P, Q) = 2\,\mathbb E\|X - Y\| - \mathbb E\|X - X'\| - \mathbb E\|Y - Y'\|,

    zero iff :math:`P = Q` (for finite first moments); the within-sample means leave out
    the diagonal, so the estimate is unbiased and can be slightly negative when
    :math:`P = Q`. Returns a 0-d tensor; memory :math:`O((n + m)^2)`."""
    x, y = _check_samples(x, y)
    return 2 * _distances(x, y).mean() - _off_diagonal_mean(_distances(x, x)) - _off_diagonal_mean(_distances(y, y))


def mmd(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    r"""Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with the Gaussian kernel
    :math:`k(a, b) = \exp(-\|a - b\|^2 / 2\ell^2)`, :math:`\ell` = ``bandwidth``:

    .. math:: \mathrm{MMD}^2 = \mathbb E\,k(X, X') + \mathbb E\,k(Y, Y') - 2\,\mathbb E\,k(X, Y),

    between ``x`` ``(n, *event)`` and ``y`` ``(m, *event)``. Zero iff the laws are equal; the
    unbiased estimate can be slightly negative. Returns a 0-d tensor; memory :math:`O((n + m)^2)`."""
    if not isinstance(bandwidth, (int, float)) or isinstance(bandwidth, bool) or not bandwidth > 0:
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
    x, y = _check_samples(x, y)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-_distances(a, b).square() / (2 * bandwidth**2))

    return _off_diagonal_mean(kernel(x, x)) + _off_diagonal_mean(kernel(y, y)) - 2 * kernel(x, y).mean()


def frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Fréchet distance between Gaussians fitted to two samples of features ``(n, d)`` and
    ``(m, d)`` (Dowson & Landau 1982; FID when the features are Inception's):

    .. math:: \|\mu_x - \mu_y\|^2 + \operatorname{tr}\Sigma_x + \operatorname{tr}\Sigma_y
              - 2\operatorname{tr}\big(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2}\big)^{1/2},

    in float64 through symmetric eigendecompositions. Returns a 0-d float64 tensor. The plug-in
    estimate is biased upwards by about :math:`\operatorname{tr}` of the sampling noise, so it
    is positive even for two samples of one law: compare with that two-sample floor."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"x and y must be (n, d) features with one d and n >= 2, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.double(), y.to(device=x.device, dtype=torch.float64)
    cov_x, cov_y = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(x.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_x)
    root_x = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_x @ cov_y @ root_x).clamp(min=0).sqrt().sum()
    return (x.mean(0) - y.mean(0)).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross


def digits_frechet_distance(levels_x: Tensor, levels_y: Tensor) -> Tensor:
    """:func:`frechet_distance` between two sets of 8x8 digit images ``(n, 1, 8, 8)`` (integer
    levels ``0..16``, as :func:`~scoresde.data.load_digits` gives them) in the 64 features of
    the bundled digits classifier (:mod:`scoresde.nn.digits_features`)."""
    from scoresde.nn.digits_features import pretrained

    net = pretrained(levels_x.device)
    with torch.no_grad():
        return frechet_distance(net.features(levels_x), net.features(levels_y))


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
