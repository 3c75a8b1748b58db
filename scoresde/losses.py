r"""Continuous-time denoising score matching (Vincent 2011; Song et al. 2021, eq. 7).

.. math::
    \mathcal L(\theta) = \mathbb E_{t}\,\mathbb E_{x_0, \epsilon}\Big[\lambda(t)\,
        \big\| s_\theta(\alpha_t x_0 + \sigma_t\epsilon, t) + \epsilon/\sigma_t \big\|^2\Big]

with weighting :math:`\lambda(t) = \sigma_t^2` (``"sigma2"``, Song et al.'s default: the
noise-prediction loss), :math:`g(t)^2` (``"likelihood"``: the bound on the negative
log-likelihood of Song et al. 2021b) or 1 (``"none"``).

DDPM's parameterised losses (``target=``) are the same residual under other weights. With
:math:`\hat\epsilon = -\sigma_t s`, :math:`\hat x_0 = (x_t + \sigma_t^2 s)/\alpha_t` and
:math:`\hat v = \alpha_t\hat\epsilon - \sigma_t\hat x_0` (Salimans & Ho 2022),

.. math:: \|\hat x_0 - x_0\|^2 = e^{-\lambda_t}\,\|\hat\epsilon - \epsilon\|^2, \qquad
          \|\hat v - v\|^2 = \frac{(\alpha_t^2 + \sigma_t^2)^2}{\alpha_t^2}\,\|\hat\epsilon - \epsilon\|^2,

:math:`\lambda_t = \log(\alpha_t^2/\sigma_t^2)`: relative to L_simple (``"eps"``, weight 1) the x0 loss
weighs t by :math:`e^{-\lambda_t}` and the v loss by :math:`(\alpha^2 + \sigma^2)^2/\alpha^2`
(:math:`1 + e^{-\lambda_t}` for VP). Every weight is positive, so all three share the minimiser
:math:`s = \nabla\log p_t` (the per-t minimiser of the residual is :math:`E[\epsilon \mid x_t]`).

Importance sampling for the likelihood weighting: since
:math:`g^2/\sigma^2 = -\frac{d\lambda_{SNR}}{dt}` for any linear SDE, drawing t so that the
log-SNR is uniform makes the weight constant, :math:`(\lambda_{SNR}(t_{min}) - \lambda_{SNR}(T))\,/\,(T - t_{min})`
times :math:`\sigma_t^2`; the expectation is the same as with uniform t, the variance far lower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scoresde._tensor import append_dims, as_time, check_float, check_generator, check_labels
from scoresde.sde.base import LinearSDE

WEIGHTINGS = ("sigma2", "likelihood", "none")
TARGETS = ("eps", "x0", "v")
TIME_SAMPLINGS = ("uniform", "importance")


def sample_time(
    sde: LinearSDE,
    batch: int,
    *,
    importance: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training times ``(batch,)`` on ``[t_min, T]``: uniform in t, or uniform in log-SNR."""
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    if not importance:
        return sde.t_min + (sde.T - sde.t_min) * u
    lam_hi = sde.log_snr(torch.tensor(sde.t_min, device=device, dtype=dtype))
    lam_lo = sde.log_snr(torch.tensor(sde.T, device=device, dtype=dtype))
    return sde.inverse_log_snr(lam_lo + (lam_hi - lam_lo) * u).clamp(sde.t_min, sde.T)


