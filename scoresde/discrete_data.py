r"""Discrete data and bits/dim: the map between integer levels and model space, uniform
dequantization, and the dequantization bound on the discrete log-likelihood.

Levels :math:`x \\in \\{0, \\dots, K-1\\}^D` are dequantized to :math:`u = (x + \\nu)/K`,
:math:`\\nu \\sim U[0, 1)^D`, and carried to model space by an invertible affine
:class:`DataTransform` :math:`y = T(u)` (default :math:`y = 2u - 1`); :func:`to_levels` is the
inverse (the bin holding ``y``). :func:`bits_per_dim` bounds :math:`-\\log_2 P(x)/D` with the
model density of :func:`~scoresde.log_likelihood`; :func:`evaluate_bpd` averages it over a data set.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from scoresde._atomic import atomic_write, atomic_write_text
from scoresde._tensor import check_finite, check_generator
from scoresde.dequantization import make_dequantization
from scoresde.distributed import distributed_context, shard_batches
from scoresde.likelihood import log_likelihood
from scoresde.noise import BatchNoise, SampleNoise, noise_source
from scoresde.progress import progress_bar
from scoresde.sde.base import SDE, ScoreFn

DEQUANTIZATION_STREAM = 1
"""The :class:`~scoresde.noise.SampleNoise` stream of dequantization noise (probes use stream 0)."""

__all__ = [
    "BitsPerDimResult",
    "BpdEvaluation",
    "DataTransform",
    "bits_per_dim",
    "dequantize",
    "evaluate_bpd",
    "to_levels",
]


@dataclass(frozen=True)
class BitsPerDimResult:
    r"""Output of :func:`bits_per_dim`.

    Attributes:
        bits_per_dim: ``(batch,)`` the dequantization bound in bits/dim, averaged over the
            dequantization samples.
        log_prob: ``(num_dequant_samples * importance_samples, batch)`` the ODE log-density
            :math:`\log p_{t_{end}}` of the dequantized points (nats, model space), draws in order
            (dequantization sample major).
        log_weight: like ``log_prob``, the log importance weights
            :math:`\log p(y) - \log q(y \mid x)` of the discrete probability (nats); the bound of
            one dequantization sample is :math:`-\log\frac{1}{K_s}\sum_k w_k`.
        nfe: score evaluations spent.
    """

    bits_per_dim: Tensor
    log_prob: Tensor
    log_weight: Tensor
    nfe: int


@dataclass(frozen=True)
class BpdEvaluation:
    """Output of :func:`evaluate_bpd`: mean bits/dim over the data set, its standard error
    (sample std over data points / sqrt(n); it includes dequantization and Hutchinson noise),
    the number of data points, the total NFE (of every batch, those a resumed run read from disk
    included) and the per-point bits/dim ``(n,)`` float64 in data order."""

    mean: float
    std_error: float
    num_samples: int
    nfe: int
    bits_per_dim: Tensor | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class DataTransform:
    r"""The elementwise affine map from dequantized data :math:`u \in [0, 1]^D` to model space,
    :math:`y = \text{scale}\cdot u + \text{shift}`, with
    :math:`\log|\det \partial y/\partial u| = \sum_i \log|\text{scale}_i|`.

    ``scale`` and ``shift`` are numbers or tensors broadcastable to the event shape (e.g. a
    per-pixel standardisation). The default is ``[0, 1] -> [-1, 1]``.
    """

    scale: float | Tensor = 2.0
    shift: float | Tensor = -1.0

    @classmethod
    def to_interval(cls, low: float, high: float) -> DataTransform:
        """The map taking ``[0, 1]`` onto ``[low, high]``."""
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
        return cls(scale=high - low, shift=low)

    def __call__(self, u: Tensor) -> Tensor:
        return u * self._as_tensor(self.scale, u) + self._as_tensor(self.shift, u)

    def inverse(self, y: Tensor) -> Tensor:
        """:math:`u = (y - \\text{shift}) / \\text{scale}`, the map back to ``[0, 1]``."""
        return (y - self._as_tensor(self.shift, y)) / self._as_tensor(self.scale, y)

    def log_abs_det(self, like: Tensor) -> Tensor:
        """:math:`\\sum_i \\log|\\text{scale}_i|` over one event of ``like`` (``(batch, *event)``),
        a 0-d tensor in ``like``'s dtype."""
        scale = self._as_tensor(self.scale, like).expand(like.shape[1:])
        return scale.abs().log().sum()

    @staticmethod
    def _as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def check(self, like: Tensor) -> None:
        """Raise ``ValueError`` unless scale and shift are finite, scale is non-zero and both
        broadcast to the event shape of ``like``."""
        for name in ("scale", "shift"):
            value = self._as_tensor(getattr(self, name), like)
            try:
                torch.broadcast_shapes(value.shape, like.shape[1:])
            except RuntimeError:
                raise ValueError(
                    f"transform {name} of shape {tuple(value.shape)} does not broadcast to the event shape "
                    f"{tuple(like.shape[1:])}"
                ) from None
            if not torch.isfinite(value).all():
                raise ValueError(f"transform {name} must be finite")
        if (self._as_tensor(self.scale, like) == 0).any():
            raise ValueError("transform scale must be non-zero (the map must be invertible)")


