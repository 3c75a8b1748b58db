"""Pieces shared by every solver: the step context, score counting, the Gaussian-kernel check
and the data prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from scoresde._tensor import as_time
from scoresde.noise import BatchNoise, Noise
from scoresde.sde.base import SDE, LinearSDE, ScoreFn


@dataclass
class StepContext:
    """What a step may need beyond ``(x, t, s)``: where its noise comes from
    (:mod:`scoresde.noise`: one generator for the batch, or per-sample seeds), whether this is the
    last step of the grid, and a per-run history that multistep solvers append to."""

    noise: Noise = field(default_factory=lambda: BatchNoise(None))
    last: bool = False
    history: list[Any] = field(default_factory=list)


class CountingScore(nn.Module):
    """Wraps ``score_fn(x, t)``, counts its calls (the NFE, a python int: no sync) and checks
    that each output is shaped like ``x`` (metadata only). A module, so that a score model's
    parameters are found through it (torchdiffeq's adjoint)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        super().__init__()
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        score = self.score_fn(x, t)
        self.calls += 1
        if not isinstance(score, Tensor) or score.shape != x.shape:
            got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)}; it must match x")
        return score


def require_linear_sde(sde: SDE, solver: str) -> LinearSDE:
    """Return ``sde`` if it has a Gaussian transition kernel, else raise ``TypeError``."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(
            f"{solver} needs a Gaussian transition kernel (a LinearSDE with alpha(t), sigma(t)); "
            f"{type(sde).__name__} only gives drift and diffusion: use Euler-Maruyama, a torchsde "
            "method or the torchdiffeq ODE instead"
        )
    return sde


def require_sde(sde: SDE) -> SDE:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    return sde


def coef(v: Tensor, x: Tensor) -> Tensor:
    """A 0-d (or ``(batch,)``-free) time coefficient cast to ``x``'s dtype for broadcasting."""
    return v.to(x.dtype)


def predict_x0(sde: LinearSDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    r"""Tweedie's data prediction :math:`\hat x_0 = (x + \sigma_t^2 s(x, t)) / \alpha_t` at a
    scalar time ``t`` (one score evaluation)."""
    score = score_fn(x, as_time(t, x))
    return (x + coef(sde.sigma(t).square(), x) * score) / coef(sde.alpha(t), x)


class NonFiniteError(FloatingPointError):
    """The sampler's state (or the score) became NaN or infinite."""


class FirstNonFinite:
    """Remembers, on the device and without a host sync, whether each recorded state was finite;
    :meth:`raise_if_any` does one sync and names the first that was not. Two kernels per record
    (``isfinite``, ``all``), since it runs at every evaluation; the flags and times are stacked
    every :attr:`CHUNK` records, so a long run keeps a few tensors.

    A loop that owns its steps calls :meth:`raise_if_any` every :attr:`CHECK_EVERY` records as
    well as at the end, so a run that went NaN stops within that many steps (one sync per
    ``CHECK_EVERY`` steps, not per step); the records found finite are then dropped, so each
    check looks only at the records since the last one."""

    CHUNK = 256
    CHECK_EVERY = 32

    def __init__(self) -> None:
        self._indices: list[int] = []
        self._stacked: list[tuple[Tensor, Tensor]] = []  # (finite flags, times) of full chunks
        self._finite: list[Tensor] = []
        self._times: list[Tensor] = []

    def record(self, value: Tensor, index: int, t: Tensor) -> None:
        self._indices.append(index)
        self._finite.append(torch.isfinite(value.detach()).all())
        self._times.append(t.detach())
        if len(self._finite) == self.CHUNK:
            self._stacked.append((torch.stack(self._finite), torch.stack(self._times)))
            self._finite, self._times = [], []

    def raise_if_any(self, what: str, unit: str = "step") -> None:
        """Raise :class:`NonFiniteError` naming the first non-finite record since the last call
        (one host sync), else forget those records."""
        if self._finite:
            self._stacked.append((torch.stack(self._finite), torch.stack(self._times)))
            self._finite, self._times = [], []
        if not self._stacked:
            return
        finite = torch.cat([flags for flags, _ in self._stacked])
        if bool(finite.all()):
            self._indices, self._stacked = [], []
            return
        first = int((~finite).nonzero()[0, 0])
        time = torch.cat([times for _, times in self._stacked])[first]
        raise NonFiniteError(
            f"{what} became non-finite (NaN or inf) at {unit} {self._indices[first]} (t={float(time):.6g})"
        )