def check_loss_inputs(x0: Tensor, noise: Tensor | None, reduction: str, generator: torch.Generator | None) -> None:
    """The checks every training loss makes of its batch: ``x0`` a floating-point ``(batch, *event)``
    tensor, ``noise`` (if given) shaped like it, ``reduction`` ``"mean"`` or ``"sum"``, a generator."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    check_float(x0, "x0")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be (batch, *event), got shape {tuple(x0.shape)}")
    if noise is not None:
        check_float(noise, "noise")
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    check_generator(generator)


def _check_model_sde(model: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE) -> None:
    """Refuse a score adapter (:mod:`scoresde.score`) built for another SDE than ``sde``: it
    would convert the network's output with one kernel while the loss perturbs with another.
    The same object passes at once; another one must have the same ``T`` and the same
    ``alpha``, ``sigma`` at a few times (float64 on the CPU, no device sync)."""
    model_sde = getattr(model, "sde", None)
    if not isinstance(model_sde, LinearSDE) or model_sde is sde:
        return
    same = model_sde.T == sde.T
    if same:
        t = torch.linspace(sde.t_min, sde.T, 5, dtype=torch.float64)
        same = all(
            torch.allclose(a, b, rtol=1e-6, atol=1e-12)
            for a, b in ((model_sde.alpha(t), sde.alpha(t)), (model_sde.sigma(t), sde.sigma(t)))
        )
    if not same:
        raise ValueError(
            f"the model converts its output with {model_sde!r} but dsm_loss got sde={sde!r}: "
            "train a score model against the SDE it was built with"
        )


def eps_residual(
    model: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, x0: Tensor, t: Tensor, noise: Tensor, reduction: str
) -> Tensor:
    r"""Per-sample :math:`\|\sigma_t s(x_t, t) + \epsilon\|^2 = \|\hat\epsilon - \epsilon\|^2` at
    :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon`, ``(batch,)``: the mean (``reduction="mean"``) or
    sum over the event dims. ``t`` ``(batch,)`` in the time dtype; no checks but the model's shape."""
    alpha, sigma = append_dims(sde.alpha(t), x0.ndim).to(x0.dtype), append_dims(sde.sigma(t), x0.ndim).to(x0.dtype)
    x_t = alpha * x0 + sigma * noise
    score = model(x_t, t)
    if not isinstance(score, Tensor) or score.shape != x_t.shape:
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ValueError(f"the model returned {got} for x of shape {tuple(x_t.shape)}; it must match x")
    err = (sigma * score + noise).square().flatten(1)
    return err.mean(1) if reduction == "mean" else err.sum(1)


def target_weight(sde: LinearSDE, t: Tensor, target: str) -> Tensor:
    r"""The weight ``(batch,)`` that turns :math:`\|\hat\epsilon - \epsilon\|^2` into the squared error
    of ``target``: 1 (``"eps"``), :math:`\sigma^2/\alpha^2` (``"x0"``),
    :math:`(\alpha^2 + \sigma^2)^2/\alpha^2` (``"v"``)."""
    if target == "eps":
        return torch.ones_like(t)
    alpha2, sigma2 = sde.alpha(t).square(), sde.sigma(t).square()
    return sigma2 / alpha2 if target == "x0" else (alpha2 + sigma2).square() / alpha2


def _conditional(
    model: Callable[..., Tensor], x0: Tensor, labels: Tensor | None, label_dropout: float,
    generator: torch.Generator | None,
) -> Callable[[Tensor, Tensor], Tensor]:  # fmt: skip
    """``(x, t) -> model(x, t, y)`` for ``labels`` checked against the model's classes, each dropped to
    the null label with probability ``label_dropout``."""
    if labels is None:
        raise ValueError(f"label_dropout={label_dropout!r} needs labels")
    base = getattr(model, "module", model)  # through a DistributedDataParallel wrapper
    num_classes = getattr(base, "num_classes", None)
    if num_classes is None:
        raise ValueError(f"labels were given but the model ({type(model).__name__}) is unconditional "
                         "(num_classes is None): build its network with num_classes")  # fmt: skip
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0 <= label_dropout <= 1:
        raise ValueError(f"label_dropout must be a probability in [0, 1], got {label_dropout!r}")
    if not isinstance(labels, Tensor) or labels.shape != (x0.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be ({x0.shape[0]},), one per row of x0, got {got}")
    labels = check_labels(labels, num_classes, allow_null=True).to(x0.device)
    null = getattr(base, "null_label", num_classes)
    if label_dropout:
        drop = torch.rand(labels.shape, generator=generator, device=x0.device) < label_dropout
        labels = torch.where(drop, torch.full_like(labels, null), labels)
    return lambda x, t: model(x, t, labels)


def dsm_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x0: Tensor,
    *,
    weighting: str | None = None,
    target: str | None = None,
    time_sampling: str = "uniform",
    reduction: str = "mean",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    labels: Tensor | None = None,
    label_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score matching loss of ``model(x, t) -> score``, averaged over the batch.

    Args:
        model: the score model (any parameterisation, see :mod:`scoresde.score`).
        sde: a linear SDE (the perturbation kernel must be Gaussian).
        x0: clean data ``(batch, *event)``.
        weighting: ``"sigma2"`` (the default), ``"likelihood"`` or ``"none"``: :math:`\lambda(t)` on
            the score residual.
        target: instead of a weighting, DDPM's loss of one prediction: ``"eps"`` (L_simple,
            :math:`\|\hat\epsilon - \epsilon\|^2`, the same as ``"sigma2"``), ``"x0"``
            (:math:`\|\hat x_0 - x_0\|^2`) or ``"v"`` (:math:`\|\hat v - v\|^2`); see the module
            docstring for their weights relative to each other. Uniform t only.
        time_sampling: ``"uniform"`` on ``[t_min, T]``, or ``"importance"`` (uniform in
            log-SNR; likelihood weighting only).
        reduction: ``"mean"`` or ``"sum"`` of the squared error over the event dims.
        t: fixed times ``(batch,)`` instead of sampled ones (the weight is then
            :math:`\lambda(t)` itself, with no importance correction).
        noise: fixed noise like ``x0`` instead of a fresh draw.
        labels: ``(batch,)`` class labels of ``x0`` for a class-conditional model ``model(x, t, y)``
            (a :class:`~scoresde.ScoreModel` whose network has ``num_classes``): the loss of
            :math:`s_\theta(x_t, t, y)`, which learns :math:`\nabla\log p_t(x \mid y)`. Values in
            ``[0, num_classes]``, ``num_classes`` being the null label ("no class").
        label_dropout: the probability with which each label is replaced by the null label
            (Ho & Salimans 2022), so that one network also learns the unconditional score that
            classifier-free guidance needs.
        generator: for the draws of t, noise and dropped labels.

    Returns:
        A scalar tensor.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"dsm_loss needs a LinearSDE (a Gaussian perturbation kernel), got {type(sde).__name__}")
    if target is not None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS} or None, got {target!r}")
        if weighting is not None:
            raise ValueError(f"give weighting or target, not both (target={target!r} fixes the weight), "
                             f"got weighting={weighting!r}")  # fmt: skip
    weighting = "sigma2" if weighting is None else weighting
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
    if time_sampling == "importance" and weighting != "likelihood":
        raise ValueError(f"time_sampling='importance' is for weighting='likelihood', got weighting={weighting!r}")
    check_loss_inputs(x0, noise, reduction, generator)
    _check_model_sde(model, sde)
    if labels is not None or label_dropout:
        model = _conditional(model, x0, labels, label_dropout, generator)

    importance = time_sampling == "importance" and t is None
    if t is None:
        t = sample_time(
            sde, x0.shape[0], importance=importance, generator=generator, device=x0.device,
            dtype=as_time(0.0, x0).dtype,
        )
    else:
        sde.check_time(t)
        t = as_time(t, x0)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    # sigma^2 ||s + eps/sigma||^2 = ||sigma s + eps||^2: the sigma2-weighted residual
    err = eps_residual(model, sde, x0, t, noise, reduction)
    sigma = sde.sigma(t)
    if target is not None:
        weight = target_weight(sde, t, target)
    elif weighting == "sigma2":
        weight = torch.ones_like(sigma)
    elif weighting == "none":
        weight = sigma.square().reciprocal()
    elif importance:
        lam = sde.log_snr(torch.tensor([sde.t_min, sde.T], device=t.device, dtype=t.dtype))
        weight = ((lam[0] - lam[1]) / (sde.T - sde.t_min)).expand_as(sigma)
    else:
        weight = sde.diffusion(t).square() / sigma.square()
    return (weight.to(err.dtype) * err).mean()