def dequantize(
    levels: Tensor,
    num_bins: int,
    transform: DataTransform | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    centre: bool = False,
) -> Tensor:
    r"""Integer levels ``(..., *event)`` -> model space: :math:`y = T((x + \\nu)/K)`, ``K = num_bins``,
    :math:`\\nu` uniform on ``[0, 1)`` drawn with ``generator`` on ``levels``' device (or ``0.5``, the
    bin centre, with ``centre=True``). ``dtype``: the float type (default ``levels``' own if it is a
    float, else torch's default)."""
    transform = DataTransform() if transform is None else transform
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    x = levels.to(dtype)
    offset = 0.5 if centre else BatchNoise(generator).rand_like(x)
    return transform((x + offset) / num_bins)


def to_levels(y: Tensor, num_bins: int, transform: DataTransform | None = None) -> Tensor:
    r"""Model space -> integer levels: the bin :math:`\\lfloor K\\,T^{-1}(y)\\rfloor` holding ``y``,
    clamped to ``[0, K - 1]`` (``uint8`` when ``K <= 256``); the inverse of :func:`dequantize`."""
    transform = DataTransform() if transform is None else transform
    levels = (transform.inverse(y) * num_bins).floor().clamp(0, num_bins - 1)
    return levels.to(torch.uint8 if num_bins <= 256 else torch.int64)


