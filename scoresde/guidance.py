r"""Guidance and controllable generation: score functions that every sampler takes.

**Bayes' rule for the score.** For a label :math:`y`,
:math:`\nabla_x\log p_t(x \mid y) = \nabla_x\log p_t(x) + \nabla_x\log p_t(y \mid x)`: a class-conditional
score is the unconditional one plus the gradient of a *noisy* classifier, :math:`p_t(y \mid x_t)`, the
probability of the label given the perturbed state at time ``t`` (not the clean data).

- :class:`ClassifierGuidance` (Dhariwal & Nichol 2021; Song et al. 2021, §5):
  :math:`s(x, t) + s_c\,\nabla_x\log p_\phi(y \mid x, t)`, with a time-conditioned classifier
  (:class:`NoisyClassifier`, trained by :func:`classifier_loss` on perturbed data). At scale
  :math:`s_c = 1` with the exact classifier it is the exact conditional score.
- :class:`ClassifierFreeGuidance` (Ho & Salimans 2022): one network learns :math:`\epsilon(x, t, y)`
  and, with the label dropped to a null label, :math:`\epsilon(x, t, \varnothing)`; the guided noise is

  .. math:: \tilde\epsilon = \epsilon_\varnothing + s\,(\epsilon_y - \epsilon_\varnothing)
            = (1 + w)\,\epsilon_y - w\,\epsilon_\varnothing, \qquad s = 1 + w,

  ``scale`` :math:`s` (``s = 1``: the conditional model, ``s = 0``: the unconditional one) or
  ``weight`` :math:`w` (Ho & Salimans' convention, ``w = 0``: the conditional model). Since
  :math:`\epsilon = -\sigma_t\,\nabla\log p_t` is linear, the same combination holds for scores, and
  :math:`\epsilon_y - \epsilon_\varnothing = -\sigma_t\nabla\log p_t(y \mid x)` is the *implicit
  classifier*'s gradient.

For :math:`s > 1` neither is the score of the tilted law :math:`p(x)\,p(y \mid x)^s` at every ``t``
(noising does not commute with the tilt): a guided sampler only approximates it. Notebook 08 measures
the gap on a mixture.

**Imputation / inpainting** (Song et al. 2021, App. I.2): given a boolean ``mask`` of observed values
``observed``, sample the rest from :math:`p(x_m \mid x_o)`. :class:`Replacement` (Song et al.) sets the
observed part to a fresh forward draw :math:`\alpha_t x_o + \sigma_t z` before every step; it is biased,
since the unobserved part is never conditioned on the observed one through the score, only through its
noisy copy. :class:`RePaint` (Lugmayr et al. 2022) corrects it by resampling: after each step it
re-noises the state back to the step's start time with the forward kernel and repeats, ``resample``
times, which harmonises the two parts (the Markov chain at each level moves towards the joint law).
Both are step hooks of the fixed-step samplers (``step_hook=``); :func:`inpaint` runs either.

Conventions: a *conditional score function* is ``model(x, t, y)`` with ``y`` ``(batch,)`` int64 labels
and attributes ``num_classes`` and (optionally) ``null_label`` (default ``num_classes``): a
:class:`~scoresde.ScoreModel` on a class-conditional network, or the oracle's
:meth:`~scoresde.GaussianMixture.conditional_score_fn`. A *classifier* is ``classifier(x, t) -> logits``
``(batch, num_classes)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scoresde._tensor import TimeLike, append_dims, as_time, check_float, check_generator, check_labels
from scoresde.analytic import check_mask
from scoresde.losses import sample_time
from scoresde.sample import SampleResult, sample_ode, sample_pc
from scoresde.sde.base import LinearSDE, ScoreFn
from scoresde.solvers import StepContext

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "NoisyClassifier",
    "RePaint",
    "Replacement",
    "check_labels",
    "classifier_loss",
    "guidance_scale",
    "image_mask",
    "inpaint",
]

LabelLike = int | Tensor


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def guidance_scale(scale: float | None = None, weight: float | None = None) -> float:
    r"""The classifier-free guidance scale :math:`s` from either convention: ``scale`` :math:`s` as is,
    or ``weight`` :math:`w` as :math:`s = 1 + w`; neither gives :math:`s = 1` (no guidance)."""
    if scale is not None and weight is not None:
        raise ValueError(f"give scale (s) or weight (w = s - 1), not both: got scale={scale!r}, weight={weight!r}")
    if weight is not None:
        return 1.0 + _number(weight, "weight")
    return 1.0 if scale is None else _number(scale, "scale")


def _label_batch(label: LabelLike, x: Tensor) -> Tensor:
    """``label`` as ``(batch,)`` int64 on ``x``'s device (metadata checks only)."""
    if isinstance(label, Tensor):
        if label.shape != (x.shape[0],):
            raise ValueError(f"{label.shape[0]} labels for a batch of {x.shape[0]}")
        return label.to(x.device)
    return torch.full((x.shape[0],), label, dtype=torch.int64, device=x.device)


