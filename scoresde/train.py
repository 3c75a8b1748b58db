r"""Training loops.

:func:`fit` is the minimal one: Adam on the denoising score matching loss, batches drawn from a
tensor or a sampler, for quick 2-D experiments.

:class:`Trainer` is the real one for data sets: AdamW with linear warm-up (then constant or
cosine), gradient clipping, an exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``), bf16 autocast on
GPU, atomic checkpoints that resume a run exactly, periodic evaluation (a sample grid and
bits/dim on held-out data), a JSON-lines metrics log, and DistributedDataParallel under
``torchrun`` (rank 0 writes; losses and bits/dim are reduced over ranks).

Randomness: the batch order is a seeded permutation per epoch
(``DistributedSampler(seed=seed).set_epoch(epoch)``), so step ``s`` always sees the same
batch; the dequantization noise, training times and noise come from a per-rank
``torch.Generator``, dropout from torch's global generator. Both generators' states of every
rank are saved in the checkpoint, so a resumed run continues the uninterrupted one (bit for
bit on CPU). Evaluation uses its own generators and never disturbs the training stream.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scoresde._atomic import atomic_write, atomic_write_text, remove_stale_temporaries
from scoresde._tensor import check_generator, check_labels
from scoresde.checkpoint import check_plain, checkpoint_mismatch, load_checkpoint, save_checkpoint
from scoresde.data import ImageData
from scoresde.discrete_data import BpdEvaluation, evaluate_bpd
from scoresde.distributed import distributed_context, resolve_device
from scoresde.flow_matching import COUPLINGS, flow_matching_loss
from scoresde.guidance import NoisyClassifier, classifier_loss
from scoresde.losses import TARGETS, TIME_SAMPLINGS, WEIGHTINGS, dsm_loss
from scoresde.progress import progress_bar
from scoresde.sample import sample_ode
from scoresde.score import ScoreModel
from scoresde.sde.base import LinearSDE
from scoresde.velocity import FlowVelocity

__all__ = [
    "FitResult",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "fit",
]

BatchSource = Tensor | tuple[Tensor, Tensor] | Callable[[int, torch.Generator], Tensor | tuple[Tensor, Tensor]]

OBJECTIVES = ("dsm", "flow_matching")
"""What a model is trained on: denoising score matching (:func:`~scoresde.dsm_loss`, any score model) or
conditional flow matching (:func:`~scoresde.flow_matching_loss`, a :class:`~scoresde.FlowVelocity`)."""


DSM_TARGETS = ("score", *TARGETS)
"""What a DSM loss regresses: ``"score"`` (the score residual under ``weighting``) or DDPM's prediction
losses ``"eps"`` (L_simple), ``"x0"``, ``"v"`` (:func:`~scoresde.dsm_loss` ``target=``, each with its own weight)."""


def _objective_loss(
    objective: str, model: nn.Module, sde: LinearSDE, batch: Tensor | tuple[Tensor, Tensor], *, weighting: str,
    time_sampling: str, coupling: str, generator: torch.Generator | None, labels: Tensor | None = None,
    label_dropout: float = 0.0, target: str = "score",
) -> Tensor:  # fmt: skip
    """The loss of one batch, ``x0`` or a paired ``(x0, noise)``, under ``objective`` (with class ``labels``
    for a conditional score model, dropped to the null label with probability ``label_dropout``); a DSM
    ``target`` other than ``"score"`` replaces ``weighting`` (:data:`DSM_TARGETS`)."""
    x0, noise = batch if isinstance(batch, tuple) else (batch, None)
    if objective == "flow_matching":
        if labels is not None:
            raise ValueError("class labels train a conditional score model with objective='dsm', not flow_matching")
        return flow_matching_loss(model, sde, x0, coupling=coupling, noise=noise, generator=generator)
    weight = {"weighting": weighting} if target == "score" else {"target": target}  # dsm_loss takes one of them
    return dsm_loss(model, sde, x0, **weight, time_sampling=time_sampling, noise=noise, labels=labels,
                    label_dropout=label_dropout, generator=generator)  # fmt: skip


@dataclass
class FitResult:
    """Loss of every step."""

    losses: list[float] = field(default_factory=list)


def fit(
    model: nn.Module,
    sde: LinearSDE,
    data: BatchSource,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    weighting: str = "sigma2",
    time_sampling: str = "uniform",
    objective: str = "dsm",
    coupling: str = "independent",
    labels: Tensor | None = None,
    label_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FitResult:
    """Train ``model`` for ``steps`` Adam steps, the learning rate decayed by cosine annealing: a score
    model with :func:`~scoresde.dsm_loss` (``objective="dsm"``, with ``weighting`` and
    ``time_sampling``), or a :class:`~scoresde.FlowVelocity` with :func:`~scoresde.flow_matching_loss`
    (``objective="flow_matching"``, with ``coupling``).

    Args:
        data: a tensor ``(n, *event)`` to draw batches from (with replacement); a pair of tensors
            ``(x0, noise)``, each ``(n, *event)``, drawn row for row (a fixed coupling, e.g. reflow's
            pairs); or a function ``(batch_size, generator) -> batch`` (or ``-> (x0, noise)``), e.g.
            ``lambda n, g: gmm.sample(n, generator=g)``.
        labels: ``(n,)`` class labels of tensor ``data``, drawn row for row with it, for a class-conditional
            score model (:func:`~scoresde.dsm_loss` ``labels=``), e.g. from
            :meth:`~scoresde.GaussianMixture.sample_with_labels`.
        label_dropout: the probability of replacing a label by the null label (classifier-free guidance's
            joint training: one network learns the conditional and the unconditional score).
        generator: drives the batches, times, noise and dropped labels (the model's initialisation is yours).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_generator(generator)
    if isinstance(data, (Tensor, tuple)):
        pools = data if isinstance(data, tuple) else (data,)
        if len(pools) not in (1, 2) or not all(isinstance(p, Tensor) for p in pools):
            raise TypeError(f"tuple data must be two tensors (x0, noise), got {len(pools)} item(s)")
        for name, pool in zip(("data", "noise"), pools, strict=False):
            if pool.ndim < 2 or pool.shape[0] == 0:
                raise ValueError(f"{name} must be (n, *event) with n >= 1, got shape {tuple(pool.shape)}")
            if not torch.isfinite(pool).all():
                raise ValueError(f"{name} holds NaN or inf")
        if pools[-1].shape != pools[0].shape:
            raise ValueError(
                f"paired noise shape {tuple(pools[1].shape)} differs from data shape {tuple(pools[0].shape)}"
            )
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (pools[0].shape[0],)):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be ({pools[0].shape[0]},), one per row of data, got {got}")
        drawn: list[Tensor] = []  # the labels of the last batch

        def draw(n: int, g: torch.Generator | None) -> Tensor | tuple[Tensor, Tensor]:
            idx = torch.randint(len(pools[0]), (n,), generator=g, device=g.device if g is not None else "cpu")
            rows = tuple(pool[idx.to(pool.device)] for pool in pools)
            if labels is not None:
                drawn[:] = [labels[idx.to(labels.device)]]
            return rows if len(rows) == 2 else rows[0]
    elif callable(data):
        if labels is not None:
            raise TypeError("labels go with tensor data (drawn row for row); a batch function cannot take them")
        draw = data
    else:
        raise TypeError(
            f"data must be a tensor or a callable (batch_size, generator) -> batch, got {type(data).__name__}"
        )

    def step_loss() -> Tensor:
        batch = draw(batch_size, generator)
        return _objective_loss(objective, model, sde, batch, weighting=weighting, time_sampling=time_sampling,
                               coupling=coupling, generator=generator, labels=drawn[0] if labels is not None else None,
                               label_dropout=label_dropout)  # fmt: skip

    return _adam_loop(model, step_loss, steps, lr, progress, "fit")