def _check_discrete(x: Any, num_bins: int) -> None:
    """Discrete data: a tensor of integer values in ``[0, num_bins - 1]`` (any dtype)."""
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty (batch, *event) tensor, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"x must hold integer levels in a real dtype, got {x.dtype}")
    if x.is_floating_point():
        check_finite(x, "x")
        if (x != x.round()).any():
            raise ValueError("x must hold integer levels (discrete data), got non-integer values")
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > num_bins - 1:
        raise ValueError(f"x must lie in [0, num_bins - 1] = [0, {num_bins - 1}], got values in [{low}, {high}]")


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    num_bins: int,
    transform: DataTransform | None = None,
    num_dequant_samples: int = 1,
    dequantization: str = "uniform",
    importance_samples: int = 1,
    truncation: float = 3.0,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    sample_indices: Tensor | Sequence[int] | None = None,
    **likelihood_kwargs: Any,
) -> BitsPerDimResult:
    r"""Bits/dim of discrete data ``x`` (integer levels ``0..num_bins-1``, shape
    ``(batch, *event)``, ``D`` values per event) under the score model, by uniform
    dequantization.

    With :math:`u = (x + \nu)/K`, :math:`\nu \sim U[0, 1)^D`, ``K = num_bins``, and the model
    density :math:`p_y` on :math:`y = \text{transform}(u)`, the discrete probability is the
    integral of :math:`p_u(u) = p_y(y)\,|\det\partial y/\partial u|` over the cube of volume
    :math:`K^{-D}` around :math:`x/K`; Jensen's inequality gives the variational bound

    .. math:: -\log_2 P(x) \le -\frac{1}{\ln 2}\,E_\nu\big[\log p_y(y) + \log|\det\partial y/\partial u|
              - D\log K\big],

    reported per dimension (divided by ``D``), the expectation a mean over
    ``num_dequant_samples`` draws. For the default transform :math:`y = 2u - 1` the
    log-determinant is :math:`D\log 2`, so bits/dim = :math:`-\log_2 p_y/D - 1 + \log_2 K`
    (the "+7 for 256 levels" of other code, here derived; nothing else is added).
    :math:`\log p_y` is :func:`log_likelihood` at ``t_min`` (keyword arguments pass through).

    Tighter bounds (:mod:`scoresde.dequantization`): ``dequantization="truncated_normal"`` draws
    :math:`y` from i-DODE's truncated normal around the bin centre (``truncation`` = :math:`\tau`)
    and uses the ODE density at the matching small time, for a model trained on bin centres; with
    ``importance_samples`` :math:`= K_s > 1` each of the ``num_dequant_samples`` bounds is the
    importance-weighted :math:`-\log\frac{1}{K_s}\sum_k w_k`, :math:`w_k = p(y_k)/q(y_k \mid x)`,
    which falls towards :math:`-\log P(x)` as :math:`K_s` grows (the plain bound at :math:`K_s = 1`).

    Random numbers: the dequantization noise ``(num_dequant_samples, batch, *event)`` is drawn
    first from ``generator``, then any Hutchinson probes. With per-sample seeds instead (``seed``,
    ``sample_indices``, :class:`~scoresde.noise.SampleNoise`) a sample's dequantization noise and
    probes depend on ``(seed, index)`` only, from two independent streams. ``dtype`` is the float
    type of the computation for integer ``x`` (default: torch's default dtype); a float ``x``
    keeps its own.
    """
    _check_discrete(x, num_bins)
    check_generator(generator)
    for name, value in (("num_dequant_samples", num_dequant_samples), ("importance_samples", importance_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    transform = DataTransform() if transform is None else transform
    levels = x.to(dtype)
    transform.check(levels)
    dequantizer = make_dequantization(dequantization, num_bins, transform, sde, levels, truncation)
    if dequantizer.t_end is not None:
        if "t_end" in likelihood_kwargs:
            raise ValueError(f"dequantization={dequantization!r} sets t_end itself (the dequantization time), "
                             f"got t_end={likelihood_kwargs['t_end']!r}")  # fmt: skip
        likelihood_kwargs = {**likelihood_kwargs, "t_end": dequantizer.t_end}

    num_draws = num_dequant_samples * importance_samples
    noise = noise_source(generator, seed, sample_indices, stream=DEQUANTIZATION_STREAM)
    if isinstance(noise, SampleNoise):  # one draw per dequantization sample, each (batch, *event)
        draws = [dequantizer.draw(levels, noise) for _ in range(num_draws)]
        y, correction = torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])
        indices = noise.indices.repeat(num_draws)
        result = log_likelihood(score_fn, sde, y, seed=seed, sample_indices=indices, **likelihood_kwargs)
    else:
        y, correction = dequantizer.draw(levels.expand(num_draws, *x.shape).flatten(0, 1), noise)  # all: one solve
        result = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_kwargs)

    log_prob = result.log_prob.reshape(num_draws, x.shape[0])
    log_weight = log_prob + correction.reshape(num_draws, x.shape[0])
    grouped = log_weight.reshape(num_dequant_samples, importance_samples, x.shape[0])
    log_discrete = grouped.logsumexp(1) - math.log(importance_samples)
    bpd = -log_discrete.mean(0) / (x[0].numel() * math.log(2))
    return BitsPerDimResult(bits_per_dim=bpd, log_prob=log_prob, log_weight=log_weight, nfe=result.nfe)