class ClassifierFreeGuidance(nn.Module):
    r"""Classifier-free guidance (Ho & Salimans 2022) as a score function ``(x, t) -> score``:

    .. math:: \tilde s(x, t) = s(x, t, \varnothing) + s_g\,\big(s(x, t, y) - s(x, t, \varnothing)\big),

    the same as :math:`\tilde\epsilon = \epsilon_\varnothing + s_g(\epsilon_y - \epsilon_\varnothing)
    = (1 + w)\epsilon_y - w\epsilon_\varnothing` for a noise-predicting network, :math:`s_g = 1 + w`.

    Args:
        model: a conditional score function ``(x, t, y) -> score`` with ``num_classes`` (and
            ``null_label``, default ``num_classes``) attributes, or give ``num_classes``.
        label: the class, an int or ``(batch,)`` labels, each in ``[0, num_classes)``.
        scale: :math:`s_g` (1: the conditional model; 0: the unconditional one).
        weight: :math:`w = s_g - 1` instead of ``scale`` (Ho & Salimans' convention).
        num_classes, null_label: for a model that does not carry them.

    Each call evaluates the network once at ``s_g = 1`` or ``0`` and otherwise once on a doubled batch
    (conditional and null labels together): two network evaluations per NFE.
    """

    def __init__(
        self,
        model: Callable[[Tensor, Tensor, Tensor], Tensor],
        label: LabelLike,
        *,
        scale: float | None = None,
        weight: float | None = None,
        num_classes: int | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a conditional score (x, t, y) -> score, got {type(model).__name__}")
        num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError(
                f"classifier-free guidance needs a class-conditional model, but {type(model).__name__} has no classes "
                "(num_classes is None): train one with labels (scoresde train --conditional) or pass num_classes"
            )
        self.model = model
        self.num_classes = int(num_classes)
        self.null_label = int(null_label if null_label is not None else getattr(model, "null_label", num_classes))
        self.label = check_labels(label, self.num_classes)
        self.scale = guidance_scale(scale, weight)
        self.time_range = getattr(model, "time_range", None)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        y = _label_batch(self.label, x)
        if self.scale == 1.0:
            return self.model(x, t, y)
        null = torch.full_like(y, self.null_label)
        if self.scale == 0.0:
            return self.model(x, t, null)
        tb = as_time(t, x)
        both = self.model(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return uncond + self.scale * (cond - uncond)


def _check_logits(logits: Tensor, x: Tensor, num_classes: int) -> Tensor:
    if not isinstance(logits, Tensor) or logits.shape != (x.shape[0], num_classes):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"classifier returned {got} for x of batch {x.shape[0]}, not ({x.shape[0]}, {num_classes})")
    return logits


class NoisyClassifier(nn.Module):
    r"""A time-conditioned (noisy) classifier :math:`p_\phi(y \mid x_t, t)`: ``forward(x, t) -> logits``
    ``(batch, num_classes)``, wrapping ``net(x, t) -> logits`` (e.g. :class:`scoresde.nn.ClassifierMLP`).

    It is trained on data perturbed by ``sde`` (:func:`classifier_loss`,
    :func:`scoresde.train.fit_classifier`), so it is valid on ``time_range = (sde.t_min, sde.T)``; a
    sampler refuses a guided score whose grid leaves that range."""

    def __init__(self, net: nn.Module, sde: LinearSDE, num_classes: int) -> None:
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"NoisyClassifier needs a LinearSDE (its training perturbation), got {type(sde).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.net, self.sde, self.num_classes = net, sde, num_classes

    @property
    def time_range(self) -> tuple[float, float]:
        """The times it was trained on, ``(sde.t_min, sde.T)``."""
        return (self.sde.t_min, self.sde.T)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        t = self.sde.step_time(t, x)
        return _check_logits(self.net(x, t), x, self.num_classes)


def classifier_loss(
    classifier: NoisyClassifier,
    x0: Tensor,
    labels: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Cross-entropy of a noisy classifier on perturbed data, the mean over the batch of

    .. math:: -\log p_\phi(y \mid \alpha_t x_0 + \sigma_t\epsilon,\ t), \qquad t \sim U[t_{min}, T],\
              \epsilon \sim \mathcal N(0, I),

    under the classifier's own SDE. ``x0`` ``(batch, *event)`` float, ``labels`` ``(batch,)`` in
    ``[0, num_classes)``; returns a scalar."""
    if not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a NoisyClassifier (it knows its SDE), got {type(classifier).__name__}")
    check_float(x0, "x0")
    check_generator(generator)
    if x0.ndim < 2 or not isinstance(labels, Tensor) or labels.shape != (x0.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"x0 must be (batch, *event) and labels (batch,), got {tuple(x0.shape)} and {got}")
    labels = check_labels(labels, classifier.num_classes)
    sde = classifier.sde
    t = sample_time(sde, x0.shape[0], generator=generator, device=x0.device, dtype=as_time(0.0, x0).dtype)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = sde.marginal(x0, t)
    x_t = mean + append_dims(std, x0.ndim).to(x0.dtype) * noise
    return nn.functional.cross_entropy(classifier(x_t, t), labels.to(x0.device))


class ClassifierGuidance(nn.Module):
    r"""Classifier guidance (Dhariwal & Nichol 2021) as a score function ``(x, t) -> score``:

    .. math:: \tilde s(x, t) = s(x, t) + s_c\,\nabla_x\log p_\phi(y \mid x, t),

    the gradient taken by autograd through ``classifier`` (the input is never modified). At
    :math:`s_c = 1` with the exact noisy classifier this is :math:`\nabla\log p_t(x \mid y)`.

    Args:
        score_fn: the unconditional score ``(x, t)``.
        classifier: ``(x, t) -> logits`` ``(batch, num_classes)``, differentiable in ``x``
            (:class:`NoisyClassifier`, or the oracle's :meth:`~scoresde.GaussianMixture.log_classifier_fn`).
        label: an int or ``(batch,)`` labels in ``[0, num_classes)``.
        scale: :math:`s_c`.
        num_classes: for a classifier without a ``num_classes`` attribute.

    ``time_range`` is the classifier's (and the score function's, intersected) where they declare one:
    the samplers check their grid against it.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        classifier: Callable[[Tensor, Tensor], Tensor],
        label: LabelLike,
        *,
        scale: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        for name, fn in (("score_fn", score_fn), ("classifier", classifier)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable (x, t), got {type(fn).__name__}")
        num_classes = num_classes if num_classes is not None else getattr(classifier, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"pass num_classes: the classifier {type(classifier).__name__} does not say how many "
                             "classes it has")  # fmt: skip
        self.score_fn, self.classifier = score_fn, classifier
        self.num_classes = int(num_classes)
        self.label = check_labels(label, self.num_classes)
        self.scale = _number(scale, "scale")
        ranges = [r for r in (getattr(classifier, "time_range", None), getattr(score_fn, "time_range", None)) if r]
        self.time_range = (max(r[0] for r in ranges), min(r[1] for r in ranges)) if ranges else None

    def log_prob_grad(self, x: Tensor, t: TimeLike) -> Tensor:
        r""":math:`\nabla_x\log p_\phi(y \mid x, t)`, shaped like ``x``."""
        y = _label_batch(self.label, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = _check_logits(self.classifier(xg, t), x, self.num_classes)
            log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, xg)
        return grad.to(x.dtype)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        score = self.score_fn(x, t)
        return score if self.scale == 0.0 else score + self.scale * self.log_prob_grad(x, t)


# ----------------------------------------------------------------------------------- imputation


class Replacement:
    r"""Song et al.'s imputation by replacement (2021, App. I.2) as a step hook (``step_hook=`` of
    :func:`~scoresde.sample_pc`, :func:`~scoresde.sample_sde` and :func:`~scoresde.sample_ode`'s
    fixed-step methods): before each step from ``t``, the observed coordinates are set to a fresh draw of
    the forward marginal,

    .. math:: x_t \leftarrow m \odot (\alpha_t x_o + \sigma_t z) + (1 - m) \odot x_t,
              \qquad z \sim \mathcal N(0, I),

    and the sampler's step moves the whole state to ``s``. Biased: :math:`p_t(x_m \mid x_o(t))` for one
    noisy copy :math:`x_o(t)` is not :math:`p_t(x_m \mid x_o)`.

    Args:
        sde: the sampler's linear SDE.
        mask: boolean, shaped like one sample; ``True`` marks an observed value.
        observed: ``(batch, *event)`` or one sample ``event``; only its values under ``mask`` are used.
    """

    def __init__(self, sde: LinearSDE, mask: Tensor, observed: Tensor) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"imputation needs a LinearSDE (the forward marginal), got {type(sde).__name__}")
        check_float(observed, "observed")
        event = tuple(observed.shape[1:]) if observed.ndim == mask.ndim + 1 else tuple(observed.shape)
        self.mask = check_mask(mask, event)
        if not torch.isfinite(torch.where(self.mask.to(observed.device), observed, 0)).all():
            raise ValueError("observed holds NaN or inf under the mask")
        self.sde, self.observed = sde, observed

    def replace(self, x: Tensor, t: Tensor, ctx: StepContext) -> Tensor:
        """``x`` with its observed part replaced by a forward draw at time ``t`` (0-d)."""
        alpha, sigma = self.sde.alpha(t).to(x.dtype), self.sde.sigma(t).to(x.dtype)
        noisy = alpha * self.observed.to(x) + sigma * ctx.noise.randn_like(x)
        return torch.where(self.mask.to(x.device), noisy, x)

    def __call__(self, step: Callable[[Tensor], Tensor], x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        return step(self.replace(x, t, ctx))

    def finish(self, x: Tensor) -> Tensor:
        """The final sample: the observed values themselves under the mask."""
        return torch.where(self.mask.to(x.device), self.observed.to(x), x)


class RePaint(Replacement):
    r"""Replacement with RePaint's resampling (Lugmayr et al. 2022, Alg. 1), a step hook: each step from
    ``t`` to ``s`` runs ``resample`` times, and between the runs the state is taken back to ``t`` by the
    forward kernel, :math:`x_t = a\,x_s + v z` (``sde.transition_coefs(s, t)``), so the unobserved part
    is re-drawn given an observed part that has been through the score. ``resample = 1`` is
    :class:`Replacement`. Costs ``resample`` times the sampler's NFE (jump length 1).

    A multistep ODE solver keeps a history that a repeated step would corrupt: use a one-step sampler
    (:func:`~scoresde.sample_pc`, or :func:`~scoresde.sample_ode` with ``"euler"``, ``"heun"`` or ``"ddim"``).
    """

    def __init__(self, sde: LinearSDE, mask: Tensor, observed: Tensor, *, resample: int = 10) -> None:
        super().__init__(sde, mask, observed)
        if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
            raise ValueError(f"resample must be an int >= 1, got {resample!r}")
        self.resample = resample

    def __call__(self, step: Callable[[Tensor], Tensor], x: Tensor, t: Tensor, s: Tensor, ctx: StepContext) -> Tensor:
        if ctx.history:
            raise ValueError("RePaint repeats each step, which a multistep solver's history does not allow: "
                             "use sample_pc or a one-step ODE method ('euler', 'heun', 'ddim')")  # fmt: skip
        scale, std = self.sde.transition_coefs(s, t)
        for j in range(self.resample):
            x_s = step(self.replace(x, t, ctx))
            if j < self.resample - 1:  # back to t through the forward kernel
                x = scale.to(x.dtype) * x_s + std.to(x.dtype) * ctx.noise.randn_like(x_s)
        return x_s


MASK_REGIONS = ("top", "bottom", "left", "right")


def image_mask(event_shape: tuple[int, ...], missing: str) -> Tensor:
    """The boolean mask (``True`` = observed) of an image of ``event_shape`` ``(C, H, W)`` (or ``(H, W)``)
    whose ``missing`` half is to be filled in: ``"top"``, ``"bottom"``, ``"left"`` or ``"right"``."""
    if missing not in MASK_REGIONS:
        raise ValueError(f"the region to inpaint must be one of {MASK_REGIONS}, got {missing!r}")
    if len(event_shape) < 2:
        raise ValueError(f"image masks need images (C, H, W) or (H, W), got event shape {tuple(event_shape)}")
    h, w = event_shape[-2:]
    rows, cols = torch.arange(h)[:, None].expand(h, w), torch.arange(w)[None, :].expand(h, w)
    hidden = {"top": rows < h // 2, "bottom": rows >= h // 2, "left": cols < w // 2, "right": cols >= w // 2}[missing]
    return (~hidden).expand(tuple(event_shape)).clone()


INPAINT_METHODS = ("replacement", "repaint")
INPAINT_SAMPLERS = ("pc", "ode")


def inpaint(
    score_fn: ScoreFn,
    sde: LinearSDE,
    mask: Tensor,
    observed: Tensor,
    *,
    num_samples: int | None = None,
    method: str = "replacement",
    sampler: str = "pc",
    ode_method: str = "heun",
    resample: int = 10,
    **sampler_kwargs: Any,
) -> SampleResult:
    r"""Sample the unobserved coordinates given the observed ones (imputation / inpainting).

    Args:
        score_fn: the (unconditional, or guided) score of the data.
        mask: boolean, shaped like one sample; ``True`` marks an observed value.
        observed: ``(batch, *event)`` (one completion each) or one sample ``event`` (then
            ``num_samples`` completions of it); only its values under ``mask`` are read.
        method: ``"replacement"`` (:class:`Replacement`) or ``"repaint"`` (:class:`RePaint`, with
            ``resample``; ``sampler="pc"`` or a one-step ODE method).
        sampler: ``"pc"`` (:func:`~scoresde.sample_pc`) or ``"ode"`` (:func:`~scoresde.sample_ode`
            with the fixed-step ``ode_method``).
        sampler_kwargs: passed to the sampler (``num_steps``, ``generator``, ``seed``, ``corrector``, ...).

    Returns:
        The sampler's :class:`~scoresde.SampleResult`, ``x`` ``(batch, *event)`` equal to ``observed``
        under the mask.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"method must be one of {INPAINT_METHODS}, got {method!r}")
    if sampler not in INPAINT_SAMPLERS:
        raise ValueError(f"sampler must be one of {INPAINT_SAMPLERS}, got {sampler!r}")
    check_float(observed, "observed")
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a boolean tensor, got {type(mask).__name__}")
    if observed.ndim == mask.ndim:  # one sample: repeat it
        if num_samples is None:
            raise ValueError(f"observed is one sample {tuple(observed.shape)}: give num_samples, or a batch")
        observed = observed.expand(num_samples, *observed.shape)
    elif num_samples is not None and num_samples != observed.shape[0]:
        raise ValueError(f"num_samples={num_samples} differs from the {observed.shape[0]} observed samples")
    hook = RePaint(sde, mask, observed, resample=resample) if method == "repaint" else Replacement(sde, mask, observed)
    for name in ("shape", "x_init", "step_hook", "method"):
        if name in sampler_kwargs:
            raise ValueError(f"inpaint sets {name} itself (from observed): drop it")
    shape = tuple(observed.shape)
    sampler_kwargs.setdefault("dtype", observed.dtype)
    sampler_kwargs.setdefault("device", observed.device)
    if sampler == "pc":
        result = sample_pc(score_fn, sde, shape, step_hook=hook, **sampler_kwargs)
    else:
        result = sample_ode(score_fn, sde, shape, method=ode_method, step_hook=hook, **sampler_kwargs)
    result.x = hook.finish(result.x)
    return result
