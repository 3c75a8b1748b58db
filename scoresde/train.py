"""Training loops. :func:`fit` is the minimal one: Adam on the denoising score matching loss,
batches drawn from a tensor or a sampler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from scoresde.losses import dsm_loss
from scoresde.progress import progress_bar
from scoresde.sde.base import LinearSDE

BatchSource = Tensor | Callable[[int, torch.Generator], Tensor]


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
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FitResult:
    """Train ``model`` (a score model) with :func:`~scoresde.dsm_loss` for ``steps`` Adam steps,
    the learning rate decayed by cosine annealing.

    Args:
        data: a tensor ``(n, *event)`` to draw batches from (with replacement), or a function
            ``(batch_size, generator) -> batch``, e.g. ``lambda n, g: gmm.sample(n, generator=g)``.
        generator: drives the batches, times and noise (the model's initialisation is yours).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, Tensor):
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"data must be (n, *event) with n >= 1, got shape {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError("data holds NaN or inf")
        pool = data

        def draw(n: int, g: torch.Generator | None) -> Tensor:
            idx = torch.randint(len(pool), (n,), generator=g, device=g.device if g is not None else "cpu")
            return pool[idx.to(pool.device)]
    elif callable(data):
        draw = data
    else:
        raise TypeError(
            f"data must be a tensor or a callable (batch_size, generator) -> batch, got {type(data).__name__}"
        )

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    result = FitResult()
    model.train()
    with progress_bar(total=steps, enabled=progress, desc="fit") as bar:
        for _ in range(steps):
            x0 = draw(batch_size, generator)
            loss = dsm_loss(model, sde, x0, weighting=weighting, time_sampling=time_sampling, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = loss.item()
            if not torch.isfinite(torch.tensor(value)):
                raise FloatingPointError(f"the loss became {value} at step {len(result.losses)}")
            result.losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    model.eval()
    return result