def evaluate_bpd(
    score_fn: ScoreFn,
    sde: SDE,
    data: Tensor | Iterable[Any],
    *,
    num_bins: int,
    batch_size: int = 256,
    progress: bool = False,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    **bpd_kwargs: Any,
) -> BpdEvaluation:
    """Mean bits/dim of a data set and its standard error, by :func:`bits_per_dim` batch by
    batch.

    ``data`` is a tensor ``(n, *event)`` (cut into batches of ``batch_size`` by index) or an
    iterable of batches, e.g. a ``DataLoader``; a batch that is a tuple or list (``(x, label)``)
    contributes its first item. ``bpd_kwargs`` go to :func:`bits_per_dim` (``transform``,
    ``generator``, ``divergence``, ``rtol``, ...). ``progress`` shows a tqdm bar over batches.

    Scale-out (a tensor ``data``):

    * ``seed``: per-sample seeds; data point ``i``'s dequantization noise and probes depend on
      ``(seed, i)`` only, so its result does not depend on the process that evaluates it.
    * Under ``torchrun`` (an initialised process group) whole batches are dealt to the ranks
      (:func:`scoresde.distributed.shard_batches`; needs ``seed``). No collective runs inside a
      solve, so ranks taking different numbers of adaptive steps cannot deadlock; the results are
      gathered once at the end, and every rank returns the whole set's evaluation. Within a batch
      the adaptive path depends on the batch-mates within the tolerance (one step size per batch),
      so results are identical for any number of processes, not for any batch size.
    * ``out_dir``: resumable. Each finished batch is written there atomically; a run restarted
      with the same arguments skips the batches on disk, so a killed evaluation recomputes and
      loses nothing, and the result covers every data point exactly once. A folder holding another
      run's results (other data, model, batch size or settings) is refused, naming what differs.
    """
    if not isinstance(data, Tensor):
        if out_dir is not None or distributed_context()[1] > 1:
            raise TypeError(f"out_dir and torchrun need data as one (n, *event) tensor, got {type(data).__name__}")
        if not isinstance(data, Iterable):
            raise TypeError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        results = _evaluate_batches(score_fn, sde, _numbered(data), total, num_bins, progress, seed, bpd_kwargs)
        return _summary(results)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty (n, *event) tensor, got shape {tuple(data.shape)}")
    rank, world_size = distributed_context()
    if world_size > 1 and seed is None:
        raise ValueError("evaluate_bpd under torchrun needs seed= (per-sample seeds), so that a batch's result "
                         "does not depend on the rank that solves it")  # fmt: skip
    num_batches = math.ceil(data.shape[0] / batch_size)
    mine = shard_batches(num_batches, rank, world_size)
    store = None if out_dir is None else _BatchStore(Path(out_dir), _run_record(score_fn, data, num_bins, batch_size,
                                                                                 seed, bpd_kwargs))  # fmt: skip
    todo = [b for b in mine if store is None or not store.has(b)]
    batches = ((b, b * batch_size, data[b * batch_size : (b + 1) * batch_size]) for b in todo)
    results = _evaluate_batches(score_fn, sde, batches, len(todo), num_bins, progress and rank == 0, seed,
                                bpd_kwargs, store)  # fmt: skip
    if store is not None:
        if world_size > 1:
            dist.barrier()  # once, after every rank's last solve
        return _summary(store.load_all(num_batches))
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, [(b, r.cpu(), n) for b, r, n in results])
        results = sorted(part for rank_parts in gathered for part in rank_parts)
    return _summary(results)


def _numbered(data: Iterable[Any]) -> Iterable[tuple[int, int, Tensor]]:
    """``(batch number, index of its first point, batch)`` for an iterable of batches (a tuple or
    list contributes its first item)."""
    start = 0
    for number, batch in enumerate(data):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        yield number, start, x
        start += len(x)