def _adam_loop(model: nn.Module, step_loss: Callable[[], Tensor], steps: int, lr: float, progress: bool,
               desc: str) -> FitResult:  # fmt: skip
    """``steps`` Adam steps on ``step_loss()`` (a fresh batch each call), cosine-annealed learning rate."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    result = FitResult()
    model.train()
    with progress_bar(total=steps, enabled=progress, desc=desc) as bar:
        for _ in range(steps):
            loss = step_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            if not torch.isfinite(torch.tensor(value)):
                raise FloatingPointError(f"the loss became {value} at step {len(result.losses) + 1}")
            result.losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    model.eval()
    return result


def fit_classifier(
    classifier: NoisyClassifier,
    data: Tensor,
    labels: Tensor,
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FitResult:
    r"""Train a noisy classifier :math:`p_\phi(y \mid x_t, t)` for classifier guidance: ``steps`` Adam steps
    on :func:`~scoresde.guidance.classifier_loss` (cross-entropy on data perturbed by the classifier's own
    SDE at :math:`t \sim U[t_{min}, T]`), batches drawn with replacement from ``data`` ``(n, *event)`` and
    ``labels`` ``(n,)`` row for row, the learning rate cosine-annealed. ``generator`` drives batches,
    times and noise."""
    if not isinstance(classifier, NoisyClassifier):
        raise TypeError(f"classifier must be a NoisyClassifier (it knows its SDE), got {type(classifier).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] == 0 or not torch.isfinite(data).all():
        raise ValueError("data must be a finite (n, *event) tensor with n >= 1")
    if not isinstance(labels, Tensor) or labels.shape != (data.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be ({data.shape[0]},), one per row of data, got {got}")
    labels = check_labels(labels, classifier.num_classes)

    def step_loss() -> Tensor:
        idx = torch.randint(data.shape[0], (batch_size,), generator=generator,
                            device=generator.device if generator is not None else "cpu")  # fmt: skip
        idx = idx.to(data.device)
        return classifier_loss(classifier, data[idx], labels.to(data.device)[idx], generator=generator)

    return _adam_loop(classifier, step_loss, steps, lr, progress, "fit_classifier")


# ----------------------------------------------------------------------------- devices and ranks


def _stream_seed(seed: int, rank: int, stream: int) -> int:
    """Distinct seeds for (run seed, rank, stream) — stream 0 training noise, 1 dropout, 2+ evaluation."""
    return (seed * 1_000_003 + rank) * 16 + stream


# ----------------------------------------------------------------------------- trainer


def _rule(help: str, *, low: float = 0, above: bool = False, below: float | None = None,
          choices: tuple[str, ...] | None = None) -> dict[str, Any]:  # fmt: skip
    """A :class:`TrainConfig` field's description and the values it takes: ``>= low`` (``> low``
    with ``above``; ``< below`` too), or one of ``choices``."""
    return {"help": help, "low": low, "above": above, "below": below, "choices": choices}


@dataclass(frozen=True)
class TrainConfig:
    r"""The settings of a :class:`Trainer` run and their defaults, listed once: the ``[train]``
    table of a run config (:mod:`scoresde.config`) and the ``scoresde train`` flags are these
    fields. Checked on construction (a bad value is a ``ValueError`` naming it); ints pass for
    floats and are stored as floats. :meth:`as_dict` is the plain dict a checkpoint stores.

    ``lr``: the peak learning rate, reached after ``warmup_steps`` of linear warm-up from
    ``lr / warmup_steps``, then held (``lr_schedule="constant"``) or annealed to 0 at ``steps``
    (``"cosine"``). ``objective``: ``"dsm"`` (:func:`~scoresde.dsm_loss`, with ``weighting`` and
    ``time_sampling``, or with ``target`` ``"eps"``/``"x0"``/``"v"``: DDPM's loss of that prediction,
    :math:`\|\hat\epsilon - \epsilon\|^2`, :math:`\|\hat x_0 - x_0\|^2` or :math:`\|\hat v - v\|^2`, i.e. the
    weight :math:`1`, :math:`\sigma^2/\alpha^2` or :math:`(\alpha^2 + \sigma^2)^2/\alpha^2` on the ``sigma2``
    residual; ``"score"``, the default, uses ``weighting``) or ``"flow_matching"``
    (:func:`~scoresde.flow_matching_loss` of a :class:`~scoresde.FlowVelocity`, with ``coupling``).
    ``label_dropout``: for a class-conditional model (its network has ``num_classes``), the probability
    that a label is replaced by the null label, so that one network learns the conditional and the
    unconditional score (classifier-free guidance).
    ``seed`` seeds the batch order, the noise and dropout (the model's initialisation is yours).
    """

    steps: int = field(default=2000, metadata=_rule("optimisation steps", low=1))
    batch_size: int = field(default=128, metadata=_rule("global batch size, split over the ranks", low=1))
    lr: float = field(default=1e-3, metadata=_rule("peak learning rate", above=True))
    lr_schedule: str = field(
        default="constant",
        metadata=_rule("after warm-up: constant, or cosine (to 0 at the last step)", choices=("constant", "cosine")),
    )
    warmup_steps: int = field(default=200, metadata=_rule("linear warm-up steps"))
    weight_decay: float = field(default=0.0, metadata=_rule("AdamW's decoupled weight decay"))
    grad_clip: float = field(default=1.0, metadata=_rule("max global gradient norm (0: no clipping)"))
    ema_decay: float = field(default=0.999, metadata=_rule("EMA decay of the weights", below=1.0))
    weighting: str = field(
        default="sigma2", metadata=_rule("DSM weighting: sigma2, likelihood or none", choices=WEIGHTINGS)
    )
    time_sampling: str = field(
        default="uniform", metadata=_rule("uniform, or importance (with likelihood weighting)", choices=TIME_SAMPLINGS)
    )
    target: str = field(
        default="score",
        metadata=_rule("DSM target: score (with weighting), or DDPM's eps (L_simple), x0 or v", choices=DSM_TARGETS),
    )
    objective: str = field(
        default="dsm", metadata=_rule("dsm (score matching) or flow_matching (a velocity model)", choices=OBJECTIVES)
    )
    coupling: str = field(
        default="independent", metadata=_rule("flow matching's noise coupling: independent or ot", choices=COUPLINGS)
    )
    label_dropout: float = field(
        default=0.1, metadata=_rule("a conditional model's chance of training on the null label", below=1.0)
    )
    seed: int = field(default=0, metadata=_rule("seed of the batch order, noise and dropout"))
    eval_every: int = field(default=0, metadata=_rule("evaluate every N steps (0: at the end only)"))
    checkpoint_every: int = field(default=500, metadata=_rule("checkpoint every N steps (0: at the end only)"))
    log_every: int = field(default=50, metadata=_rule("log the mean loss every N steps", low=1))
    num_eval_images: int = field(default=64, metadata=_rule("test images for bits/dim at evaluation"))
    num_grid_samples: int = field(default=64, metadata=_rule("images in the evaluation sample grid"))

    def __post_init__(self) -> None:
        for f in fields(self):
            name, value, rule = f.name, getattr(self, f.name), f.metadata
            if rule["choices"] is not None:
                if value not in rule["choices"]:
                    raise ValueError(f"{name} must be one of {rule['choices']}, got {value!r}")
            elif isinstance(f.default, int):
                if not isinstance(value, int) or isinstance(value, bool) or value < rule["low"]:
                    raise ValueError(f"{name} must be an int >= {rule['low']}, got {value!r}")
            else:
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                low, below = rule["low"], rule["below"]
                if below is not None:
                    if not (number and low <= value < below):
                        raise ValueError(f"{name} must be a number in [{low}, {below:g}), got {value!r}")
                elif not (number and math.isfinite(value) and (value > low if rule["above"] else value >= low)):
                    raise ValueError(f"{name} must be a finite number {'>' if rule['above'] else '>='} {low}, "
                                     f"got {value!r}")  # fmt: skip
                object.__setattr__(self, name, float(value))
        if self.target != "score":
            if self.objective != "dsm":
                raise ValueError(f"target={self.target!r} is a DSM target: it needs objective='dsm', "
                                 f"got objective={self.objective!r}")  # fmt: skip
            if self.weighting != "sigma2" or self.time_sampling != "uniform":
                raise ValueError(f"target={self.target!r} fixes the loss's weight and samples t uniformly: it takes "
                                 f"weighting='sigma2' and time_sampling='uniform' (the defaults), got "
                                 f"weighting={self.weighting!r}, time_sampling={self.time_sampling!r}")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (what a checkpoint stores and a ``[train]`` table holds)."""
        return asdict(self)


@dataclass
class TrainResult:
    """Output of :meth:`Trainer.train`: the mean-over-ranks loss of every step run in this
    call, the step reached, the checkpoint path (``None`` if none was written), the
    evaluation records and the wall time."""

    losses: list[float]
    step: int
    checkpoint: Path | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    r"""Train a score model on a data set with denoising score matching (:func:`~scoresde.dsm_loss`).

    Args:
        model: the score model, e.g. ``EpsilonScore(UNet(...), sde)``, on any device (moved to ``device``).
        sde: the forward SDE.
        data: an :class:`~scoresde.data.ImageData` (integer levels, uniformly dequantized
            afresh every batch and mapped by its transform) or a float tensor ``(n, *event)``
            used as is.
        out_dir: where ``checkpoint.pt``, ``checkpoint-previous.pt``, ``metrics.jsonl`` and
            ``samples/`` go.
        settings: the run's :class:`TrainConfig` (default ``TrainConfig()``): steps, batch size,
            learning rate and its schedule, EMA decay, loss, seed, and how often to evaluate,
            checkpoint and log.
        **overrides: single :class:`TrainConfig` fields, set over ``settings``
            (``Trainer(..., steps=5000, lr=2e-4)``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... mixed_precision: bf16 autocast on CUDA
            (ignored on CPU).
        eval_data: held-out :class:`ImageData` for bits/dim (its first ``num_eval_images``).
            Evaluation runs every ``eval_every`` steps and at the end, and needs ``ImageData``;
            its sample grid (``num_grid_samples`` images, 0: none) is drawn with the
            probability-flow ODE from fixed noise.
        bpd_kwargs: passed to :func:`~scoresde.evaluate_bpd` (default Hutchinson divergence
            with one Rademacher probe, ``rtol = atol = 1e-4``).
        config: the run's description, stored in every checkpoint (plain values only).
        progress: a tqdm bar on rank 0.
        resume: ``True``: continue from ``out_dir/checkpoint.pt`` if present; a path: continue
            from that checkpoint (e.g. ``checkpoint-previous.pt`` after a divergence).
        resume_state: the content of the checkpoint ``resume`` names, when the caller has read
            it already (``scoresde train --resume`` reads it for the run's config): it is not
            read again.

    A checkpoint is saved every ``checkpoint_every`` steps and always at the end of
    :meth:`train`; the one it replaces is kept as ``checkpoint-previous.pt``. Steps are counted
    from 1, as in ``metrics.jsonl``: the checkpoint of step ``s`` holds the weights after ``s``
    updates, and step ``s + 1`` is the first whose loss is computed from them.
    """

    def __init__(
        self,
        model: ScoreModel,
        sde: LinearSDE,
        data: ImageData | Tensor,
        *,
        out_dir: str | Path,
        settings: TrainConfig | None = None,
        device: str | torch.device | None = "auto",
        mixed_precision: bool = True,
        eval_data: ImageData | None = None,
        bpd_kwargs: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = False,
        resume: bool | str | Path = False,
        resume_state: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module score model, got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        if settings is not None and not isinstance(settings, TrainConfig):
            raise TypeError(f"settings must be a TrainConfig, got {type(settings).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise TypeError(f"Trainer got unknown keyword argument(s) {', '.join(unknown)} (the training settings "
                            f"are TrainConfig's fields: {', '.join(f.name for f in fields(TrainConfig))})")  # fmt: skip
        self.settings = s = replace(settings or TrainConfig(), **overrides)
        if s.objective == "flow_matching" and not isinstance(model, FlowVelocity):
            raise TypeError(f"objective='flow_matching' trains a FlowVelocity model, got {type(model).__name__}")
        if isinstance(data, Tensor):
            if not data.is_floating_point() or data.ndim < 2 or data.shape[0] == 0:
                raise ValueError(f"tensor data must be a non-empty float (n, *event) tensor, got {data.dtype} "
                                 f"{tuple(data.shape)}")  # fmt: skip
        elif not isinstance(data, ImageData):
            raise TypeError(f"data must be an ImageData or a float tensor, got {type(data).__name__}")
        self.num_classes: int | None = getattr(model, "num_classes", None)
        if self.num_classes is not None:
            if not isinstance(data, ImageData) or data.labels is None:
                raise ValueError(f"a class-conditional model (num_classes={self.num_classes}) trains on labelled "
                                 "ImageData; these data have no labels")  # fmt: skip
            if data.num_classes != self.num_classes:
                raise ValueError(f"the model has num_classes={self.num_classes} but the data have "
                                 f"{data.num_classes} classes")  # fmt: skip
        if eval_data is not None and not isinstance(eval_data, ImageData):
            raise TypeError(f"eval_data must be an ImageData, got {type(eval_data).__name__}")
        if resume_state is not None and resume is False:
            raise ValueError("resume_state is the content of the checkpoint to resume from: pass resume too")
        config = {} if config is None else config
        check_plain(config, "config")

        self.rank, self.world_size = distributed_context()
        if s.batch_size % self.world_size:
            raise ValueError(f"batch_size={s.batch_size} is not divisible by the {self.world_size} ranks")
        self.device = resolve_device(device)
        self.sde, self.data, self.eval_data = sde, data, eval_data
        self.out_dir = Path(out_dir)
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.previous_checkpoint_path = self.out_dir / "checkpoint-previous.pt"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.autocast = mixed_precision and self.device.type == "cuda"
        self.bpd_kwargs = {"divergence": "hutchinson", "rtol": 1e-4, "atol": 1e-4, **(bpd_kwargs or {})}
        self.progress = progress
        self._evaluates = isinstance(data, ImageData) and bool(s.num_grid_samples or (eval_data and s.num_eval_images))
        self.config = config

        self.model = model.to(self.device)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(s.ema_decay), use_buffers=True)
        self.ema.eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self._train_model: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.step = 0
        # the steps of checkpoint.pt and checkpoint-previous.pt as this trainer wrote or loaded
        # them (None: no such file, or one this trainer knows nothing of)
        self.checkpoint_step: int | None = None
        self.previous_checkpoint_step: int | None = None
        self.generator = torch.Generator(self.device).manual_seed(_stream_seed(s.seed, self.rank, 0))
        self._dropout_rng = self._seeded_rng_state(_stream_seed(s.seed, self.rank, 1))

        num = len(data) if isinstance(data, ImageData) else data.shape[0]
        self._sampler = torch.utils.data.DistributedSampler(
            range(num), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=s.seed, drop_last=True
        )
        self._per_rank = s.batch_size // self.world_size
        self._batches_per_epoch = len(self._sampler) // self._per_rank
        if self._batches_per_epoch == 0:
            raise ValueError(f"batch_size={s.batch_size} is larger than the data set ({num} items)")
        self._epoch: int | None = None
        self._order = torch.empty(0, dtype=torch.long)
        self._batch_labels: Tensor | None = None

        if resume is not False and resume is not True:
            self.load(resume, resume_state)
        elif resume and self.checkpoint_path.exists():
            self.load(self.checkpoint_path, resume_state)
        elif self.rank == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()  # a new run: its log starts empty

    @property
    def hparams(self) -> dict[str, Any]:
        """The run's :class:`TrainConfig` as a plain dict (stored in checkpoints as ``"trainer"``)."""
        return self.settings.as_dict()

    # --- randomness

    def _seeded_rng_state(self, seed: int) -> list[Tensor]:
        """The global generator states (CPU, and this CUDA device) after seeding with ``seed``,
        computed without touching the caller's global state."""
        with self._fork_rng():
            torch.manual_seed(seed)
            return self._get_rng()

    def _fork_rng(self) -> Any:
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _get_rng(self) -> list[Tensor]:
        states = [torch.get_rng_state()]
        if self.device.type == "cuda":
            states.append(torch.cuda.get_rng_state(self.device))
        return states

    def _set_rng(self, states: list[Tensor]) -> None:
        torch.set_rng_state(states[0].cpu())
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(states[1].cpu(), self.device)

    # --- one step

    def _learning_rate(self, step: int) -> float:
        s = self.settings
        scale = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else 1.0
        if s.lr_schedule == "cosine":
            frac = max(0, step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
            scale *= 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        return s.lr * scale

    def _batch(self, step: int) -> Tensor:
        """This rank's share of batch ``step``: a seeded permutation per epoch, so the batch
        depends on the step alone (its labels are :meth:`_labels` of the same step)."""
        epoch, k = divmod(step, self._batches_per_epoch)
        if epoch != self._epoch:
            self._sampler.set_epoch(epoch)
            self._order = torch.tensor(list(self._sampler), dtype=torch.long)
            self._epoch = epoch
        idx = self._order[k * self._per_rank : (k + 1) * self._per_rank]
        self._batch_labels = None
        if self.num_classes is not None and isinstance(self.data, ImageData) and self.data.labels is not None:
            self._batch_labels = self.data.labels[idx].to(self.device)
        if isinstance(self.data, ImageData):
            levels = self.data.levels[idx].to(self.device)
            return self.data.to_model(levels, generator=self.generator)
        return self.data[idx].to(self.device)

    def _mean_over_ranks(self, value: Tensor) -> Tensor:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def _train_step(self, step: int) -> tuple[float, Tensor]:
        x0 = self._batch(step)
        lr = self._learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._fork_rng():
            self._set_rng(self._dropout_rng)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = _objective_loss(
                    self.settings.objective, self._train_model, self.sde, x0, weighting=self.settings.weighting,
                    time_sampling=self.settings.time_sampling, coupling=self.settings.coupling,
                    generator=self.generator, labels=self._batch_labels,
                    label_dropout=self.settings.label_dropout if self._batch_labels is not None else 0.0,
                    target=self.settings.target,
                )  # fmt: skip
            self._dropout_rng = self._get_rng()
        value = self._mean_over_ranks(loss.detach().float()).item()
        if not math.isfinite(value):
            raise FloatingPointError(self._divergence_message(value, step + 1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip or math.inf)
        self.optimizer.step()
        self.ema.update_parameters(self.model)
        return value, grad_norm

    def _divergence_message(self, value: float, step: int) -> str:
        """What to resume from after the loss of ``step`` (1-based) came out non-finite. The
        weights can diverge steps before the loss does, and a resumed run repeats the same
        steps bit for bit: only a checkpoint from before the divergence, resumed with other
        settings, helps. The latest one is known bad when its own weights gave this loss (its
        step is the one before): resuming from it meets the same loss at any learning rate."""
        head = f"non-finite loss ({value}) at step {step}: training stopped before that step's update"
        fix = "other settings (e.g. a smaller learning rate; the same ones reach the same loss)"
        latest, previous = self.checkpoint_step, self.previous_checkpoint_step
        if latest is None:
            return f"{head}; no checkpoint had been written: start afresh with {fix}"
        gave_it = latest == step - 1
        state = f"the latest checkpoint, {self.checkpoint_path} (step {latest}), " + (
            "holds the weights that gave this loss" if gave_it
            else f"gave finite losses for {step - 1 - latest} steps but its weights may already be diverging"
        )  # fmt: skip
        if previous is not None:
            where = f"{self.previous_checkpoint_path} (step {previous})"
            return f"{head}; {state}: resume from the previous one, {where}, with {fix}"
        options = "start afresh" if gave_it else "resume from it or start afresh,"
        return f"{head}; {state}, and no earlier one is kept: {options} with {fix}"

    # --- the loop

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Run from the current step to ``steps`` (or to ``stop_at``, e.g. to split a run in
        two), checkpointing, logging and evaluating on the way; always saves a checkpoint at
        the end. Raises ``FloatingPointError`` on a non-finite loss (nothing is saved then; the
        message names the checkpoint to resume from)."""
        s = self.settings
        end = s.steps if stop_at is None else min(stop_at, s.steps)
        main = self.rank == 0
        start_time = time.perf_counter()
        losses: list[float] = []
        evaluations: list[dict[str, Any]] = []
        window: list[float] = []
        window_start = time.perf_counter()
        self.model.train()
        with progress_bar(total=s.steps, enabled=self.progress and main, desc="train") as bar:
            bar.update(self.step)
            while self.step < end:
                value, grad_norm = self._train_step(self.step)
                self.step += 1
                losses.append(value)
                window.append(value)
                bar.update(1)
                if self.step % s.log_every == 0 or self.step == end:
                    elapsed = time.perf_counter() - window_start
                    rate = len(window) * s.batch_size / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", img_per_s=f"{rate:.0f}", refresh=False)
                    self._log({
                        "kind": "train", "step": self.step, "loss": sum(window) / len(window),
                        "lr": self._learning_rate(self.step - 1), "grad_norm": float(grad_norm),
                        "images_per_second": rate, "seconds": time.perf_counter() - start_time,
                    })  # fmt: skip
                    window, window_start = [], time.perf_counter()
                if s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save()
                if self._evaluates and s.eval_every and self.step % s.eval_every == 0 and self.step < s.steps:
                    evaluations.append(self.evaluate())
                    self.model.train()
        if self.step == s.steps and self._evaluates and (not evaluations or evaluations[-1]["step"] != self.step):
            evaluations.append(self.evaluate())
        checkpoint = self.save() if self.checkpoint_step != self.step else self.checkpoint_path
        self.model.eval()
        return TrainResult(losses, self.step, checkpoint, evaluations, time.perf_counter() - start_time)

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # --- evaluation

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the EMA model: a sample grid ``samples/step_XXXXXXX.png`` (rank 0) from fixed
        prior noise through the probability-flow ODE, and bits/dim on the first
        ``num_eval_images`` of ``eval_data``, sharded over ranks and reduced. Returns the record
        also written to ``metrics.jsonl``; the training random streams are not touched."""
        if not isinstance(self.data, ImageData):
            raise TypeError("evaluation needs ImageData (images with a number of levels)")
        start = time.perf_counter()
        record: dict[str, Any] = {"kind": "eval", "step": self.step}
        model = self.ema.module
        if self.rank == 0 and self.settings.num_grid_samples:
            from scoresde.plot import save_image_grid

            g = torch.Generator(self.device).manual_seed(_stream_seed(self.settings.seed, 0, 2))
            shape = (self.settings.num_grid_samples, *self.data.image_shape)
            z = self.sde.prior_sample(shape, generator=g, device=self.device)
            with torch.no_grad():
                sample = sample_ode(model, self.sde, x_init=z, method="dopri5", rtol=1e-3, atol=1e-3)
            path = save_image_grid(
                self.data.from_model(sample.x), self.out_dir / "samples" / f"step_{self.step:07d}.png",
                num_levels=self.data.num_levels, scale=4,
            )  # fmt: skip
            record.update(sample_grid=str(path.relative_to(self.out_dir)), sample_nfe=sample.nfe)
        if self.eval_data is not None and self.settings.num_eval_images:
            result = self.evaluate_bpd(model, self.eval_data.subset(slice(0, self.settings.num_eval_images)))
            record.update(bpd=result.mean, bpd_std_error=result.std_error, bpd_images=result.num_samples,
                          bpd_nfe=result.nfe)  # fmt: skip
        record["seconds"] = time.perf_counter() - start
        self._log(record)
        return record

    def evaluate_bpd(self, model: nn.Module, data: ImageData) -> BpdEvaluation:
        """Bits/dim of ``data`` under ``model`` by :func:`~scoresde.evaluate_bpd`: whole batches
        dealt to the ranks, image ``i``'s noise from per-sample seeds, so every rank returns the
        same evaluation of the whole set whatever the number of processes."""
        batch_size = min(256, math.ceil(data.levels.shape[0] / self.world_size))  # a batch for every rank
        return evaluate_bpd(
            model, self.sde, data.levels.to(self.device), num_bins=data.num_levels, transform=data.transform,
            batch_size=batch_size, seed=_stream_seed(self.settings.seed, 0, 3), **self.bpd_kwargs,
        )  # fmt: skip

    # --- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain values; the RNG states of every rank are
        gathered (a collective: call it on all ranks)."""
        rng = {"generator": self.generator.get_state(), "global": self._dropout_rng}
        all_rng: list[Any] = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(all_rng, {k: _to_cpu(v) for k, v in rng.items()})
        else:
            all_rng = [rng]
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": all_rng,
            "world_size": self.world_size,
            "num_levels": self.data.num_levels if isinstance(self.data, ImageData) else None,
            "num_classes": self.num_classes,
            "event_shape": list(self.data.image_shape if isinstance(self.data, ImageData) else self.data.shape[1:]),
            "trainer": self.hparams,
            "config": self.config,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the checkpoint atomically (rank 0; all ranks must call it). Default path
        ``out_dir/checkpoint.pt``, whose content of an earlier step is first copied, atomically
        too, to ``out_dir/checkpoint-previous.pt``: at every instant both files are whole, and a
        checkpoint from before a divergence survives the next save."""
        path = Path(path) if path is not None else self.checkpoint_path
        default = path == self.checkpoint_path
        state = self.state_dict()
        rotate = default and self.checkpoint_step != self.step
        if rotate:
            self.previous_checkpoint_step = self.checkpoint_step
        if self.rank == 0:
            if rotate and path.is_file():
                with path.open("rb") as src:
                    atomic_write(self.previous_checkpoint_path, lambda f: shutil.copyfileobj(src, f))
            save_checkpoint({**state, "previous_step": self.previous_checkpoint_step if default else None}, path)
        if self.world_size > 1:
            dist.barrier()
        if default:
            self.checkpoint_step = self.step
        return path

    def load(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore model, EMA, optimizer, step and random states from a checkpoint (any file
        :meth:`save` wrote, e.g. ``checkpoint-previous.pt``; ``state``: its content, if read
        already); the metrics log is cut back to the checkpoint's step, and temporary files an
        interrupted save of the checkpoint left behind are removed."""
        state = load_checkpoint(path, map_location=self.device) if state is None else state
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            rng = state["rng"]
        except (KeyError, RuntimeError, ValueError) as err:
            raise checkpoint_mismatch(path, err, "this model and trainer") from None
        if len(rng) == self.world_size:
            self.generator.set_state(rng[self.rank]["generator"].cpu())
            self._dropout_rng = list(rng[self.rank]["global"])
        else:  # another number of ranks: the run goes on, with fresh streams per rank
            self.generator.manual_seed(_stream_seed(self.settings.seed + self.step, self.rank, 0))
            self._dropout_rng = self._seeded_rng_state(_stream_seed(self.settings.seed + self.step, self.rank, 1))
        if Path(path).resolve() == self.checkpoint_path.resolve():
            self.checkpoint_step, self.previous_checkpoint_step = self.step, state.get("previous_step")
        else:  # checkpoint.pt holds another state, which the next save keeps as the previous one
            self.checkpoint_step = self.previous_checkpoint_step = None
        if self.rank == 0:
            remove_stale_temporaries(path)
            if self.metrics_path.exists():
                lines = self.metrics_path.read_text().splitlines()
                kept = [line for line in lines if _logged_step(line) <= self.step]
                atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite (dropped on resume) for a blank line or
    one torn by a crash mid-append."""
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
