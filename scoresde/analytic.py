r"""Exact ground truth: a Gaussian mixture data distribution, perturbed by any linear SDE.

If :math:`x_0 \sim \sum_k w_k \mathcal N(\mu_k, \Sigma_k)` and
:math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon`, then

.. math:: p_t = \sum_k w_k\,\mathcal N\big(\alpha\mu_k,\ \alpha^2\Sigma_k + \sigma^2 I\big),

so its density and score are known in closed form at every t. With
:math:`\Sigma_k = U_k \operatorname{diag}(e_k) U_k^\top` (one eigendecomposition, at
construction) every perturbed covariance is diagonal in the same basis,
:math:`U_k \operatorname{diag}(\alpha^2 e_k + \sigma^2) U_k^\top`, so a batch of samples at a
batch of different times costs one projection and no per-time factorisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from scoresde._tensor import TimeLike, append_dims, check_device, check_float_dtype, check_generator
from scoresde.sde.base import LinearSDE

Fn = Callable[[Tensor, Tensor], Tensor]


class GaussianMixture:
    r"""A mixture of Gaussians in ``d = prod(event_shape)`` dimensions.

    Args:
        means: ``(K, d)`` component means.
        covs: ``(K, d, d)`` covariances (symmetric positive semi-definite), or ``(K, d)``
            diagonals.
        weights: ``(K,)`` non-negative, normalised here (default uniform).
        event_shape: shape of one sample (default ``(d,)``), e.g. ``(1, 8, 8)``.

    Parameters are kept in float64; computations run in the input's dtype and device.
    """

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        weights: Tensor | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, d), got shape {tuple(means.shape)}")
        k, d = means.shape
        if covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be ({k}, {d}, {d}) or ({k}, {d}), got shape {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
            raise ValueError("covs must be symmetric")
        if weights is None:
            weights = torch.ones(k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,):
            raise ValueError(f"weights must be ({k},), got shape {tuple(weights.shape)}")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be non-negative and not all zero, got {weights.tolist()}")
        for name, v in (("means", means), ("covs", covs), ("weights", weights)):
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} must be finite")
        event_shape = (d,) if event_shape is None else tuple(event_shape)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} does not hold d={d} values")
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if (eigvals < -1e-10 * eigvals.abs().amax().clamp_min(1)).any():
            raise ValueError(f"covs must be positive semi-definite, smallest eigenvalue {eigvals.min().item():.3g}")
        self.means = means
        self.covs = covs
        self.weights = weights / weights.sum()
        self.event_shape = event_shape
        self._eigvals = eigvals.clamp_min(0)
        self._eigvecs = eigvecs
        self._proj_means = torch.einsum("kji,kj->ki", eigvecs, means)  # U_k^T mu_k
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    @property
    def dim(self) -> int:
        """Number of dimensions ``d``."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def mean(self) -> Tensor:
        """Mixture mean ``(d,)`` (float64)."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        r"""Mixture covariance ``(d, d)`` (float64):
        :math:`\sum_k w_k(\Sigma_k + \mu_k\mu_k^\top) - \bar\mu\bar\mu^\top`."""
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(self.mean, self.mean)

    def _params(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                p.to(device=like.device, dtype=like.dtype)
                for p in (self.weights.log(), self._eigvals, self._eigvecs, self._proj_means)
            )
        return self._cache[key]

    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must be (batch, {', '.join(map(str, self.event_shape))}), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        return x.reshape(x.shape[0], self.dim)

    def _components(self, y: Tensor, alpha: Tensor, var_noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log densities ``(b, K)`` (weights included), residuals and variances
        ``(b, K, d)`` in each component's eigenbasis, for flat ``y`` ``(b, d)``."""
        log_w, eigvals, eigvecs, proj_means = self._params(y)
        a = alpha[:, None, None]
        var = a.square() * eigvals + var_noise[:, None, None]
        resid = torch.einsum("kji,bj->bki", eigvecs, y) - a * proj_means
        log_comp = -0.5 * ((resid.square() / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return log_comp + log_w, resid, var

    def _log_prob(self, y: Tensor, alpha: Tensor, var_noise: Tensor) -> Tensor:
        return torch.logsumexp(self._components(y, alpha, var_noise)[0], dim=1)

    def _score(self, y: Tensor, alpha: Tensor, var_noise: Tensor) -> Tensor:
        log_comp, resid, var = self._components(y, alpha, var_noise)
        resp = torch.softmax(log_comp, dim=1)
        _, _, eigvecs, _ = self._params(y)
        return -torch.einsum("kij,bkj,bk->bi", eigvecs, resid / var, resp)

    @staticmethod
    def _require_linear(sde: LinearSDE) -> LinearSDE:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"the perturbed mixture needs a LinearSDE (alpha(t), sigma(t)), got {type(sde).__name__}")
        return sde

    def _perturbation(self, sde: LinearSDE, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = sde.step_time(t, x)
        return sde.alpha(t).to(x.dtype), sde.sigma(t).to(x.dtype).square()

    def log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p_0(x)` per sample, ``(batch,)``."""
        y = self._flat(x)
        zero = y.new_zeros(y.shape[0])
        return self._log_prob(y, zero + 1, zero)

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x \log p_0(x)`, shaped like ``x``."""
        y = self._flat(x)
        zero = y.new_zeros(y.shape[0])
        return self._score(y, zero + 1, zero).reshape(x.shape)

    def component(self, x: Tensor) -> Tensor:
        """Index of each sample's most responsible component under :math:`p_0`, ``(batch,)``."""
        y = self._flat(x)
        zero = y.new_zeros(y.shape[0])
        return self._components(y, zero + 1, zero)[0].argmax(1)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``."""
        return self.sample_with_labels(n, generator=generator, device=device, dtype=dtype)[0]

    def sample_with_labels(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples ``(n, *event_shape)`` and the component each came from, ``(n,)``
        int64: the labels of a class-conditional problem whose classes are the components (the
        samples are those :meth:`sample` draws from the same generator state)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        check_float_dtype(dtype)
        check_generator(generator)
        dtype = dtype or torch.get_default_dtype()
        device = check_device(device) or torch.device("cpu")
        log_w, eigvals, eigvecs, _ = self._params(torch.empty(0, device=device, dtype=dtype))
        k = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        means = self.means.to(device=device, dtype=dtype)
        x = means[k] + torch.einsum("bij,bj->bi", eigvecs[k], eigvals[k].sqrt() * z)
        return x.reshape(n, *self.event_shape), k

    def marginal(self, sde: LinearSDE, t: TimeLike) -> GaussianMixture:
        r"""The perturbed mixture :math:`p_t` at one time ``t`` (a number or a 0-d tensor) under
        ``sde``. For a batch of per-sample times use :meth:`log_prob_fn` or :meth:`score_fn`."""
        if isinstance(t, Tensor) and t.ndim != 0:
            raise ValueError(
                f"marginal takes one time (a number or a 0-d tensor), got a tensor of shape {tuple(t.shape)}: "
                "for per-sample times use log_prob_fn(sde)(x, t) or score_fn(sde)(x, t)"
            )
        self._require_linear(sde).check_time(t)
        tt = torch.as_tensor(t, dtype=torch.float64, device=self.means.device)
        a, s = sde.alpha(tt), sde.sigma(tt)
        covs = a**2 * self.covs + s**2 * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(a * self.means, covs, self.weights, self.event_shape)

    def log_prob_fn(self, sde: LinearSDE) -> Fn:
        r"""``(x, t) -> log p_t(x)`` per sample, batched over ``x`` and ``t``."""
        self._require_linear(sde)

        def log_prob(x: Tensor, t: TimeLike) -> Tensor:
            return self._log_prob(self._flat(x), *self._perturbation(sde, x, t))

        return log_prob

    def score_fn(self, sde: LinearSDE) -> Fn:
        r"""The exact score ``(x, t) -> grad_x log p_t(x)``, shaped like ``x``."""
        self._require_linear(sde)

        def score(x: Tensor, t: TimeLike) -> Tensor:
            return self._score(self._flat(x), *self._perturbation(sde, x, t)).reshape(x.shape)

        return score

    def denoiser_fn(self, sde: LinearSDE) -> Fn:
        r"""The exact posterior mean :math:`E[x_0 \mid x_t] = (x_t + \sigma^2 \nabla\log p_t)/\alpha` (Tweedie)."""
        self._require_linear(sde)
        score = self.score_fn(sde)

        def denoise(x: Tensor, t: TimeLike) -> Tensor:
            a, var = self._perturbation(sde, x, t)
            return (x + append_dims(var, x.ndim) * score(x, t)) / append_dims(a, x.ndim)

        return denoise

    def _posterior(self, y: Tensor, alpha: Tensor, var_noise: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean ``(b, d)`` and trace of the covariance ``(b,)`` of :math:`p(x_0 \mid x_t = y)`, a mixture
        with component means :math:`U_k(U_k^\top\mu_k + \alpha e_k r_k / (\alpha^2 e_k + \sigma^2))` and
        variances :math:`e_k\sigma^2/(\alpha^2 e_k + \sigma^2)` in the eigenbasis (:math:`r_k` the
        residual): no division by :math:`\alpha`, so it holds at :math:`\alpha = 0` too."""
        log_comp, resid, var = self._components(y, alpha, var_noise)
        resp = torch.softmax(log_comp, dim=1)
        _, eigvals, eigvecs, proj_means = self._params(y)
        proj = proj_means + alpha[:, None, None] * eigvals / var * resid  # U_k^T E[x0 | x, k]
        mean = torch.einsum("kij,bkj,bk->bi", eigvecs, proj, resp)
        second = (eigvals * var_noise[:, None, None] / var).sum(-1) + proj.square().sum(-1)  # E||x0||^2 per k
        return mean, (resp * second).sum(1) - mean.square().sum(-1)

    def velocity_fn(self, sde: LinearSDE) -> Fn:
        r"""The exact marginal velocity of the Gaussian path of ``sde`` (flow matching's regression
        target, the probability-flow velocity :math:`f x - \frac12 g^2\nabla\log p_t`):

        .. math:: v(x, t) = E[\dot\alpha x_0 + \dot\sigma\epsilon \mid x_t = x]
                  = \dot\alpha\hat x_0 + \dot\sigma\,\frac{x - \alpha\hat x_0}{\sigma},
                  \qquad \hat x_0 = E[x_0 \mid x_t = x],

        ``(x, t) -> v`` shaped like ``x``, for ``t > 0``."""
        self._require_linear(sde)

        def velocity(x: Tensor, t: TimeLike) -> Tensor:
            y = self._flat(x)
            tt = sde.step_time(t, x)
            a, s, da, ds = (fn(tt).to(x.dtype)[:, None] for fn in (sde.alpha, sde.sigma, sde.d_alpha, sde.d_sigma))
            x0 = self._posterior(y, a[:, 0], s[:, 0].square())[0]
            return (da * x0 + ds * (y - a * x0) / s).reshape(x.shape)

        return velocity

    def velocity_variance_fn(self, sde: LinearSDE) -> Fn:
        r"""The conditional variance of flow matching's target given :math:`x_t`, per sample ``(batch,)``:

        .. math:: E\big[\|\dot\alpha x_0 + \dot\sigma\epsilon - v(x_t, t)\|^2 \,\big|\, x_t = x\big]
                  = \frac{\Delta^2}{\sigma^2}\operatorname{tr}\operatorname{Cov}[x_0 \mid x_t = x],
                  \qquad \Delta = \alpha\dot\sigma - \sigma\dot\alpha,

        since given :math:`x_t` the target is :math:`(\dot\sigma/\sigma) x_t - (\Delta/\sigma) x_0`. Its
        mean over :math:`t` and :math:`x_t` is the irreducible minimum of the conditional flow-matching
        loss (summed over dimensions), reached by :meth:`velocity_fn`."""
        self._require_linear(sde)

        def variance(x: Tensor, t: TimeLike) -> Tensor:
            tt = sde.step_time(t, x)
            a, s, da, ds = (fn(tt).to(x.dtype) for fn in (sde.alpha, sde.sigma, sde.d_alpha, sde.d_sigma))
            trace = self._posterior(self._flat(x), a, s.square())[1]
            return ((a * ds - s * da) / s).square() * trace

        return variance

    # --- the class-conditional views: the components are the classes (y = k: x_0 came from component k)

    @property
    def num_classes(self) -> int:
        """The number of classes when the components are the classes, ``K``; label ``K`` is the null label
        (no class: the mixture itself)."""
        return self.num_components

    def _component_scores(self, y: Tensor, alpha: Tensor, var_noise: Tensor) -> tuple[Tensor, Tensor]:
        r"""Per-component log densities ``(b, K)`` (weights included) and each component's score
        :math:`-(\alpha^2\Sigma_k + \sigma^2 I)^{-1}(y - \alpha\mu_k)` ``(b, K, d)``, for flat ``y``."""
        log_comp, resid, var = self._components(y, alpha, var_noise)
        eigvecs = self._params(y)[2]
        return log_comp, -torch.einsum("kij,bkj->bki", eigvecs, resid / var)

    def conditional_score_fn(self, sde: LinearSDE) -> ConditionalScore:
        r"""The exact class-conditional score ``(x, t, y) -> grad_x log p_t(x | y)``, shaped like ``x``:

        .. math:: p_t(x \mid y = k) = \mathcal N\big(\alpha\mu_k,\ \alpha^2\Sigma_k + \sigma^2 I\big),

        component ``k`` perturbed alone. ``y`` is ``(batch,)`` int64 in ``[0, K]``; the null label ``K``
        gives the unconditional score :math:`\nabla\log p_t` (what a model trained with label dropout
        learns for it), so the result is a conditional score function for
        :func:`scoresde.guidance.classifier_free_guidance` with ``num_classes = K``. The labels'
        values are not read on the host (a per-step function)."""
        self._require_linear(sde)
        return ConditionalScore(self, sde)

    def log_classifier_fn(self, sde: LinearSDE) -> Fn:
        r"""The exact noisy classifier ``(x, t) -> log p_t(y | x)``, ``(batch, K)``: the components'
        responsibilities at time ``t``,

        .. math:: p_t(y = k \mid x) = \frac{w_k\,\mathcal N(x; \alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)}
                  {\sum_j w_j\,\mathcal N(x; \alpha\mu_j, \alpha^2\Sigma_j + \sigma^2 I)}.

        Log-probabilities are valid logits, so this is a classifier for
        :func:`scoresde.guidance.classifier_guidance` (differentiable in ``x``)."""
        self._require_linear(sde)

        def log_classifier(x: Tensor, t: TimeLike) -> Tensor:
            log_comp = self._components(self._flat(x), *self._perturbation(sde, x, t))[0]
            return torch.log_softmax(log_comp, dim=1)

        return log_classifier

    def classifier_grad_fn(self, sde: LinearSDE) -> Callable[[Tensor, TimeLike, Tensor], Tensor]:
        r"""``(x, t, y) -> grad_x log p_t(y | x)`` in closed form, shaped like ``x``, by Bayes' rule for
        the score: :math:`\nabla\log p_t(y \mid x) = \nabla\log p_t(x \mid y) - \nabla\log p_t(x)`, with
        ``y`` ``(batch,)`` in ``[0, K)``."""
        self._require_linear(sde)

        def grad(x: Tensor, t: TimeLike, y: Tensor) -> Tensor:
            log_comp, scores = self._component_scores(self._flat(x), *self._perturbation(sde, x, t))
            resp = torch.softmax(log_comp, dim=1)
            chosen = torch.nn.functional.one_hot(y, self.num_components).to(resp.dtype)
            return torch.einsum("bk,bki->bi", chosen - resp, scores).reshape(x.shape)

        return grad

    def condition(self, mask: Tensor, observed: Tensor) -> GaussianMixture:
        r"""The exact law of the unobserved coordinates of :math:`x_0` given the observed ones
        (imputation's target), a Gaussian mixture in closed form. With ``o`` the observed and ``m``
        the missing coordinates, per component

        .. math:: x_m \mid x_o, k \sim \mathcal N\big(\mu_m + \Sigma_{mo}\Sigma_{oo}^{-1}(x_o - \mu_o),\
                  \Sigma_{mm} - \Sigma_{mo}\Sigma_{oo}^{-1}\Sigma_{om}\big), \qquad
                  p(k \mid x_o) \propto w_k\,\mathcal N(x_o; \mu_o, \Sigma_{oo}).

        Args:
            mask: boolean, shaped like one sample (``event_shape``); ``True`` marks an observed value.
            observed: one sample ``event_shape``; its values where ``mask`` is ``False`` are ignored.

        Returns:
            A :class:`GaussianMixture` over the ``d_m`` missing coordinates (in the flattened
            order of ``mask``), event shape ``(d_m,)``, with ``K`` components (float64).
        """
        o = check_mask(mask, self.event_shape).reshape(-1).cpu()
        if not isinstance(observed, Tensor) or tuple(observed.shape) != self.event_shape:
            got = tuple(observed.shape) if isinstance(observed, Tensor) else type(observed).__name__
            raise ValueError(f"observed must be one sample of shape {self.event_shape}, got {got}")
        if int(o.sum()) in (0, self.dim):
            raise ValueError(f"mask must observe some coordinates and leave some missing, got {int(o.sum())} "
                             f"of {self.dim} observed")  # fmt: skip
        x_o = observed.detach().reshape(-1).cpu().to(torch.float64)[o]
        if not torch.isfinite(x_o).all():
            raise ValueError("observed holds NaN or inf at observed coordinates")
        m = ~o
        mu_o, mu_m = self.means[:, o], self.means[:, m]
        s_oo, s_mo, s_mm = self.covs[:, o][:, :, o], self.covs[:, m][:, :, o], self.covs[:, m][:, :, m]
        chol, info = torch.linalg.cholesky_ex(s_oo)
        if (info != 0).any():
            raise ValueError("the observed block of a component's covariance is singular: no conditional density")
        resid = (x_o - mu_o)[:, :, None]  # (K, d_o, 1)
        white = torch.linalg.solve_triangular(chol, resid, upper=False)  # L^-1 (x_o - mu_o)
        gain_t = torch.cholesky_solve(s_mo.transpose(1, 2), chol)  # Sigma_oo^-1 Sigma_om
        means = mu_m + (gain_t.transpose(1, 2) @ resid)[:, :, 0]
        covs = s_mm - s_mo @ gain_t
        covs = 0.5 * (covs + covs.transpose(1, 2))
        log_norm = -0.5 * white.square().sum((1, 2)) - chol.diagonal(dim1=1, dim2=2).log().sum(1)
        log_w = self.weights.log() + log_norm  # the 2 pi terms are shared by all components
        return GaussianMixture(means, covs, torch.softmax(log_w, 0))

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, event_shape={self.event_shape})"


def check_mask(mask: Tensor, event_shape: tuple[int, ...], name: str = "mask") -> Tensor:
    """``mask`` if it is a boolean tensor shaped like one sample (``event_shape``), else ``TypeError`` /
    ``ValueError`` naming its dtype or shape (metadata only: no host sync)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = observed), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(event_shape):
        raise ValueError(f"{name} must be shaped like one sample {tuple(event_shape)}, got {tuple(mask.shape)}")
    return mask


class ConditionalScore:
    r"""The exact class-conditional score of a :class:`GaussianMixture` whose components are the classes:
    ``(x, t, y) -> grad_x log p_t(x | y)`` (see :meth:`GaussianMixture.conditional_score_fn`).
    ``num_classes`` is ``K``; the label ``null_label = K`` means no class (the mixture's score)."""

    def __init__(self, mixture: GaussianMixture, sde: LinearSDE) -> None:
        self.mixture, self.sde = mixture, sde
        self.num_classes = mixture.num_components
        self.null_label = self.num_classes

    def __call__(self, x: Tensor, t: TimeLike, y: Tensor) -> Tensor:
        gmm = self.mixture
        log_comp, scores = gmm._component_scores(gmm._flat(x), *gmm._perturbation(self.sde, x, t))
        resp = torch.softmax(log_comp, dim=1)
        # one-hot for a class, the responsibilities (the mixture's score) for the null label
        onehot = torch.nn.functional.one_hot(y, self.num_classes + 1)[:, : self.num_classes].to(resp.dtype)
        chosen = onehot + (y == self.null_label)[:, None].to(resp.dtype) * resp
        return torch.einsum("bk,bki->bi", chosen, scores).reshape(x.shape)