def _evaluate_batches(
    score_fn: ScoreFn, sde: SDE, batches: Iterable[tuple[int, int, Tensor]], total: int | None, num_bins: int,
    progress: bool, seed: int | None, bpd_kwargs: dict[str, Any], store: _BatchStore | None = None,
) -> list[tuple[int, Tensor, int]]:
    """``(batch number, per-sample bits/dim float64, nfe)`` for each ``(number, start, x)``; with
    per-sample seeds the points of a batch are ``start, start + 1, ...``; each result goes to ``store``."""
    results: list[tuple[int, Tensor, int]] = []
    with progress_bar(total=total, enabled=progress, desc="bits/dim") as bar:  # type: ignore[arg-type]
        for number, start, x in batches:
            per_sample = {} if seed is None else {"seed": seed, "sample_indices": torch.arange(start, start + len(x))}
            result = bits_per_dim(score_fn, sde, x, num_bins=num_bins, **per_sample, **bpd_kwargs)
            values = result.bits_per_dim.detach().to(torch.float64)
            results.append((number, values, result.nfe))
            if store is not None:
                store.save(number, values, result.nfe)
            bar.update(1)
            bar.set_postfix(bpd=f"{torch.cat([r for _, r, _ in results]).mean().item():.4f}")
    return results


def _summary(results: Sequence[tuple[int, Tensor, int]]) -> BpdEvaluation:
    """The evaluation of ``(batch number, per-sample bits/dim, nfe)`` results in batch order."""
    if not results:
        raise ValueError("data holds no batches")
    values = torch.cat([v.cpu() for _, v, _ in results])
    nfe = sum(n for _, _, n in results)
    n = values.numel()
    std_error = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return BpdEvaluation(mean=values.mean().item(), std_error=std_error, num_samples=n, nfe=nfe, bits_per_dim=values)


def _fingerprint(tensors: Iterable[Tensor]) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _describe(value: Any) -> str:
    """A stable description of a keyword argument for the run record (a function by its name)."""
    if callable(value) and not isinstance(value, torch.nn.Module):
        return getattr(value, "__qualname__", type(value).__name__)
    return repr(value)


def _run_record(
    score_fn: ScoreFn, data: Tensor, num_bins: int, batch_size: int, seed: int | None, bpd_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """What makes an evaluation the same run: its data, model, batching and settings."""
    model = _fingerprint(score_fn.state_dict().values()) if isinstance(score_fn, torch.nn.Module) else None
    settings = {key: _describe(value) for key, value in sorted(bpd_kwargs.items())}
    return {"data": _fingerprint([data]), "num_samples": data.shape[0], "model": model, "num_bins": num_bins,
            "batch_size": batch_size, "seed": seed, "settings": settings}  # fmt: skip


class _BatchStore:
    """One atomically written file per finished batch in ``folder``, beside ``run.json``, the
    record of the run they belong to (written once, checked on every restart)."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"out_dir {folder} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        record_path = folder / "run.json"
        if record_path.exists():
            stored = json.loads(record_path.read_text())
            differs = [key for key in record if stored.get(key) != record[key]]
            if differs:
                key = differs[0]
                raise ValueError(
                    f"out_dir {folder} holds another evaluation's results ({key}: {stored.get(key)!r} there, "
                    f"{record[key]!r} here): use another folder; nothing was overwritten"
                )
        elif distributed_context()[0] == 0:
            atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True))

    def _path(self, number: int) -> Path:
        return self.folder / f"batch-{number:06d}.pt"

    def has(self, number: int) -> bool:
        return self._path(number).exists()

    def save(self, number: int, values: Tensor, nfe: int) -> None:
        atomic_write(self._path(number), lambda f: torch.save({"bits_per_dim": values.cpu(), "nfe": nfe}, f))

    def load_all(self, num_batches: int) -> list[tuple[int, Tensor, int]]:
        missing = [b for b in range(num_batches) if not self.has(b)]
        if missing:
            raise RuntimeError(f"batches {missing[:5]} of {num_batches} are missing from {self.folder}")
        loaded = [torch.load(self._path(b), weights_only=True) for b in range(num_batches)]
        return [(b, entry["bits_per_dim"], entry["nfe"]) for b, entry in enumerate(loaded)]
